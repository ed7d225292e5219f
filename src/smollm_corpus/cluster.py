"""A worker pool on a Dask cluster: each chunk of a fetch runs as a Dask task on the cluster's workers.

The machine running the fetch plans the chunks, appends the finished parts in dataset order
and checkpoints, exactly as with local workers, so the output does not depend on where the
chunks ran. Workers read the source files themselves: a file in a folder they can see (or in
their Hugging Face cache) in place, a file on the Hub by range requests for the row groups of
their chunk only (:mod:`remote`), so each file is downloaded once across the cluster and no
worker needs disk for it.

Imported only when a fetch is given a cluster: ``distributed`` is an optional dependency.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import logging
import os
import queue as queue_module
import threading
import time
import uuid
from concurrent.futures import Future

from . import __version__, source, worker
from .errors import SmollmCorpusError, UsageError

try:
    import dask
    import distributed
except ImportError:  # pragma: no cover - depends on the installation
    raise UsageError(
        "running on a Dask cluster needs Dask's distributed package on this machine and on every worker: "
        "pip install 'smollm-corpus[dask]'"
    ) from None

log = logging.getLogger("smollm_corpus")

#: seconds to reach the scheduler, at most (a scheduler that is up answers at once)
CONNECT_SECONDS = 30
#: seconds between looks at the cluster's workers
LOOK_SECONDS = 1.0
#: seconds to wait for a fetch's job: its making, and on a worker the variable and the transfer
JOB_SECONDS = 30


class ClusterError(SmollmCorpusError):
    """The Dask cluster cannot be reached, has no workers, or runs another version of smollm-corpus."""


class DaskPool:
    """Runs chunks as tasks on the Dask cluster at ``address`` (or described by a scheduler file).

    The same interface as :class:`worker.WorkerPool`: ``size``, ``queue`` (progress reports),
    ``submit``, ``stop``; parts come back in memory, and the workers read the source files
    themselves (``local_files`` is False: the fetch downloads nothing but footers).
    """

    in_memory = True
    local_files = False

    def __init__(self, address: str, wait: float, owner: str = "") -> None:
        """Connect, check the workers' version of smollm-corpus, and wait up to ``wait`` seconds for a first worker.

        ``owner`` names what the work is for (the output folder): a run that is killed leaves its job
        on the cluster until the next run for the same owner replaces it.

        Raises:
            UsageError: a scheduler file that does not exist.
            ClusterError: the scheduler cannot be reached, no worker joins in time, or a worker runs
                another version.
        """
        self.address, self.wait = address, wait
        self.queue: queue_module.SimpleQueue = queue_module.SimpleQueue()
        self._futures: dict[int, distributed.Future] = {}  # running chunks: kept, or Dask forgets them
        self._lock = threading.Lock()
        self._job: worker.Job | None = None
        self._job_future = None
        self._run = uuid.uuid4().hex[:12]
        self._topic = f"smollm-corpus-progress-{self._run}"
        self._variable = "smollm-corpus-job-" + hashlib.sha256(f"{owner or self._run}".encode()).hexdigest()[:16]
        self._stopped = False
        self._looked = 0.0
        self._alone_since: float | None = None
        if not log.isEnabledFor(logging.DEBUG):  # what matters of Dask's own log comes back as this pool's errors
            logging.getLogger("distributed").setLevel(logging.CRITICAL)
        self.client = _connect(address, min(max(wait, 1.0), CONNECT_SECONDS))
        try:
            self._nthreads = self._wait_for_workers()
            try:
                versions = self.client.run(_version)
            except Exception as e:  # noqa: BLE001 - raised on a worker: its cause is the message
                raise ClusterError(f"the Dask workers cannot run smollm-corpus ({type(e).__name__}: {e}); install "
                                   f"smollm-corpus {__version__} with its dask extra on every worker") from None
            _check_versions(versions)
            self.client.subscribe_topic(self._topic, lambda event: self.queue.put(tuple(event[1])))
        except BaseException:
            self.client.close()
            raise

    @property
    def size(self) -> int:
        """Threads over all workers: chunks that can run at once."""
        return max(sum(self._nthreads.values()), 1)

    @property
    def window(self) -> int:
        """Chunks kept submitted: more than twice the threads, which makes Dask count them as root tasks.

        It keeps those queued on the scheduler and gives each, in priority order, to the next worker
        with a free thread. With fewer it sends them all to workers at once, where one can wait behind
        a long task while another worker is idle.
        """
        return 2 * self.size + 2

    def submit(self, job: worker.Job, chunk: worker.Chunk) -> Future:
        """Run ``chunk`` on the cluster; the returned future gives its :class:`parts.PartInfo`."""
        if job is not self._job:
            self._job, self._job_future = job, self._send(job)
        # in dataset order, as the output appends them: left to itself, Dask may run a later chunk
        # first and leave the next one to append queued behind a long task
        future = self.client.submit(_run_task, self._variable, self._job_future.key, chunk, self._topic, __version__,
                                    key=f"smollm-corpus-chunk-{self._run}-{chunk.index}", pure=False,
                                    priority=-chunk.index)
        result: Future = Future()
        result.set_running_or_notify_cancel()
        with self._lock:
            self._futures[chunk.index] = future

        def done(finished: distributed.Future) -> None:
            with self._lock:
                self._futures.pop(chunk.index, None)
            try:
                result.set_result(finished.result())
            except BaseException as e:  # noqa: BLE001 - handed to whoever waits for the chunk
                result.set_exception(self._explain(e))

        future.add_done_callback(done)
        return result

    def _send(self, job: worker.Job) -> distributed.Future:
        """``job`` as a task of its own, sent once and shared in a Dask ``Variable``.

        It is made before any chunk is sent; each worker process then fetches it once, at its first
        chunk (:func:`_job`), and the scheduler makes it again if every worker that held it is gone
        (scattered data would be lost with them). Chunk tasks name the variable rather than depend on
        the job: Dask runs a task where its dependencies are, which put every chunk on the worker
        that made the job until work stealing moved some, up to 2 s later.
        """
        threaded = sum(1 for n in self._nthreads.values() if n > 1)
        if job.one_at_a_time and threaded:
            log.warning("%d of the %d Dask workers have several threads, but python-edu's pieces run one at a time in "
                        "each worker process (its requests in flight are the parallelism): they use one thread each. "
                        "For python-edu, start one process a core: dask worker ADDRESS --nworkers CORES --nthreads 1",
                        threaded, len(self._nthreads))
        with dask.config.set({"distributed.admin.large-graph-warning-threshold": "1GiB"}):  # large on purpose, once
            future = self.client.submit(_the_job, job, key=f"smollm-corpus-job-{self._run}", pure=False)
        distributed.Variable(self._variable, client=self.client).set(future)  # replaces a killed run's job
        try:
            future.exception(timeout=max(self.wait, JOB_SECONDS))  # made, not sent back: a chunk only fetches it
        except (TimeoutError, asyncio.TimeoutError):
            raise ClusterError(f"no Dask worker of {self.address} took the fetch's first task within "
                               f"{max(self.wait, JOB_SECONDS):.0f} s; check that workers are running (dask worker "
                               "ADDRESS), then run the same command again") from None
        return future

    def _wait_for_workers(self) -> dict[str, int]:
        nthreads = self.client.nthreads()
        if not nthreads:
            log.warning("no Dask worker has joined %s yet; waiting up to %.0f s for one", self.address, self.wait)
            try:
                self.client.wait_for_workers(1, timeout=self.wait)
            except (TimeoutError, asyncio.TimeoutError):
                raise ClusterError(f"no Dask worker joined {self.address} within {self.wait:.0f} s; start workers "
                                   "(dask worker ADDRESS), or wait longer with --dask-wait") from None
            nthreads = self.client.nthreads()
        return nthreads

    def check(self) -> None:
        """Look at the cluster (at most once a second): fail when no worker has been there for ``wait`` seconds.

        Raises:
            ClusterError: the scheduler is gone, or every worker has been gone for ``wait`` seconds.
        """
        now = time.monotonic()
        if now - self._looked < LOOK_SECONDS:
            return
        self._looked = now
        if self.client.status not in ("running", "connecting", "newly-created"):
            raise ClusterError(f"lost the connection to the Dask scheduler at {self.address}; "
                               "run the same command again to resume once it is back")
        try:
            self._nthreads = self.client.nthreads()
        except (OSError, TimeoutError) as e:
            raise ClusterError(f"lost the connection to the Dask scheduler at {self.address} ({e}); "
                               "run the same command again to resume once it is back") from None
        if self._nthreads:
            self._alone_since = None
            return
        if self._alone_since is None:
            self._alone_since = now
            log.warning("every Dask worker has left %s; waiting up to %d s for one to join", self.address, self.wait)
        elif now - self._alone_since > self.wait:
            raise ClusterError(f"every Dask worker left {self.address} and none joined within {self.wait:.0f} s; "
                               "what was written is kept: start workers, then run the same command again to resume")

    def stop(self) -> None:
        """Cancel what is still queued on the cluster, and disconnect."""
        if self._stopped:
            return
        with self._lock:
            futures = list(self._futures.values())
        with contextlib.suppress(Exception):
            self.client.cancel(futures)
        self._stopped = True
        with contextlib.suppress(Exception):
            self.client.unsubscribe_topic(self._topic)
        if self._job_future is not None:
            with contextlib.suppress(Exception):
                distributed.Variable(self._variable, client=self.client).delete()
        with contextlib.suppress(Exception):
            self.client.close(timeout=10)

    def _explain(self, error: BaseException) -> BaseException:
        """A task's failure as the library's own error where it comes from the cluster rather than the work."""
        if isinstance(error, SmollmCorpusError):
            return error
        if type(error).__name__ in ("CancelledError", "FutureCancelledError"):  # the latter in newer Dask
            if self._stopped:
                return error
            return ClusterError(f"the Dask scheduler at {self.address} dropped a chunk's task (it restarted, or "
                                "lost this client); run the same command again to resume")
        if type(error).__name__ == "KilledWorker":
            return ClusterError(f"a chunk's task killed every Dask worker that ran it ({error}); the workers may be "
                                "out of memory: give them more (dask worker --memory-limit), then run the same "
                                "command again to resume")
        return error

    def __enter__(self) -> DaskPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _connect(address: str, timeout: float) -> distributed.Client:
    """A client of the scheduler at ``address``, or of the one a scheduler file describes, within ``timeout`` seconds."""
    scheduler_file = None if "://" in address else os.path.expanduser(address)
    if scheduler_file is not None and not os.path.isfile(scheduler_file):
        raise UsageError(f"no Dask scheduler file at {address}; give the file `dask scheduler --scheduler-file` "
                         "wrote, or the scheduler's address as tcp://HOST:PORT (or tls://)")
    try:
        return distributed.Client(None if scheduler_file else address, scheduler_file=scheduler_file,
                                  timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError, ValueError) as e:
        raise ClusterError(
            f"cannot reach the Dask scheduler at {address} ({e}); check that `dask scheduler` runs there and "
            "that this machine can reach it (address, port, firewall); a tls:// scheduler also needs Dask's TLS "
            "settings here (DASK_DISTRIBUTED__COMM__TLS__CA_FILE and the client's certificate and key)"
        ) from None


def _check_versions(versions: dict[str, str]) -> None:
    others = {address: v for address, v in versions.items() if v != __version__}
    if others:
        address, version = sorted(others.items())[0]
        raise ClusterError(
            f"the Dask worker at {address} runs smollm-corpus {version}, and this machine {__version__} "
            f"({len(others)} of {len(versions)} workers differ); install the same version everywhere"
        )


def _version() -> str:
    return __version__


def _the_job(job: worker.Job) -> worker.Job:
    return job


# -- on the workers --------------------------------------------------------------------------------

_one_at_a_time = threading.Lock()


_jobs: dict[str, worker.Job] = {}  # this worker process's jobs, by their task's key, oldest first
_jobs_lock = threading.Lock()
#: jobs a worker process keeps: one per fetch running on the cluster at once
KEPT_JOBS = 4


def _run_task(variable: str, job_key: str, chunk: worker.Chunk, topic: str, version: str):
    """A chunk's work, on a worker: what a local worker does, reading the file where this machine finds it."""
    if version != __version__:
        raise ClusterError(f"this Dask worker runs smollm-corpus {__version__}, and the fetch {version}; "
                           "install the same version everywhere")
    job = _job(variable, job_key)
    if job.tokenizer is not None:  # one chunk per thread of the worker: the tokenizer's own threads would compete
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    chunk = dataclasses.replace(chunk, path=source.local_copy(chunk.file.location) or chunk.file.location)
    with _one_at_a_time if job.one_at_a_time else contextlib.nullcontext():
        return worker.run_chunk(job, chunk, _Events(topic))


