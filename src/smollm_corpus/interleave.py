"""A mix's interleaving pass: documents taken one at a time from the input furthest behind its share.

Every stretch of the output holds the inputs at their weights within a document or two. Within
an input, each document comes from one of OPEN_CHUNKS drawn row groups open at once, chosen at
random, and each row group gives its documents in a random order: neighbours rarely come from
the same stretch of a source file. Memory holds no document beyond the one being copied. Every
choice comes from generators seeded by the mix's seed and the input's place, whose state is
saved with each checkpoint.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import clusters, signals, signed
from .manifest import Manifest
from .sample import Sample
from .worker import Chunk

#: drawn row groups of an input open at once, its documents taken from one of them at random
OPEN_CHUNKS = 8
#: documents (and their bytes, at most) gathered before they are appended together
WINDOW_DOCUMENTS, WINDOW_BYTES = 1024, 4 << 20
CHECKPOINT_SECONDS = 0.5
#: documents in a row that would take an input past its share of a token or byte budget, after which it is full
MAX_MISSES = 32


@dataclass
class Input:
    """One input's stream of documents during the interleave."""

    sample: Sample
    chunks: list[str]  # the stored chunks drawn, in drawn order (read one at a time, when opened)
    budget: int
    separator: int = 0  # bytes between two documents of a part
    used: int = 0
    documents: int = 0
    bytes: int = 0
    next: int = 0  # the next drawn chunk to open
    open: list = field(default_factory=list)  # [chunk ordinal, documents taken]
    done: bool = False
    passed: int = 0  # documents passed over: each would have taken the input past its share
    duplicates: int = 0  # documents skipped as near-duplicates of earlier ones (--dedup)
    misses: int = 0  # of them, in a row
    rng: np.random.Generator | None = None

    def state(self) -> dict:
        return {"used": self.used, "documents": self.documents, "bytes": self.bytes, "next": self.next,
                "open": [list(o) for o in self.open], "done": self.done, "passed": self.passed,
                "duplicates": self.duplicates,
                "misses": self.misses, "rng": self.rng.bit_generator.state}

    def restore(self, state: dict) -> None:
        self.used, self.documents, self.bytes = state["used"], state["documents"], state["bytes"]
        self.passed, self.misses, self.duplicates = state["passed"], state["misses"], state["duplicates"]
        self.next, self.open, self.done = state["next"], [list(o) for o in state["open"]], state["done"]
        self.rng.bit_generator.state = state["rng"]


