"""`fetch --dask`: the chunks run on a real Dask cluster (scheduler and workers on 127.0.0.1), the output is the same.

The workers download from the fake Hub and fetch python-edu contents from moto's S3 themselves;
every output is compared byte for byte with a local run of the same command.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("distributed")

import toytokenizer
from conftest import CLI, _heavy_rows, act_when, assert_clean, kill_at_checkpoint, run_cli
from daskcluster import DaskCluster
from fakehub import DEFAULT_SHA, FakeHub
from mirror import blob_id_for, build_mirror, python_source_for
from s3servers import CREDENTIALS, moto_server, put_blobs

from smollm_corpus import __version__

BUCKET = "dask-python-edu"
AWS = {"AWS_ACCESS_KEY_ID": CREDENTIALS["aws_access_key_id"], "AWS_SECRET_ACCESS_KEY": CREDENTIALS["aws_secret_access_key"],
       "AWS_EC2_METADATA_DISABLED": "true"}
SIZES = {"fineweb-edu-dedup": [1500] * 6, "cosmopedia-v2": [120, 80], "python-edu": [100, 80]}


class World:
    """The fake Hub, S3 and a Dask cluster whose workers reach both."""

    def __init__(self, folder: Path, hub: FakeHub, s3: str) -> None:
        self.folder, self.hub, self.s3 = folder, hub, s3

    def env(self, name: str) -> dict[str, str]:
        return {**self.hub.env(self.folder / name), **AWS}

    def cluster(self, name: str, **kwargs) -> DaskCluster:
        return DaskCluster(self.folder / name, self.env(f"hf-{name}"), **kwargs)

    def fetch(self, out: Path, subset: str, *extra: str, **kwargs) -> subprocess.CompletedProcess:
        args = ["fetch", subset, "-o", str(out), "--revision", DEFAULT_SHA, *extra]
        if subset == "python-edu":
            args += ["--bucket", BUCKET, "--s3-endpoint-url", self.s3]
        return run_cli(*args, env=self.env(f"hf-{out.name}"), **kwargs)

    def popen(self, out: Path, subset: str, *extra: str) -> subprocess.Popen:
        args = [CLI, "fetch", subset, "-o", str(out), "--revision", DEFAULT_SHA, "-q", *extra]
        return subprocess.Popen(args, env={**os.environ, **self.env(f"hf-{out.name}")}, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)


def _rows(subset: str, start: int, stop: int):
    from mirror import rows_for

    return _heavy_rows(subset, start, stop) if subset == "fineweb-edu-dedup" else rows_for(subset, start, stop)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("dask")
    mirror = build_mirror(folder / "mirror", SIZES, row_group_size=250, rows=_rows)
    with FakeHub(mirror) as hub, moto_server() as s3:
        put_blobs(s3, BUCKET, {blob_id_for(i): python_source_for(i).encode() for i in range(sum(SIZES["python-edu"]))})
        yield World(folder, hub, s3)


@pytest.fixture(scope="module")
def cluster(world: World):
    with world.cluster("cluster") as cluster:
        yield cluster


@pytest.fixture(scope="module")
def tokenizer_json(tmp_path_factory: pytest.TempPathFactory) -> Path:
    texts = [python_source_for(i) for i in range(100)]
    return toytokenizer.save(toytokenizer.train(texts, vocab_size=500), tmp_path_factory.mktemp("tok"))


def files_of(folder: Path) -> dict[str, bytes]:
    """Every output file of a fetch (not its manifest, whose timings differ), by name."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", ".lock")}


def served(hub: FakeHub, subset: str) -> dict[str, list[tuple[int, int]]]:
    """The byte ranges of each data file of ``subset`` that the Hub sent (a whole file as one range)."""
    ranges: dict[str, list[tuple[int, int]]] = {}
    for r in hub.requests:
        if r.method == "GET" and r.repo_file and r.repo_file.startswith(f"{subset}/") and r.repo_file.endswith(".parquet"):
            size = (hub.root / r.repo_file).stat().st_size
            first, _, last = (r.range or f"bytes=0-{size - 1}").removeprefix("bytes=").partition("-")
            ranges.setdefault(r.repo_file, []).append((int(first), min(int(last or size - 1), size - 1) + 1))
    return ranges


