"""The fake Hub answers the real ``huggingface_hub`` / ``datasets`` code paths, failures included."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
import types
from collections.abc import Iterator
from pathlib import Path

import datasets
import httpx2
import huggingface_hub
import pyarrow.parquet as pq
import pytest
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RemoteEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import _http

from fakehub import DEFAULT_REPO_ID, FakeHub, block_external_network, fake_hub_env
from mirror import SCHEMAS, blob_id_for, build_mirror

REPO = DEFAULT_REPO_ID
FIRST = "python-edu/train-00000-of-00002.parquet"
SECOND = "python-edu/train-00001-of-00002.parquet"


@pytest.fixture(scope="session")
def hub_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our own default-layout mirror, so the row counts below do not depend on other fixtures."""
    return build_mirror(tmp_path_factory.mktemp("hub_mirror"))


@pytest.fixture
def hub(hub_mirror: Path) -> Iterator[FakeHub]:
    with FakeHub(hub_mirror) as hub:
        yield hub


@pytest.fixture
def env(hub: FakeHub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[FakeHub]:
    blocked = fake_hub_env(monkeypatch, hub, tmp_path)
    yield hub
    assert blocked == [], f"tests tried to reach external hosts: {blocked}"


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record huggingface_hub's backoff sleeps instead of waiting (only its own module is patched)."""
    recorded: list[float] = []
    fake_time = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    fake_time.sleep = recorded.append
    monkeypatch.setattr(_http, "time", fake_time)
    return recorded


def _download(hub: FakeHub, tmp_path: Path, filename: str = FIRST, **kwargs: object) -> str:
    kwargs.setdefault("revision", hub.sha)
    return huggingface_hub.hf_hub_download(REPO, filename, repo_type="dataset", local_dir=tmp_path / "dl", **kwargs)


# -- the four calls the project relies on ---------------------------------------------------------


@pytest.mark.parametrize("revision", [None, "main", "sha"])
def test_load_dataset_builder_reads_card_and_resolves_hf_urls(env: FakeHub, revision: str | None) -> None:
    hub = env
    rev = hub.sha if revision == "sha" else revision
    builder = datasets.load_dataset_builder(REPO, "python-edu", revision=rev)

    assert builder.config.data_files["train"] == [hub.hf_uri(FIRST), hub.hf_uri(SECOND)]
    assert builder.info.splits["train"].num_examples == 750
    assert builder.info.features == datasets.Features.from_arrow_schema(SCHEMAS["python-edu"])
    # Only the card is read; data files are listed, never downloaded.
    assert hub.downloaded_files() == ["README.md"]
    assert hub.count("/tree/", "GET") >= 1


def test_dataset_info_returns_the_commit_sha(env: FakeHub) -> None:
    info = huggingface_hub.HfApi().dataset_info(REPO, revision="main")
    assert info.sha == env.sha
    assert info.card_data is not None and info.card_data.license == "odc-by"
    assert FIRST in [s.rfilename for s in info.siblings or []]


def test_dataset_info_files_metadata(env: FakeHub, hub_mirror: Path) -> None:
    info = huggingface_hub.HfApi().dataset_info(REPO, files_metadata=True)
    siblings = {s.rfilename: s for s in info.siblings or []}
    assert siblings[FIRST].size == (hub_mirror / FIRST).stat().st_size
    assert siblings[FIRST].lfs is not None and siblings["README.md"].lfs is None


def test_hf_hub_download_is_byte_exact_and_fetches_only_that_file(
    env: FakeHub, hub_mirror: Path, tmp_path: Path
) -> None:
    path = _download(env, tmp_path)

    assert Path(path).read_bytes() == (hub_mirror / FIRST).read_bytes()
    assert env.downloaded_files() == [FIRST]
    methods = [(r.method, r.status) for r in env.requests]
    assert methods == [("HEAD", 302), ("GET", 200)]  # metadata from the redirect, bytes from the "CDN"


def test_hf_hub_download_by_branch_into_cache(env: FakeHub, hub_mirror: Path) -> None:
    path = huggingface_hub.hf_hub_download(REPO, "README.md", repo_type="dataset", revision="main")
    assert Path(path).read_bytes() == (hub_mirror / "README.md").read_bytes()
    assert f"/snapshots/{env.sha}/" in path


def test_resolve_sends_no_xet_headers(env: FakeHub) -> None:
    url = huggingface_hub.hf_hub_url(REPO, FIRST, repo_type="dataset", revision=env.sha)
    response = httpx2.head(url)
    assert response.status_code == 302
    assert response.headers["X-Repo-Commit"] == env.sha
    assert not [h for h in response.headers if h.lower().startswith("x-xet")]
    assert "xet-auth" not in response.headers.get("Link", "")


def test_range_requests(env: FakeHub, hub_mirror: Path) -> None:
    data = (hub_mirror / FIRST).read_bytes()
    url = huggingface_hub.hf_hub_url(REPO, FIRST, repo_type="dataset", revision=env.sha)
    with httpx2.Client(follow_redirects=True) as client:
        part = client.get(url, headers={"Range": "bytes=10-19"})
        tail = client.get(url, headers={"Range": "bytes=-8"})
        beyond = client.get(url, headers={"Range": f"bytes={len(data)}-"})
    assert (part.status_code, part.content) == (206, data[10:20])
    assert part.headers["Content-Range"] == f"bytes 10-19/{len(data)}"
    assert (tail.status_code, tail.content) == (206, data[-8:])
    assert beyond.status_code == 416 and beyond.headers["Content-Range"] == f"bytes */{len(data)}"


def test_hf_file_system_reads_parquet_footer_with_range_requests(env: FakeHub, hub_mirror: Path) -> None:
    fs = huggingface_hub.HfFileSystem(skip_instance_cache=True)
    uri = f"hf://datasets/{REPO}@{env.sha}/{FIRST}"
    with fs.open(uri) as f:
        metadata = pq.read_metadata(f)
    assert metadata.num_rows == 400
    assert env.downloaded_files() == [FIRST]
    reads = [r for r in env.requests if r.repo_file]
    assert reads and all(r.status == 206 and r.range for r in reads)

    # A small block size shows that only the requested bytes travel.
    env.clear_requests()
    size = (hub_mirror / FIRST).stat().st_size
    with fs.open(uri, block_size=1024) as f:
        f.seek(-8, os.SEEK_END)
        assert f.read(8)[-4:] == b"PAR1"
    [read] = [r for r in env.requests if r.repo_file]
    assert read.range == f"bytes={size - 8}-{size - 1}"


def test_load_dataset_end_to_end_downloads_only_the_subset(env: FakeHub) -> None:
    ds = datasets.load_dataset(REPO, "python-edu", split="train")

    assert len(ds) == 750
    assert ds[0]["blob_id"] == blob_id_for(0) and ds[749]["blob_id"] == blob_id_for(749)
    assert sorted(f for f in env.downloaded_files() if f.endswith(".parquet")) == [FIRST, SECOND]


def test_tree_listing_paginates(env: FakeHub, hub_mirror: Path) -> None:
    env.tree_page_size = 2
    entries = list(huggingface_hub.HfApi().list_repo_tree(REPO, repo_type="dataset", recursive=True))
    expected = {p.relative_to(hub_mirror).as_posix() for p in hub_mirror.rglob("*")}
    assert {e.path for e in entries} == expected
    assert env.count("/tree/", "GET") == -(-len(expected) // 2)


def test_paths_info(env: FakeHub) -> None:
    infos = huggingface_hub.HfApi().get_paths_info(
        REPO, [FIRST, "python-edu", "missing.txt"], repo_type="dataset", revision=env.sha, expand=True
    )
    assert [type(i).__name__ for i in infos] == ["RepoFile", "RepoFolder"]
    assert infos[0].lfs is not None and infos[0].last_commit is not None and infos[0].last_commit.oid == env.sha


# -- failure modes --------------------------------------------------------------------------------


def test_repository_not_found(env: FakeHub, tmp_path: Path) -> None:
    env.repo_exists = False
    api = huggingface_hub.HfApi()
    with pytest.raises(RepositoryNotFoundError) as anonymous:
        api.dataset_info(REPO)
    with pytest.raises(RepositoryNotFoundError) as authenticated:
        api.dataset_info(REPO, token="hf_fake_token")
    with pytest.raises(RepositoryNotFoundError):
        _download(env, tmp_path)
    with pytest.raises(datasets.exceptions.DatasetNotFoundError):
        datasets.load_dataset_builder(REPO, "python-edu")
    assert anonymous.value.response.status_code == 401  # the Hub hides private repos from anonymous users
    assert authenticated.value.response.status_code == 404


def test_other_repo_is_not_found(env: FakeHub) -> None:
    with pytest.raises(RepositoryNotFoundError):
        huggingface_hub.HfApi().dataset_info("HuggingFaceTB/other-corpus")


def test_revision_not_found(env: FakeHub, tmp_path: Path) -> None:
    api = huggingface_hub.HfApi()
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="v9")
    with pytest.raises(RevisionNotFoundError):
        _download(env, tmp_path, revision="v9")
    env.branches.pop("main")  # e.g. the default branch was renamed
    with pytest.raises(RevisionNotFoundError):
        api.dataset_info(REPO, revision="main")
    with pytest.raises(datasets.exceptions.DatasetNotFoundError, match="Revision 'main'"):
        datasets.load_dataset_builder(REPO, "python-edu", revision="main")
    assert api.dataset_info(REPO, revision=env.sha).sha == env.sha  # the commit itself still resolves


def test_entry_not_found(env: FakeHub, tmp_path: Path) -> None:
    with pytest.raises(RemoteEntryNotFoundError):
        _download(env, tmp_path, filename="python-edu/nope.parquet")


def test_gated_repo(env: FakeHub, tmp_path: Path) -> None:
    env.gated = "manual"
    with pytest.raises(GatedRepoError) as anonymous:
        _download(env, tmp_path)
    with pytest.raises(GatedRepoError) as authenticated:
        _download(env, tmp_path, token="hf_fake_token")
    with pytest.raises(datasets.exceptions.DatasetNotFoundError, match="gated"):
        datasets.load_dataset_builder(REPO, "python-edu")
    assert (anonymous.value.response.status_code, authenticated.value.response.status_code) == (401, 403)
    assert huggingface_hub.HfApi().dataset_info(REPO).gated == "manual"  # metadata stays visible


def test_rate_limited_without_retry_raises(env: FakeHub, sleeps: list[float]) -> None:
    env.rate_limit(1, retry_after=7)
    with pytest.raises(HfHubHTTPError) as exc:
        huggingface_hub.HfApi().dataset_info(REPO)  # plain GET: huggingface_hub does not retry it
    response = exc.value.response
    assert (response.status_code, response.headers["Retry-After"]) == (429, "7")
    assert sleeps == []


def test_rate_limited_download_waits_retry_after(env: FakeHub, sleeps: list[float], tmp_path: Path) -> None:
    env.rate_limit(2, retry_after=3, match="/resolve/")
    _download(env, tmp_path)
    # First HEAD fails fast (cache fallback), the second attempt retries after Retry-After + 1 s.
    assert sleeps == [4.0]
    assert env.count("/resolve/", "HEAD") == 3


def test_server_errors_are_retried_with_exponential_backoff(env: FakeHub, sleeps: list[float]) -> None:
    env.fail_next(3, 503, match="/tree/")
    entries = list(huggingface_hub.HfApi().list_repo_tree(REPO, repo_type="dataset"))
    assert entries
    assert sleeps == [1, 2, 4]
    assert [r.status for r in env.requests] == [503, 503, 503, 200]


def test_persistent_server_error_gives_up(env: FakeHub, sleeps: list[float]) -> None:
    env.fail_next(None, 500, match="/tree/")
    with pytest.raises(HfHubHTTPError) as exc:
        list(huggingface_hub.HfApi().list_repo_tree(REPO, repo_type="dataset"))
    assert exc.value.response.status_code == 500
    assert sleeps == [1, 2, 4, 8, 8]  # 5 retries, capped at 8 s
    env.clear_failures()
    assert list(huggingface_hub.HfApi().list_repo_tree(REPO, repo_type="dataset"))


def test_server_error_on_download_get_is_not_retried(env: FakeHub, sleeps: list[float], tmp_path: Path) -> None:
    env.fail_next(1, 502, match="/repos/")  # the CDN GET
    with pytest.raises(HfHubHTTPError) as exc:
        _download(env, tmp_path)
    assert exc.value.response.status_code == 502 and sleeps == []


def test_hub_down_without_cache_raises_local_entry_not_found(
    env: FakeHub, sleeps: list[float], tmp_path: Path
) -> None:
    env.fail_next(None, 504)
    with pytest.raises(LocalEntryNotFoundError):
        _download(env, tmp_path)
    assert len(sleeps) == 5


def test_hf_file_system_range_reads_retry(env: FakeHub, sleeps: list[float]) -> None:
    fs = huggingface_hub.HfFileSystem(skip_instance_cache=True)
    with fs.open(f"hf://datasets/{REPO}@{env.sha}/{FIRST}", block_size=4096) as f:
        env.fail_next(2, 502, match="/repos/")
        assert pq.read_metadata(f).num_rows == 400
    assert sleeps == [1, 2]


# -- server mechanics -----------------------------------------------------------------------------


def test_endpoint_and_request_log(hub: FakeHub) -> None:
    assert hub.endpoint.startswith("http://127.0.0.1:") and hub.port > 0
    response = httpx2.get(f"{hub.endpoint}/api/datasets/{REPO}")
    assert response.json()["sha"] == hub.sha
    assert [(r.method, r.path, r.status) for r in hub.requests] == [("GET", f"/api/datasets/{REPO}", 200)]
    assert httpx2.get(f"{hub.endpoint}/nothing/here").status_code == 404
    hub.clear_requests()
    assert hub.requests == []


def test_stop_closes_idle_keep_alive_connections(hub_mirror: Path) -> None:
    hub = FakeHub(hub_mirror).start()
    client = httpx2.Client()
    assert client.get(f"{hub.endpoint}/api/datasets/{REPO}").status_code == 200  # connection stays pooled
    started = time.monotonic()
    hub.stop()
    assert time.monotonic() - started < 2
    client.close()
    hub.stop()  # idempotent


def test_concurrent_requests_are_bounded(hub_mirror: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    with FakeHub(hub_mirror, max_connections=2) as hub:
        def fetch(_: int) -> int:
            return httpx2.get(f"{hub.endpoint}/api/datasets/{REPO}", headers={"Connection": "close"}).status_code

        with ThreadPoolExecutor(8) as pool:
            assert list(pool.map(fetch, range(16))) == [200] * 16


def test_network_guard_blocks_external_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = block_external_network(monkeypatch)
    with pytest.raises(socket.gaierror):
        socket.getaddrinfo("huggingface.co", 443)
    assert socket.getaddrinfo("127.0.0.1", 80)
    assert blocked == ["huggingface.co"]


def test_subprocess_uses_env(hub: FakeHub, hub_mirror: Path, tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import sys
        from huggingface_hub import HfApi, hf_hub_download
        print(HfApi().dataset_info({REPO!r}, revision="main").sha)
        print(hf_hub_download({REPO!r}, {FIRST!r}, repo_type="dataset", revision=sys.argv[1]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script, hub.sha],
        env={**os.environ, **hub.env(tmp_path / "hf")},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    sha, path = result.stdout.split()
    assert sha == hub.sha
    assert Path(path).read_bytes() == (hub_mirror / FIRST).read_bytes()
