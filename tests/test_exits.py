"""Every way a fetch can end prints the tool's own words only, with stderr going to a file as in a batch job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, act_when, assert_clean

SUBSET = "fineweb-edu-dedup"


def run_logged(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI with stderr to a file, as nohup, Slurm or ``2> log`` do; returns the exit code and the log."""
    log = tmp_path / f"log-{time.monotonic_ns()}.txt"
    with open(log, "w") as f:
        code = subprocess.run([CLI, *args], stdout=subprocess.DEVNULL, stderr=f, timeout=180,
                              env={**os.environ, **(env or {})}).returncode
    return code, log.read_text()


def test_success_logs_plain_lines(mirror, tmp_path):
    code, log = run_logged(tmp_path, "fetch", SUBSET, "--source", str(mirror), "-o", str(tmp_path))
    assert code == 0
    assert_clean(log)
    assert log.splitlines()[0] == f"{SUBSET}: starting at 0/850 rows (0.0%)"
    assert log.splitlines()[-1].startswith(f"{SUBSET}: wrote 845 documents")


def test_refused_rerun_and_usage_errors_are_one_message(mirror, tmp_path):
    args = ("fetch", SUBSET, "--source", str(mirror), "-o", str(tmp_path), "--template", "nanogpt")
    assert run_logged(tmp_path, *args, "--limit", "10")[0] == 0
    code, log = run_logged(tmp_path, *args, "--limit", "11")
    assert code == 1 and log.startswith("error: ") and "holds a fetch made with other options" in log
    assert_clean(log)
    code, log = run_logged(tmp_path, *args, "--limit", "-3")
    assert code == 2 and "Invalid value for '--limit'" in log
    assert_clean(log)


def test_unreachable_hub_is_one_message(tmp_path):
    env = {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_XET": "1", "HF_HUB_OFFLINE": "0"}
    code, log = run_logged(tmp_path, "fetch", SUBSET, "--source", "someone/some-corpus", "-o", str(tmp_path), env=env)
    assert code == 1 and "cannot reach the Hub at http://127.0.0.1:9" in log
    assert_clean(log)


def test_unreachable_s3_is_one_message(mirror, tmp_path):
    code, log = run_logged(tmp_path, "fetch", "python-edu", "--source", str(mirror), "-o", str(tmp_path),
                           "--s3-endpoint-url", "http://127.0.0.1:9", "--no-sign-request", "--limit", "300")
    assert code == 1 and "cannot connect to S3 at http://127.0.0.1:9" in log
    assert_clean(log)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stop_signals_are_one_message(big_mirror, tmp_path, sig):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([CLI, "fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path),
                                 "--template", "nanogpt"], stderr=f)
        _at_checkpoint(tmp_path, proc, lambda: proc.send_signal(sig))
        assert proc.wait(timeout=60) == 130
    text = log.read_text()
    assert "safely written; run the same command again to resume" in text
    assert_clean(text)


def test_a_killed_worker_process_is_one_message(big_mirror, tmp_path):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([CLI, "fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path),
                                 "--template", "nanogpt", "--num-proc", "2"], stderr=f)
        workers = []

        def kill_a_worker() -> None:
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            workers.extend(pid for pid in children if b"multiprocessing" in Path(f"/proc/{pid}/cmdline").read_bytes()
                           and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes())
            assert workers, children
            os.kill(int(workers[0]), signal.SIGKILL)

        _at_checkpoint(tmp_path, proc, kill_a_worker)
        assert proc.wait(timeout=60) == 1
    text = log.read_text()
    assert "a worker process died (out of memory, or killed); run the same command again to resume" in text
    assert_clean(text)


def _at_checkpoint(out: Path, proc: subprocess.Popen, action) -> None:
    """Call ``action()`` at the run's first checkpoint, while the run is stopped: it cannot finish first."""
    manifest = out / SUBSET / "manifest.json"

    def checkpointed() -> bool:
        try:
            state = json.loads(manifest.read_text())
        except (FileNotFoundError, ValueError):
            return False
        return bool(state.get("rows")) and not state.get("complete")

    act_when(proc, checkpointed, action, timeout=60)


def test_an_interrupt_that_python_wraps_while_a_class_is_made_is_still_an_interrupt():
    from smollm_corpus.launch import interrupted

    class Interrupting:
        def __set_name__(self, owner, name):
            raise KeyboardInterrupt

    with pytest.raises(BaseException) as raised:
        type("Loading", (), {"attribute": Interrupting()})  # Python 3.11: a RuntimeError caused by the interrupt
    assert interrupted(raised.value)
    try:
        raise RuntimeError("wrapped") from ValueError("not an interrupt")
    except RuntimeError as error:
        assert not interrupted(error)
    assert not interrupted(ImportError("no module"))


@pytest.mark.parametrize("delay", [0.05, 0.2, 0.4])
def test_ctrl_c_while_the_tool_loads_is_one_message(mirror, tmp_path, delay):
    log = tmp_path / "log.txt"
    with open(log, "w") as f:
        proc = subprocess.Popen([CLI, "fetch", SUBSET, "--source", str(mirror), "-o", str(tmp_path)], stderr=f)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    text = log.read_text()
    assert code in (0, 130), text
    assert code == 0 or "interrupted" in text
    assert_clean(text)