class _Documents:
    """Where each document of a stored chunk lies in its part, in the chunk's own random order."""

    def __init__(self, store: signed.Store, chunk: Chunk, info, separator: int, seed: int, index: int,
                 removed: np.ndarray | None = None) -> None:
        ends = np.asarray(info.ends, np.int64)
        starts = np.concatenate([[0], ends[:-1] + separator]) if len(ends) else ends
        order = np.random.default_rng([seed, index, chunk.index, 7]).permutation(len(ends))
        self.starts, self.ends = starts[order], ends[order]
        rows = np.asarray(info.rows, np.int64)[order]
        self.duplicate = np.isin(rows, removed) if removed is not None else np.zeros(len(rows), bool)
        self.path = store.part_path(chunk)
        self.fd = os.open(self.path, os.O_RDONLY) if len(ends) else -1

    def read(self, n: int) -> bytes:
        return os.pread(self.fd, int(self.ends[n] - self.starts[n]), int(self.starts[n]))

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Interleaver:
    """Appends documents to ``out`` from the inputs, each time from the one furthest behind its share.

    ``kind`` is what the budget counts (tokens, bytes or documents; ``itemsize`` bytes a token);
    ``validation`` (token formats) is where validation ends, as (tokens or documents, how many);
    ``duplicates`` (--dedup) are skipped. The inputs' state is taken up from the manifest's position.
    """

    def __init__(self, inputs: list[Input], out, manifest: Manifest, separator: bytes, kind: str, itemsize: int,
                 validation: tuple[str, int] | None, seed: int, duplicates: np.ndarray | None = None) -> None:
        self.inputs, self.out, self.manifest, self.separator = inputs, out, manifest, separator
        self.kind, self.itemsize, self.validation, self.seed, self.duplicates = kind, itemsize, validation, seed, duplicates
        position = manifest.position.get("inputs")
        for i, stream in enumerate(inputs):
            stream.rng = np.random.default_rng([seed, i, 1])
            if position:
                stream.restore(position[i])
        self.opened: dict[tuple[int, int], _Documents] = {}
        self.used_up: list[Path] = []  # parts used up, deleted once the output holding them is durable

    def run(self, progress: Callable | None, view) -> None:
        """Append until every input has its share; ``view`` (a Progress) goes to ``progress`` after each window."""
        try:
            self._append_all(progress, view)
        finally:
            for docs in self.opened.values():
                docs.close()

    def _append_all(self, progress: Callable | None, view) -> None:
        stats, out = self.manifest.stats, self.out
        if self.validation is not None and self.validation[1] == 0 and out.val_end is None:
            out.end_validation(0)
        checkpointed = time.monotonic()
        while True:
            pieces, length, count = [], 0, 0
            while length < WINDOW_BYTES and count < WINDOW_DOCUMENTS:
                data = self._next()
                if data is None:
                    break
                if (stats.bytes or length) and self.separator:
                    pieces.append(self.separator)
                    length += len(self.separator)
                pieces.append(data)
                length += len(data)
                count += 1
                if self.validation is not None and out.val_end is None:
                    unit, amount = self.validation
                    written = stats.documents + count if unit == "documents" else (stats.bytes + length) // self.itemsize
                    if written >= amount:
                        out.end_validation(stats.bytes + length)
            if not pieces:
                return
            out.append(pieces, length)
            with signals.held():  # a checkpoint never sees the bytes without the inputs' state that led to them
                stats.bytes += length
                stats.documents = sum(s.documents for s in self.inputs)
                self.manifest.position = {"inputs": [s.state() for s in self.inputs]}
            view.documents, view.bytes = stats.documents, stats.bytes
            if progress:
                progress(view)
            if time.monotonic() - checkpointed > CHECKPOINT_SECONDS:
                done, self.used_up = self.used_up, []
                out.checkpoint(lambda done=done: [path.unlink(missing_ok=True) for path in done])
                checkpointed = time.monotonic()

    def _next(self) -> bytes | None:
        """The next document to append, counted to its input; None once every input has its share."""
        inputs = self.inputs
        while True:
            active = [i for i, s in enumerate(inputs) if not s.done]
            if not active:
                return None
            i = min(active, key=lambda i: (inputs[i].used / inputs[i].budget, i))
            stream = inputs[i]
            while len(stream.open) < OPEN_CHUNKS and stream.next < len(stream.chunks):
                if len(self._documents(i, stream.next).ends):
                    stream.open.append([stream.next, 0])
                else:
                    self.opened.pop((i, stream.next)).close()
                stream.next += 1
            if not stream.open:
                stream.done = True  # drawn to the end: its share is as near as the documents allow
                continue
            slot = int(stream.rng.integers(len(stream.open)))
            ordinal, taken = stream.open[slot]
            docs = self._documents(i, ordinal)
            duplicate = bool(docs.duplicate[taken])
            data = b"" if duplicate else docs.read(taken)
            stream.open[slot][1] += 1
            if stream.open[slot][1] == len(docs.ends):
                del stream.open[slot]
                self.opened.pop((i, ordinal)).close()
                self.used_up.append(docs.path)
            if duplicate:
                stream.duplicates += 1
                continue
            size = 1 if self.kind == "documents" else len(data) // self.itemsize
            if self.kind != "documents" and stream.used + size > stream.budget:
                # it would pass the share: passed over, and the share is full once MAX_MISSES in a row are
                stream.passed += 1
                stream.misses += 1
                stream.done = stream.misses >= MAX_MISSES
                continue
            stream.misses = 0
            stream.used += size
            stream.documents += 1
            stream.bytes += len(data)
            if self.kind == "documents" and stream.used >= stream.budget:
                stream.done = True
            return data

    def _documents(self, i: int, ordinal: int) -> _Documents:
        if (i, ordinal) not in self.opened:
            stream = self.inputs[i]
            chunk, info = stream.sample.store.load(stream.chunks[ordinal])
            removed = None if self.duplicates is None else clusters.removed_rows(self.duplicates, i, ordinal)
            self.opened[(i, ordinal)] = _Documents(stream.sample.store, chunk, info, stream.separator, self.seed, i,
                                                   removed)
        return self.opened[(i, ordinal)]
