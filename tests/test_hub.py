"""Fetching from the Hub: the real datasets and huggingface_hub code against a fake Hub on 127.0.0.1."""

import json
import os

import pytest

from fakehub import DEFAULT_REPO_ID, DEFAULT_SHA, FakeHub, fake_hub_env
from smollm_corpus import fetch
from smollm_corpus import hub as hub_module
from smollm_corpus.errors import SourceError

from conftest import run_cli


@pytest.fixture
def hub(mirror):
    with FakeHub(mirror) as hub:
        yield hub


def hub_cli(hub, tmp_path, *args):
    return run_cli(*args, "-o", str(tmp_path / "out"), env=hub.env(tmp_path / "hf"))


def test_fetch_from_the_hub_matches_the_local_copy_and_pins_the_commit(hub, mirror, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "fineweb-edu-dedup", "-q")
    assert result.returncode == 0, result.stderr
    local = fetch("fineweb-edu-dedup", tmp_path / "local", source_repo=str(mirror))
    folder = tmp_path / "out" / "fineweb-edu-dedup"
    assert (folder / "input.txt").read_bytes() == local.output.read_bytes()
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["source"] == DEFAULT_REPO_ID and manifest["commit"] == DEFAULT_SHA and manifest["revision"] is None
    assert not (folder / ".staging").exists()
    parquet = sorted(f for f in hub.downloaded_files() if f.endswith(".parquet"))
    assert parquet == sorted(f"fineweb-edu-dedup/{p.name}" for p in (mirror / "fineweb-edu-dedup").glob("*.parquet"))
    assert not [r for r in hub.requests if "datasets-server" in r.path]


def test_limit_downloads_only_the_files_it_needs(hub, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "cosmopedia-v2", "--limit", "120", "-q")
    assert result.returncode == 0, result.stderr
    parquet = [f for f in hub.downloaded_files() if f.endswith(".parquet")]
    assert parquet == ["cosmopedia-v2/train-00000-of-00003.parquet"]
    assert (tmp_path / "out" / "cosmopedia-v2" / "input.txt").read_text().startswith("Document 0 of cosmopedia-v2")


def test_files_already_in_the_hf_cache_are_read_from_there_and_kept(hub, tmp_path, monkeypatch):
    blocked = fake_hub_env(monkeypatch, hub, tmp_path)
    from huggingface_hub import hf_hub_download

    cached = hf_hub_download(DEFAULT_REPO_ID, "cosmopedia-v2/train-00000-of-00003.parquet", repo_type="dataset", revision=DEFAULT_SHA)
    hub.clear_requests()
    fetch("cosmopedia-v2", tmp_path / "out", limit=10)
    assert not [f for f in hub.downloaded_files() if f.endswith(".parquet")]
    assert os.path.exists(cached) and not blocked


def test_transient_hub_errors_are_retried(hub, tmp_path, monkeypatch):
    blocked = fake_hub_env(monkeypatch, hub, tmp_path)
    monkeypatch.setattr(hub_module, "RETRY_BASE_SECONDS", 0.01)
    hub.fail_next(2, 503, match="/api/datasets/")
    hub.rate_limit(1, match="/api/datasets/")
    result = fetch("cosmopedia-v2", tmp_path / "out", limit=10)
    assert result.stats.rows == 10 and not blocked


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda hub: setattr(hub, "repo_exists", False), "was not found, or needs authentication: check --source, and set HF_TOKEN"),
        (lambda hub: setattr(hub, "gated", "manual"), "is gated: accept its terms on the Hub, then set HF_TOKEN"),
        (lambda hub: hub.fail_next(None, 500), "the Hub answered HTTP 500"),
        (lambda hub: hub.rate_limit(None), "rate-limiting requests"),
    ],
)
def test_hub_failures_name_the_cause_and_the_remedy(hub, tmp_path, monkeypatch, setup, message):
    blocked = fake_hub_env(monkeypatch, hub, tmp_path)
    monkeypatch.setattr(hub_module, "RETRY_BASE_SECONDS", 0.001)
    setup(hub)
    with pytest.raises(SourceError) as info:
        fetch("cosmopedia-v2", tmp_path / "out", limit=10)
    assert message in str(info.value)
    assert not (tmp_path / "out" / "cosmopedia-v2" / "input.txt").exists()
    assert not blocked


def test_unknown_revision_is_named(hub, tmp_path):
    result = hub_cli(hub, tmp_path, "fetch", "cosmopedia-v2", "--revision", "no-such-branch")
    assert result.returncode == 1
    assert "revision not found; check --revision" in result.stderr


def test_unreachable_hub_says_so(mirror, tmp_path, monkeypatch):
    with FakeHub(mirror) as hub:
        blocked = fake_hub_env(monkeypatch, hub, tmp_path)
        endpoint = hub.endpoint
    monkeypatch.setattr(hub_module, "RETRY_BASE_SECONDS", 0.001)
    with pytest.raises(SourceError) as info:  # the hub has stopped: nothing listens there now
        fetch("cosmopedia-v2", tmp_path / "out")
    assert f"cannot reach the Hub at {endpoint}" in str(info.value)
    assert "check the network, proxy and HF_ENDPOINT, then rerun the same command to resume" in str(info.value)
    assert not blocked
