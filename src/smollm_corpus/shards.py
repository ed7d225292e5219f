"""Token files: a fetch's token stream, cut into the files that trainers read.

The workers turn documents into token ids; the run appends them, in dataset order, as one
stream of bytes (ids in the tokenizer's dtype). :class:`TokenFiles` cuts that stream into files:

* ``bin`` (llm.c, modded-nanogpt): shards ``<prefix>_val_000000.bin``, ``<prefix>_train_000001.bin``,
  ... of ``shard_tokens`` tokens (the last of each split shorter), each a header of 256 int32
  (magic, version, token count) then the ids;
* ``nanogpt``: ``val.bin`` then ``train.bin``, raw ids, and ``meta.pkl`` with ``vocab_size``.

Validation is the first whole documents of the stream (the run decides where they end, and
tells :meth:`TokenFiles.end_validation`); everything after is training data. A file being written
is ``<name>.incomplete``; a finished file is made durable, hashed and renamed. Checkpoints
record where the stream stops, which files are finished (tokens, sha256), and the hash state of
the open headerless file, so a resume re-reads at most the open shard.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import digest
from .errors import OutputError, writing
from .manifest import Manifest

#: llm.c's header: 256 little-endian int32, [0] magic, [1] version, [2] token count
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
VERSIONS = {2: (20240520, 1), 4: (20240801, 7)}  # by bytes per token
#: a shard's token count is an int32 in its header
MAX_SHARD_TOKENS = 2**31 - 1
READ_BLOCK = 8 << 20


@dataclass(frozen=True)
class Layout:
    """How the stream becomes files."""

    format: str  # "bin" or "nanogpt"
    prefix: str  # shard names start with it (bin)
    itemsize: int  # bytes per token
    shard_tokens: int | None  # bin: tokens per shard

    @property
    def header(self) -> bool:
        return self.format == "bin"

    def locate(self, offset: int, val_end: int | None) -> tuple[str, str, int, int | None]:
        """The file that holds stream byte ``offset``: its name, split, first stream byte and end (None: open-ended)."""
        validation = val_end is None or offset < val_end
        if self.format == "nanogpt":
            return ("val.bin", "val", 0, val_end) if validation else ("train.bin", "train", val_end, None)
        shard = self.shard_tokens * self.itemsize
        if validation:
            index = offset // shard
            start = index * shard
            end = start + shard if val_end is None else min(start + shard, val_end)
            return f"{self.prefix}_val_{index:06d}.bin", "val", start, end
        val_shards = -(-val_end // shard)
        index = (offset - val_end) // shard
        start = val_end + index * shard
        return f"{self.prefix}_train_{val_shards + index:06d}.bin", "train", start, start + shard

    def names(self, folder: Path) -> list[Path]:
        """This layout's files in ``folder``, finished or not (to clear before a new run)."""
        if self.format == "nanogpt":
            return [folder / n for n in ("val.bin", "train.bin", "val.bin.incomplete", "train.bin.incomplete", "meta.pkl")]
        return [p for pattern in (f"{self.prefix}_val_*.bin*", f"{self.prefix}_train_*.bin*") for p in folder.glob(pattern)]


