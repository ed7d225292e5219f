"""A mix's sampling pass: one input's row groups drawn in a seeded order and rendered until they hold its share.

Every row group of the dataset is equally likely to be drawn, and only the drawn ones are read
(a Hub file by range requests). The pieces they render are kept aside (:mod:`signed`'s store),
with their documents' signatures where near-duplicates are to be removed. A dataset used up
before its share is refused, or, where repeats are allowed, drawn again in a new order.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path

import numpy as np

from . import signed, source
from .errors import UsageError, writing
from .run import result_of
from .stats import Stats
from .worker import Chunk, Job


class Sample:
    """One input's sampling pass; :func:`pipeline.fetch` runs it in place of writing an output."""

    def __init__(self, name: str, index: int, seed: int, kind: str, budget: int, allow_repeat: bool,
                 sign: bool = False) -> None:
        self.name, self.index, self.seed, self.kind, self.budget = name, index, seed, kind, budget
        self.allow_repeat, self.sign = allow_repeat, sign
        #: how much to draw beyond the share: with --dedup, what the duplicates found so far took away
        self.extra = 0
        self.row_groups = 0  # in the dataset, once drawn
        self.folder: Path | None = None  # set by fetch
        self.itemsize = 1

    @property
    def identity(self) -> dict:
        return {"seed": self.seed, "input": self.index, "budget": [self.kind, self.budget], "repeat": self.allow_repeat,
                "dedup": self.sign}

    @property
    def store(self) -> signed.Store:
        return signed.Store(self.folder / ".sample", key=lambda chunk: f"{chunk.index:08d}")

    def amount(self, info, separator: int, removed: np.ndarray | None = None) -> tuple[int, int]:
        """How much of the budget a stored chunk's documents (but the ``removed`` rows) can fill, and the largest.

        A document larger than the whole share can never be taken, and does not count.
        """
        keep = np.ones(len(info.ends), bool) if removed is None else ~np.isin(np.asarray(info.rows, np.int64), removed)
        if self.kind == "documents":
            return int(keep.sum()), 1
        ends = np.asarray(info.ends, np.int64)
        sizes = ((np.diff(np.concatenate([[-separator], ends])) - separator) // self.itemsize)[keep]
        sizes = sizes[sizes <= self.budget]
        return int(sizes.sum()), int(sizes.max()) if len(sizes) else 0

    def run(self, run, job: Job, pool, view, progress: Callable | None) -> Stats:
        """Render drawn row groups, in the drawn order, until they hold the budget; keep them in the store."""
        store, stats = self.store, Stats()
        if run.tokens:
            self.itemsize = run.tokens.itemsize
        done = self.folder / ".sample" / "drawn.json"
        if done.exists():
            recorded = json.loads(done.read_text())
            for key in store.keys()[recorded["chunks"]:]:  # drawn ahead by a run stopped before its end
                store.drop(store.load(key)[0])
            # a rerun takes up the extra a previous run had reached (with --dedup, after rounds of drawing more)
            self.extra = max(self.extra, recorded["target"] - self.budget)
            if recorded["target"] >= self.budget + self.extra:
                return stats
        target = self.budget + self.extra
        groups = row_groups(run.src, pool.local_files)
        if not groups:
            raise UsageError(f"{self.name} has no rows to draw from; leave it out of the mix")
        rows = sum(g[3] - g[2] for g in groups)
        if self.kind == "documents" and rows < self.budget and not self.allow_repeat:
            raise UsageError(f"{self.name} has {rows:,} rows, fewer than the {self.budget:,} documents of its share; "
                             "lower its weight or the budget, or add --allow-repeat to draw it again")
        job = replace(job, max_bytes=None, sign=self.sign)
        shutil.rmtree(run.parts_dir, ignore_errors=True)
        with writing(run.folder):
            run.parts_dir.mkdir()
        drawn = draw(groups, self.seed, self.index)
        window: deque[tuple[Chunk, Future | None]] = deque()
        total, used, largest, processed = 0, 0, 0, 0
        try:
            # enough for the share even if the largest document drawn is passed over at its end
            while total < target + largest:
                # chunks in flight are drawn only while what they are likely to hold is still wanted
                average = total / processed if processed else None
                while len(window) < (pool.size if average is None else pool.window):
                    if average is not None and total + average * len(window) >= target + largest:
                        break
                    chunk = next(drawn)
                    if chunk.index >= len(groups) and not self.allow_repeat:
                        break  # every row group drawn once
                    if chunk.index >= len(groups) and processed >= len(groups) and total == 0:
                        raise UsageError(f"{self.name} has no document that fits its share (after filters, if any): "
                                         "drawing it again would give none either")
                    window.append((chunk, None if store.get(chunk) else pool.submit(job, chunk)))
                if not window and total >= target + largest:
                    break  # every row group drawn, the last beyond the budget
                if not window:
                    raise UsageError(
                        f"{self.name} holds {total:,} {self.kind} in all, less than the {self.budget:,} of its share; "
                        "lower its weight or the budget, or add --allow-repeat to draw it again")
                chunk, future = window.popleft()
                if future is not None:
                    info = result_of(future, pool, view, progress)
                    store.put(chunk, info, run.parts_dir / f"{chunk.index:06d}.part")
                else:
                    info = store.get(chunk)
                amount, most = self.amount(info, len(run.separator))
                total, largest, processed = total + amount, max(largest, most), processed + 1
                used = chunk.index + 1
                stats.add(info.stats)
                view.rows, view.documents, view.bytes, view.skipped = stats.rows, stats.documents, stats.bytes, stats.skipped
                if progress:
                    progress(view)
            pool.stop()
        except BaseException:
            pool.stop()
            raise
        for chunk, _ in window:  # drawn ahead, not needed
            store.drop(chunk)
        for key in store.keys()[used:]:  # drawn ahead by an earlier run with more workers
            store.drop(store.load(key)[0])
        with writing(done):
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps({"chunks": used, "row_groups": len(groups), "separator": run.separator.decode(),
                                       "target": target}))
            os.replace(tmp, done)
        shutil.rmtree(run.parts_dir, ignore_errors=True)
        return stats

    def drawn(self) -> tuple[list[str], int, bytes]:
        """The stored chunks drawn, in order; the row groups of the dataset; the parts' separator."""
        recorded = json.loads((self.folder / ".sample" / "drawn.json").read_text())
        return self.store.keys()[: recorded["chunks"]], recorded["row_groups"], recorded["separator"].encode()


def row_groups(src: source.Source, local: bool) -> list[tuple]:
    """(file, location, first row, end row, rows of the file) of every non-empty row group, in dataset order."""
    groups = []
    for file in src.files:
        # this machine's workers read a copy in the Hub cache; others (Dask's) read from where the file is
        location = (source.local_copy(file.location) if local else None) or file.location
        meta = source.read_metadata(file, location)
        start = 0
        for g in range(meta.num_row_groups):
            n = meta.row_group(g).num_rows
            if n:
                groups.append((file, location, start, start + n, meta.num_rows))
            start += n
    return groups


def draw(groups: list[tuple], seed: int, index: int):
    """Chunks of the drawn row groups, in the drawn order, forever: a new order each time all are drawn.

    A chunk's ``index`` is its place in the draw: its draw is ``index // len(groups)``.
    """
    ordinal, epoch = 0, 0
    while True:
        order = np.random.default_rng([seed, index, epoch]).permutation(len(groups))
        for g in order.tolist():
            yield Chunk(ordinal, *groups[g])
            ordinal += 1
        epoch += 1
