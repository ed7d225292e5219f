"""fetch(): one subset from the source to ``input.txt``, in dataset order, resumable at any moment.

Stages: the source's files are cut into chunks (a whole file for the text subsets, a few
thousand rows for python-edu); worker processes turn each chunk into a part (read rows,
fetch contents, render, write); this process appends finished parts to the output strictly
in chunk order and records each append in the manifest. Output bytes therefore never depend
on ``num_proc`` or on where a previous run stopped.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import math
import mmap
import multiprocessing
import os
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from . import parts, source, template as templates, worker
from .errors import OutputError, SmollmCorpusError, UsageError
from .manifest import Manifest
from .stats import Stats
from .subsets import DEFAULT_SOURCE, Subset, get_subset
from .source import SourceFile
from .worker import Chunk, Job

log = logging.getLogger("smollm_corpus")

#: S3 requests in flight per worker process by default: at 30 ms per request (S3 in-region) that is
#: about 1,000 requests/s, a little more than the ~1.3 ms of CPU boto3 spends per request lets one core do
WORKERS_PER_PROCESS = 32
#: data per chunk of a text subset (uncompressed, whole row groups): small enough that appends
#: keep pace with the workers and the last chunk leaves little to wait for
CHUNK_BYTES = 32 << 20
#: source files downloaded ahead of the one being read, at most
DOWNLOADS_AHEAD = 4
#: seconds between checkpoints (fsync of the output, then the manifest)
CHECKPOINT_SECONDS = 0.5
COPY_BLOCK = 8 << 20
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
        bucket, s3_endpoint_url, region, no_sign_request, workers: where and how python-edu
            contents are fetched; ``workers`` is the number of requests in flight (default: 32 per process).
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
    num_proc = _check_options(num_proc, limit, max_bytes, format, separator, workers)
    jsonl = format == "jsonl"
    preset = spec.presets.get(template or "text")
    template_text = preset.template if preset else templates.unescape(template or "")
    sep = "" if jsonl else (templates.unescape(separator) if separator is not None else preset.separator if preset else "\n\n")
    options = {
        "subset": subset,
        "source": source_repo,
        "revision": revision,
        "template": template_text,
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

    with _WorkerPool(num_proc) as pool:  # the workers start while the source is resolved
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
        s3 = _s3_options(bucket, s3_endpoint_url, region, no_sign_request) if spec.hydrated else None
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
            threads = WORKERS_PER_PROCESS if workers is None else max(1, math.ceil(workers / pool.size))
            job = Job(run.parts_dir, parsed, jsonl, sep.encode(), max_bytes, columns, s3, threads)
            total = src.num_rows if limit is None else limit if src.num_rows is None else min(limit, src.num_rows)
            stats = run.execute(job, pool, Progress(subset, total), progress)
    return FetchResult(subset, output, manifest_path, stats, False, time.monotonic() - started)


def _check_options(num_proc, limit, max_bytes, format, separator, workers) -> int:
    if format not in ("txt", "jsonl"):
        raise UsageError(f"unknown format {format!r}; choose txt or jsonl")
    if format == "jsonl" and separator is not None:
        raise UsageError("--separator applies to txt output only; jsonl writes one object per line")
    if limit is not None and limit < 0:
        raise UsageError("--limit must be 0 or more")
    if max_bytes is not None and max_bytes <= 0:
        raise UsageError("--max-bytes must be more than 0")
    if workers is not None and workers < 1:
        raise UsageError("--workers must be 1 or more")
    if num_proc is not None and num_proc < 1:
        raise UsageError("--num-proc must be 1 or more")
    return num_proc or os.cpu_count() or 1


def _s3_options(bucket: str, endpoint_url: str | None, region: str, no_sign_request: bool):
    from .hydrate import S3Options, credentials_available

    log.warning(TERMS)
    unsigned = no_sign_request
    if not unsigned and not credentials_available():
        log.warning("no AWS credentials found: sending unsigned requests (as with --no-sign-request)")
        unsigned = True
    return S3Options(bucket=bucket, endpoint_url=endpoint_url, region=region, unsigned=unsigned)


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    with open(folder / ".lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputError(f"another smollm-corpus fetch is writing to {folder}; wait for it, or choose another --out-dir") from None
        yield


def _clear(folder: Path, manifest_path: Path) -> None:
    """Remove a previous run's files (only this tool's own files: the folder may hold others)."""
    for name in ("input.txt", "input.jsonl", "input.txt.incomplete", "input.jsonl.incomplete", "missing_blobs.txt"):
        (folder / name).unlink(missing_ok=True)
    manifest_path.unlink(missing_ok=True)
    for name in (".parts", ".staging"):
        shutil.rmtree(folder / name, ignore_errors=True)


class _WorkerPool:
    """Worker processes, started at once so that their imports overlap the main process's."""

    def __init__(self, size: int) -> None:
        context = multiprocessing.get_context("spawn")  # a fork would copy the main's threads and clients
        self.size = size
        self.queue = context.Queue()
        self.executor = ProcessPoolExecutor(size, mp_context=context, initializer=worker.init, initargs=(self.queue,))
        for _ in range(size):
            self.executor.submit(worker.ready)

    def submit(self, job: Job, chunk: Chunk) -> Future:
        return self.executor.submit(worker.run_chunk, job, chunk)

    def __enter__(self) -> "_WorkerPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        # ProcessPoolExecutor has no public way to stop running workers before Python 3.14.
        for process in list((getattr(self.executor, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()
        self.executor.shutdown(wait=False, cancel_futures=True)


class _Run:
    """The state of one run: the plan of chunks, the output being appended to, the manifest."""

    def __init__(self, spec: Subset, src: source.Source, manifest: Manifest, manifest_path: Path, folder: Path,
                 output: Path, partial: Path, limit: int | None, max_bytes: int | None, separator: bytes) -> None:
        self.spec, self.src, self.manifest, self.manifest_path = spec, src, manifest, manifest_path
        self.folder, self.output, self.partial = folder, output, partial
        self.limit, self.max_bytes, self.separator = limit, max_bytes, separator
        self.parts_dir, self.staging_dir = folder / ".parts", folder / ".staging"
        self._appended: list[Chunk] = []  # appended since the last checkpoint
        self._checkpointed = time.monotonic()

    def plan(self, downloads: source.Downloads, ahead: int) -> Iterator[Chunk]:
        """Chunks in dataset order from the recorded position on; files are brought to disk ``ahead`` at a time.

        With a limit, a file is opened only once the rows before it are known to be too few.
        """
        position = self.manifest.position
        remaining = None if self.limit is None else self.limit - self.manifest.stats.rows
        files = self.src.files[position["file"]:]
        index = 0
        for n, file in enumerate(files):
            if remaining == 0:
                return
            if remaining is None:
                downloads.start(files[n : n + ahead])
            path = downloads.get(file)
            meta = pq.read_metadata(path)
            start = position["row"] if n == 0 else 0
            end = meta.num_rows if remaining is None else min(meta.num_rows, start + remaining)
            for a, b in _ranges(meta, start, end, self.spec.hydrated):
                yield Chunk(index, file, str(path), a, b, meta.num_rows)
                index += 1
            if start == end:
                downloads.release(file)
            if remaining is not None:
                remaining -= end - start

    def execute(self, job: Job, pool: _WorkerPool, view: Progress, progress: Callable[[Progress], None] | None) -> Stats:
        shutil.rmtree(self.parts_dir, ignore_errors=True)  # parts of a stopped run are rebuilt, never trusted
        self.parts_dir.mkdir()
        self.staging_dir.mkdir(exist_ok=True)
        self._open_output()
        stats = self.manifest.stats
        view.rows, view.documents, view.bytes, view.skipped = stats.rows, stats.documents, stats.bytes, Counter(stats.skipped)
        if progress:
            progress(view)
        if stats.rows:
            log.info("resuming %s after %d rows already written", self.spec.name, stats.rows)
        ahead = 1 if self.limit is not None else min(pool.size, DOWNLOADS_AHEAD)
        downloads = source.Downloads(self.staging_dir, ahead)
        self._background = ThreadPoolExecutor(2, thread_name_prefix="output")  # hashing, and checkpoints
        window: deque[tuple[Chunk, Future]] = deque()
        chunks = self.plan(downloads, ahead)
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
                full = self._append(chunk, info)
                self._sync_view(view)
                if progress:
                    progress(view)
                if full:
                    break  # the output is full: work still in the window is not needed
                if time.monotonic() - self._checkpointed > CHECKPOINT_SECONDS:
                    self._checkpoint(downloads)
            self._checkpoint(downloads, wait=True)
        except KeyboardInterrupt:
            pool.__exit__()
            self._checkpoint(downloads, wait=True)
            raise Interrupted(
                f"interrupted: {stats.rows:,} rows of {self.spec.name} are safely written; "
                "run the same command again to resume"
            ) from None
        except BaseException as e:
            pool.__exit__()
            with contextlib.suppress(Exception):
                self._checkpoint(downloads, wait=True)  # keep what was appended before the failure
            if isinstance(e, BrokenProcessPool):
                raise SmollmCorpusError(
                    "a worker process died (out of memory, or killed); run the same command again to resume. "
                    "Calling fetch() from a script? Guard the call with if __name__ == '__main__':"
                ) from e
            raise
        finally:
            downloads.close()
            self._background.shutdown(wait=True)
        pool.__exit__()  # workers still busy past --max-bytes must not write into what _complete removes
        self._complete()
        return stats

    def _open_output(self) -> None:
        """Open the partial output at the recorded length, and hash what it holds."""
        self._digest = hashlib.sha256()
        recorded = self.manifest.stats.bytes
        try:
            self._fd = os.open(self.partial, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"cannot write {self.partial}: {e.strerror}; choose another --out-dir") from e
        size = os.fstat(self._fd).st_size
        if size < recorded:
            raise OutputError(
                f"{self.partial} is shorter than its manifest records ({size:,} < {recorded:,} bytes); "
                "rerun with --overwrite to start again"
            )
        os.ftruncate(self._fd, recorded)
        if recorded:
            with mmap.mmap(self._fd, recorded, access=mmap.ACCESS_READ) as data:
                self._digest.update(data)
        self._position = recorded
        self._hashing: Future | None = None
        self._persisting: Future | None = None

    def _wait(self, future: Future, queue, view: Progress, progress) -> parts.PartInfo:
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                self._drain(queue, view)
                if progress:
                    progress(view)

    def _drain(self, queue, view: Progress) -> None:
        with contextlib.suppress(Exception):
            while True:
                rows, documents, nbytes, skipped = queue.get_nowait()
                view.rows += rows
                view.documents += documents
                view.bytes += nbytes
                view.skipped.update(skipped)

    def _sync_view(self, view: Progress) -> None:
        # Appends are the truth; in-flight counts only ever run ahead of them.
        stats = self.manifest.stats
        view.rows, view.documents = max(view.rows, stats.rows), max(view.documents, stats.documents)
        view.bytes = max(view.bytes, stats.bytes)

    def _append(self, chunk: Chunk, info: parts.PartInfo) -> bool:
        """Append a finished part to the output. Returns True when the output is full."""
        stats = self.manifest.stats
        sep = self.separator if stats.bytes and info.stats.documents else b""
        size, full = info.stats.bytes, False
        if self.max_bytes is not None:
            budget = self.max_bytes - stats.bytes - len(sep)
            if size > budget:
                size, info = info.cut(max(budget, 0))
                full = True
                sep = sep if size else b""
        part = parts.path(self.parts_dir, chunk.index)
        try:
            self._write(sep)
            if size:
                self._copy(part, size)
        except OSError as e:
            raise OutputError(
                f"writing {self.partial} failed: {e.strerror}; free some space (or fix permissions), "
                "then run the same command again to resume"
            ) from e
        part.unlink()
        info.stats.bytes = size + len(sep)
        stats.add(info.stats)
        for _, reason, detail in info.skipped_rows:
            if reason == "missing":
                self.manifest.missing_blobs.append(detail)
            elif reason == "corrupt":
                self.manifest.corrupt_blobs.append(detail)
        row = chunk.start + info.stats.rows
        end_of_file = row == chunk.file_rows
        self.manifest.position = {"file": chunk.file.index + end_of_file, "row": 0 if end_of_file else row}
        self._appended.append(chunk)
        return full or (self.max_bytes is not None and stats.bytes + len(self.separator) >= self.max_bytes)

    def _write(self, data: bytes) -> None:
        if data:
            self._hashed()
            self._digest.update(data)
            self._position += os.pwrite(self._fd, data, self._position)

    def _copy(self, part: Path, size: int) -> None:
        """Copy the first ``size`` bytes of ``part`` to the output in the kernel, hashing them meanwhile."""
        self._hashed()
        with open(part, "rb") as f:
            data = mmap.mmap(f.fileno(), size, access=mmap.ACCESS_READ)
        self._hashing = self._background.submit(_hash_and_close, self._digest, data)
        with open(part, "rb") as f:
            copied = 0
            while copied < size:
                n = _copy_range(f.fileno(), self._fd, size - copied, copied, self._position + copied)
                if n == 0:
                    raise OSError(errno.EIO, f"{part} ended early")
                copied += n
        self._position += size

    def _hashed(self) -> None:
        """Wait for the hashing of the previous part: the digest takes bytes in output order."""
        if self._hashing is not None:
            self._hashing.result()
            self._hashing = None

    def _checkpoint(self, downloads: source.Downloads, wait: bool = False) -> None:
        """Make the output appended so far durable, then record it, in the background; then let go of files fully read.

        One checkpoint runs at a time; its fsync covers every byte written before it started, which
        is all the snapshot of the manifest it records describes.
        """
        if self._persisting is not None:
            self._persisting.result()  # raises what the previous checkpoint met
        releases = [c.file for c in self._appended if c.ends_file]
        self._appended.clear()
        self._persisting = self._background.submit(self._persist, self.manifest.to_json(), releases, downloads)
        self._checkpointed = time.monotonic()
        if wait:
            future, self._persisting = self._persisting, None
            future.result()

    def _persist(self, snapshot: dict, releases: list[SourceFile], downloads: source.Downloads) -> None:
        try:
            os.fsync(self._fd)
            self.manifest.save(self.manifest_path, snapshot)
        except OSError as e:
            raise OutputError(
                f"writing {self.partial} failed: {e.strerror}; free some space (or fix permissions), "
                "then run the same command again to resume"
            ) from e
        for file in releases:
            downloads.release(file)

    def _complete(self) -> None:
        self._hashed()
        os.close(self._fd)
        if self.spec.hydrated:
            missing = self.folder / "missing_blobs.txt"
            tmp = missing.with_name(missing.name + ".tmp")
            tmp.write_text("".join(f"{b}\n" for b in self.manifest.missing_blobs))
            os.replace(tmp, missing)
        self.manifest.finish(self._digest.hexdigest())
        self.manifest.save(self.manifest_path)
        os.replace(self.partial, self.output)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        shutil.rmtree(self.staging_dir, ignore_errors=True)


def _ranges(meta: pq.FileMetaData, start: int, end: int, hydrated: bool) -> Iterator[tuple[int, int]]:
    """Row ranges of about CHUNK_BYTES of data (whole row groups), or HYDRATE_ROWS rows where contents come from S3."""
    if hydrated:
        yield from ((a, min(a + worker.HYDRATE_ROWS, end)) for a in range(start, end, worker.HYDRATE_ROWS))
        return
    first, offset, size = start, 0, 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        offset += group.num_rows
        if offset <= start:
            continue
        size += group.total_byte_size
        if offset >= end:
            break
        if size >= CHUNK_BYTES:
            yield first, offset
            first, size = offset, 0
    if first < end:
        yield first, end


def _hash_and_close(digest, data: mmap.mmap) -> None:
    try:
        digest.update(data)  # hashlib lets go of the GIL for large buffers
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
