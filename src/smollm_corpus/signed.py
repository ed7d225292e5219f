"""Signed chunks (--dedup): one dataset's parts, kept with their documents' signatures until its duplicates are known.

The signing pass renders every chunk as a plain fetch would, and the store keeps, per chunk,
the part (the output bytes), its :class:`~smollm_corpus.parts.PartInfo` and the documents'
MinHash signatures. A chunk is stored when its ``.info`` file exists: it is written last, after
the part and the signatures are durable, so a chunk is either whole or absent after ``kill -9``.
Once a dataset's duplicates are known, the writing pass appends the stored parts without them,
and deletes each source file's parts once they are durable in the output.
"""

from __future__ import annotations

import os
import pickle
import shutil
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np

from .errors import writing
from .parts import PartInfo
from .worker import Chunk


def key(chunk: Chunk) -> str:
    """A chunk's name in the store: its file and first row, so that it does not depend on where a run started."""
    return f"{chunk.file.index:06d}-{chunk.start:012d}"


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Store:
    """The signed chunks of one dataset, in ``folder``."""

    def __init__(self, folder: Path, key: Callable[[Chunk], str] = key) -> None:
        self.folder, self.key = folder, key
        with writing(folder):
            folder.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str, suffix: str) -> Path:
        return self.folder / f"{key}.{suffix}"

    def get(self, chunk: Chunk) -> PartInfo | None:
        """The stored chunk's info (without its data or signatures), or None when it is not stored."""
        path = self._path(self.key(chunk), "info")
        if not path.exists():
            return None
        return self._load(path)[1]

    def put(self, chunk: Chunk, info: PartInfo, part: Path) -> None:
        """Store ``chunk``: its part (``info.data`` where it is in memory, else the file ``part``, which is moved)."""
        name = self.key(chunk)
        with writing(self.folder):
            target = self._path(name, "part")
            if info.data is not None:
                with open(target, "wb") as f:
                    for piece in info.data:
                        f.write(piece)
                    f.flush()
                    os.fsync(f.fileno())
            elif part.exists():
                shutil.move(part, target)
                _fsync(target)
            else:
                target.write_bytes(b"")  # a chunk without documents
            with open(self._path(name, "sig"), "wb") as f:
                np.save(f, info.signatures if info.signatures is not None else np.empty((0, 0), np.uint64))
                f.flush()
                os.fsync(f.fileno())
            kept = replace(info, data=None, signatures=None)
            tmp = self._path(name, "info.tmp")
            with open(tmp, "wb") as f:
                pickle.dump((replace(chunk, path=""), kept), f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self._path(name, "info"))

    def keys(self) -> list[str]:
        """The stored chunks, in dataset order."""
        return sorted(p.name[:-len(".info")] for p in self.folder.glob("*.info"))

    def load(self, key: str) -> tuple[Chunk, PartInfo]:
        return self._load(self._path(key, "info"))

    def chunks(self) -> Iterator[tuple[Chunk, PartInfo]]:
        """Every stored chunk, in dataset order, with its info (read one at a time)."""
        return (self.load(key) for key in self.keys())

    def signatures(self, chunk: Chunk) -> np.ndarray:
        """The signatures of the chunk's documents, in the order of its info's ``rows``."""
        return np.load(self._path(self.key(chunk), "sig"), mmap_mode="r")

    def part_path(self, chunk: Chunk) -> Path:
        return self._path(self.key(chunk), "part")

    def part(self, chunk: Chunk) -> bytes:
        return self.part_path(chunk).read_bytes()

    def drop(self, chunk: Chunk) -> None:
        """Forget a stored chunk (its info first: what remains of it is never trusted)."""
        for suffix in ("info", "part", "sig"):
            self._path(self.key(chunk), suffix).unlink(missing_ok=True)

    def drop_parts(self, file_index: int) -> None:
        """Delete the parts of one source file's chunks (their signatures stay)."""
        for path in self.folder.glob(f"{file_index:06d}-*.part"):
            path.unlink(missing_ok=True)

    def mark_file(self, file_index: int, rows: int) -> None:
        """Record that every chunk of the source file ``file_index`` (``rows`` rows) is stored."""
        with writing(self.folder):
            tmp = self.folder / "file.tmp"
            tmp.write_text(str(rows))
            os.replace(tmp, self.folder / f"file-{file_index:06d}.done")

    def file_rows(self, file_index: int) -> int | None:
        """The rows of source file ``file_index`` if all its chunks are stored, else None."""
        try:
            return int((self.folder / f"file-{file_index:06d}.done").read_text())
        except FileNotFoundError:
            return None

    def mark(self, name: str) -> None:
        with writing(self.folder):
            (self.folder / name).touch()
            _fsync(self.folder)

    def marked(self, name: str) -> bool:
        return (self.folder / name).exists()

    @staticmethod
    def _load(path: Path) -> tuple[Chunk, PartInfo]:
        with open(path, "rb") as f:
            return pickle.load(f)


def documents(stores: list[Store]) -> Iterator[tuple[int, int, Chunk, PartInfo]]:
    """(input, ordinal, chunk, info) for every stored chunk of every store, in command then dataset order."""
    for i, store in enumerate(stores):
        for ordinal, (chunk, info) in enumerate(store.chunks()):
            yield i, ordinal, chunk, info
