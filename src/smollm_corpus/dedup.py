"""--dedup: near-duplicates removed within and across the datasets of one command (the Cosmopedia recipe).

Three passes, each resumable after ``kill -9``:

1. *sign*: each dataset in turn is fetched as usual (read, filter, hydrate, decontaminate,
   render, tokenize), but its parts are kept aside (:mod:`signed`) with the MinHash signature
   of each document's rendered text (:mod:`minhash`). Sources are read, and python-edu's
   contents fetched, once: the writing pass needs only what is kept.
2. *cluster*: the signatures of every dataset together give the duplicates (:mod:`clusters`):
   the first occurrence, in command order then dataset order, is kept. Each dataset's
   ``duplicates.jsonl`` lists its removed rows.
3. *write*: each dataset's kept parts are appended to its output without the duplicates, by
   the same appender as a plain fetch, so resumes, ``--max-bytes`` and token files work alike.

Work lives in ``OUT_DIR/.dedup/<key>/`` until every dataset of the command is complete, or until
an ``--overwrite`` replaces one of its datasets. Disk:
the parts (about the size of the outputs; each source file's parts are deleted once appended)
plus 1.2 KB per document (signatures and partitions).
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from array import array
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from . import clusters, plan, signed
from .downloads import Downloads, Remote
from .errors import OutputError, UsageError, writing
from .parts import PartInfo
from .run import DOWNLOADS_AHEAD, Interrupted, Run, result_of
from .stats import Stats
from .worker import Chunk, Job

log = logging.getLogger("smollm_corpus")

#: data per chunk while signing (whole row groups): the same whatever the workers, so that a resume
#: on other workers finds the chunks it stored
SIGN_CHUNK_BYTES = plan.MEMORY_CHUNK_BYTES
#: the method, as recorded in each manifest: datatrove's default MinhashConfig
METHOD = "minhash 5-gram 14x8 xxh64 seed 1"
#: fetch options that do not change the output, left out of the work's key
_NOT_IDENTITY = {"num_proc", "dask", "dask_wait", "workers", "s3_client", "overwrite", "progress", "s3_endpoint_url",
                 "region", "no_sign_request"}


#: in each fetch's work folder: the datasets it deduplicates, in order (JSON)
NAMES = "names.json"


class Pass:
    """One dataset's part in a deduplicated fetch; :func:`pipeline.fetch` runs the pass it is given."""

    def __init__(self, work: Path, index: int, names: Sequence[str], key: str) -> None:
        self.index, self.names, self.key = index, list(names), key
        self.store = signed.Store(work / f"{index:03d}")
        self.signing = True
        self.folder: Path | None = None  # the dataset's output folder, set by fetch
        self.duplicates: np.ndarray | None = None

    @property
    def identity(self) -> dict:
        """What the manifest records: a rerun with other datasets, or in another order, is another fetch."""
        return {"method": METHOD, "inputs": self.names, "input": self.index, "key": self.key}

    # ---- pass 1: sign
    def sign(self, run: Run, job: Job, pool, view, progress: Callable | None) -> Stats:
        """Render and sign every chunk of the run's source; the parts and signatures go to the store."""
        store, stats = self.store, Stats()
        for _, info in store.chunks():
            stats.add(info.stats)
        if store.marked("signed"):
            return stats
        job = replace(job, sign=True, max_bytes=None)
        shutil.rmtree(run.parts_dir, ignore_errors=True)
        with writing(run.folder):
            run.parts_dir.mkdir()
            run.staging_dir.mkdir(exist_ok=True)
        position, limit = {"file": 0, "row": 0}, run.limit
        while (rows := store.file_rows(position["file"])) is not None:  # files signed to the end are not read again
            position["file"] += 1
            limit = None if limit is None else max(limit - rows, 0)
        ahead = 1 if run.limit is not None else min(pool.size, DOWNLOADS_AHEAD)
        downloads = Downloads(run.staging_dir, ahead) if pool.local_files else Remote()
        chunks = plan.chunks(run.src, position, limit, run.spec.hydrated, downloads, ahead, SIGN_CHUNK_BYTES)
        window: deque[tuple[Chunk, Future | None]] = deque()
        _show(view, stats, progress)
        try:
            while True:
                while len(window) < pool.window:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    window.append((chunk, None if store.get(chunk) else pool.submit(job, chunk)))
                if not window:
                    break
                chunk, future = window.popleft()
                if future is not None:
                    info = result_of(future, pool, view, progress)
                    store.put(chunk, info, run.parts_dir / f"{chunk.index:06d}.part")
                    stats.add(info.stats)
                if chunk.ends_file:
                    store.mark_file(chunk.file.index, chunk.file_rows)
                    downloads.release(chunk.file)
                _show(view, stats, progress)
            pool.stop()
        except KeyboardInterrupt:
            pool.stop()
            raise Interrupted(f"interrupted while signing {run.spec.name}: the chunks signed are kept; "
                              "run the same command again to resume") from None
        except BaseException:
            pool.stop()
            raise
        finally:
            downloads.close()
        store.mark("signed")
        shutil.rmtree(run.parts_dir, ignore_errors=True)
        shutil.rmtree(run.staging_dir, ignore_errors=True)
        return stats

    # ---- pass 3: write
    def chunks(self, position: dict) -> Iterator[Chunk]:
        """The stored chunks from ``position`` on, numbered for a run.

        A position inside a chunk is where --max-bytes (or --max-tokens) cut the output: it is full.
        """
        at = (position["file"], position["row"])
        stored = [chunk for chunk, _ in self.store.chunks()]
        if any(chunk.file.index == at[0] and chunk.start < at[1] < chunk.stop for chunk in stored):
            return
        index = 0
        for chunk in stored:
            if (chunk.file.index, chunk.start) >= at:
                yield replace(chunk, index=index)
                index += 1

    def pool(self) -> "StoredParts":
        return StoredParts(self)

    def removed_rows(self, ordinal: int) -> np.ndarray:
        """Rows (within the chunk) of the duplicates among the stored chunk ``ordinal``."""
        return clusters.removed_rows(self.duplicates, self.index, ordinal)


