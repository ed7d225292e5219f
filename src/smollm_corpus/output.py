"""The output being built: ``input.txt.incomplete``, appended to in dataset order, hashed, checkpointed.

Durable before recorded: a checkpoint fsyncs the output, then saves the manifest describing
it. Checkpoints run in a background thread, one at a time; the fsync covers every byte
written before it started, which is all the manifest snapshot taken then describes.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from .errors import OutputError, writing
from .manifest import Manifest
from .signals import block_in_this_thread

COPY_BLOCK = 8 << 20
HASH_BLOCK = 4 << 20
log = logging.getLogger("smollm_corpus")


class Output:
    """The partial output file, opened at the length its manifest records."""

    def __init__(self, partial: Path, manifest: Manifest, manifest_path: Path) -> None:
        self.partial, self.manifest, self.manifest_path = partial, manifest, manifest_path
        self._digest = hashlib.sha256()
        recorded = manifest.stats.bytes
        with writing(partial):
            self._fd = os.open(partial, os.O_RDWR | os.O_CREAT, 0o644)
            size = os.fstat(self._fd).st_size
            if size < recorded:
                raise OutputError(
                    f"{partial} is shorter than its manifest records ({size:,} < {recorded:,} bytes); "
                    "rerun with --overwrite to start again"
                )
            os.ftruncate(self._fd, recorded)  # whatever follows the last checkpoint is redone
        if recorded:
            if recorded > 1 << 30:
                log.info("checking the %.1f GB already written before resuming", recorded / 1e9)
            with mmap.mmap(self._fd, recorded, access=mmap.ACCESS_READ) as data, memoryview(data) as view:
                for start in range(0, recorded, COPY_BLOCK):  # in blocks, so that Ctrl-C is heard
                    self._digest.update(view[start : start + COPY_BLOCK])
        self._position = recorded
        self._background = ThreadPoolExecutor(2, thread_name_prefix="output", initializer=block_in_this_thread)  # hashing, checkpoints
        self._hashing: Future | None = None
        self._persisting: Future | None = None

    def write(self, data: bytes) -> None:
        if data:
            self._hashed()
            self._digest.update(data)
            with writing(self.partial):
                self._position += os.pwrite(self._fd, data, self._position)

    def copy(self, part: Path, size: int) -> None:
        """Append the first ``size`` bytes of ``part``, copied in the kernel and hashed meanwhile."""
        if not size:
            return
        self._hashed()
        with writing(self.partial), open(part, "rb") as f:
            data = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
            self._hashing = self._background.submit(_hash_and_close, self._digest, data)
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
        self._hashing = self._background.submit(_hash_all, self._digest, views)
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
        self._persisting = self._background.submit(self._persist, self.manifest.to_json(), then)
        if wait:
            future, self._persisting = self._persisting, None
            future.result()

    def finish(self, output: Path) -> None:
        """Record the finished output's hash and give it its final name."""
        self._hashed()
        self.close()
        self.manifest.finish(self._digest.hexdigest())
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

    def _persist(self, snapshot: dict, then: Callable[[], None] | None) -> None:
        with writing(self.partial):
            os.fsync(self._fd)
            self.manifest.save(self.manifest_path, snapshot)
        if then:
            then()


def _hash_all(digest, views: list[memoryview]) -> None:
    for view in views:
        digest.update(view)  # hashlib lets go of the GIL for large buffers


def _hash_and_close(digest, data: mmap.mmap) -> None:
    try:
        with memoryview(data) as view:
            for start in range(0, len(data), HASH_BLOCK):
                digest.update(view[start : start + HASH_BLOCK])  # hashlib lets go of the GIL for large buffers
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
