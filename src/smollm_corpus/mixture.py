"""mix(): one shuffled, interleaved, budgeted training set from several datasets (the SmolLM mixture).

Two passes, each resumable after ``kill -9``:

1. *sample*: each input is fetched as usual (template, filters, python-edu's contents,
   decontamination, tokens), but only the row groups of a seeded draw, in the drawn order, until
   they hold the input's share of the budget; their pieces are kept aside (:mod:`signed`'s store).
   Every row group of the dataset is equally likely to be drawn, and only the drawn ones are read
   (a Hub file by range requests). A dataset used up before its share is refused, or with
   ``allow_repeat`` drawn again in a new order.
2. *interleave*: documents are taken one at a time from the input furthest behind its share
   (in documents, bytes or tokens, as the budget counts), so that every stretch of the output
   holds the inputs at their weights within a document or two. Within an input, each document
   comes from one of OPEN_CHUNKS drawn row groups open at once, chosen at random, and each row
   group gives its documents in a random order: neighbours rarely come from the same row group.
   Memory holds no document beyond the one being copied.

Every choice comes from generators seeded by ``seed`` and the input's place in the command, and
their state is saved at each checkpoint: the output depends only on the command and its seed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from . import clusters, formats, signals, signed, source
from .dedup import _wait
from .errors import OutputError, UsageError, writing
from .manifest import Manifest
from .output import Output
from .stats import Stats
from .subsets import MIX_PRESETS as PRESETS
from .worker import Chunk, Job

log = logging.getLogger("smollm_corpus")

#: drawn row groups of an input open at once, its documents taken from one of them at random
OPEN_CHUNKS = 8
#: documents (and their bytes, at most) gathered before they are appended together
WINDOW_DOCUMENTS, WINDOW_BYTES = 1024, 4 << 20
CHECKPOINT_SECONDS = 0.5
#: documents in a row that would take an input past its share of a token or byte budget, after which it is full
MAX_MISSES = 32
BUDGETS = ("tokens", "bytes", "documents")


def shares(total: int, weights: Sequence[float]) -> list[int]:
    """``total`` split in proportion to ``weights``, in whole units that add up to ``total`` (largest remainders)."""
    exact = [total * w / sum(weights) for w in weights]
    whole = [int(x) for x in exact]
    for i in sorted(range(len(exact)), key=lambda i: (whole[i] - exact[i], i))[: total - sum(whole)]:
        whole[i] += 1
    return whole


def parse_inputs(given: Sequence[str], preset: str | None) -> list[tuple[str, float]]:
    """``NAME=WEIGHT`` arguments (or a preset) as (name, weight) pairs, in order."""
    if preset is not None:
        if given:
            raise UsageError("give either --preset or NAME=WEIGHT inputs, not both")
        if preset not in PRESETS:
            raise UsageError(f"unknown preset {preset!r}; choose one of: {', '.join(PRESETS)}")
        return list(PRESETS[preset].items())
    inputs = []
    for arg in given:
        name, sep, weight = arg.rpartition("=")
        try:
            value = float(weight)
        except ValueError:
            value = -1.0
        if not sep or not name or not value > 0:
            raise UsageError(f"{arg!r}: write each input as NAME=WEIGHT with a weight above 0, as in cosmopedia-v2=0.15")
        inputs.append((name, value))
    if not inputs:
        raise UsageError("name the inputs as NAME=WEIGHT (for example fineweb-edu-dedup=0.7 cosmopedia-v2=0.3), "
                         "or give --preset smollm")
    if len({n for n, _ in inputs}) != len(inputs):
        raise UsageError("an input is named twice; give each dataset once, with its whole weight")
    return inputs


class Sample:
    """One input's sampling pass; :func:`pipeline.fetch` runs it in place of writing an output."""

    def __init__(self, name: str, index: int, seed: int, kind: str, budget: int, allow_repeat: bool,
                 sign: bool = False) -> None:
        self.name, self.index, self.seed, self.kind, self.budget = name, index, seed, kind, budget
        self.allow_repeat, self.sign = allow_repeat, sign
        #: how much to draw beyond the share: with --dedup, what the duplicates found so far took away
        self.extra = 0
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
        target = self.budget + self.extra
        if done.exists() and json.loads(done.read_text())["target"] >= target:
            return stats
        groups = _row_groups(run.src, pool.local_files)
        rows = sum(g[3] - g[2] for g in groups)
        if self.kind == "documents" and rows < self.budget and not self.allow_repeat:
            raise UsageError(f"{self.name} has {rows:,} rows, fewer than the {self.budget:,} documents of its share; "
                             "lower its weight or the budget, or add --allow-repeat to draw it again")
        job = replace(job, max_bytes=None, sign=self.sign)
        shutil.rmtree(run.parts_dir, ignore_errors=True)
        with writing(run.folder):
            run.parts_dir.mkdir()
        drawn = _draw(groups, self.seed, self.index)
        window: deque[tuple[Chunk, Future | None]] = deque()
        total, used, largest, processed = 0, 0, 0, 0
        try:
            # enough for the share even if the largest document drawn is passed over at its end
            while total < target + largest:
                # chunks in flight are drawn only while what they are likely to hold is still wanted
                average = total / processed if processed else None
                while len(window) < (pool.size if average is None else 2 * pool.size):
                    if average is not None and total + average * len(window) >= target + largest:
                        break
                    chunk = next(drawn)
                    if chunk.index >= len(groups) and not self.allow_repeat:
                        break  # every row group drawn once
                    window.append((chunk, None if store.get(chunk) else pool.submit(job, chunk)))
                if not window and total >= target + largest:
                    break  # every row group drawn, the last beyond the budget
                if not window:
                    raise UsageError(
                        f"{self.name} holds {total:,} {self.kind} in all, less than the {self.budget:,} of its share; "
                        "lower its weight or the budget, or add --allow-repeat to draw it again")
                chunk, future = window.popleft()
                if future is not None:
                    info = _wait(future, pool, view, progress)
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