def _job(variable: str, key: str) -> worker.Job:
    """The job of task ``key``, shared in ``variable``: fetched at this process's first chunk of it, then kept."""
    job = _jobs.get(key)
    if job is not None:
        return job
    with _jobs_lock:
        job = _jobs.get(key)
        if job is None:
            future = distributed.Variable(variable, client=distributed.get_client()).get(timeout=JOB_SECONDS)
            if future.key != key:
                raise ClusterError("a newer run for the same output replaced this one's work on the cluster; "
                                   "run one command per output folder at a time")
            try:
                job = future.result(timeout=JOB_SECONDS)  # made before any chunk was sent: one transfer
            except TimeoutError:
                # made again, as every worker that held it is gone: out of the worker's thread pool while
                # it is, so that it may be made here (leaving the pool at once would let this worker
                # start its next chunk beside this one, while another worker waits idle)
                distributed.secede()
                try:
                    job = future.result()
                finally:
                    distributed.rejoin()
            while len(_jobs) >= KEPT_JOBS:
                del _jobs[next(iter(_jobs))]
            _jobs[key] = job
    return job


class _Events:
    """Progress reports, sent through the scheduler to the fetch's client."""

    def __init__(self, topic: str) -> None:
        self.topic = topic
        self.worker = distributed.get_worker()

    def put(self, report: tuple) -> None:
        self.worker.log_event(self.topic, list(report))
