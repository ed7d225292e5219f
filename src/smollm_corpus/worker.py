"""The work of one chunk, run by a worker: read rows, fetch contents, render, write a part.

Workers are threads of the main process where a chunk's work is all Arrow's (a template that
is one string column as is, written as txt, with no --max-bytes): Arrow decodes and joins
without holding the GIL, and threads cost neither start-up nor a copy of pyarrow per process. Every other job (Python
rendering, jsonl, python-edu's S3 requests) holds the GIL, so it runs in spawned processes.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import queue as queue_module
import signal
import threading
import time
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from . import minhash, parts, signals, source
from .source import SourceFile
from .template import Template

#: rows per batch read from parquet; small enough to keep memory flat, large enough to amortise per-batch work
BATCH_ROWS = 1024
#: rows per chunk, and per batch, where contents come from S3: small enough that a crash loses
#: seconds of work, large enough that the requests in flight rarely wait for a batch's last one
HYDRATE_ROWS = 4096
#: seconds between progress reports from a worker
REPORT_EVERY = 0.3


@dataclass(frozen=True)
class Chunk:
    """Rows ``start`` to ``stop`` of one source file, read from ``path``; chunk ``index`` of this run, in dataset order."""

    index: int
    file: SourceFile
    path: str
    start: int
    stop: int
    file_rows: int  # rows in the whole file

    @property
    def ends_file(self) -> bool:
        return self.stop == self.file_rows


@dataclass(frozen=True)
class Job:
    """What every chunk of a run shares; sent once to each worker process."""

    parts_dir: Path
    template: Template
    jsonl: bool
    separator: bytes
    max_bytes: int | None
    columns: tuple[str, ...]  # columns read from the parquet files
    in_memory: bool = False  # parts stay in memory (thread workers) rather than in files
    #: what each batch goes through before it is rendered, in order (filter, fetch contents, decontaminate):
    #: each takes a batch and its rows' positions in the chunk and gives back the rows it keeps and
    #: (position, reason, detail) for those it drops
    stages: tuple = ()
    tokenizer: object | None = None  # tokenizer.Tokenizer for token formats: parts hold token ids
    eot: str = "before"  # where each document's end-of-text token goes: "before" (llm.c) or "after" (nanoGPT)
    batch_rows: int = 1024  # rows read at a time
    #: chunks run one at a time in a process, never in its threads together (hydration keeps one S3 client per process)
    one_at_a_time: bool = False
    #: each document's MinHash signature comes back with the part (--dedup), computed from its rendered text
    sign: bool = False


def in_threads(template: Template, format: str, max_bytes: int | None, python_stages: bool) -> bool:
    """Whether the chunks of such a job run in threads of this process: where their work runs without the GIL.

    That is Arrow's work (a template that is one string column as is, written as txt) and
    tokenizing (the tokenizer lets go of the GIL: measured 1.6 to 1.8x one thread's speed on 2
    cores, against processes that each start, build the tokenizer and send their tokens back).
    ``python_stages``: a stage holds the GIL (S3 requests); row filters are Arrow's, and
    decontamination scans in numpy, which lets go of the GIL (only the rare documents it diffs hold it).
    Judged before the schema is known: a placeholder that turns out not to be a string column is
    rendered in Python, which is correct, only slower in threads.
    """
    if python_stages:
        return False
    if format in ("bin", "nanogpt"):
        return True
    plain = format == "txt" and not (max_bytes or template.strip)
    return plain and template.literals == ("", "") and len(template.fields) == 1


class Stopped(Exception):
    """A thread worker gave up its chunk because the pool was stopped."""


_progress = None  # multiprocessing queue of (chunk, rows, documents, bytes, skipped) deltas


def init(progress_queue, parent: int) -> None:
    """Set up a worker process: Ctrl-C is the parent's to handle, and the worker dies with its parent."""
    global _progress
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent()
    if os.getppid() != parent:  # the parent died before the line above could take effect
        os._exit(1)
    _progress = progress_queue


def ready() -> None:
    """Nothing: submitted once per worker so that the processes start (and import) early."""