class StoredParts:
    """The writing pass's pool: each chunk's part comes from the store, without its duplicates.

    It works at once in this process; ``local_files`` is False (no source file is read), and a
    source file's parts are deleted once the output holding them is durable (``release``).
    """

    size = 2
    window = 4
    in_memory = True
    local_files = False

    def __init__(self, dedup: Pass) -> None:
        import queue

        self.dedup = dedup
        self.queue = queue.SimpleQueue()
        self._ordinals = {key: n for n, key in enumerate(dedup.store.keys())}

    def submit(self, job: Job, chunk: Chunk) -> Future:
        future: Future = Future()
        store = self.dedup.store
        key = signed.key(chunk)
        _, info = store.load(key)
        removed = self.dedup.removed_rows(self._ordinals[key])
        future.set_result(without(info, store.part(chunk), removed, job.separator))
        return future

    def check(self) -> None:
        """Nothing can fail here but reading the store, which raises at once."""

    def stop(self) -> None:
        pass

    def __enter__(self) -> "StoredParts":
        return self

    def __exit__(self, *exc_info: object) -> None:
        pass

    # the run's "downloads": a file read to the end lets its parts go
    def start(self, files) -> None:
        pass

    def release(self, file) -> None:
        self.dedup.store.drop_parts(file.index)

    def close(self) -> None:
        pass


def without(info: PartInfo, data: bytes, removed: np.ndarray, separator: bytes) -> PartInfo:
    """The part ``info``/``data`` without the documents of the rows ``removed``; they are counted as ``duplicate``."""
    rows = np.asarray(info.rows, np.int64)
    drop = np.isin(rows, removed)
    if not drop.any():
        return replace(info, data=[data])
    ends = np.asarray(info.ends, np.int64)
    starts = np.concatenate([[0], ends[:-1] + len(separator)])
    view = memoryview(data)
    kept = np.nonzero(~drop)[0]
    joined = separator.join(view[starts[i]:ends[i]] for i in kept)
    lengths = ends[kept] - starts[kept] + len(separator)
    new_ends = np.cumsum(lengths) - len(separator)
    skipped = sorted([*info.skipped_rows, *((int(r), "duplicate", "") for r in rows[drop])])
    stats = Stats(info.stats.rows, len(kept), len(joined), Counter(reason for _, reason, _ in skipped))
    return PartInfo(stats, skipped, array("q", rows[kept].tolist()), array("q", new_ends.tolist()), data=[joined])


def _show(view, stats: Stats, progress) -> None:
    view.rows, view.documents, view.bytes, view.skipped = stats.rows, stats.documents, stats.bytes, stats.skipped
    if progress:
        progress(view)


def _drop_replaced(folder: Path, names: Sequence[str], key: str) -> None:
    """Delete the work of every other deduplicated fetch in ``folder`` that shares a dataset with ``names``.

    Called when those datasets are fetched again with --overwrite: a fetch that was abandoned for
    other options (or other datasets) could no longer finish, as its outputs are being replaced.
    The work of fetches of other datasets, and of a fetch that is running, is left alone.
    """
    from .pipeline import locked

    if not folder.is_dir():
        return
    for work in folder.iterdir():
        try:
            theirs = json.loads((work / NAMES).read_text())
        except (OSError, ValueError):
            continue  # not one of ours, or being set up
        if work.name == key or not set(theirs) & set(names):
            continue
        try:
            with locked(work):
                log.info("deleting %s: the work of a deduplicated fetch of %s, whose outputs are being replaced",
                         work, ", ".join(theirs))
                shutil.rmtree(work, ignore_errors=True)
        except OutputError:
            log.warning("left %s alone: a running fetch of %s is using it", work, ", ".join(theirs))


