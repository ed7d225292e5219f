"""A real Dask cluster for tests: ``dask scheduler`` and ``dask worker`` processes listening on 127.0.0.1 only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

DASK = str(Path(sys.executable).with_name("dask"))
#: seconds the cluster may take to come up
START_SECONDS = 60


class DaskCluster:
    """A scheduler and ``nworkers`` worker processes of ``nthreads`` threads each on 127.0.0.1, with ``env`` added.

    ``tls``: (ca, cert, key) files: the cluster speaks tls:// only. ``preload``: a module each worker
    runs when it starts.
    """

    def __init__(self, folder: Path, env: dict[str, str], nworkers: int = 2, tls: tuple[Path, Path, Path] | None = None,
                 preload: Path | None = None, nthreads: int = 1) -> None:
        self.folder, self.nworkers, self.nthreads, self.tls, self.preload = folder, nworkers, nthreads, tls, preload
        self.env = {**os.environ, **env}
        self.scheduler_file = folder / "scheduler.json"
        self.scheduler: subprocess.Popen | None = None
        self.workers: subprocess.Popen | None = None

    def _tls_args(self) -> list[str]:
        if self.tls is None:
            return []
        ca, cert, key = self.tls
        return ["--protocol", "tls", "--tls-ca-file", str(ca), "--tls-cert", str(cert), "--tls-key", str(key)]

    def start(self) -> DaskCluster:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.scheduler_file.unlink(missing_ok=True)
        self.scheduler = self._spawn("scheduler", [DASK, "scheduler", "--host", "127.0.0.1", "--port", "0",
                                                   "--no-dashboard", "--scheduler-file", str(self.scheduler_file),
                                                   *self._tls_args()])
        deadline = time.monotonic() + START_SECONDS
        while not self.scheduler_file.exists():
            assert time.monotonic() < deadline, "the Dask scheduler did not start"
            assert self.scheduler.poll() is None, (self.folder / "scheduler.log").read_text()
            time.sleep(0.1)
        self.start_workers()
        return self

    @property
    def address(self) -> str:
        return json.loads(self.scheduler_file.read_text())["address"]

    def start_workers(self, wait: bool = True) -> None:
        preload = ["--preload", str(self.preload)] if self.preload else []
        self.workers = self._spawn("workers", [
            DASK, "worker", "--scheduler-file", str(self.scheduler_file), "--host", "127.0.0.1",
            "--nworkers", str(self.nworkers), "--nthreads", str(self.nthreads), "--no-dashboard", "--death-timeout", "60",
            "--local-directory", str(self.folder / "scratch"), *preload, *self._tls_args(),
        ])
        if wait:
            self.wait_for_workers(self.nworkers)

    def wait_for_workers(self, n: int) -> None:
        with self.client() as client:
            client.wait_for_workers(n, timeout=START_SECONDS)

    def client(self):  # -> distributed.Client
        import distributed

        security = None
        if self.tls is not None:
            ca, cert, key = self.tls
            security = distributed.security.Security(tls_ca_file=str(ca), tls_client_cert=str(cert),
                                                     tls_client_key=str(key), require_encryption=True)
        return distributed.Client(self.address, security=security, timeout=START_SECONDS, set_as_default=False)

    def worker_pids(self) -> list[int]:
        """The processes that run tasks (not their nannies)."""
        with self.client() as client:
            return sorted(client.run(os.getpid).values())

    def stop_workers(self) -> None:
        self._kill(self.workers)
        self.workers = None

    def stop(self) -> None:
        self.stop_workers()
        self._kill(self.scheduler)
        self.scheduler = None

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(self.folder / f"{name}.log", "ab")
        with log:
            return subprocess.Popen(args, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    @staticmethod
    def _kill(proc: subprocess.Popen | None) -> None:
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL)  # the nannies and their workers with it
        proc.wait(timeout=30)

    def __enter__(self) -> DaskCluster:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
