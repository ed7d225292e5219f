"""Interrupt a fetch in every way a user can, rerun the same command, get the same bytes."""

import hashlib
import json
import resource
import signal
import subprocess
import time
from pathlib import Path

import pytest

from conftest import CLI, act_when, kill_at_checkpoint, run_cli

SUBSET = "fineweb-edu-dedup"


@pytest.fixture(scope="module")
def reference(big_mirror, tmp_path_factory) -> bytes:
    """The output of one uninterrupted run."""
    out = tmp_path_factory.mktemp("reference")
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(out), "-q", "--num-proc", "2")
    assert result.returncode == 0, result.stderr
    return (out / SUBSET / "input.txt").read_bytes()


def start(mirror: Path, out: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([CLI, "fetch", SUBSET, "--source", str(mirror), "-o", str(out), "--num-proc", "2", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def at_rows(out: Path, rows: int, proc: subprocess.Popen, action, timeout: float = 60) -> None:
    """Call ``action()`` at the first checkpoint that records at least ``rows`` rows, the run stopped meanwhile.

    The run cannot finish first: it is looked at while stopped, and a complete manifest does not count.
    """
    manifest = out / SUBSET / "manifest.json"

    def ready() -> bool:
        try:
            state = json.loads(manifest.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return False
        return state.get("rows", 0) >= rows and not state.get("complete")

    act_when(proc, ready, action, timeout)


@pytest.mark.parametrize("rows", [0, 6_000, 60_000])
def test_resume_after_kill_9_gives_identical_output(big_mirror, tmp_path, reference, rows):
    proc = start(big_mirror, tmp_path, "-q")
    if rows:
        at_rows(tmp_path, rows, proc, proc.kill)
    else:
        time.sleep(1.0)  # while workers are starting or writing their first parts
        proc.kill()
    proc.wait(timeout=30)
    assert not (tmp_path / SUBSET / "input.txt").exists()
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "--num-proc", "2")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / SUBSET / "input.txt").read_bytes() == reference
    if rows:
        assert "resuming fineweb-edu-dedup after" in result.stderr
    manifest = json.loads((tmp_path / SUBSET / "manifest.json").read_text())
    assert manifest["complete"] and manifest["bytes"] == len(reference)
    assert not (tmp_path / SUBSET / ".parts").exists() and not (tmp_path / SUBSET / "input.txt.incomplete").exists()


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_stops_cleanly_and_says_how_to_resume(big_mirror, tmp_path, reference, sig):
    proc = start(big_mirror, tmp_path)
    at_rows(tmp_path, 1, proc, lambda: proc.send_signal(sig))
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 130, stderr
    assert "rows of fineweb-edu-dedup are safely written; run the same command again to resume" in stderr
    assert "Traceback" not in stderr
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "--num-proc", "1", "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / SUBSET / "input.txt").read_bytes() == reference


def test_disk_full_keeps_partial_output_resumable(big_mirror, tmp_path, reference):
    def small_disk():  # writes past 6 MB fail with EFBIG, like a full disk fails with ENOSPC
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (6 << 20, 6 << 20))

    args = [CLI, "fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "-q"]
    full = subprocess.run(args, capture_output=True, text=True, timeout=120, preexec_fn=small_disk)
    assert full.returncode == 1
    assert "failed: File too large; free some space (or fix permissions), then run the same command again to resume" in full.stderr
    assert "Traceback" not in full.stderr
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / SUBSET / "input.txt").read_bytes() == reference


def test_output_folder_not_writable_is_a_clear_error(mirror, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    result = run_cli("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(blocker / "out"))
    assert result.returncode == 1
    assert "cannot create the output folder" in result.stderr and "choose another --out-dir" in result.stderr


def test_rerun_of_complete_fetch_says_so(mirror, tmp_path):
    args = ("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path), "--limit", "5")
    assert run_cli(*args).returncode == 0
    again = run_cli(*args)
    assert again.returncode == 0
    assert "cosmopedia-v2: already complete in" in again.stderr and "nothing to do" in again.stderr


def test_signal_during_an_append_never_records_counters_without_their_position(big_mirror, tmp_path, reference):
    # Many interrupts at arbitrary moments: every resume must still end in the reference bytes.
    for delay in (0.6, 0.9, 1.2, 1.5):
        proc = start(big_mirror, tmp_path, "-q")
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode in (0, 130)
        path = tmp_path / SUBSET / "manifest.json"
        manifest = json.loads(path.read_text()) if path.exists() else {"complete": True}  # stopped before it began
        partial = tmp_path / SUBSET / "input.txt.incomplete"
        if not manifest["complete"]:
            assert reference.startswith(partial.read_bytes()[: manifest["bytes"]])
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "-q")
    assert result.returncode == 0, result.stderr
    assert (tmp_path / SUBSET / "input.txt").read_bytes() == reference


def test_resume_after_repeated_kills_takes_the_hash_up_without_reading_back(big_mirror, tmp_path, reference):
    # Killed at about 20%, 50% and 85% of the rows; each rerun must start from the checkpointed hash state.
    for rows in (36_000, 90_000, 153_000):
        manifest = kill_at_checkpoint(tmp_path / SUBSET / "manifest.json", start(big_mirror, tmp_path, "-q"), rows)
        assert manifest["hash_state"]
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "--num-proc", "2", "-v")
    assert result.returncode == 0, result.stderr
    assert "resuming fineweb-edu-dedup after" in result.stderr
    assert "hashing the" not in result.stderr  # nothing already written was read back
    output = (tmp_path / SUBSET / "input.txt").read_bytes()
    assert output == reference
    manifest = json.loads((tmp_path / SUBSET / "manifest.json").read_text())
    assert manifest["sha256"] == hashlib.sha256(output).hexdigest() and manifest["hash_state"] is None


def _stopped_run(mirror: Path, out: Path) -> tuple[Path, dict]:
    proc = start(mirror, out, "-q")
    at_rows(out, 30_000, proc, proc.kill)
    proc.wait(timeout=30)
    manifest = json.loads((out / SUBSET / "manifest.json").read_text())
    return out / SUBSET / "input.txt.incomplete", manifest


def test_output_shorter_than_its_checkpoint_stops_with_advice_and_is_kept(big_mirror, tmp_path):
    partial, manifest = _stopped_run(big_mirror, tmp_path)
    with open(partial, "r+b") as f:
        f.truncate(manifest["bytes"] - 1000)
    before = partial.read_bytes()
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "-q")
    assert result.returncode == 1
    assert f"holds {manifest['bytes'] - 1000:,} bytes but its last checkpoint recorded {manifest['bytes']:,}" in result.stderr
    assert "rerun with --overwrite to start again" in result.stderr and "Traceback" not in result.stderr
    assert partial.read_bytes() == before
    assert json.loads((tmp_path / SUBSET / "manifest.json").read_text()) == manifest


def test_output_changed_before_its_checkpoint_is_not_trusted(big_mirror, tmp_path):
    partial, manifest = _stopped_run(big_mirror, tmp_path)
    end = manifest["bytes"]
    with open(partial, "r+b") as f:  # zeros where a file system lost the last pages
        f.seek(end - 10)
        f.write(b"\0" * 10)
    result = run_cli("fetch", SUBSET, "--source", str(big_mirror), "-o", str(tmp_path), "-q")
    assert result.returncode == 1
    assert "differ from those its last checkpoint recorded" in result.stderr and "--overwrite" in result.stderr