def downloaded_once(hub: FakeHub, subset: str) -> None:
    """Each file's bytes were sent at most once, apart from its footer (read by the fetch and by each chunk)."""
    files = served(hub, subset)
    assert len(files) == len(SIZES[subset])
    for name, ranges in files.items():
        size = (hub.root / name).stat().st_size
        footer = size - 8 - int.from_bytes((hub.root / name).read_bytes()[-8:-4], "little")
        body = sorted((a, b) for a, b in ranges if a < footer)
        assert all(b <= footer for _, b in body), f"{name}: a read crossed into the footer"
        assert all(b1 <= a2 for (_, b1), (a2, _) in zip(body, body[1:])), f"{name}: bytes sent twice: {body}"
        assert body and body[0][0] <= 4 + 64 and body[-1][1] >= footer - 64  # every row group was read


@pytest.mark.parametrize("subset, extra", [
    ("fineweb-edu-dedup", []),
    ("cosmopedia-v2", ["--format", "jsonl"]),
    ("python-edu", []),
    ("fineweb-edu-dedup", ["--format", "bin", "--tokenizer", "TOKENIZER", "--shard-tokens", "300000"]),
], ids=["txt", "jsonl", "python-edu", "bin"])
def test_a_fetch_on_dask_writes_the_same_bytes_as_a_local_one(world, cluster, tokenizer_json, tmp_path, subset, extra):
    extra = [str(tokenizer_json) if e == "TOKENIZER" else e for e in extra]
    local = world.fetch(tmp_path / "local", subset, *extra)
    assert local.returncode == 0, local.stderr
    world.hub.clear_requests()
    remote = world.fetch(tmp_path / "remote", subset, *extra, "--dask", cluster.address)
    assert remote.returncode == 0, remote.stderr
    folder = subset
    assert files_of(tmp_path / "remote" / folder) == files_of(tmp_path / "local" / folder)
    assert files_of(tmp_path / "remote" / folder)
    downloaded_once(world.hub, subset)


def test_a_worker_of_two_threads_runs_chunks_in_both_to_the_same_bytes(world, tokenizer_json, tmp_path):
    """One worker process with a thread per core, a shape the README offers for tokenizing; python-edu on it is told."""
    import distributed

    tokens = ["--format", "bin", "--tokenizer", str(tokenizer_json), "--shard-tokens", "300000"]
    with world.cluster("threads", nworkers=1, nthreads=2) as cluster, cluster.client() as client:
        for subset, extra in (("fineweb-edu-dedup", tokens), ("python-edu", [])):
            local = world.fetch(tmp_path / f"local-{subset}", subset, *extra)
            assert local.returncode == 0, local.stderr
            with distributed.get_task_stream(client=client) as stream:
                remote = world.fetch(tmp_path / f"remote-{subset}", subset, *extra, "--dask", cluster.address)
            assert remote.returncode == 0, remote.stderr
            assert files_of(tmp_path / f"remote-{subset}" / subset) == files_of(tmp_path / f"local-{subset}" / subset)
            told = "python-edu's pieces run one at a time in each worker process" in remote.stderr
            assert told == (subset == "python-edu"), remote.stderr
            if subset == "fineweb-edu-dedup":  # its chunks ran in both threads, sharing the process's job
                threads = {t["thread"] for t in stream.data if str(t["key"]).startswith("smollm-corpus-chunk")}
                assert len(threads) == 2
                jobs = client.run(lambda: len(__import__("smollm_corpus.cluster").cluster._jobs))
                assert list(jobs.values()) == [1]