class WorkerPool:
    """``size`` workers: threads of this process, or processes started at once so that their imports
    overlap the main process's work.

    A pool (this one, or :class:`cluster.DaskPool`) has ``size`` (chunks that run at once),
    ``window`` (chunks kept submitted, so that a worker never waits for the next), ``queue`` (progress reports), ``in_memory`` (parts come back in memory rather than in
    files), ``local_files`` (workers read the files this process downloads), ``submit``,
    ``check`` (raise if the pool can no longer work) and ``stop``.
    """

    local_files = True

    def __init__(self, size: int, threads: bool = False) -> None:
        self.size = size
        self.window = 2 * size
        self.threads = self.in_memory = threads
        self._stopping = threading.Event()
        self.executor: ThreadPoolExecutor | ProcessPoolExecutor
        if threads:
            self.queue = queue_module.SimpleQueue()  # progress reports
            self.executor = ThreadPoolExecutor(size, thread_name_prefix="worker", initializer=signals.block_in_this_thread)
            return
        context = multiprocessing.get_context("spawn")  # a fork would copy the main's threads and clients
        self.queue = context.Queue()
        self.executor = ProcessPoolExecutor(size, mp_context=context, initializer=init, initargs=(self.queue, os.getpid()))
        for _ in range(size):
            self.executor.submit(ready)

    def submit(self, job: Job, chunk: Chunk) -> Future:
        if self.threads:
            return self.executor.submit(run_chunk, job, chunk, self.queue, self._stopping)
        return self.executor.submit(run_chunk, job, chunk)

    def check(self) -> None:
        """Nothing: a local worker that dies breaks its chunk's future."""

    def stop(self) -> None:
        """Stop every worker now, busy or not (a thread gives up its chunk at its next batch)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        if self.threads:
            self.executor.shutdown(wait=True, cancel_futures=True)
            return
        # ProcessPoolExecutor has no public way to stop running workers before Python 3.14.
        processes = list((getattr(self.executor, "_processes", None) or {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.terminate()
        for process in processes:  # reaped here, not left to an exit that may not wait for them
            with contextlib.suppress(Exception):
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
        # A worker stopped while it sent a result leaves half a message in the result pipe, and the
        # executor's thread would wait for the rest forever: this process's copy of the pipe's writing
        # end is the last one left, and closed, the thread reads the end of the pipe instead.
        with contextlib.suppress(Exception):
            self.executor._result_queue._writer.close()
        # With its workers gone the executor winds down at once; waiting for it releases its queues'
        # semaphores, which would otherwise be reported as leaked by multiprocessing at exit.
        self.executor.shutdown(wait=True, cancel_futures=True)
        self.queue.close()
        self.queue.join_thread()
        # Their finalizers run when they are freed: not later, when a traceback that holds this pool is.
        del self.executor, self.queue

    def __enter__(self) -> "WorkerPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def run_chunk(job: Job, chunk: Chunk, progress=None, stopping: threading.Event | None = None) -> parts.PartInfo:
    """Process ``chunk`` into its part; returns what the part holds.

    ``progress`` receives the reports (default: the worker process's queue); a set ``stopping``
    makes the chunk stop at its next batch with :class:`Stopped`.
    """
    progress = progress if progress is not None else _progress
    writer = parts.PartWriter(job.parts_dir, chunk.index, job.separator, job.max_bytes, job.in_memory)
    rows = 0
    reported, last_report = [0, 0, 0, {}], time.monotonic()
    signatures = minhash.Signatures() if job.sign else None
    try:
        for batch in source.read_rows(chunk.path, list(job.columns), chunk.start, chunk.stop, job.batch_rows):
            if stopping is not None and stopping.is_set():
                raise Stopped
            first, count = rows, batch.num_rows
            rows = first + count
            positions = pa.array(range(first, rows), pa.int64())
            for stage in job.stages:
                batch, positions, skipped = stage(batch, positions)
                writer.skip_rows(skipped)
            plain = not job.jsonl and not job.max_bytes and job.tokenizer is None
            column = job.template.column(batch) if plain else None
            if column is not None:
                writer.write_column(positions, column)
                if signatures is not None:
                    signatures.add(positions.to_pylist(), column.to_pylist())
            elif batch.num_rows:
                kept = positions.to_pylist()
                documents = job.template.render(batch)
                if signatures is not None:
                    signatures.add(kept, documents)
                if job.tokenizer is not None:
                    taken = writer.write_tokens(kept, documents, job.tokenizer, job.eot)
                else:
                    taken = writer.write(kept, _jsonl(batch, documents) if job.jsonl else documents)
                if taken < len(kept):  # max_bytes reached: the rest of the batch is not part of this part
                    rows = kept[taken - 1] + 1
            if time.monotonic() - last_report > REPORT_EVERY:
                reported, last_report = _report(progress, chunk, writer, rows, reported), time.monotonic()
            if writer.full:
                break
        info = writer.finish(rows)
        if signatures is not None:
            info.signatures = signatures.of(info.rows)
    except (pa.ArrowException, OSError):  # writing errors arrive as OutputError: these come from reading
        writer.abort()
        with source.damaged(chunk.file, Path(chunk.path)):
            raise
    except BaseException:
        writer.abort()
        raise
    _report(progress, chunk, writer, rows, reported)
    return info


def _jsonl(batch: pa.RecordBatch, documents: list[str]) -> list[str]:
    """One JSON line per row: every column, ``text`` the rendered document."""
    lines = []
    for row, doc in zip(batch.to_pylist(), documents):
        if not doc or doc.isspace():
            lines.append("")  # skipped by the writer as empty, like in txt
            continue
        row["text"] = doc
        lines.append(json.dumps(row, ensure_ascii=False, default=_json_value) + "\n")
    return lines


def _json_value(value: object) -> str:
    isoformat = getattr(value, "isoformat", None)
    return isoformat() if isoformat else str(value)


def _report(progress, chunk: Chunk, writer: parts.PartWriter, rows: int, reported: list) -> list:
    """Tell the main process how far ``chunk`` has got since the last report."""
    stats = writer.stats
    now = [rows, stats.documents, stats.bytes, dict(stats.skipped)]
    if progress is not None and now != reported:
        skipped = {k: v - reported[3].get(k, 0) for k, v in now[3].items()}
        progress.put((chunk.index, now[0] - reported[0], now[1] - reported[1], now[2] - reported[2], skipped))
    return now


def _die_with_parent() -> None:
    # A worker orphaned by kill -9 of the parent would otherwise finish its chunk unobserved.
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
