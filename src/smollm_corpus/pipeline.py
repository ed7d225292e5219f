"""fetch(): one subset from the source to ``input.txt``, in dataset order, resumable at any moment.

Stages: the source's files are brought to disk a few ahead and cut into chunks (whole row
groups, 8 to 32 MB, for the text subsets; 4,096 rows for python-edu); workers (threads where
the work is all Arrow's, else processes) turn each chunk into a part (read rows, fetch contents,
render); this process appends finished parts to the output strictly in chunk order and
checkpoints twice a second (fsync, then the manifest). Output bytes therefore never depend on ``num_proc`` or on where a
previous run stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import queue as queue_module
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from . import parts, plan, signals, source, template as templates
from .errors import OutputError, SmollmCorpusError, UsageError, writing
from .manifest import Manifest
from .output import Output
from .stats import Stats
from .subsets import DEFAULT_SOURCE, Subset, get_subset
from .worker import Chunk, Job, WorkerPool, arrow_only

log = logging.getLogger("smollm_corpus")

#: S3 requests in flight per worker process by default: at 30 ms per request (S3 in-region) that is
#: about 1,000 requests/s, as much as one core could do with boto3 sending them (about 1 ms of CPU each)
WORKERS_PER_PROCESS = 32
#: source files downloaded ahead of the one being read, at most
DOWNLOADS_AHEAD = 4
#: seconds between checkpoints (fsync of the output, then the manifest)
CHECKPOINT_SECONDS = 0.5
TERMS = (
    "python-edu contents come from Software Heritage. Its terms ask that bulk downloads be agreed "
    "with Software Heritage and INRIA first: write to datasets@softwareheritage.org."
)


class Interrupted(SmollmCorpusError):
    """The run was stopped by a signal; what was appended is kept."""

    exit_code = 130


@dataclass
class Progress:
    """How far a fetch has got, counting work still in the workers' hands (the bar's view)."""

    subset: str
    total_rows: int | None
    rows: int = 0
    documents: int = 0
    bytes: int = 0
    skipped: Counter | None = None


@dataclass
class FetchResult:
    subset: str
    output: Path
    manifest: Path
    stats: Stats
    already_complete: bool
    seconds: float


def fetch(
    subset: str,
    out_dir: str | os.PathLike = ".",
    *,
    source_repo: str = DEFAULT_SOURCE,
    revision: str | None = None,
    num_proc: int | None = None,
    limit: int | None = None,
    max_bytes: int | None = None,
    template: str | None = None,
    separator: str | None = None,
    format: str = "txt",
    overwrite: bool = False,
    bucket: str = "softwareheritage",
    s3_endpoint_url: str | None = None,
    region: str = "us-east-1",
    no_sign_request: bool = False,
    s3_client: str = "urllib3",
    workers: int | None = None,
    progress: Callable[[Progress], None] | None = None,
) -> FetchResult:
    """Fetch ``subset`` into ``out_dir/<subset>/input.txt`` (or ``input.jsonl``), resuming a previous run.

    Args:
        subset: one of :data:`smollm_corpus.SUBSETS`.
        out_dir: the folder that receives ``<subset>/``.
        source_repo: a Hub dataset id, or a local folder laid out like the Hub repository.
        revision: a Hub branch, tag or commit.
        num_proc: worker processes (default: one per CPU).
        limit: only the first ``limit`` rows of the subset, in dataset order.
        max_bytes: stop at the last whole document before the output passes this size.
        template: a preset name (``text``, ``nanogpt``) or a string with ``{column}`` placeholders;
            ``\\n``, ``\\t`` and ``\\\\`` are interpreted.
        separator: between documents (default: the preset's, ``\\n\\n`` for custom templates); txt only.
        format: ``txt`` or ``jsonl`` (one object per document with every column, ``text`` rendered).
        overwrite: discard a previous output of this subset, complete or not.
        bucket, s3_endpoint_url, region, no_sign_request, s3_client, workers: where and how python-edu
            contents are fetched; ``s3_client`` is ``urllib3`` (boto3's requests, sent by a lighter
            client) or ``boto3``; ``workers`` bounds the requests in flight over all processes
            (default: 32 per process).
        progress: called often with the run's :class:`Progress`.

    Returns:
        The run's counters and paths; ``already_complete`` when a previous run had finished.

    Raises:
        UsageError: bad options, or a template naming no column (before anything is written).
        SourceError: the source cannot be read.
        OutputError: the output folder cannot be written, or holds a different fetch.
        Interrupted: stopped by Ctrl-C or SIGTERM; rerunning resumes.
    """
    started = time.monotonic()
    spec = get_subset(subset)
    num_proc = _check_options(num_proc, limit, max_bytes, format, separator, workers, s3_endpoint_url, s3_client)
    jsonl = format == "jsonl"
    preset = spec.presets.get(template or "text")
    template_text = preset.template if preset else templates.unescape(template or "")
    sep = "" if jsonl else (templates.unescape(separator) if separator is not None else preset.separator if preset else "\n\n")
    options = {
        "subset": subset,
        "source": source_repo,
        "revision": revision,
        "template": template_text,
        "strip": bool(preset and preset.strip),
        "separator": sep,
        "format": format,
        "limit": limit,
        "max_bytes": max_bytes,
        "bucket": bucket if spec.hydrated else None,
    }
    folder = Path(out_dir) / subset
    output = folder / ("input.jsonl" if jsonl else "input.txt")
    manifest_path = folder / "manifest.json"
    partial = output.with_name(output.name + ".incomplete")

    previous = None if overwrite else Manifest.load(manifest_path)
    changed = previous.differences(options) if previous is not None else []
    if previous is not None and previous.complete and not changed and (output.exists() or partial.exists()):
        with _locked(folder):
            if not output.exists():
                os.replace(partial, output)  # a run that stopped between its last two steps
        return FetchResult(subset, output, manifest_path, previous.stats, True, time.monotonic() - started)

    if spec.hydrated and workers is not None:
        num_proc = min(num_proc, workers)  # each process keeps at least one request in flight
    threads = arrow_only(templates.parse(template_text, strip=bool(preset and preset.strip)), jsonl, max_bytes, spec.hydrated)
    with WorkerPool(num_proc, threads) as pool:  # worker processes start while the source is resolved
        pinned = previous.commit if previous is not None else None  # a resume reads the same commit
        src = source.resolve(source_repo, subset, pinned or revision)
        schema = src.schema
        if spec.hydrated and "text" not in schema.names:
            schema = schema.append(pa.field("text", pa.string()))
        parsed, _ = templates.resolve(spec, template, schema)
        if changed:
            raise OutputError(
                f"{folder} holds a fetch made with other options (differing: {', '.join(changed)}); "
                "add --overwrite to replace it, or choose another --out-dir"
            )
        if jsonl:
            columns = tuple(n for n in schema.names if n != "text" or not spec.hydrated)
        elif spec.hydrated:
            columns = tuple(dict.fromkeys(["blob_id", *(c for c in parsed.columns if c != "text")]))
        else:
            columns = tuple(parsed.columns)
        s3 = _s3_options(bucket, s3_endpoint_url, region, no_sign_request, s3_client) if spec.hydrated else None
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise OutputError(f"cannot create the output folder {folder}: {e.strerror}; choose another --out-dir") from e
        with _locked(folder):
            manifest = None if overwrite else Manifest.load(manifest_path)
            if manifest is None:
                _clear(folder, manifest_path)
                manifest = Manifest(options, commit=src.commit)
            run = _Run(spec, src, manifest, manifest_path, folder, output, partial, limit, max_bytes, sep.encode())
            requests = WORKERS_PER_PROCESS if workers is None else workers // pool.size  # never more than asked
            job = Job(run.parts_dir, parsed, jsonl, sep.encode(), max_bytes, columns, s3, requests, in_memory=pool.threads)
            total = src.num_rows if limit is None else limit if src.num_rows is None else min(limit, src.num_rows)
            stats = run.execute(job, pool, Progress(subset, total), progress)
    return FetchResult(subset, output, manifest_path, stats, False, time.monotonic() - started)


def _check_options(num_proc, limit, max_bytes, format, separator, workers, s3_endpoint_url, s3_client) -> int:
    if format not in ("txt", "jsonl"):
        raise UsageError(f"unknown format {format!r}; choose txt or jsonl")
    if format == "jsonl" and separator is not None:
        raise UsageError("--separator applies to txt output only; jsonl writes one object per line")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be 0 or more")
    if max_bytes is not None and max_bytes <= 0:
        raise UsageError("--max-bytes must be more than 0")
    if s3_endpoint_url is not None and not s3_endpoint_url.startswith(("http://", "https://")):
        raise UsageError(f"--s3-endpoint-url {s3_endpoint_url!r} must start with http:// or https://")
    if s3_client not in ("urllib3", "boto3"):
        raise UsageError(f"unknown S3 client {s3_client!r}; choose urllib3 or boto3")
    if workers is not None and workers < 1:
        raise UsageError("--workers must be 1 or more")
    if num_proc is not None and num_proc < 1:
        raise UsageError("--num-proc must be 1 or more")
    return num_proc or os.cpu_count() or 1


def _s3_options(bucket: str, endpoint_url: str | None, region: str, no_sign_request: bool, client: str):
    from .hydrate import S3Options, credentials_available

    log.warning(TERMS)
    unsigned = no_sign_request
    if not credentials_available(probe=not unsigned) and not unsigned:
        log.warning("no AWS credentials found: sending unsigned requests (as with --no-sign-request)")
        unsigned = True
    return S3Options(bucket=bucket, endpoint_url=endpoint_url, region=region, unsigned=unsigned, client=client)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with writing(folder / ".lock"):
        lock = open(folder / ".lock", "w")
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another smollm-corpus fetch is writing to {folder}; wait for it, or choose another --out-dir") from None
        yield


def _clear(folder: Path, manifest_path: Path) -> None:
    """Remove a previous run's files (only this tool's own files: the folder may hold others)."""
    with writing(folder):
        _remove_outputs(folder, manifest_path)


def _remove_outputs(folder: Path, manifest_path: Path) -> None:
    for name in ("input.txt", "input.jsonl", "input.txt.incomplete", "input.jsonl.incomplete", "missing_blobs.txt"):
        (folder / name).unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)
    for name in (".parts", ".staging"):
        shutil.rmtree(folder / name, ignore_errors=True)


class _Run:
    """One run: chunks go to the workers, finished parts are appended in order and checkpointed."""

    def __init__(self, spec: Subset, src: source.Source, manifest: Manifest, manifest_path: Path, folder: Path,
                 output: Path, partial: Path, limit: int | None, max_bytes: int | None, separator: bytes) -> None:
        self.spec, self.src, self.manifest, self.manifest_path = spec, src, manifest, manifest_path
        self.folder, self.output, self.partial = folder, output, partial
        self.limit, self.max_bytes, self.separator = limit, max_bytes, separator
        self.parts_dir, self.staging_dir = folder / ".parts", folder / ".staging"
        self._appended: list[Chunk] = []  # appended since the last checkpoint

    def execute(self, job: Job, pool: WorkerPool, view: Progress, progress: Callable[[Progress], None] | None) -> Stats:
        shutil.rmtree(self.parts_dir, ignore_errors=True)  # parts of a stopped run are rebuilt, never trusted
        with writing(self.folder):
            self.parts_dir.mkdir()
            self.staging_dir.mkdir(exist_ok=True)
        stats = self.manifest.stats
        self._in_flight: dict[int, Stats] = {}  # what workers reported of chunks not appended yet
        self._next = 0  # the next chunk to append
        self._update(view)
        if progress:
            progress(view)
        if stats.rows:
            log.info("resuming %s after %d rows already written", self.spec.name, stats.rows)
        ahead = 1 if self.limit is not None else min(pool.size, DOWNLOADS_AHEAD)
        downloads = source.Downloads(self.staging_dir, ahead)
        out = Output(self.partial, self.manifest, self.manifest_path)
        limit = None if self.limit is None else self.limit - stats.rows
        chunk_bytes = plan.MEMORY_CHUNK_BYTES if job.in_memory else plan.CHUNK_BYTES
        chunks = plan.chunks(self.src, self.manifest.position, limit, self.spec.hydrated, downloads, ahead, chunk_bytes)
        window: deque[tuple[Chunk, Future]] = deque()
        checkpointed = time.monotonic()
        try:
            while True:
                while len(window) < 2 * pool.size:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    window.append((chunk, pool.submit(job, chunk)))
                if not window:
                    break
                chunk, future = window.popleft()
                info = self._wait(future, pool.queue, view, progress)
                full = self._append(out, chunk, info)
                self._in_flight.pop(chunk.index, None)
                self._next = chunk.index + 1
                self._update(view)
                if progress:
                    progress(view)
                if full:
                    break  # the output is full: work still in the window is not needed
                if time.monotonic() - checkpointed > CHECKPOINT_SECONDS:
                    self._checkpoint(out, downloads)
                    checkpointed = time.monotonic()
            pool.stop()  # workers still busy past --max-bytes must not write into what is removed below
            self._checkpoint(out, downloads, wait=True)
        except KeyboardInterrupt:
            pool.stop()
            self._checkpoint(out, downloads, wait=True)
            raise Interrupted(
                f"interrupted: {stats.rows:,} rows of {self.spec.name} are safely written; "
                "run the same command again to resume"
            ) from None
        except BaseException as e:
            pool.stop()
            with contextlib.suppress(Exception):
                self._checkpoint(out, downloads, wait=True)  # keep what was appended before the failure
            if isinstance(e, BrokenProcessPool):
                raise SmollmCorpusError(
                    "a worker process died (out of memory, or killed); run the same command again to resume. "
                    "Calling fetch() from a script? Guard the call with if __name__ == '__main__':"
                ) from e
            raise
        finally:
            downloads.close()
            out.close()
        if self.spec.hydrated:
            missing = self.folder / "missing_blobs.txt"
            tmp = missing.with_name(missing.name + ".tmp")
            with writing(missing):
                tmp.write_text("".join(f"{b}\n" for b in self.manifest.missing_blobs))
                os.replace(tmp, missing)
        out.finish(self.output)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        return stats

    def _wait(self, future: Future, queue, view: Progress, progress) -> parts.PartInfo:
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                self._drain(queue, view)
                if progress:
                    progress(view)

    def _drain(self, queue, view: Progress) -> None:
        with contextlib.suppress(queue_module.Empty):
            while True:
                index, rows, documents, nbytes, skipped = queue.get_nowait()
                if index >= self._next:  # a report that arrives after its chunk was appended is counted already
                    self._in_flight.setdefault(index, Stats()).add(Stats(rows, documents, nbytes, Counter(skipped)))
        self._update(view)

    def _update(self, view: Progress) -> None:
        """The bar's view: what is appended, plus what the workers hold."""
        total = Stats()
        total.add(self.manifest.stats)
        for stats in self._in_flight.values():
            total.add(stats)
        view.rows, view.documents, view.bytes, view.skipped = total.rows, total.documents, total.bytes, total.skipped

    def _append(self, out: Output, chunk: Chunk, info: parts.PartInfo) -> bool:
        """Append a finished part to the output and count it. Returns True when the output is full."""
        stats = self.manifest.stats
        sep = self.separator if stats.bytes and info.stats.documents else b""
        size, full = info.stats.bytes, False
        if self.max_bytes is not None:
            budget = self.max_bytes - stats.bytes - len(sep)
            if size > budget:
                size, info = info.cut(max(budget, 0))
                full = True
                sep = sep if size else b""
        out.write(sep)
        if info.data is not None:
            out.append(info.data, size)
        else:
            part = parts.path(self.parts_dir, chunk.index)
            out.copy(part, size)
            part.unlink()
        info.stats.bytes = size + len(sep)
        row = chunk.start + info.stats.rows
        end_of_file = row == chunk.file_rows
        with signals.held():  # a checkpoint after Ctrl-C must never see counters without their position
            stats.add(info.stats)
            for _, reason, detail in info.skipped_rows:
                if reason == "missing":
                    self.manifest.missing_blobs.append(detail)
                elif reason == "corrupt":
                    self.manifest.corrupt_blobs.append(detail)
            self.manifest.position = {"file": chunk.file.index + end_of_file, "row": 0 if end_of_file else row}
            self._appended.append(chunk)
        return full or (self.max_bytes is not None and stats.bytes + len(self.separator) >= self.max_bytes)

    def _checkpoint(self, out: Output, downloads: source.Downloads, wait: bool = False) -> None:
        """Checkpoint the output; once that is durable, delete the downloads of files read to the end."""
        done = [c.file for c in self._appended if c.ends_file]
        self._appended.clear()
        out.checkpoint(lambda: [downloads.release(f) for f in done], wait=wait)