def test_every_worker_fetches_the_job_once_and_nothing_is_left_on_the_cluster(world, cluster, tmp_path):
    result = world.fetch(tmp_path / "out", "fineweb-edu-dedup", "--dask", cluster.address)
    assert result.returncode == 0, result.stderr
    with cluster.client() as client:
        # each worker fetched the job (no chunk depends on it, so none is tied to the worker that made it)
        jobs = client.run(lambda: list(__import__("smollm_corpus.cluster").cluster._jobs))  # by value: run there
        assert len(jobs) == 2 and all(jobs.values())
        assert len({keys[-1] for keys in jobs.values()}) == 1
        for _ in range(50):  # released by the scheduler soon after the client lets go
            state = client.run_on_scheduler(lambda dask_scheduler: (
                [name for name in dask_scheduler.extensions["variables"].variables if name.startswith("smollm-corpus")],
                [key for key in dask_scheduler.tasks if str(key).startswith("smollm-corpus")]))
            if state == ([], []):
                break
            time.sleep(0.1)
        assert state == ([], [])


def test_dedup_signs_on_the_cluster_and_writes_the_same_bytes(world, cluster, tmp_path):
    local = world.fetch(tmp_path / "local", "python-edu", "cosmopedia-v2", "--dedup")
    assert local.returncode == 0, local.stderr
    remote = world.fetch(tmp_path / "remote", "python-edu", "cosmopedia-v2", "--dedup", "--dask", cluster.address)
    assert remote.returncode == 0, remote.stderr
    for folder in ("python-edu", "cosmopedia-v2"):
        assert files_of(tmp_path / "remote" / folder) == files_of(tmp_path / "local" / folder)
    assert (tmp_path / "remote" / "python-edu" / "duplicates.jsonl").stat().st_size > 0  # files differing in numbers


def test_mix_draws_on_the_cluster_to_the_same_bytes(world, cluster, tmp_path):
    args = ["mix", "fineweb-edu-dedup=0.5", "cosmopedia-v2=0.5", "--documents", "300", "--format", "jsonl",
            "--revision", DEFAULT_SHA]
    local = run_cli(*args, "-o", str(tmp_path / "local"), env=world.env("hf-mix-local"))
    assert local.returncode == 0, local.stderr
    world.hub.clear_requests()
    remote = run_cli(*args, "-o", str(tmp_path / "remote"), "--dask", cluster.address, env=world.env("hf-mix-remote"))
    assert remote.returncode == 0, remote.stderr
    assert (tmp_path / "remote" / "input.jsonl").read_bytes() == (tmp_path / "local" / "input.jsonl").read_bytes()
    # only the drawn row groups were read: far from every byte of the 6 fineweb-edu-dedup files
    sent = sum(b - a for ranges in served(world.hub, "fineweb-edu-dedup").values() for a, b in ranges)
    size = sum(p.stat().st_size for p in (world.hub.root / "fineweb-edu-dedup").glob("*.parquet"))
    assert sent < size / 3


def test_a_scheduler_file_names_the_cluster(world, cluster, tmp_path):
    local = world.fetch(tmp_path / "local", "cosmopedia-v2")
    assert local.returncode == 0, local.stderr
    remote = world.fetch(tmp_path / "remote", "cosmopedia-v2", "--dask-scheduler-file", str(cluster.scheduler_file))
    assert remote.returncode == 0, remote.stderr
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local")


def test_the_hub_failing_now_and_then_changes_nothing(world, cluster, tmp_path):
    local = world.fetch(tmp_path / "local", "cosmopedia-v2")
    assert local.returncode == 0, local.stderr
    world.hub.fail_next(3, 503, match="/repos/")  # the "CDN" that answers the workers' range requests
    world.hub.rate_limit(2, match="/repos/")
    try:
        remote = world.fetch(tmp_path / "remote", "cosmopedia-v2", "--dask", cluster.address)
    finally:
        world.hub.clear_failures()
    assert remote.returncode == 0, remote.stderr
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local")
    assert sum(r.status in (429, 503) for r in world.hub.requests) == 5


