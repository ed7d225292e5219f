"""A fake Hugging Face Hub serving a local directory as a dataset repository on 127.0.0.1.

``FakeHub(root)`` serves ``root`` (laid out like the Hub repository, e.g. written by
``tests.mirror.build_mirror``) as the dataset repo ``HuggingFaceTB/smollm-corpus`` at one fixed
commit, speaking the HTTP API that ``huggingface_hub`` and ``datasets`` actually use:

* ``GET  /api/datasets/{repo}[/revision/{rev}]``  repo info (``sha``, ``cardData``, ``siblings``)
* ``GET  /api/datasets/{repo}/tree/{rev}[/{path}]``  listing (``recursive``, ``expand``, cursor pages)
* ``POST /api/datasets/{repo}/paths-info/{rev}``  path infos (form or JSON body)
* ``GET  /api/datasets/{repo}/refs``  branches
* ``HEAD|GET /datasets/{repo}/resolve/{rev}/{path}``  regular files redirect (307) to
  ``/api/resolve-cache/...`` on the same host; LFS files (parquet, ...) redirect (302) to a
  "CDN" on ``http://localhost:{port}/repos/...``, a different origin, exactly like the real
  Hub sends them to its CDN.  Content answers support ``Range``, ``ETag``, ``X-Repo-Commit``,
  ``X-Linked-Etag``/``X-Linked-Size`` and ``Content-Length``; no Xet headers are ever sent,
  so clients always use plain HTTP downloads.

Errors are answered the way the Hub does (status, ``X-Error-Code``, ``X-Error-Message``, JSON
``{"error": ...}`` body), so ``huggingface_hub`` raises its own exception classes:
``hub.repo_exists = False`` -> ``RepositoryNotFoundError`` (401 anonymous / 404 with a token),
unknown revision -> ``RevisionNotFoundError``, ``hub.gated = "manual"`` -> ``GatedRepoError``
on file downloads, ``hub.rate_limit(n)`` -> 429 with ``Retry-After`` and ``RateLimit`` headers,
``hub.fail_next(n, 503)`` -> the next ``n`` matching requests fail (for retry/backoff tests).
Every request is recorded in ``hub.requests``; ``hub.downloaded_files()`` lists the repo files
whose bytes were served.

``hub.add_repo(root2, "acme/other")`` serves another folder as another dataset repo on the same
server (one ``HF_ENDPOINT`` for all); it returns that repo's own ``FakeHub`` for its switches, while
requests are recorded on ``hub``.

Pointing the libraries at it
----------------------------
Subprocesses: pass ``env={**os.environ, **hub.env(tmp_path / "hf")}``.  That sets
``HF_ENDPOINT``, a private ``HF_HOME``, ``HF_HUB_DISABLE_XET=1``,
``HF_UPDATE_DOWNLOAD_COUNTS=0`` (otherwise ``datasets`` HEADs s3.amazonaws.com on every load)
and disables telemetry and the implicit token.  One leak cannot be switched off by
environment: ``datasets`` asks the dataset viewer at ``datasets-server.<endpoint host>`` for
exported infos when ``revision`` is None or ``"main"`` (a DNS lookup of
``datasets-server.127.0.0.1`` that fails and is ignored); pass ``revision=hub.sha`` to avoid it.

In-process: both libraries read ``HF_ENDPOINT`` into module constants at import time, so
setting the variable is not enough.  ``fake_hub_env(monkeypatch, hub, tmp_path)`` does it all:
sets the variables above, patches ``huggingface_hub.constants`` (``ENDPOINT``,
``HUGGINGFACE_CO_URL_TEMPLATE`` -- ``hf_hub_url`` formats that template, so patching
``ENDPOINT`` alone still yields ``https://huggingface.co`` URLs -- cache paths, token paths,
``HF_HUB_DISABLE_XET``), patches ``datasets.config`` (``HF_ENDPOINT``, ``HUB_DATASETS_URL``,
cache paths, ``USE_PARQUET_EXPORT = False``, ``HF_UPDATE_DOWNLOAD_COUNTS = False``), closes
the shared ``huggingface_hub`` HTTP client (so no pooled connection from an earlier test is
reused) and, by default, makes any DNS lookup of a non-loopback host fail.  It returns the
list of blocked host names so a test can assert it stayed empty::

    @pytest.fixture
    def hub(tmp_path_factory):
        with FakeHub(build_mirror(tmp_path_factory.mktemp("mirror"))) as hub:
            yield hub

    def test_x(hub, monkeypatch, tmp_path):
        blocked = fake_hub_env(monkeypatch, hub, tmp_path)
        builder = datasets.load_dataset_builder(DEFAULT_REPO_ID, "python-edu")
        assert not blocked
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import yaml

DEFAULT_REPO_ID = "HuggingFaceTB/smollm-corpus"
DEFAULT_SHA = "3ba9d605774198c5868892d7a8deda78031a781f"
DEFAULT_COMMIT_DATE = "2024-09-06T07:09:49.000Z"

# Extensions the Hub stores with LFS (from its default .gitattributes); others are plain git blobs.
LFS_SUFFIXES = frozenset(
    {".parquet", ".arrow", ".bin", ".safetensors", ".gz", ".zst", ".zip", ".tar", ".npy", ".pt", ".h5"}
)
_LFS_SIZE_THRESHOLD = 10 * 1024 * 1024  # the Hub also rejects larger non-LFS files
_CDN_HOST = "localhost"  # a different origin than 127.0.0.1: clients must not follow it on HEAD
_LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
_CHUNK = 1024 * 1024

Gated = Literal[False, "auto", "manual"]


@dataclass(frozen=True)
class RecordedRequest:
    """One request the fake Hub answered."""

    method: str
    path: str  # URL path as sent (percent-encoded)
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    status: int
    repo_file: str | None = None  # repo path whose bytes were sent in the body, if any

    @property
    def range(self) -> str | None:
        return self.headers.get("range")


@dataclass
class _Failure:
    remaining: int | None  # None: forever
    status: int
    match: str | None
    headers: dict[str, str]


@dataclass(frozen=True)
class _Entry:
    """Git-level metadata of one repo file."""

    path: str
    size: int
    oid: str  # git blob oid (of the LFS pointer for LFS files), as in tree listings
    sha256: str | None  # LFS object id
    pointer_size: int | None


@dataclass
class _Response:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    file: tuple[Path, int, int] | None = None  # (path, offset, length) streamed instead of body
    repo_file: str | None = None


class _HubError(Exception):
    def __init__(self, response: _Response) -> None:
        super().__init__(response.status)
        self.response = response


def _json(status: int, payload: Any, headers: Mapping[str, str] | None = None) -> _Response:
    body = json.dumps(payload).encode()
    return _Response(status, {"Content-Type": "application/json; charset=utf-8", **(headers or {})}, body)


def _error(status: int, message: str, code: str | None = None, headers: Mapping[str, str] | None = None) -> _HubError:
    extra = {"X-Error-Message": message, **({"X-Error-Code": code} if code else {}), **(headers or {})}
    return _HubError(_json(status, {"error": message}, extra))


def _git_blob_oid(data_size: int, chunks: Iterator[bytes]) -> str:
    h = hashlib.sha1(f"blob {data_size}\0".encode())
    for chunk in chunks:
        h.update(chunk)
    return h.hexdigest()


class FakeHub:
    """Serve ``root`` as a Hub repository on ``127.0.0.1`` (use as a context manager or start()/stop())."""

    def __init__(
        self,
        root: Path | str,
        *,
        repo_id: str = DEFAULT_REPO_ID,
        sha: str = DEFAULT_SHA,
        repo_type: Literal["dataset", "model"] = "dataset",
        max_connections: int = 64,
    ) -> None:
        if len(sha) != 40 or any(c not in "0123456789abcdef" for c in sha):
            raise ValueError(f"sha must be 40 lowercase hex characters, got {sha!r}")
        self.root = Path(root)
        self.repo_id = repo_id
        self.sha = sha
        self.repo_type = repo_type
        self.max_connections = max_connections
        # Switchable behaviour; plain attributes so tests can flip them at any time.
        self.repo_exists = True
        self.gated: Gated = False
        self.branches: dict[str, str] = {"main": sha}
        self.tree_page_size: int | None = None  # None: the Hub's 1000 (50 with expand=True)
        self._failures: list[_Failure] = []
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, int, int], _Entry] = {}
        self._lfs_objects: dict[str, str] = {}  # sha256 -> repo path, for the CDN
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._repos: dict[str, FakeHub] = {repo_id: self}  # every repository this hub serves, by id
        self._host: FakeHub = self  # the hub whose server answers for this repository

    def add_repo(self, root: Path | str, repo_id: str, *, sha: str = DEFAULT_SHA) -> FakeHub:
        """Serve ``root`` as the dataset repo ``repo_id`` too, on the same server; returns its own FakeHub
        (for its ``sha``, ``gated``, ``repo_exists``, ... switches; requests are recorded here)."""
        repo = FakeHub(root, repo_id=repo_id, sha=sha, repo_type=self.repo_type)
        repo._host = self
        self._repos[repo_id] = repo
        return repo

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> FakeHub:
        if self._server is not None:
            raise RuntimeError("FakeHub already started")
        self._server = _Server(self, self.max_connections)
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fakehub", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.closing.set()  # unblocks an accept loop waiting for a free connection slot
        server.shutdown()
        server.close_connections()  # idle keep-alive connections would otherwise block the join below
        server.server_close()  # joins the handler threads
        assert self._thread is not None
        self._thread.join()

    def __enter__(self) -> FakeHub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        if self._host is not self:
            return self._host.port
        if self._server is None:
            raise RuntimeError("FakeHub is not running")
        return self._server.server_address[1]

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self, hf_home: Path | str) -> dict[str, str]:
        """Environment variables pointing a subprocess at this hub, with a private ``HF_HOME``."""
        return {
            "HF_ENDPOINT": self.endpoint,
            "HF_HOME": str(hf_home),
            "HF_HUB_DISABLE_XET": "1",
            "HF_UPDATE_DOWNLOAD_COUNTS": "0",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "HF_HUB_DISABLE_IMPLICIT_TOKEN": "1",
            "HF_HUB_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def hf_uri(self, path: str, revision: str | None = None) -> str:
        """``hf://`` URI of a repo file, pinned to the commit by default."""
        return f"hf://{self.repo_type}s/{self.repo_id}@{revision or self.sha}/{path}"

    # -- failure injection -----------------------------------------------------------------------

    def fail_next(
        self,
        n: int | None = 1,
        status: int = 503,
        *,
        match: str | None = None,
        retry_after: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer the next ``n`` requests (``None``: all) whose path contains ``match`` with ``status``.

        Injected failures come first, before any routing, so they also hit the "CDN" (``match="/repos/"``)
        and the redirect targets.  Bodies and headers mimic the Hub's own 429/5xx answers.
        """
        extra = dict(headers or {})
        if retry_after is not None:
            extra["Retry-After"] = str(retry_after)
        with self._lock:
            self._failures.append(_Failure(n, status, match, extra))

    def rate_limit(self, n: int | None = 1, *, retry_after: int = 0, match: str | None = None) -> None:
        """Answer the next ``n`` matching requests with the Hub's 429 (``Retry-After`` + ``RateLimit``)."""
        self.fail_next(n, 429, match=match, retry_after=retry_after)

    def clear_failures(self) -> None:
        with self._lock:
            self._failures.clear()

    # -- request log -----------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def count(self, path_contains: str = "", method: str | None = None) -> int:
        """Number of recorded requests whose path contains ``path_contains``."""
        return sum(
            1 for r in self.requests if path_contains in unquote(r.path) and (method is None or r.method == method)
        )

    def downloaded_files(self) -> list[str]:
        """Repo paths whose content (whole or a range) was sent, in first-served order."""
        return list(dict.fromkeys(r.repo_file for r in self.requests if r.repo_file is not None))

    # -- repository model ------------------------------------------------------------------------

    def _files(self) -> list[str]:
        out = []
        for dirpath, dirnames, filenames in os.walk(self.root):
            dirnames[:] = [d for d in dirnames if d != ".git"]
            rel = Path(dirpath).relative_to(self.root)
            out += [(rel / f).as_posix() if rel.parts else f for f in filenames]
        return sorted(out)

    def _entry(self, path: str) -> _Entry:
        full = self.root / path
        st = full.stat()
        key = (path, st.st_size, st.st_mtime_ns)
        with self._lock:
            cached = self._entries.get(key)
        if cached is not None:
            return cached

        sha256 = hashlib.sha256()

        def chunks() -> Iterator[bytes]:  # one pass computes both the git oid and the LFS sha256
            with full.open("rb") as f:
                while chunk := f.read(_CHUNK):
                    sha256.update(chunk)
                    yield chunk

        blob_oid = _git_blob_oid(st.st_size, chunks())
        if Path(path).suffix in LFS_SUFFIXES or st.st_size >= _LFS_SIZE_THRESHOLD:
            digest = sha256.hexdigest()
            pointer = f"version https://git-lfs.github.com/spec/v1\noid sha256:{digest}\nsize {st.st_size}\n"
            entry = _Entry(path, st.st_size, _git_blob_oid(len(pointer), iter([pointer.encode()])), digest,
                           len(pointer))
        else:
            entry = _Entry(path, st.st_size, blob_oid, None, None)
        with self._lock:
            self._entries[key] = entry
            if entry.sha256:
                self._lfs_objects[entry.sha256] = path
        return entry

    def _is_dir(self, path: str) -> bool:
        return path == "" or (self.root / path).is_dir()

    def _tree_oid(self, path: str) -> str:
        listing = sorted(p for p in self._files() if p.startswith(f"{path}/" if path else ""))
        return hashlib.sha1("\n".join(f"{p}:{self._entry(p).oid}" for p in listing).encode()).hexdigest()

    def _last_commit(self) -> dict[str, str]:
        return {"id": self.sha, "title": "Upload dataset", "date": DEFAULT_COMMIT_DATE}

    def _path_info(self, path: str, expand: bool) -> dict[str, Any]:
        if self._is_dir(path):
            info: dict[str, Any] = {"type": "directory", "oid": self._tree_oid(path), "size": 0, "path": path}
        else:
            entry = self._entry(path)
            info = {"type": "file", "oid": entry.oid, "size": entry.size, "path": path}
            if entry.sha256:
                info["lfs"] = {"oid": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
        if expand:
            info["lastCommit"] = self._last_commit()
            if info["type"] == "file":
                info["securityFileStatus"] = {
                    "status": "safe",
                    "avScan": {"virusFound": False, "virusNames": None},
                    "pickleImportScan": None,
                }
        return info

    def _card_data(self) -> dict[str, Any]:
        readme = self.root / "README.md"
        if not readme.is_file():
            return {}
        text = readme.read_text(encoding="utf-8")
        if not text.startswith("---\n"):
            return {}
        front, sep, _ = text[4:].partition("\n---")
        return (yaml.safe_load(front) or {}) if sep else {}

    # -- HTTP dispatch ---------------------------------------------------------------------------

    def _handle(self, method: str, raw_path: str, headers: Mapping[str, str], body: bytes) -> _Response:
        url = urlsplit(raw_path)
        query = parse_qs(url.query, keep_blank_values=True)
        lowered = {k.lower(): v for k, v in headers.items()}
        response = self._injected_failure(url.path)
        if response is None:
            try:
                response = self._route(method, url.path, query, lowered, body)
            except _HubError as e:
                response = e.response
        # Echo the trace id like the Hub does, so client error messages carry a request id.
        if "x-amzn-trace-id" in lowered:
            response.headers.setdefault("X-Request-Id", lowered["x-amzn-trace-id"])
        record = RecordedRequest(method, url.path, query, lowered, response.status,
                                 response.repo_file if method == "GET" else None)
        with self._lock:
            self._requests.append(record)
        return response

    def _injected_failure(self, path: str) -> _Response | None:
        with self._lock:
            failure = next((f for f in self._failures if f.match is None or f.match in unquote(path)), None)
            if failure is None:
                return None
            if failure.remaining is not None:
                failure.remaining -= 1
                if failure.remaining == 0:
                    self._failures.remove(failure)
        extra = dict(failure.headers)
        if failure.status == 429:
            message = "You have exceeded our rate limit. Please retry later."
            resource = "resolvers" if "/resolve" in path or path.startswith("/repos/") else "api"
            wait = extra.get("Retry-After", "0")
            extra.setdefault("RateLimit", f'"{resource}";r=0;t={wait}')
            extra.setdefault("RateLimit-Policy", f'"fixed window";"{resource}";q=1000;w=300')
        elif failure.status >= 500:
            message = "Internal Error - We're working hard to fix this as soon as possible!"
        else:
            message = HTTPStatus(failure.status).phrase
        return _error(failure.status, message, headers=extra).response

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> _Response:
        read = method in ("GET", "HEAD")
        parts = path.split("/")[1:]
        if parts[0] == "repos" and len(parts) >= 2 and read:
            return self._serve_cdn(unquote(parts[-1]), headers)
        if parts[0] == "api":
            if parts[1:2] == ["resolve-cache"] and len(parts) >= 7 and read:
                # /api/resolve-cache/{kind}/{namespace}/{name}/{commit}/{path}
                repo = self._repo(parts[2], parts[3:5], headers)
                return repo._serve_file(_repo_path(parts[6:]), repo._revision(unquote(parts[5])), headers)
            if len(parts) >= 4 and parts[1] in ("models", "datasets", "spaces"):
                return self._repo(parts[1], parts[2:4], headers)._api(method, parts[4:], query, headers, body)
        elif read:
            # /{namespace}/{name}/resolve/... for models, /{datasets|spaces}/{namespace}/{name}/resolve/... otherwise
            offset = 1 if parts[0] in ("datasets", "spaces") else 0
            if len(parts) >= offset + 5 and parts[offset + 2] == "resolve":
                repo = self._repo(parts[0] if offset else "models", parts[offset:offset + 2], headers)
                sha = repo._revision(unquote(parts[offset + 3]))
                return repo._resolve(_repo_path(parts[offset + 4:]), sha, headers)
        raise _error(404, "Sorry, we can't find the page you are looking for.")

    def _repo(self, kind: str, id_parts: list[str], headers: Mapping[str, str]) -> FakeHub:
        """The repository the path names (this one, or one added with :meth:`add_repo`)."""
        repo = self._repos.get("/".join(unquote(p) for p in id_parts))
        if repo is None or not repo.repo_exists or kind != f"{self.repo_type}s":
            # Anonymous callers get 401 for missing and private repos alike, as on the real Hub.
            status = 404 if "authorization" in headers else 401
            raise _error(status, "Repository not found", "RepoNotFound")
        return repo

    def _revision(self, revision: str) -> str:
        """Commit sha of a branch name or of the commit itself; anything else is an unknown revision."""
        revision = revision.removeprefix("refs/heads/")
        if revision in self.branches:
            return self.branches[revision]
        if revision == self.sha:
            return self.sha
        raise _error(404, f"Invalid rev id: {revision}", "RevisionNotFound")

    def _api(
        self, method: str, rest: list[str], query: dict[str, list[str]], headers: Mapping[str, str], body: bytes
    ) -> _Response:
        read = method in ("GET", "HEAD")
        action = rest[0] if rest else ""
        if not rest and read:
            return self._repo_info(self._revision("main"), query)
        if action == "revision" and len(rest) == 2 and read:
            return self._repo_info(self._revision(unquote(rest[1])), query)
        if action == "tree" and len(rest) >= 2 and read:
            revision = unquote(rest[1])
            # The client sends the folder as one %2F-encoded segment; raw slashes work too.
            folder = unquote("/".join(rest[2:])).strip("/")
            path = _safe_path(folder) if folder else ""
            return self._tree(revision, self._revision(revision), path, query)
        if action == "paths-info" and len(rest) == 2 and method == "POST":
            self._revision(unquote(rest[1]))
            return self._paths_info(headers, body)
        if action == "refs" and len(rest) == 1 and read:
            branches = [{"name": n, "ref": f"refs/heads/{n}", "targetCommit": c} for n, c in self.branches.items()]
            return _json(200, {"branches": branches, "converts": [], "tags": []})
        raise _error(404, "Sorry, we can't find the page you are looking for.")

    def _repo_info(self, sha: str, query: dict[str, list[str]]) -> _Response:
        card = self._card_data()
        files = self._files()
        blobs = _truthy(query.get("blobs"))
        siblings = []
        for path in files:
            sibling: dict[str, Any] = {"rfilename": path}
            if blobs:
                entry = self._entry(path)
                sibling.update(size=entry.size, blobId=entry.oid)
                if entry.sha256:
                    sibling["lfs"] = {"sha256": entry.sha256, "size": entry.size, "pointerSize": entry.pointer_size}
            siblings.append(sibling)
        tags = [f"license:{card['license']}"] if isinstance(card.get("license"), str) else []
        info: dict[str, Any] = {
            "_id": hashlib.md5(self.repo_id.encode()).hexdigest()[:24],
            "id": self.repo_id,
            "author": self.repo_id.split("/")[0],
            "sha": sha,
            "lastModified": DEFAULT_COMMIT_DATE,
            "createdAt": DEFAULT_COMMIT_DATE,
            "private": False,
            "gated": self.gated,
            "disabled": False,
            "downloads": 0,
            "likes": 0,
            "tags": [*tags, "region:us"],
            "cardData": card,
            "siblings": siblings,
            "usedStorage": sum((self.root / p).stat().st_size for p in files),
        }
        expand = query.get("expand")
        if expand:
            info = {k: v for k, v in info.items() if k in ("_id", "id") or k in expand}
        return _json(200, info)

    def _tree(self, revision: str, sha: str, path: str, query: dict[str, list[str]]) -> _Response:
        recursive, expand = _truthy(query.get("recursive")), _truthy(query.get("expand"))
        if path and not (self.root / path).exists():
            raise _error(404, f'"{path}" does not exist on "{revision}"', "EntryNotFound", {"X-Repo-Commit": sha})
        # The Hub lists a file path as the file itself.
        entries = self._children(path, recursive) if self._is_dir(path) else [path]
        page_size = self.tree_page_size or (50 if expand else 1000)
        start = int(base64.urlsafe_b64decode(query["cursor"][0]).decode()) if "cursor" in query else 0
        page = [self._path_info(p, expand) for p in entries[start:start + page_size]]
        headers = {}
        if start + page_size < len(entries):
            cursor = base64.urlsafe_b64encode(str(start + page_size).encode()).decode()
            params = urlencode({"recursive": recursive, "expand": expand, "cursor": cursor})
            encoded = "/" + quote(path, safe="") if path else ""
            next_url = (f"{self.endpoint}/api/{self.repo_type}s/{self.repo_id}/tree/"
                        f"{quote(revision, safe='')}{encoded}?{params}")
            headers["Link"] = f'<{next_url}>; rel="next"'
        return _json(200, page, headers)

    def _children(self, path: str, recursive: bool) -> list[str]:
        """Entries below ``path``: directories first, then files, depth-first when recursive."""
        prefix = f"{path}/" if path else ""
        dirs, files = set(), []
        for f in self._files():
            if not f.startswith(prefix):
                continue
            head, sep, _ = f[len(prefix):].partition("/")
            if sep:
                dirs.add(prefix + head)
            else:
                files.append(f)
        out: list[str] = []
        for d in sorted(dirs):
            out.append(d)
            if recursive:
                out += self._children(d, True)
        return out + files

    def _paths_info(self, headers: Mapping[str, str], body: bytes) -> _Response:
        if headers.get("content-type", "").startswith("application/json"):
            payload = json.loads(body or b"{}")
            paths, expand = payload.get("paths", []), bool(payload.get("expand", False))
        else:
            form = parse_qs(body.decode(), keep_blank_values=True)
            paths, expand = form.get("paths", []), _truthy(form.get("expand"))
        paths = [paths] if isinstance(paths, str) else paths
        # Missing (and malformed) paths are silently skipped, as the Hub does.
        found = []
        for raw in paths:
            try:
                path = _safe_path(raw.strip("/"))
            except _HubError:
                continue
            if (self.root / path).exists():
                found.append(path)
        return _json(200, [self._path_info(p, expand) for p in found])

    def _resolve(self, path: str, sha: str, headers: Mapping[str, str]) -> _Response:
        if self.gated:
            kind = self.repo_type
            if "authorization" in headers:
                message = (f"Access to {kind} {self.repo_id} is restricted and you are not in the authorized list. "
                           f"Visit https://huggingface.co/{kind}s/{self.repo_id} to ask for access.")
                raise _error(403, message, "GatedRepo")
            message = (f"Access to {kind} {self.repo_id} is restricted. You must have access to it and be "
                       "authenticated to access it. Please log in.")
            raise _error(401, message, "GatedRepo")
        if not (self.root / path).is_file():
            raise _error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        entry = self._entry(path)
        common = {"X-Repo-Commit": sha, "Access-Control-Expose-Headers": "X-Repo-Commit,X-Linked-Etag,X-Linked-Size"}
        if entry.sha256 is None:
            # Regular files are redirected to a commit-pinned URL on the same host (followed by clients).
            location = f"/api/resolve-cache/{self.repo_type}s/{self.repo_id}/{sha}/{quote(path)}"
            return _redirect(307, location, {**common, "ETag": f'"{entry.oid}"'})
        # LFS files are redirected to the CDN, another origin: clients read the metadata on this response.
        name = quote(Path(path).name)
        location = (f"http://{_CDN_HOST}:{self.port}/repos/{entry.sha256[:2]}/{entry.sha256[2:4]}/{entry.sha256}"
                    f"?response-content-disposition=attachment%3B+filename%2A%3DUTF-8%27%27{name}&Expires=4102444800")
        return _redirect(302, location, {
            **common,
            "ETag": f'"{entry.oid}"',
            "X-Linked-Etag": f'"{entry.sha256}"',
            "X-Linked-Size": str(entry.size),
        })

    def _serve_file(self, path: str, sha: str, headers: Mapping[str, str]) -> _Response:
        if not (self.root / path).is_file():
            raise _error(404, "Entry not found", "EntryNotFound", {"X-Repo-Commit": sha})
        entry = self._entry(path)
        return self._content(path, entry, headers, {"X-Repo-Commit": sha, "ETag": f'"{entry.oid}"'})

    def _serve_cdn(self, sha256: str, headers: Mapping[str, str]) -> _Response:
        for repo in self._repos.values():
            with repo._lock:
                path = repo._lfs_objects.get(sha256)
            if path is not None and (repo.root / path).is_file():
                break
        else:
            return _Response(404, {"Content-Type": "application/xml"}, b"<Error><Code>NoSuchKey</Code></Error>")
        entry = repo._entry(path)
        name = Path(path).name
        return repo._content(path, entry, headers, {
            "ETag": f'"{entry.sha256}"',
            "Content-Disposition": f"attachment; filename*=UTF-8''{quote(name)}; filename=\"{name}\"",
        })

    def _content(self, path: str, entry: _Entry, headers: Mapping[str, str], extra: dict[str, str]) -> _Response:
        size = entry.size
        base = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes", **extra}
        spec = headers.get("range")
        byte_range = _parse_range(spec, size) if spec else None
        if byte_range == "unsatisfiable":
            return _Response(416, {**base, "Content-Range": f"bytes */{size}"})
        if byte_range is None:
            return _Response(200, base, file=(self.root / path, 0, size), repo_file=path)
        start, end = byte_range
        return _Response(206, {**base, "Content-Range": f"bytes {start}-{end}/{size}"},
                         file=(self.root / path, start, end - start + 1), repo_file=path)


def _safe_path(path: str) -> str:
    """A decoded repo-relative path, refusing anything that could escape the repository root."""
    if any(p in ("", ".", "..") for p in path.split("/")) or "\\" in path:
        raise _error(400, f"Invalid path: {path}")
    return path


def _repo_path(parts: list[str]) -> str:
    return _safe_path("/".join(unquote(p) for p in parts))


def _redirect(status: int, location: str, headers: Mapping[str, str]) -> _Response:
    body = f"{HTTPStatus(status).phrase}. Redirecting to {location}".encode()
    return _Response(status, {"Location": location, "Content-Type": "text/plain; charset=utf-8", **headers}, body)


def _truthy(values: list[str] | None) -> bool:
    return bool(values) and values[-1].lower() in ("1", "true", "yes")


_RANGE = re.compile(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", re.IGNORECASE)


def _parse_range(spec: str, size: int) -> tuple[int, int] | Literal["unsatisfiable"] | None:
    """A single ``bytes=`` range as inclusive (start, end); None means "ignore the header"."""
    match = _RANGE.fullmatch(spec)
    if match is None or not any(match.groups()):
        return None  # multi-range or another unit: answer with the full body, as RFC 9110 allows
    first, last = match.groups()
    if not first:  # suffix range: the last N bytes
        if int(last) == 0 or size == 0:
            return "unsatisfiable"
        return max(0, size - int(last)), size - 1
    start, end = int(first), (int(last) if last else size - 1)
    if start >= size or end < start:
        return "unsatisfiable"
    return start, min(end, size - 1)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real Hub
    server_version = "FakeHub/1.0"
    timeout = 30  # idle keep-alive connections are dropped after this many seconds
    server: _Server

    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        response = self.server.hub._handle(self.command, self.path, dict(self.headers.items()), body)
        length = response.file[2] if response.file else len(response.body)
        self.send_response(response.status)
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(length))
        self.end_headers()
        if self.command == "HEAD":
            return
        if response.file is None:
            self.wfile.write(response.body)
            return
        path, offset, remaining = response.file
        with path.open("rb") as f:
            f.seek(offset)
            while remaining > 0:
                chunk = f.read(min(_CHUNK, remaining))
                if not chunk:
                    break
                self.wfile.write(chunk)
                remaining -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the hub keeps its own structured log in FakeHub.requests


class _Server(ThreadingHTTPServer):
    """Threaded server with a bounded number of connections that closes them all on stop."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, hub: FakeHub, max_connections: int) -> None:
        self.hub = hub
        self._slots = threading.BoundedSemaphore(max_connections)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        self.closing = threading.Event()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Back-pressure instead of unbounded threads: wait for a slot, but never past shutdown.
        while not self._slots.acquire(timeout=0.05):
            if self.closing.is_set():
                self.shutdown_request(request)
                return
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self._open_lock:
                self._open.discard(request)
            self._slots.release()

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # clients hanging up mid-response (e.g. closed streams) are expected

    def close_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


# -- pytest helpers ------------------------------------------------------------------------------


def block_external_network(monkeypatch: Any) -> list[str]:
    """Make DNS lookups of non-loopback hosts fail; returns the (live) list of hosts that were tried."""
    blocked: list[str] = []
    real_getaddrinfo = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else host
        if name is not None and name not in _LOOPBACK_HOSTS:
            blocked.append(str(name))
            raise socket.gaierror(socket.EAI_NONAME, f"external network blocked in tests: {name}")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    return blocked


def fake_hub_env(monkeypatch: Any, hub: FakeHub, tmp_path: Path, *, block_network: bool = True) -> list[str]:
    """Point ``huggingface_hub`` and ``datasets`` (in this process) at ``hub``; see the module docstring.

    Returns the list of external hosts a lookup was attempted for (always empty if nothing leaked).
    """
    import huggingface_hub.constants as hf_constants
    from huggingface_hub.utils import close_session

    home = Path(tmp_path) / "hf-home"
    for name, value in hub.env(home).items():
        monkeypatch.setenv(name, value)
    for name in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_XET_CACHE"):
        monkeypatch.delenv(name, raising=False)

    hub_cache = str(home / "hub")
    for name, value in {
        "ENDPOINT": hub.endpoint,
        # hf_hub_url() formats this template, so patching ENDPOINT alone is not enough.
        "HUGGINGFACE_CO_URL_TEMPLATE": hub.endpoint + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_URL_HOSTS": hf_constants.HF_URL_HOSTS | {"127.0.0.1"},
        "HF_HOME": str(home),
        "HF_HUB_CACHE": hub_cache,
        "HUGGINGFACE_HUB_CACHE": hub_cache,
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
        "HF_HUB_OFFLINE": False,
        "HF_HUB_DISABLE_XET": True,
        "HF_HUB_DISABLE_TELEMETRY": True,
        "HF_HUB_DISABLE_IMPLICIT_TOKEN": True,
    }.items():
        monkeypatch.setattr(hf_constants, name, value)

    try:
        import datasets.config as ds_config
    except ImportError:
        ds_config = None
    if ds_config is not None:
        datasets_cache = home / "datasets"
        for name, value in {
            "HF_ENDPOINT": hub.endpoint,
            "HUB_DATASETS_URL": hub.endpoint + "/datasets/{repo_id}/resolve/{revision}/{path}",
            "HF_CACHE_HOME": str(home),
            "HF_DATASETS_CACHE": datasets_cache,
            "HF_MODULES_CACHE": home / "modules",
            "DOWNLOADED_DATASETS_PATH": datasets_cache / "downloads",
            "EXTRACTED_DATASETS_PATH": datasets_cache / "downloads" / "extracted",
            "HF_HUB_OFFLINE": False,
            "HF_DATASETS_OFFLINE": False,
            # The dataset viewer lives on datasets-server.<endpoint host>: unreachable, skip it.
            "USE_PARQUET_EXPORT": False,
            # Otherwise every load HEADs a file on s3.amazonaws.com.
            "HF_UPDATE_DOWNLOAD_COUNTS": False,
        }.items():
            monkeypatch.setattr(ds_config, name, value)

    # Pooled keep-alive connections may point at a hub from an earlier test.
    close_session()
    return block_external_network(monkeypatch) if block_network else []