def _row_groups(src: source.Source, local: bool) -> list[tuple]:
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


def _draw(groups: list[tuple], seed: int, index: int):
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


@dataclass
class _Input:
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


def interleave(inputs: list[_Input], out, manifest: Manifest, separator: bytes, kind: str, itemsize: int,
               validation: tuple[str, int] | None, seed: int, progress: Callable | None, view,
               duplicates: np.ndarray | None = None) -> None:
    """Append documents to ``out`` from the inputs, each from the one furthest behind its share."""
    position = manifest.position.get("inputs")
    for i, stream in enumerate(inputs):
        stream.rng = np.random.default_rng([seed, i, 1])
        if position:
            stream.restore(position[i])
    opened: dict[tuple[int, int], _Documents] = {}
    exhausted: list[_Documents] = []

    def documents(i: int, ordinal: int) -> _Documents:
        if (i, ordinal) not in opened:
            chunk, info = inputs[i].sample.store.load(inputs[i].chunks[ordinal])
            removed = None if duplicates is None else clusters.removed_rows(duplicates, i, ordinal)
            opened[(i, ordinal)] = _Documents(inputs[i].sample.store, chunk, info, inputs[i].separator, seed, i, removed)
        return opened[(i, ordinal)]

    def size(data: bytes) -> int:
        return 1 if kind == "documents" else len(data) // itemsize

    checkpointed = time.monotonic()
    stats = manifest.stats
    if validation is not None and validation[1] == 0 and out.val_end is None:
        out.end_validation(0)
    while True:
        pieces, length, count = [], 0, 0
        while length < WINDOW_BYTES and count < WINDOW_DOCUMENTS:
            active = [i for i, s in enumerate(inputs) if not s.done]
            if not active:
                break
            i = min(active, key=lambda i: (inputs[i].used / inputs[i].budget, i))
            stream = inputs[i]
            while len(stream.open) < OPEN_CHUNKS and stream.next < len(stream.chunks):
                if len(documents(i, stream.next).ends):
                    stream.open.append([stream.next, 0])
                else:
                    opened.pop((i, stream.next)).close()
                stream.next += 1
            if not stream.open:
                stream.done = True  # drawn to the end: its budget is as near as the documents allow
                continue
            slot = int(stream.rng.integers(len(stream.open)))
            ordinal, taken = stream.open[slot]
            docs = documents(i, ordinal)
            duplicate = bool(docs.duplicate[taken])
            data = b"" if duplicate else docs.read(taken)
            stream.open[slot][1] += 1
            if stream.open[slot][1] == len(docs.ends):
                del stream.open[slot]
                exhausted.append(opened.pop((i, ordinal)))
            if duplicate:
                stream.duplicates += 1
                continue
            if kind != "documents" and stream.used + size(data) > stream.budget:
                # it would pass the share: passed over, and the share is full once MAX_MISSES in a row are
                stream.passed += 1
                stream.misses += 1
                stream.done = stream.misses >= MAX_MISSES
                continue
            stream.misses = 0
            stream.used += size(data)
            stream.documents += 1
            stream.bytes += len(data)
            if stats.bytes + length and separator:
                pieces.append(separator)
                length += len(separator)
            pieces.append(data)
            length += len(data)
            count += 1
            if kind == "documents" and stream.used >= stream.budget:
                stream.done = True
            if validation is not None and out.val_end is None:
                unit, amount = validation
                written = stats.documents + count if unit == "documents" else (stats.bytes + length) // itemsize
                if written >= amount:
                    out.end_validation(stats.bytes + length)
        if not pieces:
            break
        out.append(pieces, length)
        with signals.held():
            stats.bytes += length
            stats.documents = sum(s.documents for s in inputs)
            manifest.position = {"inputs": [s.state() for s in inputs]}
        view.documents, view.bytes = stats.documents, stats.bytes
        if progress:
            progress(view)
        if time.monotonic() - checkpointed > CHECKPOINT_SECONDS:
            done, exhausted = exhausted, []
            out.checkpoint(lambda done=done: [_drop(d) for d in done])
            checkpointed = time.monotonic()
    for docs in [*opened.values(), *exhausted]:
        docs.close()