def test_a_worker_killed_mid_run_changes_nothing(world, cluster, tmp_path):
    local = world.fetch(tmp_path / "local", "fineweb-edu-dedup")
    assert local.returncode == 0, local.stderr
    victim = cluster.worker_pids()[0]
    proc = world.popen(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address)
    manifest = tmp_path / "remote" / "fineweb-edu-dedup" / "manifest.json"
    deadline = time.monotonic() + 60
    while not manifest.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(victim, 9)  # its nanny starts another; its task runs again, there or elsewhere
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert_clean(stderr)
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local")
    cluster.wait_for_workers(cluster.nworkers)


def test_kill_9_of_the_command_then_a_rerun_resumes_to_the_same_bytes(world, cluster, tmp_path):
    local = world.fetch(tmp_path / "local", "fineweb-edu-dedup")
    assert local.returncode == 0, local.stderr
    proc = world.popen(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address)
    state = kill_at_checkpoint(tmp_path / "remote" / "fineweb-edu-dedup" / "manifest.json", proc, rows=1500)
    assert 0 < state["rows"] < sum(SIZES["fineweb-edu-dedup"])
    rerun = world.fetch(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address)
    assert rerun.returncode == 0, rerun.stderr
    assert f"resuming at {state['rows']:,}/" in rerun.stderr
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local")


def checkpointed(manifest: Path):
    """True once ``manifest`` records a checkpoint of a fetch that is not complete."""

    def ready() -> bool:
        try:
            return not json.loads(manifest.read_text())["complete"]
        except (FileNotFoundError, ValueError, KeyError):
            return False

    return ready


def test_ctrl_c_stops_the_cluster_work_and_a_rerun_resumes(world, cluster, tmp_path):
    local = world.fetch(tmp_path / "local", "fineweb-edu-dedup")
    assert local.returncode == 0, local.stderr
    proc = world.popen(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address)
    manifest = tmp_path / "remote" / "fineweb-edu-dedup" / "manifest.json"
    act_when(proc, checkpointed(manifest), lambda: proc.send_signal(signal.SIGINT))
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "run the same command again to resume" in stderr
    assert_clean(stderr)
    rerun = world.fetch(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address)
    assert rerun.returncode == 0, rerun.stderr
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local")


def test_no_worker_then_every_worker_gone_exits_1_and_a_rerun_resumes(world, tmp_path):
    local = world.fetch(tmp_path / "local", "fineweb-edu-dedup")
    assert local.returncode == 0, local.stderr
    with world.cluster("lonely") as cluster:
        cluster.stop_workers()
        started = time.monotonic()
        alone = world.fetch(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address, "--dask-wait", "2")
        assert alone.returncode == 1
        assert "no Dask worker joined" in alone.stderr and "dask worker ADDRESS" in alone.stderr
        assert time.monotonic() - started < 30

        cluster.start_workers()
        proc = world.popen(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address, "--dask-wait", "2")
        manifest = tmp_path / "remote" / "fineweb-edu-dedup" / "manifest.json"
        act_when(proc, checkpointed(manifest), cluster.stop_workers)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 1, stderr
        assert "every Dask worker left" in stderr and "run the same command again to resume" in stderr
        assert_clean(stderr)

        cluster.start_workers()
        rerun = world.fetch(tmp_path / "remote", "fineweb-edu-dedup", "--dask", cluster.address)
        assert rerun.returncode == 0, rerun.stderr
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local")


