"""The output being built: ``input.txt.incomplete``, appended to in dataset order, hashed, checkpointed.

Durable before recorded: a checkpoint fsyncs the output, then saves the manifest describing
it. Checkpoints run in a background thread, one at a time; the fsync covers every byte
written before it started, which is all the manifest snapshot taken then describes. The
snapshot carries the SHA-256 state of exactly those bytes, so a resume takes the hash up where
it stopped instead of reading back what is written.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from . import digest
from .errors import OutputError, writing
from .manifest import Manifest
from .signals import block_in_this_thread

COPY_BLOCK = 8 << 20
HASH_BLOCK = 4 << 20
#: bytes at the end of the output whose hash each checkpoint records, to tell a file changed after it
TAIL_BYTES = 64 << 10
log = logging.getLogger("smollm_corpus")


class Output:
    """The partial output file, opened at the length its manifest records."""

    def __init__(self, partial: Path, manifest: Manifest, manifest_path: Path) -> None:
        self.partial, self.manifest, self.manifest_path = partial, manifest, manifest_path
        recorded = manifest.stats.bytes
        with writing(partial):
            self._fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            with writing(partial):
                size = os.fstat(self._fd).st_size
                if size < recorded:
                    raise OutputError(
                        f"{partial} holds {size:,} bytes but its last checkpoint recorded {recorded:,}: it was cut "
                        "short after that checkpoint (by a crash of the file system, or by hand), so it cannot be "
                        "trusted; rerun with --overwrite to start again"
                    )
                os.ftruncate(self._fd, recorded)  # whatever follows the last checkpoint is redone
            self._digest = self._resumed_digest(recorded)
        except BaseException:
            os.close(self._fd)
            raise
        self._position = recorded
        #: (output length, hash state of exactly that many bytes) after each of the last few appends
        self._states: deque[tuple[int, str | None]] = deque([(recorded, digest.state(self._digest))], maxlen=8)
        self._background = ThreadPoolExecutor(2, thread_name_prefix="output", initializer=block_in_this_thread)  # hashing, checkpoints
        self._hashing: Future | None = None
        self._persisting: Future | None = None

    def _resumed_digest(self, recorded: int):
        """The SHA-256 of the first ``recorded`` bytes: from the checkpoint's state, else by reading them."""
        if not recorded:
            return digest.sha256()
        if self.manifest.tail_sha256 not in (None, self._tail_sha256(recorded)):
            raise OutputError(
                f"the last bytes of {self.partial} differ from those its last checkpoint recorded: the file was "
                "changed after that checkpoint (by a crash of the file system, or by hand), so it cannot be "
                "trusted; rerun with --overwrite to start again"
            )
        resumed = digest.resume(self.manifest.hash_state)
        if resumed is not None and resumed.length == recorded:
            return resumed
        # A checkpoint without a usable hash state (saved where libcrypto was not available): read back.
        log.info("hashing the %.1f GB already written before resuming", recorded / 1e9)
        hashed = digest.sha256()
        with mmap.mmap(self._fd, recorded, access=mmap.ACCESS_READ) as data, memoryview(data) as view:
            for start in range(0, recorded, COPY_BLOCK):  # in blocks, so that Ctrl-C is heard
                hashed.update(view[start : start + COPY_BLOCK])
        return hashed

    def write(self, data: bytes) -> None:
        if data:
            self._hashed()
            self._digest.update(data)
            with writing(self.partial):
                self._position += os.pwrite(self._fd, data, self._position)
            self._states.append((self._position, digest.state(self._digest)))

    def copy(self, part: Path, size: int) -> None:
        """Append the first ``size`` bytes of ``part``, copied in the kernel and hashed meanwhile."""
        if not size:
            return
        self._hashed()
        with writing(self.partial), open(part, "rb") as f:
            data = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
            self._hashing = self._background.submit(self._hash, _hash_and_close, data, self._position + size)
            copied = 0
            while copied < size:
                n = _copy_range(f.fileno(), self._fd, size - copied, copied, self._position + copied)
                if n == 0:
                    raise OSError(errno.EIO, f"{part} ended early")
                copied += n
        self._position += size

    def append(self, pieces: list, size: int) -> None:
        """Append the first ``size`` bytes of ``pieces`` (bytes-like objects), hashed meanwhile."""
        views, left = [], size
        for piece in pieces:
            if left <= 0:
                break
            view = memoryview(piece).cast("B")
            views.append(view[:left])
            left -= len(views[-1])
        if not views:
            return
        self._hashed()
        self._hashing = self._background.submit(self._hash, _hash_all, views, self._position + size)
        with writing(self.partial):
            for view in views:
                done = 0
                while done < len(view):
                    done += os.pwrite(self._fd, view[done:], self._position + done)
                self._position += done

    def checkpoint(self, then: Callable[[], None] | None = None, wait: bool = False) -> None:
        """Make what was appended durable and record it in the manifest, then call ``then``."""
        if self._persisting is not None:
            self._persisting.result()  # raises what the previous checkpoint met
        self._hashed()
        # The manifest may record less than was written (a stop in the middle of an append): its state is an earlier one.
        recorded = self.manifest.stats.bytes
        self.manifest.hash_state = next((state for length, state in reversed(self._states) if length == recorded), None)
        self._persisting = self._background.submit(self._persist, self.manifest.to_json(), then)
        if wait:
            future, self._persisting = self._persisting, None
            future.result()

    def finish(self, output: Path) -> None:
        """Record the finished output's hash and give it its final name."""
        self._hashed()
        self.close()
        self.manifest.finish(self._digest.hexdigest())
        self.manifest.hash_state = self.manifest.tail_sha256 = None  # sha256 says it all now
        with writing(output):
            self.manifest.save(self.manifest_path)
            os.replace(self.partial, output)

    def close(self) -> None:
        self._background.shutdown(wait=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def _hashed(self) -> None:
        """Wait for the hashing of the previous part: the digest takes bytes in output order."""
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

    def _hash(self, hash_all: Callable, data, end: int) -> None:
        hash_all(self._digest, data)
        self._states.append((end, digest.state(self._digest)))

    def _tail_sha256(self, length: int) -> str:
        start = max(length - TAIL_BYTES, 0)
        return hashlib.sha256(os.pread(self._fd, length - start, start)).hexdigest()

    def _persist(self, snapshot: dict, then: Callable[[], None] | None) -> None:
        with writing(self.partial):
            os.fsync(self._fd)
            snapshot["tail_sha256"] = self._tail_sha256(snapshot["bytes"])  # below what is being appended: stable
            self.manifest.save(self.manifest_path, snapshot)
        if then:
            then()


def _hash_all(hasher, views: list[memoryview]) -> None:
    for view in views:
        hasher.update(view)  # lets go of the GIL


def _hash_and_close(hasher, data: mmap.mmap) -> None:
    try:
        with memoryview(data) as view:
            for start in range(0, len(data), HASH_BLOCK):
                hasher.update(view[start : start + HASH_BLOCK])  # lets go of the GIL
                if hasattr(mmap, "MADV_DONTNEED"):  # unmap what was hashed: the part's pages are not this process's memory
                    data.madvise(mmap.MADV_DONTNEED, start, min(HASH_BLOCK, len(data) - start))
    finally:
        data.close()


def _copy_range(src: int, dst: int, count: int, src_offset: int, dst_offset: int) -> int:
    """copy_file_range where the kernel has it, else a plain read and write."""
    try:
        return os.copy_file_range(src, dst, count, src_offset, dst_offset)
    except (AttributeError, OSError) as e:
        if isinstance(e, OSError) and e.errno not in (errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
            raise
        data = os.pread(src, min(count, COPY_BLOCK), src_offset)
        return os.pwrite(dst, data, dst_offset) if data else 0
