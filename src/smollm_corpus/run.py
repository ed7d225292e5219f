"""One run of a fetch: chunks go to the workers, finished parts are appended in dataset order and checkpointed."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue as queue_module
import shutil
import time
from collections import Counter, deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

from . import downloads as downloads_module
from . import formats, parts, plan, shards, signals, source
from .errors import SmollmCorpusError, writing
from .manifest import Manifest
from .output import Output
from .stats import Stats
from .subsets import DatasetSpec
from .worker import Chunk, Job, WorkerPool

log = logging.getLogger("smollm_corpus")

#: source files downloaded ahead of the one being read, at most
DOWNLOADS_AHEAD = 4
#: seconds between checkpoints (fsync of the output, then the manifest)
CHECKPOINT_SECONDS = 0.5


def result_of(future: Future, pool, view, progress: Callable | None):
    """The future's result, checking the pool and showing ``view`` while it is awaited (progress reports are dropped)."""
    while True:
        try:
            return future.result(timeout=0.2)
        except FutureTimeout:
            pool.check()
            with contextlib.suppress(queue_module.Empty):
                while True:
                    pool.queue.get_nowait()
            if progress:
                progress(view)


class Interrupted(SmollmCorpusError):
    """The run was stopped by a signal; what was appended is kept."""

    exit_code = 130


def _write_lines(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with writing(path):
        tmp.write_text("".join(f"{line}\n" for line in lines))
        os.replace(tmp, path)


class Run:
    """One run: chunks go to the workers, finished parts are appended in order and checkpointed."""

    def __init__(self, spec: DatasetSpec, src: source.Source, manifest: Manifest, manifest_path: Path, folder: Path,
                 output: Path, partial: Path, limit: int | None, max_bytes: int | None, separator: bytes,
                 tokens: formats.TokenOutput | None, rows_to_read: int | None) -> None:
        self.spec, self.src, self.manifest, self.manifest_path = spec, src, manifest, manifest_path
        self.folder, self.output, self.partial = folder, output, partial
        self.limit, self.max_bytes, self.separator = limit, max_bytes, separator
        self.tokens = tokens
        self.validation = tokens.validation(rows_to_read) if tokens else None
        self.parts_dir, self.staging_dir = folder / ".parts", folder / ".staging"
        self._appended: list[Chunk] = []  # appended since the last checkpoint

    def execute(self, job: Job, pool: WorkerPool, view, progress: Callable | None, planned=None, downloads=None) -> Stats:
        """Run every chunk; ``view`` (a pipeline.Progress) is updated and passed to ``progress`` as they go.

        ``planned`` (with its ``downloads``) replaces the plan: chunks from the output's position on,
        numbered from 0, whose files are already read (--dedup's writing pass).
        """
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
        if downloads is None:
            downloads = downloads_module.Downloads(self.staging_dir, ahead) if pool.local_files else downloads_module.Remote()
        if self.tokens:
            out = shards.TokenFiles(self.folder, self.tokens.layout(self.spec.prefix), self.manifest, self.manifest_path,
                                    self.tokens.tokenizer.vocab_size)
        else:
            out = Output(self.partial, self.manifest, self.manifest_path)
        limit = None if self.limit is None else self.limit - stats.rows
        chunk_bytes = plan.MEMORY_CHUNK_BYTES if job.in_memory else plan.CHUNK_BYTES
        chunks = planned if planned is not None else plan.chunks(self.src, self.manifest.position, limit,
                                                                 self.spec.hydrated, downloads, ahead, chunk_bytes)
        window: deque[tuple[Chunk, Future]] = deque()
        checkpointed = time.monotonic()
        try:
            while True:
                while len(window) < pool.window:
                    chunk = next(chunks, None)
                    if chunk is None:
                        break
                    window.append((chunk, pool.submit(job, chunk)))
                if not window:
                    break
                chunk, future = window.popleft()
                info = self._wait(future, pool, view, progress)
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
            _write_lines(self.folder / "missing_blobs.txt", self.manifest.missing_blobs)
        if self.manifest.options.get("decontaminate"):
            _write_lines(self.folder / "decontamination.jsonl",
                         [json.dumps(c, ensure_ascii=False) for c in self.manifest.contaminated])
        if self.tokens:
            if out.val_end is None and self.validation.tokens:
                log.warning("every document went to validation, none to training: lower --val-tokens")
            out.finish(self.tokens.meta)
        else:
            out.finish(self.output)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        shutil.rmtree(self.staging_dir, ignore_errors=True)
        return stats

    def _wait(self, future: Future, pool: WorkerPool, view, progress) -> parts.PartInfo:
        while True:
            try:
                return future.result(timeout=0.2)
            except FutureTimeout:
                pool.check()
                self._drain(pool.queue, view)
                if progress:
                    progress(view)

    def _drain(self, queue, view) -> None:
        with contextlib.suppress(queue_module.Empty):
            while True:
                index, rows, documents, nbytes, skipped = queue.get_nowait()
                if index >= self._next:  # a report that arrives after its chunk was appended is counted already
                    self._in_flight.setdefault(index, Stats()).add(Stats(rows, documents, nbytes, Counter(skipped)))
        self._update(view)

    def _update(self, view) -> None:
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
        if self.validation is not None and out.val_end is None:
            end = self.validation.end(info, stats)
            if end is not None:
                out.end_validation(end)
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
            for row_in_chunk, reason, detail in info.skipped_rows:
                if reason == "missing":
                    self.manifest.missing_blobs.append(detail)
                elif reason == "corrupt":
                    self.manifest.corrupt_blobs.append(detail)
                elif reason == "contaminated":
                    self.manifest.contaminated.append({"file": chunk.file.name, "row": chunk.start + row_in_chunk,
                                                       **json.loads(detail)})
            self.manifest.position = {"file": chunk.file.index + end_of_file, "row": 0 if end_of_file else row}
            self._appended.append(chunk)
        return full or (self.max_bytes is not None and stats.bytes + len(self.separator) >= self.max_bytes)

    def _checkpoint(self, out: Output, downloads: downloads_module.Downloads, wait: bool = False) -> None:
        """Checkpoint the output; once that is durable, delete the downloads of files read to the end."""
        done = [c.file for c in self._appended if c.ends_file]
        self._appended.clear()
        out.checkpoint(lambda: [downloads.release(f) for f in done], wait=wait)