def _empty(work: Path) -> None:
    """Delete what ``work`` holds, but the lock this process holds on it."""
    for path in work.iterdir():
        if path.name == ".lock":
            continue
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def work_key(names: Sequence[str], options: dict) -> str:
    """The key of one deduplicated fetch: its datasets, in order, and every option that shapes the output."""
    shaping = {k: v for k, v in sorted(options.items()) if k not in _NOT_IDENTITY}
    text = json.dumps({"names": list(names), "options": shaping}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def fetch_all(names: Sequence[str], out_dir=".", *, dedup: bool = False, progress: Callable | None = None,
              **options) -> list:
    """Fetch each of ``names`` (see :func:`smollm_corpus.fetch`, whose options apply to every one).

    With ``dedup``, near-duplicates are removed within and across them (MinHash, datatrove's
    default config): a document is kept if no document before it, in ``names`` order then
    dataset order, is a near-duplicate of it. Each dataset's folder gets ``duplicates.jsonl``.

    Returns:
        A :class:`FetchResult` per name.
    """
    from .pipeline import fetch, locked

    if not dedup:
        return [fetch(name, out_dir, progress=progress, **options) for name in names]
    names = list(names)
    if len(set(names)) != len(names):
        raise UsageError("a dataset is named twice; --dedup keeps the first of its duplicates, name each dataset once")
    if len(names) > 255:
        raise UsageError("--dedup takes at most 255 datasets at once")
    if len(names) > 1 and (options.get("max_bytes") or options.get("max_tokens")):
        raise UsageError("--max-bytes and --max-tokens cut each output after its duplicates are known, so documents "
                         "left out could still remove later datasets' documents; with --dedup, use --limit")
    from . import minhash

    minhash.signer()  # a missing package is reported before anything starts
    key = work_key(names, options)
    folder = Path(out_dir) / ".dedup"
    work = folder / key
    if options.get("overwrite"):
        _drop_replaced(folder, names, key)
    with writing(work):
        work.mkdir(parents=True, exist_ok=True)
    with locked(work):  # held while the command runs: an --overwrite of another command leaves it alone
        with writing(work):
            if options.get("overwrite"):
                _empty(work)
            (work / NAMES).write_text(json.dumps(names) + "\n")
        passes = [Pass(work, i, names, key) for i in range(len(names))]
        started = time.monotonic()
        complete = []
        for name, p in zip(names, passes):
            result = fetch(name, out_dir, dedup=p, progress=progress, **options)
            complete.append(result.already_complete)
        results = []
        if not all(complete):
            duplicates = clusters.Clusters([p.store for p in passes], work / "clusters").run()
            for p, done in zip(passes, complete):
                p.signing, p.duplicates = False, duplicates
                if not done:
                    write_list(p, passes, names)
        options = {**options, "overwrite": False}
        for name, p in zip(names, passes):
            results.append(fetch(name, out_dir, dedup=p, progress=progress, **options))
        shutil.rmtree(work, ignore_errors=True)
    if not any(folder.iterdir()):
        folder.rmdir()
    log.debug("deduplicated fetch of %d datasets in %.1f s", len(names), time.monotonic() - started)
    return results


@dataclass
class _Place:
    name: str  # the source file
    start: int  # the chunk's first row in its file
    offset: int  # rows of the dataset before the file


def _places(store: signed.Store) -> list[_Place]:
    places, offsets, total = [], {}, 0
    for chunk, _ in store.chunks():
        if chunk.file.index not in offsets:
            offsets[chunk.file.index] = total
            total += chunk.file_rows
        places.append(_Place(chunk.file.name, chunk.start, offsets[chunk.file.index]))
    return places


def write_list(p: Pass, passes: list[Pass], names: list[str]) -> None:
    """``duplicates.jsonl`` in the dataset's folder: each removed row, the row it duplicates, and their similarity."""
    places = {}

    def where(ids: np.ndarray) -> list[dict]:
        inputs, ordinals, rows = clusters.split_id(ids)
        out = []
        for i, o, r in zip(inputs.tolist(), ordinals.tolist(), rows.tolist()):
            if i not in places:
                places[i] = _places(passes[i].store)
            place = places[i][o]
            out.append({"dataset": names[i], "row": place.offset + place.start + r, "file": place.name,
                        "file_row": place.start + r})
        return out

    duplicates = p.duplicates
    first = clusters.doc_id(p.index, 0, np.zeros(1, np.int64))[0]
    lo, hi = np.searchsorted(duplicates["removed"], [first, first + (np.uint64(1) << np.uint64(56))])
    mine = duplicates[lo:hi]
    path = p.folder / "duplicates.jsonl"
    tmp = path.with_name(path.name + ".tmp")
    with writing(path), open(tmp, "w") as f:
        step = 65536
        for a in range(0, len(mine), step):
            block = mine[a:a + step]
            for removed, kept, similarity in zip(where(block["removed"]), where(block["kept"]), block["similarity"].tolist()):
                del removed["dataset"]
                f.write(json.dumps({**removed, "duplicate_of": kept, "similarity": round(similarity, 3)}) + "\n")
    tmp.replace(path)