class TokenFiles:
    """The token files of a run, opened where its manifest says the stream stops."""

    def __init__(self, folder: Path, layout: Layout, manifest: Manifest, manifest_path: Path, vocab_size: int) -> None:
        self.folder, self.layout, self.manifest, self.manifest_path = folder, layout, manifest, manifest_path
        self.vocab_size = vocab_size
        state = manifest.token_files or {}
        self.val_end: int | None = state.get("val_end")
        self.files: list[dict] = list(state.get("files", []))  # finished: name, split, tokens, sha256, end
        self._position = manifest.stats.bytes
        self._fd = -1
        self._open(state.get("hash_state"))
        #: (stream length, finished files, hash state of the open file) after each of the last appends
        self._states: deque = deque([self._state()], maxlen=8)
        self._persisting = None
        from concurrent.futures import ThreadPoolExecutor

        from .signals import block_in_this_thread

        self._background = ThreadPoolExecutor(1, thread_name_prefix="checkpoint", initializer=block_in_this_thread)

    # -- the stream ------------------------------------------------------------------------------

    def end_validation(self, offset: int) -> None:
        """Validation ends at stream byte ``offset`` (at or after what is written): later bytes are training data."""
        if self.val_end is not None:
            return
        if offset < self._position:
            raise ValueError(f"validation cannot end at {offset}, before the {self._position} bytes written")
        self.val_end = offset
        if offset == self._position:
            self._roll()  # the open file ends here
        else:
            self._end = self.layout.locate(self._file_start, offset)[3]

    def write(self, data: bytes) -> None:
        self.append([data], len(data))

    def append(self, pieces: list, size: int) -> None:
        """Append the first ``size`` bytes of ``pieces`` to the stream, across as many files as they reach."""
        left = size
        for piece in pieces:
            view = memoryview(piece).cast("B")[:left]
            left -= len(view)
            while len(view):
                room = len(view) if self._end is None else self._end - self._position
                chunk = view[:room]
                with writing(self._path):
                    done = 0
                    while done < len(chunk):
                        done += os.pwrite(self._fd, chunk[done:], self._offset() + done)
                if self._digest is not None:
                    self._digest.update(chunk)
                self._position += len(chunk)
                view = view[len(chunk):]
                if self._end is not None and self._position == self._end:
                    self._roll()
            if left <= 0:
                break
        self._states.append(self._state())

    def copy(self, part: Path, size: int) -> None:
        with writing(part), open(part, "rb") as f:
            data = f.read(size)
        self.append([data], size)

    # -- checkpoints -----------------------------------------------------------------------------

    def checkpoint(self, then: Callable[[], None] | None = None, wait: bool = False) -> None:
        if self._persisting is not None:
            self._persisting.result()
        recorded = self.manifest.stats.bytes
        length, files, hash_state = next((s for s in reversed(self._states) if s[0] == recorded), (recorded, None, None))
        if files is None:  # stopped within an append: only files finished before ``recorded`` count
            files = [f for f in self.files if f["end"] <= recorded]
        self.manifest.token_files = {"val_end": self.val_end, "files": files, "hash_state": hash_state}
        fd = os.dup(self._fd)  # the open file may be finished and closed before the fsync runs
        self._persisting = self._background.submit(self._persist, fd, self.manifest.to_json(), then)
        if wait:
            future, self._persisting = self._persisting, None
            future.result()

    def _persist(self, fd: int, snapshot: dict, then) -> None:
        try:
            with writing(self.folder):
                os.fsync(fd)  # files finished before it were made durable when they were finished
                self.manifest.save(self.manifest_path, snapshot)
        finally:
            os.close(fd)
        if then:
            then()

    def finish(self, meta: dict) -> None:
        """Close the last file and record the finished files; ``meta`` goes to nanoGPT's meta.pkl."""
        if self._persisting is not None:
            self._persisting.result()
        if self._fd < 0:  # closed with the run's other resources
            with writing(self._path):
                self._fd = os.open(self._path, os.O_RDWR)
        self._close()
        if self.layout.format == "nanogpt":
            meta_path = self.folder / "meta.pkl"
            with writing(meta_path):
                tmp = meta_path.with_name("meta.pkl.tmp")
                tmp.write_bytes(pickle.dumps(meta))
                os.replace(tmp, meta_path)
        self.manifest.token_files = {"val_end": self.val_end, "files": self.files, "hash_state": None}
        self.manifest.finish(None)
        with writing(self.manifest_path):
            self.manifest.save(self.manifest_path)

    def close(self) -> None:
        self._background.shutdown(wait=True)
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    # -- files -----------------------------------------------------------------------------------

    def _state(self) -> tuple[int, list[dict], str | None]:
        return self._position, list(self.files), digest.state(self._digest) if self._digest is not None else None

    def _offset(self) -> int:
        """Where the next byte goes in the open file."""
        return (HEADER_BYTES if self.layout.header else 0) + self._position - self._file_start

    def _open(self, hash_state: str | None) -> None:
        """Open the file that holds the stream's next byte, at the length the stream gives it."""
        name, self._split, self._file_start, self._end = self.layout.locate(self._position, self.val_end)
        final = self.folder / name
        self._path = final.with_name(name + ".incomplete")
        expected = self._offset()
        with writing(self._path):
            if not self._path.exists() and final.exists():
                os.replace(final, self._path)  # finished, but the checkpoint that recorded it was not saved
            self._fd = os.open(self._path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            size = os.fstat(self._fd).st_size
            if size < expected and self._position > self._file_start:
                raise OutputError(
                    f"{self._path} holds {size:,} bytes but the last checkpoint recorded {expected:,}: it was cut "
                    "short after that checkpoint (by a crash of the file system, or by hand), so it cannot be "
                    "trusted; rerun with --overwrite to start again"
                )
            with writing(self._path):
                os.ftruncate(self._fd, expected)
                if self.layout.header and self._position == self._file_start:
                    os.pwrite(self._fd, bytes(HEADER_BYTES), 0)  # filled in when the shard is finished
            self._digest = None
            if not self.layout.header:  # one file may grow without bound: hash as it is written
                self._digest = digest.resume(hash_state) if expected else digest.sha256()
                if self._digest is None or self._digest.length != expected:
                    self._digest = self._hash_file(expected)
        except BaseException:
            os.close(self._fd)
            self._fd = -1
            raise

    def _roll(self) -> None:
        """Finish the open file and open the next."""
        self._close()
        self._open(None)

    def _close(self) -> None:
        """Finish the open file: header, durable, hashed, renamed. A file that got no token is no file."""
        if self._position == self._file_start:
            os.close(self._fd)
            self._fd = -1
            self._path.unlink(missing_ok=True)
            return
        tokens = (self._position - self._file_start) // self.layout.itemsize
        with writing(self._path):
            if self.layout.header:
                magic, version = VERSIONS[self.layout.itemsize]
                header = np.zeros(HEADER_INTS, "<i4")
                header[:3] = magic, version, tokens
                os.pwrite(self._fd, header.tobytes(), 0)
            os.fsync(self._fd)
            sha256 = self._digest.hexdigest() if self._digest is not None else self._hash_file(self._offset()).hexdigest()
            os.close(self._fd)
            self._fd = -1
            final = self._path.with_name(self._path.name[: -len(".incomplete")])
            os.replace(self._path, final)
        self.files.append({"name": final.name, "split": self._split, "tokens": tokens, "sha256": sha256,
                           "end": self._position})

    def _hash_file(self, length: int):
        """SHA-256 of the open file's first ``length`` bytes, read back (a shard at most)."""
        hashed = digest.sha256()
        done = 0
        while done < length:
            block = os.pread(self._fd, min(READ_BLOCK, length - done), done)
            if not block:
                raise OutputError(f"{self._path} ended early; rerun with --overwrite to start again")
            hashed.update(block)
            done += len(block)
        return hashed


def clear(folder: Path, layout: Layout) -> None:
    """Remove a previous run's token files (this layout's names only)."""
    for path in layout.names(folder):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