def _drop(docs: _Documents) -> None:
    docs.close()
    docs.path.unlink(missing_ok=True)


@dataclass
class MixResult:
    output: Path
    manifest: Path
    stats: Stats
    already_complete: bool
    seconds: float
    inputs: list[dict]  # per input: name, weight, intended and realised share, documents, bytes, tokens, where from
    token_bytes: int | None = None

    @property
    def tokens(self) -> int | None:
        return None if self.token_bytes is None else self.stats.bytes // self.token_bytes


def mix(
    inputs: Sequence[tuple[str, float]] | Mapping[str, float],
    out_dir: str | os.PathLike,
    *,
    tokens: int | None = None,
    bytes: int | None = None,  # noqa: A002 - the option's name
    documents: int | None = None,
    seed: int = 0,
    allow_repeat: bool = False,
    format: str = "txt",  # noqa: A002
    template: str | None = None,
    separator: str | None = None,
    tokenizer: str | None = None,
    eot: str | None = None,
    val_tokens: int | None = None,
    shard_tokens: int | None = None,
    overwrite: bool = False,
    progress: Callable | None = None,
    **fetch_options,
) -> MixResult:
    """Write one shuffled, interleaved mixture of ``inputs`` (name -> weight) into ``out_dir``.

    Args:
        inputs: names ``fetch`` accepts, each with a weight (normalised).
        out_dir: the mixture's folder: ``input.txt`` / ``input.jsonl``, or token files, and ``manifest.json``.
        tokens, bytes, documents: the budget (one of them): each input gets its weight of it, within a document.
        seed: every draw and every choice of order comes from it.
        allow_repeat: an input too small for its share is drawn again (in a new order) rather than refused.
        format, template, separator, tokenizer, eot, val_tokens, shard_tokens: as for :func:`fetch`.
        fetch_options: the rest of :func:`fetch`'s options, applied to every input (source, filters, ...).

    Raises:
        UsageError: bad inputs or budget, or an input too small for its share without ``allow_repeat``.
    """
    from .pipeline import Progress, fetch

    started = time.monotonic()
    pairs = list(inputs.items()) if isinstance(inputs, Mapping) else [tuple(p) for p in inputs]
    given = [(k, v) for k, v in (("tokens", tokens), ("bytes", bytes), ("documents", documents)) if v is not None]
    if len(given) != 1:
        raise UsageError("give one budget: --tokens N, --bytes N or --documents N")
    kind, total = given[0]
    if total <= 0:
        raise UsageError(f"--{kind} must be more than 0")
    token_out = formats.token_output(format, tokenizer, eot, val_tokens, shard_tokens, None)
    if kind == "tokens" and token_out is None:
        raise UsageError("--tokens counts the tokens of a token format: add --format bin or nanogpt (or use --bytes)")
    if kind == "bytes" and token_out is not None:
        raise UsageError(f"--bytes counts text; with --format {format} give --tokens")
    for forbidden in ("limit", "max_bytes", "max_tokens"):
        if fetch_options.get(forbidden):
            raise UsageError(f"--{forbidden.replace('_', '-')} does not apply to mix: the budget decides what is taken")
    dedup = bool(fetch_options.get("dedup"))
    if dedup and allow_repeat:
        raise UsageError("--allow-repeat draws documents again, which --dedup would remove: give one of them")
    fetch_options = {k: v for k, v in fetch_options.items() if k not in ("limit", "max_bytes", "max_tokens", "dedup")}
    budgets = shares(total, [w for _, w in pairs])
    names = [n for n, _ in pairs]
    folder = Path(out_dir)
    options = {
        "subset": "mix", "format": format, "template": template, "separator": separator,
        "source": fetch_options.get("source_repo"), "revision": fetch_options.get("revision"),
        "where": list(fetch_options.get("where") or ()) or None,
        "decontaminate": bool(fetch_options.get("decontaminate")) or None,
        "mix": {"inputs": [[n, w] for n, w in pairs], "budget": [kind, total], "seed": seed, "allow_repeat": allow_repeat,
                "dedup": dedup},
        **(token_out.identity if token_out else {}),
    }
    jsonl = format == "jsonl"
    output = folder if token_out else folder / ("input.jsonl" if jsonl else "input.txt")
    manifest_path = folder / "manifest.json"
    partial = output.with_name(output.name + ".incomplete")
    previous = None if overwrite else Manifest.load(manifest_path)
    if previous is not None:
        changed = previous.differences(options)
        if changed:
            raise OutputError(f"{folder} holds a mix made with other options (differing: {', '.join(changed)}); "
                              "add --overwrite to replace it, or choose another --out-dir")
        if previous.complete:
            return MixResult(output, manifest_path, previous.stats, True, time.monotonic() - started,
                             json.loads(manifest_path.read_text()).get("inputs", []),
                             token_out.itemsize if token_out else None)
    with writing(folder):
        folder.mkdir(parents=True, exist_ok=True)
    manifest = previous
    if manifest is None:  # recorded at once: a rerun with other options is refused from the start
        _clear(folder, manifest_path)
        manifest = Manifest(options)
        manifest.position = {}
        with writing(manifest_path):
            manifest.save(manifest_path)
    key = hashlib.sha256(json.dumps(options, sort_keys=True, default=str).encode()).hexdigest()[:16]
    work = folder / ".mix"
    for other in (work.iterdir() if work.exists() else ()):
        if other.name != key:  # the samples of a mix with other options: never used again
            shutil.rmtree(other, ignore_errors=True)
    work = work / key
    samples = [Sample(n, i, seed, kind, b, allow_repeat, dedup) for i, (n, b) in enumerate(zip(names, budgets))]

    def draw(name: str, sample: Sample) -> None:
        fetch(name, work, format=format, template=template, separator=separator, tokenizer=tokenizer, eot=eot,
              val_tokens=val_tokens, shard_tokens=shard_tokens, progress=progress, sample=sample, **fetch_options)

    for name, sample in zip(names, samples):
        draw(name, sample)
    duplicates = None
    if dedup:
        duplicates = _deduplicate(samples, work / "clusters", draw)
        _write_duplicates(folder / "duplicates.jsonl", samples, duplicates)
    streams = []
    for sample, budget in zip(samples, budgets):
        chunks, groups, part_separator = sample.drawn()
        streams.append(_Input(sample, chunks, budget, len(part_separator)))
        sample.row_groups = groups
    sep = _separator(format, template, separator, names)
    itemsize = token_out.itemsize if token_out else 1
    validation = None
    if token_out:  # validation: the first whole documents of the mix holding val_tokens, by default 1% of the budget
        if token_out.val_tokens is not None:
            validation = ("tokens", token_out.val_tokens)
        elif kind == "tokens":
            validation = ("tokens", min(formats.DEFAULT_VAL_TOKENS, total // 100))
        else:
            validation = ("documents", max(1, total // 100))
        from . import shards

        out = shards.TokenFiles(folder, token_out.layout("mix"), manifest, manifest_path, token_out.tokenizer.vocab_size)
    else:
        out = Output(partial, manifest, manifest_path)
    view = Progress("mix (interleaving)", None)
    try:
        interleave(streams, out, manifest, sep, kind, itemsize, validation, seed, progress, view, duplicates)
        summary = _summary(streams, pairs, kind, itemsize)
        manifest.details = {"inputs": summary}
        if token_out:
            out.finish(token_out.meta)
        else:
            out.finish(output)
    except KeyboardInterrupt:
        out.checkpoint(wait=True)
        out.close()
        from .run import Interrupted

        raise Interrupted(f"interrupted: {manifest.stats.documents:,} documents of the mix are safely written; "
                          "run the same command again to resume") from None
    except BaseException:
        out.close()
        raise
    shutil.rmtree(folder / ".mix", ignore_errors=True)
    return MixResult(output, manifest_path, manifest.stats, False, time.monotonic() - started, summary,
                     token_out.itemsize if token_out else None)


#: rounds of drawing more for the documents near-duplicates took away, at most
DEDUP_ROUNDS = 8


def _deduplicate(samples: list[Sample], folder: Path, draw: Callable[[str, Sample], None]) -> np.ndarray:
    """The near-duplicates among every input's drawn documents (the first in input, then draw, order is kept).

    An input whose drawn documents no longer fill its share without them draws more, and the
    clusters are found again, until each share is filled (or after DEDUP_ROUNDS rounds).
    """
    for _ in range(DEDUP_ROUNDS):
        duplicates = clusters.Clusters([s.store for s in samples], folder).run()
        short = []
        for i, sample in enumerate(samples):
            keys, _, separator = sample.drawn()
            usable, largest = 0, 0
            for ordinal, key in enumerate(keys):
                amount, most = sample.amount(sample.store.load(key)[1], len(separator),
                                             clusters.removed_rows(duplicates, i, ordinal))
                usable, largest = usable + amount, max(largest, most)
            if usable < sample.budget + largest:
                sample.extra += sample.budget + largest - usable
                short.append(sample)
        if not short:
            return duplicates
        shutil.rmtree(folder, ignore_errors=True)  # before drawing more: these clusters are out of date
        for sample in short:
            draw(sample.name, sample)
    log.warning("near-duplicates still leave some inputs short of their share after %d rounds of drawing more",
                DEDUP_ROUNDS)
    return clusters.Clusters([s.store for s in samples], folder).run()


def _write_duplicates(path: Path, samples: list[Sample], duplicates: np.ndarray) -> None:
    """Each near-duplicate among the drawn documents, the one it duplicates, and their similarity."""
    keys = [s.drawn()[0] for s in samples]

    def where(doc: int) -> dict:
        i, ordinal, row = (int(x[0]) for x in clusters.split_id(np.array([doc], np.uint64)))
        chunk, _ = samples[i].store.load(keys[i][ordinal])
        return {"dataset": samples[i].name, "file": chunk.file.name, "file_row": chunk.start + row}

    tmp = path.with_name(path.name + ".tmp")
    with writing(path), open(tmp, "w") as f:
        for removed, kept, similarity in zip(duplicates["removed"].tolist(), duplicates["kept"].tolist(),
                                             duplicates["similarity"].tolist()):
            f.write(json.dumps({**where(removed), "duplicate_of": where(kept), "similarity": round(similarity, 3)}) + "\n")
    os.replace(tmp, path)


def _separator(format: str, template: str | None, separator: str | None, names: list[str]) -> bytes:
    if format != "txt":
        return b""
    from . import template as templates
    from .subsets import get_subset

    if separator is not None:
        return templates.unescape(separator).encode()
    seps = {get_subset(n).presets.get(template or "text").separator if get_subset(n).presets.get(template or "text")
            else "\n\n" for n in names}
    return (seps.pop() if len(seps) == 1 else "\n\n").encode()


def _summary(streams: list[_Input], pairs, kind: str, itemsize: int) -> list[dict]:
    weights = sum(w for _, w in pairs)
    total_used = sum(s.used for s in streams) or 1
    out = []
    for stream, (name, weight) in zip(streams, pairs):
        store = stream.sample.store
        drawn = [[c.file.name, c.start, c.stop] for c, _ in map(store.load, stream.chunks)]
        out.append({
            "name": name, "weight": weight, "intended_share": weight / weights, "realised_share": stream.used / total_used,
            "budget": stream.budget, kind: stream.used, "documents": stream.documents, "bytes": stream.bytes,
            **({"tokens": stream.bytes // itemsize} if kind == "tokens" else {}),
            "passed_over": stream.passed, "duplicates": stream.duplicates,
            "draws": 1 + (int(stream.chunks[-1]) // stream.sample.row_groups if stream.chunks else 0),
            "row_groups": drawn,
        })
    return out


def _clear(folder: Path, manifest_path: Path) -> None:
    from .pipeline import _remove_outputs

    _remove_outputs(folder, manifest_path)
