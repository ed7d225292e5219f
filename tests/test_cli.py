"""Command-line parsing, help and error messages, through click's runner and the installed script."""

import contextlib
import os
import subprocess

import pytest
from click.testing import CliRunner

from smollm_corpus.cli import main

from conftest import CLI, run_cli


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


@pytest.mark.parametrize("command", [[], ["list"], ["fetch"]])
def test_every_command_has_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0 and "Usage:" in result.output and len(result.output) > 100


def test_list_shows_rows_size_columns_and_default_template():
    result = invoke("list")
    assert result.exit_code == 0
    assert "cosmopedia-v2\n  rows:      39,134,000\n  download:  122 GB" in result.output
    assert "columns:   blob_id, repo_name, path, length_bytes, score, int_score, text" in result.output
    assert "template text (default): '{text}'" in result.output


def test_unknown_subset_is_a_usage_error_listing_the_valid_ones():
    result = invoke("fetch", "cosmo")
    assert result.exit_code == 2
    assert "unknown subset 'cosmo'; choose one of: cosmopedia-v2, python-edu, fineweb-edu-dedup" in result.output


def test_subsets_and_all_are_exclusive():
    assert invoke("fetch").exit_code == 2
    result = invoke("fetch", "--all", "cosmopedia-v2")
    assert result.exit_code == 2 and "name one or more subsets, or --all (not both)" in result.output


def test_unknown_template_column_exits_2_listing_columns_and_writes_nothing(mirror, tmp_path):
    result = invoke("fetch", "fineweb-edu-dedup", "--source", str(mirror), "-o", str(tmp_path), "--template", "{url}")
    assert result.exit_code == 2
    assert "error: template placeholder {url} names no column of fineweb-edu-dedup; columns: text, id, metadata, metadata.dump, metadata.url" in result.output
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("size, ok", [("500M", True), ("2G", True), ("1048576", True), ("1.5k", True), ("lots", False)])
def test_max_bytes_takes_human_sizes(mirror, tmp_path, size, ok):
    result = invoke("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path), "-q", "--max-bytes", size)
    assert result.exit_code == (0 if ok else 2), result.output
    if not ok:
        assert "'lots' is not a size; write it like 500M, 2G or 1048576" in result.output


def test_separator_with_jsonl_is_a_usage_error(mirror, tmp_path):
    result = invoke("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path), "--format", "jsonl", "--separator", "x")
    assert result.exit_code == 2 and "--separator applies to txt output only" in result.output


def test_source_comes_from_the_environment_too(mirror, tmp_path, monkeypatch):
    monkeypatch.setenv("SMOLLM_CORPUS_SOURCE", str(mirror))
    result = invoke("fetch", "cosmopedia-v2", "-o", str(tmp_path), "-q", "--limit", "3")
    assert result.exit_code == 0, result.output
    assert (tmp_path / "cosmopedia-v2" / "input.txt").read_text().startswith("Document 0 of cosmopedia-v2")


def test_errors_are_one_paragraph_without_traceback_unless_verbose(tmp_path):
    quiet = run_cli("fetch", "cosmopedia-v2", "--source", str(tmp_path / "missing"), "-o", str(tmp_path))
    assert quiet.returncode == 1
    assert quiet.stderr.startswith("error: source folder") and "Traceback" not in quiet.stderr
    assert quiet.stderr.count("\n") == 1
    verbose = run_cli("fetch", "cosmopedia-v2", "--source", str(tmp_path / "missing"), "-o", str(tmp_path), "-v")
    assert verbose.returncode == 1 and "Traceback" in verbose.stderr


def test_progress_and_summary_go_to_stderr_and_quiet_silences_them(mirror, tmp_path):
    loud = run_cli("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path / "a"))
    assert loud.returncode == 0 and loud.stdout == ""
    assert "cosmopedia-v2: starting at 0/830 rows (0.0%)" in loud.stderr
    assert "cosmopedia-v2: wrote 825 documents" in loud.stderr and "skipped: 5 empty" in loud.stderr
    quiet = run_cli("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path / "b"), "-q")
    assert quiet.returncode == 0 and quiet.stderr == "" and quiet.stdout == ""


def test_progress_for_logs_is_plain_lines_at_an_interval(mirror, tmp_path, monkeypatch):
    from smollm_corpus import cli

    monkeypatch.setattr(cli, "LOG_EVERY_SECONDS", 0.0)
    result = invoke("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path))
    assert result.exit_code == 0 and "\r" not in result.output
    lines = result.output.splitlines()
    progress = [line for line in lines[1:-1] if " rows (" in line]
    assert progress and all(line.startswith("cosmopedia-v2: ") and "rows/s, ETA " in line for line in progress)
    assert "830/830 rows (100.0%), 825 documents" in progress[-1]


def test_progress_on_a_terminal_is_a_bar(mirror, tmp_path):
    import fcntl
    import pty
    import struct
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal has a size
    proc = subprocess.run([CLI, "fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path)],
                          stderr=follower, stdout=subprocess.DEVNULL, timeout=120)
    os.close(follower)
    shown = b""
    with contextlib.suppress(OSError):
        while chunk := os.read(leader, 65536):
            shown += chunk
    os.close(leader)
    assert proc.returncode == 0
    assert b"\r" in shown and b"cosmopedia-v2: 100%" in shown


def test_python_m_runs_the_cli():
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "smollm_corpus", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "smollm-corpus, version" in result.stdout


def test_an_unexpected_failure_is_one_paragraph_too(mirror, tmp_path, monkeypatch):
    from smollm_corpus import cli

    def broken(*args, **kwargs):
        raise RuntimeError("something nobody foresaw")

    monkeypatch.setattr(cli, "fetch", broken)
    result = invoke("fetch", "cosmopedia-v2", "--source", str(mirror), "-o", str(tmp_path))
    assert result.exit_code == 1
    assert "error: cosmopedia-v2 failed unexpectedly (RuntimeError: something nobody foresaw)" in result.output
    assert "Traceback" not in result.output
