"""Workers: threads for Arrow-only jobs, processes for the rest, and the same parts either way."""

import multiprocessing
import signal
import threading
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from smollm_corpus import fetch, signals, template as templates
from smollm_corpus.source import SourceFile
from smollm_corpus.subsets import get_subset
from smollm_corpus.worker import Chunk, Job, Stopped, WorkerPool, in_threads, run_chunk


def parsed(subset: str, template: str | None = None) -> templates.Template:
    spec = get_subset(subset)
    preset = spec.presets.get(template or "text")
    return templates.parse(preset.template, strip=preset.strip) if preset else templates.parse(template)


@pytest.mark.parametrize(("subset", "template", "format", "max_bytes", "expected"), [
    ("fineweb-edu-dedup", None, "txt", None, True),  # the default: the text column as is
    ("cosmopedia-v2", None, "txt", None, True),
    ("fineweb-edu-dedup", "{metadata.url}", "txt", None, True),
    ("fineweb-edu-dedup", "nanogpt", "txt", None, False),  # strips each value in Python
    ("fineweb-edu-dedup", "#T:\n{text}", "txt", None, False),
    ("fineweb-edu-dedup", None, "jsonl", None, False),
    ("fineweb-edu-dedup", "nanogpt", "bin", None, True),  # tokenizing lets go of the GIL
    ("fineweb-edu-dedup", None, "jsonl", 1000, False),
    ("fineweb-edu-dedup", None, "txt", 1000, False),
    ("python-edu", None, "txt", None, False),  # S3 requests
])
def test_only_jobs_that_let_go_of_the_gil_run_in_threads(subset, template, format, max_bytes, expected):
    assert in_threads(parsed(subset, template), format, max_bytes, get_subset(subset).hydrated) is expected


def chunks_of(mirror: Path, subset: str) -> list[Chunk]:
    files = sorted((mirror / subset).glob("*.parquet"))
    chunks = []
    for i, path in enumerate(files):
        rows = pq.read_metadata(path).num_rows
        for start in range(0, rows, 150):
            chunks.append(Chunk(len(chunks), SourceFile(i, path.name, str(path)), str(path), start, min(start + 150, rows), rows))
    return chunks


@pytest.mark.parametrize("template", [None, "nanogpt"])
def test_threads_and_processes_write_the_same_parts(mirror, tmp_path, template):
    spec = get_subset("cosmopedia-v2")
    t = parsed(spec.name, template)
    chunks = chunks_of(mirror, spec.name)
    results = {}
    for threads, in_memory in ((True, True), (True, False), (False, False)):
        folder = tmp_path / f"{threads}-{in_memory}"
        folder.mkdir()
        job = Job(folder, t, False, b"\n\n", None, tuple(t.columns), in_memory=in_memory)
        with WorkerPool(2, threads) as pool:
            infos = [f.result(timeout=60) for f in [pool.submit(job, c) for c in chunks]]
        assert sorted(p.name for p in folder.iterdir()) == ([] if in_memory else [f"{c.index:06d}.part" for c in chunks])
        results[threads, in_memory] = [
            (info.stats, list(info.rows), list(info.ends), info.skipped_rows,
             b"".join(info.data) if in_memory else (folder / f"{c.index:06d}.part").read_bytes())
            for c, info in zip(chunks, infos)
        ]
    assert results[True, True] == results[True, False] == results[False, False]
    assert sum(r[0].documents for r in results[True, True]) > 0


def test_a_stopped_thread_worker_gives_up_its_chunk_at_the_next_batch(mirror, tmp_path):
    t = parsed("fineweb-edu-dedup")
    chunk = chunks_of(mirror, "fineweb-edu-dedup")[0]
    stopping = threading.Event()
    stopping.set()
    with pytest.raises(Stopped):
        run_chunk(Job(tmp_path, t, False, b"\n\n", None, ("text",)), chunk, None, stopping)


def test_stopping_a_thread_pool_leaves_no_worker_running(big_mirror, tmp_path):
    t = parsed("fineweb-edu-dedup")
    job = Job(tmp_path, t, False, b"\n\n", None, ("text",))
    pool = WorkerPool(2, threads=True)
    futures = [pool.submit(job, c) for c in chunks_of(big_mirror, "fineweb-edu-dedup")[:40]]
    pool.stop()  # waits for the busy threads, which give up at their next batch
    assert not [t for t in threading.enumerate() if t.name.startswith("worker")]
    assert all(f.done() for f in futures)
    assert any(f.cancelled() for f in futures)


def test_default_fetch_runs_in_threads_and_nanogpt_in_processes(mirror, tmp_path):
    seen = {}

    def look(progress):
        seen.setdefault("processes", set()).update(p.name for p in multiprocessing.active_children())
        seen.setdefault("threads", set()).update(t.name.split("_")[0] for t in threading.enumerate())

    fetch("fineweb-edu-dedup", tmp_path / "a", source_repo=str(mirror), num_proc=2, progress=look)
    assert "worker" in seen["threads"] and not seen["processes"]
    seen.clear()
    fetch("fineweb-edu-dedup", tmp_path / "b", source_repo=str(mirror), num_proc=2, template="nanogpt", progress=look)
    assert seen["processes"] and "worker" not in seen["threads"]


def test_helper_threads_leave_stop_signals_to_the_main_thread():
    masks = []

    def helper():
        signals.block_in_this_thread()
        masks.append(signal.pthread_sigmask(signal.SIG_BLOCK, []))

    thread = threading.Thread(target=helper)
    thread.start()
    thread.join()
    assert {signal.SIGINT, signal.SIGTERM} <= masks[0]
    assert signal.SIGINT not in signal.pthread_sigmask(signal.SIG_BLOCK, [])


def _half_a_result() -> None:
    """In a worker process: send the start of a result into the pool's pipe, then hang, as a worker stopped mid-send."""
    import struct
    import sys
    import time

    frame = sys._getframe()
    while "result_queue" not in frame.f_locals:
        frame = frame.f_back
    frame.f_locals["result_queue"]._writer._send(struct.pack("!i", 1 << 20) + b"half")
    time.sleep(600)


def test_stopping_a_process_pool_whose_worker_sent_half_a_result_does_not_hang():
    pool = WorkerPool(1)
    future = pool.executor.submit(_half_a_result)
    stopped = threading.Event()
    stopper = threading.Thread(target=lambda: (pool.stop(), stopped.set()), daemon=True)
    try:
        with pytest.raises(Exception):
            future.result(timeout=2)  # the executor's thread is reading the half message
        stopper.start()
        assert stopped.wait(30), "WorkerPool.stop() hung on the half-sent result"
    finally:
        for process in multiprocessing.active_children():
            process.kill()
