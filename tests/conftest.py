"""Shared fixtures: an isolated environment, a local mirror of the Hub repository, the installed CLI."""

from __future__ import annotations

import json
import os
import signal
import time

# Before datasets and huggingface_hub are imported (they read these once): no request may leave
# 127.0.0.1, neither datasets' download counter nor boto3's instance-metadata probe.
os.environ.update(HF_UPDATE_DOWNLOAD_COUNTS="0", HF_HUB_DISABLE_TELEMETRY="1", AWS_EC2_METADATA_DISABLED="true")
import subprocess
import sys
from pathlib import Path

import pytest

import pyarrow as pa

from mirror import build_mirror, rows_for


# A suite started in the background of a script (`cmd &` without job control) inherits Ctrl-C
# ignored, and so would every command it starts: the tests that send SIGINT need its default.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

CLI = str(Path(sys.executable).with_name("smollm-corpus"))


@pytest.fixture(autouse=True)
def isolated_env(tmp_path_factory, monkeypatch):
    """No test reads the user's caches or credentials, or reaches beyond 127.0.0.1."""
    home = tmp_path_factory.mktemp("hf_home")
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(home / "aws_config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "aws_credentials"))
    for name in ("SMOLLM_CORPUS_SOURCE", "AWS_ENDPOINT_URL", "AWS_PROFILE", "AWS_ACCESS_KEY_ID",
                 "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def mirror(tmp_path_factory) -> Path:
    """A small mirror of the Hub repository: three subsets, several parquet files each."""
    return build_mirror(tmp_path_factory.mktemp("mirror"))


def _heavy_rows(subset: str, start: int, stop: int):
    """fineweb-edu-dedup rows of about 6 KB of text each, a few of them empty."""
    table = rows_for(subset, start, stop)
    texts = [("" if i % 101 == 0 else f"Document {i}. " + FILLER[i % 7 :]) for i in range(start, stop)]
    return table.set_column(0, "text", pa.array(texts, pa.string()))


FILLER = "Heavy text for interrupting a run in the middle of its work. " * 100


@pytest.fixture(scope="session")
def big_mirror(tmp_path_factory) -> Path:
    """Enough work (about 1 GB of output, a few seconds) to interrupt a run in the middle of it."""
    return build_mirror(tmp_path_factory.mktemp("big_mirror"), {"fineweb-edu-dedup": [6000] * 30},
                        row_group_size=500, rows=_heavy_rows)


#: what must never follow the tool's own words on stderr (without -v)
NOISE = ("resource_tracker", "Warning", "warnings.warn", "Traceback", "\r")


def assert_clean(stderr: str) -> None:
    """Only the tool's own lines: no interpreter warnings, no traceback, no progress redrawn in place."""
    for noise in NOISE:
        assert noise not in stderr, f"{noise!r} in stderr:\n{stderr}"


def run_cli(*args: str, timeout: float = 120, env: dict[str, str] | None = None, **kwargs) -> subprocess.CompletedProcess:
    """Run the installed ``smollm-corpus`` in a subprocess, as a user would; ``env`` adds variables.

    Every run's stderr (not a terminal here) is checked with :func:`assert_clean`, unless it asked for -v.
    """
    result = subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})}, **kwargs)
    if "-v" not in args and "--verbose" not in args:
        assert_clean(result.stderr)
    return result


def kill_at_checkpoint(manifest: Path, proc: subprocess.Popen, rows: int, timeout: float = 120) -> dict:
    """SIGKILL ``proc`` at its first checkpoint that records at least ``rows`` rows; returns that manifest."""
    seen: dict = {}

    def checkpointed() -> bool:
        try:
            seen.update(json.loads(manifest.read_text()))
        except (FileNotFoundError, ValueError):
            return False
        return seen.get("rows", 0) >= rows

    kill_when(proc, checkpointed, timeout)
    assert not seen["complete"], "the fetch finished before it could be killed"
    return seen


def act_when(proc: subprocess.Popen, ready, action, timeout: float = 120) -> None:
    """Call ``action()`` while ``proc`` is stopped, as soon as ``ready()`` holds (looking while it is stopped), then let it go on.

    The run goes on 5 ms at a time between 10 ms stops: a checkpoint (every 0.5 s of wall time)
    falls every third of what it would do in that time, and however fast the machine, it cannot
    run from one moment worth catching past its end between two looks.
    """
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            proc.send_signal(signal.SIGSTOP)
            time.sleep(0.01)
            if ready():
                action()
                proc.send_signal(signal.SIGCONT)
                return
            proc.send_signal(signal.SIGCONT)
            time.sleep(0.005)
    except BaseException:
        proc.kill()
        raise
    proc.kill()
    raise AssertionError("the run ended or stalled before the moment to act")


def kill_when(proc: subprocess.Popen, ready, timeout: float = 120) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` holds, looking while it is stopped (:func:`act_when`)."""
    try:
        act_when(proc, ready, proc.kill, timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)