def test_an_unreachable_scheduler_exits_1_saying_what_to_check(world, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    result = world.fetch(tmp_path / "out", "cosmopedia-v2", "--dask", f"127.0.0.1:{port}", "--dask-wait", "2")
    assert result.returncode == 1
    assert f"cannot reach the Dask scheduler at tcp://127.0.0.1:{port}" in result.stderr
    assert "dask scheduler" in result.stderr


def test_a_missing_scheduler_file_is_a_usage_error(world, tmp_path):
    result = world.fetch(tmp_path / "out", "cosmopedia-v2", "--dask-scheduler-file", str(tmp_path / "nope.json"))
    assert result.returncode == 2
    assert "no Dask scheduler file at" in result.stderr


def test_num_proc_with_dask_is_refused(world, tmp_path):
    result = world.fetch(tmp_path / "out", "cosmopedia-v2", "--dask", "tcp://127.0.0.1:1", "--num-proc", "2")
    assert result.returncode == 2
    assert "--num-proc sets this machine's workers" in result.stderr


def test_workers_of_another_version_are_refused_naming_both(world, tmp_path):
    preload = tmp_path / "other_version.py"
    preload.write_text("import smollm_corpus\nsmollm_corpus.__version__ = '0.0.1'\n")
    with world.cluster("other", nworkers=1, preload=preload) as cluster:
        result = world.fetch(tmp_path / "out", "cosmopedia-v2", "--dask", cluster.address)
    assert result.returncode == 1
    assert f"runs smollm-corpus 0.0.1, and this machine {__version__}" in result.stderr


def _self_signed(folder: Path) -> tuple[Path, Path, Path]:
    """A certificate for 127.0.0.1 that is its own authority: every party uses it."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, cert, key


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_a_tls_cluster_is_used_with_dasks_security_settings(world, tmp_path):
    ca, cert, key = _self_signed(tmp_path)
    tls_env = {"DASK_DISTRIBUTED__COMM__TLS__CA_FILE": str(ca), "DASK_DISTRIBUTED__COMM__TLS__CLIENT__CERT": str(cert),
               "DASK_DISTRIBUTED__COMM__TLS__CLIENT__KEY": str(key), "DASK_DISTRIBUTED__COMM__REQUIRE_ENCRYPTION": "True"}
    local = world.fetch(tmp_path / "local", "cosmopedia-v2")
    assert local.returncode == 0, local.stderr
    with world.cluster("tls", nworkers=1, tls=(ca, cert, key)) as cluster:
        assert cluster.address.startswith("tls://127.0.0.1:")
        bare = world.fetch(tmp_path / "bare", "cosmopedia-v2", "--dask", cluster.address, "--dask-wait", "3")
        assert bare.returncode == 1 and "TLS" in bare.stderr
        args = ["fetch", "cosmopedia-v2", "-o", str(tmp_path / "remote"), "--revision", DEFAULT_SHA,
                "--dask", cluster.address]
        remote = run_cli(*args, env={**world.env("hf-remote"), **tls_env})
        assert remote.returncode == 0, remote.stderr
    assert local.returncode == 0
    assert files_of(tmp_path / "remote") == files_of(tmp_path / "local")


def test_without_distributed_the_message_says_what_to_install(world, tmp_path):
    code = ("import sys; sys.modules['distributed'] = None; sys.argv = ['smollm-corpus'] + sys.argv[1:]; "
            "from smollm_corpus.launch import main; main()")
    args = [sys.executable, "-c", code, "fetch", "cosmopedia-v2", "-o", str(tmp_path), "--revision", DEFAULT_SHA,
            "--dask", "tcp://127.0.0.1:1"]
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, env={**os.environ, **world.env("hf")})
    assert result.returncode == 2
    assert "pip install 'smollm-corpus[dask]'" in result.stderr


def test_a_fetch_without_dask_never_imports_it(world, tmp_path):
    code = ("import sys, smollm_corpus; smollm_corpus.fetch('cosmopedia-v2', sys.argv[1], revision=sys.argv[2]); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed')))")
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path), DEFAULT_SHA], capture_output=True, text=True,
                            timeout=120, env={**os.environ, **world.env("hf")})
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
