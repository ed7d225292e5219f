"""`smollm-corpus fetch python-edu` end to end: a local mirror, a real moto S3 server on 127.0.0.1, a proxy for faults.

Every output is checked against the rows ``datasets.load_dataset`` reads from the mirror and the
blobs each test stored, decoded the way the published recipe decodes them.
"""

from __future__ import annotations

import hashlib
import json
import random
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import datasets
import pyarrow as pa
import pytest

from conftest import CLI, run_cli
from mirror import SCHEMAS, blob_id_for, build_mirror, python_source_for, rows_for
from s3servers import (
    ACCESS_DENIED,
    CREDENTIALS,
    INTERNAL_ERROR,
    RESET,
    SLOW_DOWN,
    FaultProxy,
    moto_server,
    put_blobs,
    s3_client,
)
from smollm_corpus.hydrate import CORRUPT_RETRIES

SUBSET = "python-edu"
#: rows per parquet file of the mirror: two files, so that runs cross a file boundary
SIZES = [100, 80]
ROWS = sum(SIZES)
#: what every subprocess needs besides the inherited environment: no instance-metadata probe
ENV = {"AWS_EC2_METADATA_DISABLED": "true"}
TERMS_CONTACT = "datasets@softwareheritage.org"
UNSIGNED_NOTICE = "no AWS credentials found: sending unsigned requests (as with --no-sign-request)"
RERUN_RESUMES = "rerun the same command to resume where it stopped"
#: requests in flight through a FaultProxy: its thread per connection shares one interpreter with moto
PROXIED = ("--workers", "8")


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Subprocesses sign with the test credentials and reach S3 directly, never through a proxy of the host."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def edu_mirror(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_mirror(tmp_path_factory.mktemp("edu_mirror"), {SUBSET: SIZES})


@pytest.fixture(scope="module")
def dataset(edu_mirror: Path) -> list[dict]:
    """The mirror's python-edu rows in dataset order, as datasets reads them."""
    return list(datasets.load_dataset(str(edu_mirror), SUBSET, split="train"))


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with moto_server() as endpoint:
        yield endpoint


@pytest.fixture
def proxy(s3: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3) as proxy:
        yield proxy


@pytest.fixture
def bucket(request: pytest.FixtureRequest) -> str:
    """A bucket of the test's own: every moto server of this process shares the same buckets."""
    name = re.sub(r"[^a-z0-9]+", "-", request.node.name.lower()).strip("-")[:50].rstrip("-")
    return f"{name}-{hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:8]}"


def sources(rows: Iterable[int]) -> dict[str, bytes]:
    """The stored contents of ``rows``: blob id -> bytes before gzip."""
    return {blob_id_for(i): python_source_for(i).encode() for i in rows}


def expected(
    dataset: list[dict],
    stored: Mapping[str, bytes],
    render: Callable[[dict, str], str] = lambda row, text: text,
    separator: str = "\n\n",
    limit: int | None = None,
) -> bytes:
    """The output as defined: rows whose blob is stored, in dataset order, decoded like the recipe, rendered, joined."""
    documents = []
    for row in dataset[:limit]:
        raw = stored.get(row["blob_id"])
        if raw is None:
            continue
        document = render(row, raw.decode("utf-8", errors="ignore"))
        if document.strip():
            documents.append(document)
    return separator.join(documents).encode()


def command(mirror: Path, out: Path, bucket: str, endpoint: str, *extra: str) -> list[str]:
    return ["fetch", SUBSET, "--source", str(mirror), "-o", str(out), "--bucket", bucket,
            "--s3-endpoint-url", endpoint, *extra]


def fetch_cli(mirror: Path, out: Path, bucket: str, endpoint: str, *extra: str) -> subprocess.CompletedProcess:
    """Run ``smollm-corpus fetch python-edu`` as a user would."""
    return run_cli(*command(mirror, out, bucket, endpoint, *extra), env=ENV)


def output(out: Path, name: str = "input.txt") -> bytes:
    return (out / SUBSET / name).read_bytes()


def manifest(out: Path) -> dict:
    return json.loads((out / SUBSET / "manifest.json").read_text())


def key(blob_id: str) -> str:
    return f"content/{blob_id}"


@contextmanager
def closed_port() -> Iterator[str]:
    """An endpoint on 127.0.0.1 that refuses connections: its port is bound, never listened on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{probe.getsockname()[1]}"


def test_every_blob_present_gives_every_row_in_dataset_order(edu_mirror, dataset, s3, bucket, tmp_path):
    stored = sources(range(ROWS))
    put_blobs(s3, bucket, stored)
    result = fetch_cli(edu_mirror, tmp_path, bucket, s3)
    assert result.returncode == 0, result.stderr
    data = output(tmp_path)
    assert data == expected(dataset, stored)
    assert data.startswith(f"{python_source_for(0)}\n\n{python_source_for(1)}\n\n".encode())
    m = manifest(tmp_path)
    assert m["complete"] is True and m["bucket"] == bucket
    assert (m["rows"], m["documents"], m["bytes"], m["skipped"]) == (ROWS, ROWS, len(data), {})
    assert m["sha256"] == hashlib.sha256(data).hexdigest()
    assert (m["missing_blobs"], m["missing_blob_ids"], m["corrupt_blobs"]) == (0, [], [])
    assert output(tmp_path, "missing_blobs.txt") == b""
    files = sorted(p.name for p in (tmp_path / SUBSET).iterdir())
    assert files == [".lock", "input.txt", "manifest.json", "missing_blobs.txt"]
    assert f"python-edu: wrote {ROWS:,} documents" in result.stderr
    assert f"rows read {ROWS:,}; skipped: none" in result.stderr
    assert result.stderr.count(TERMS_CONTACT) == 1
    assert UNSIGNED_NOTICE not in result.stderr  # the test credentials were found and used


def test_missing_blobs_are_skipped_counted_and_listed_in_dataset_order(edu_mirror, dataset, s3, bucket, tmp_path):
    # both ends of both files among them
    gone = sorted({0, SIZES[0] - 1, SIZES[0], ROWS - 1} | {i for i in range(ROWS) if i % 23 == 4})
    stored = sources(i for i in range(ROWS) if i not in gone)
    put_blobs(s3, bucket, stored)
    result = fetch_cli(edu_mirror, tmp_path, bucket, s3, "-q")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # -q: no notice, bar or summary
    assert output(tmp_path) == expected(dataset, stored)
    gone_ids = [blob_id_for(i) for i in gone]
    assert output(tmp_path, "missing_blobs.txt").decode() == "".join(f"{b}\n" for b in gone_ids)
    m = manifest(tmp_path)
    assert m["complete"] is True
    assert (m["rows"], m["documents"], m["skipped"]) == (ROWS, ROWS - len(gone), {"missing": len(gone)})
    assert (m["missing_blobs"], m["missing_blob_ids"], m["corrupt_blobs"]) == (len(gone), gone_ids, [])


def test_undecodable_bytes_are_dropped_like_the_recipe(edu_mirror, dataset, s3, bucket, tmp_path):
    odd = {
        3: (b"x = 1\n\xff\xfe# caf\xc3\xa9\n", "x = 1\n# café\n"),
        SIZES[0] + 5: (b"name = '\xe9t\xe9'  # latin-1\n", "name = 't'  # latin-1\n"),
        ROWS - 2: (b"s = '\xe6\x95\xb0\xe5\xad'\n", "s = '数'\n"),  # cut inside the second character
    }
    blank = {50: b"", 51: b" \n\t\n", 52: b"\xff\xfe\n"}  # nothing left to train on: skipped as empty
    stored = sources(range(ROWS)) | {blob_id_for(i): raw for i, (raw, _) in odd.items()}
    stored |= {blob_id_for(i): raw for i, raw in blank.items()}
    put_blobs(s3, bucket, stored)
    result = fetch_cli(edu_mirror, tmp_path, bucket, s3, "-q")
    assert result.returncode == 0, result.stderr
    texts = [odd[i][1] if i in odd else python_source_for(i) for i in range(ROWS) if i not in blank]
    assert output(tmp_path) == "\n\n".join(texts).encode() == expected(dataset, stored)
    m = manifest(tmp_path)
    assert (m["documents"], m["skipped"], m["missing_blob_ids"]) == (ROWS - len(blank), {"empty": len(blank)}, [])


def test_corrupt_blob_is_fetched_again_then_skipped_and_listed_as_corrupt(
    edu_mirror, dataset, s3, proxy, bucket, tmp_path
):
    corrupt = {
        10: b"this body is not gzip\n",
        SIZES[0] + 30: b"\x1f\x8b\x08\x00" + b"\x00" * 6,  # a gzip header and nothing after it
    }
    stored = sources(i for i in range(ROWS) if i not in corrupt)
    put_blobs(s3, bucket, stored)
    client = s3_client(s3)
    for i, body in corrupt.items():  # stored as is, not gzip-compressed
        client.put_object(Bucket=bucket, Key=key(blob_id_for(i)), Body=body)
    client.close()
    result = fetch_cli(edu_mirror, tmp_path, bucket, proxy.endpoint, *PROXIED, "-q")
    assert result.returncode == 0, result.stderr
    assert output(tmp_path) == expected(dataset, stored)
    corrupt_ids = [blob_id_for(i) for i in sorted(corrupt)]
    m = manifest(tmp_path)
    assert m["complete"] is True
    assert m["skipped"] == {"corrupt": len(corrupt)} and m["documents"] == ROWS - len(corrupt)
    assert m["corrupt_blobs"] == corrupt_ids
    assert m["missing_blob_ids"] == [] and output(tmp_path, "missing_blobs.txt") == b""
    for b in corrupt_ids:
        assert proxy.requests(key(b)) == 1 + CORRUPT_RETRIES
    assert proxy.requests(key(blob_id_for(11))) == 1


def test_throttling_server_errors_and_resets_are_retried_to_the_same_output(
    edu_mirror, dataset, s3, proxy, bucket, tmp_path
):
    stored = sources(range(ROWS))
    put_blobs(s3, bucket, stored)
    faulted = {SLOW_DOWN: [0, 1, 2, 77, SIZES[0]], INTERNAL_ERROR: [5, 60, ROWS - 1], RESET: [6, SIZES[0] + 1, 150]}
    for fault, rows in faulted.items():
        for i in rows:
            proxy.inject(fault, blob_id_for(i), times=2)
    result = fetch_cli(edu_mirror, tmp_path, bucket, proxy.endpoint, *PROXIED, "-q")
    assert result.returncode == 0, result.stderr
    assert output(tmp_path) == expected(dataset, stored)
    m = manifest(tmp_path)
    assert m["complete"] is True and (m["documents"], m["skipped"]) == (ROWS, {})
    for rows in faulted.values():
        for i in rows:
            assert proxy.requests(key(blob_id_for(i))) == 3
    assert proxy.total == ROWS + 2 * sum(map(len, faulted.values()))


def test_blob_failing_every_attempt_stops_the_run_and_a_rerun_resumes(
    edu_mirror, dataset, s3, proxy, bucket, tmp_path
):
    gone = [3, SIZES[0] + 2]  # one missing blob recorded by each run
    stored = sources(i for i in range(ROWS) if i not in gone)
    put_blobs(s3, bucket, stored)
    # several failing blobs of the second file: the run stops when the first of them runs out of attempts
    failing = [blob_id_for(i) for i in range(SIZES[0] + 5, ROWS, 3)]
    proxy.inject(INTERNAL_ERROR, "|".join(failing))
    args = ("--num-proc", "2", "--workers", "32")
    result = fetch_cli(edu_mirror, tmp_path, bucket, proxy.endpoint, *args)
    assert result.returncode == 1, result.stderr
    named = re.search(r"error: blob ([0-9a-f]{40}) still failing after 8 attempts \(.*InternalError", result.stderr)
    assert named and named.group(1) in failing, result.stderr
    assert f"S3 may be throttling or failing for a while: {RERUN_RESUMES}" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / SUBSET / "input.txt").exists()
    m = manifest(tmp_path)
    # the first file was appended before the failure and is kept
    assert m["complete"] is False and m["rows"] == SIZES[0]

    with FaultProxy(s3) as healed:  # the same S3, now answering
        again = fetch_cli(edu_mirror, tmp_path, bucket, healed.endpoint, *args)
        assert again.returncode == 0, again.stderr
        assert f"resuming python-edu after {SIZES[0]} rows already written" in again.stderr
        assert healed.total == SIZES[1]  # only the rows not yet written
        assert healed.requests(key(blob_id_for(0))) == 0
    assert output(tmp_path) == expected(dataset, stored)
    assert output(tmp_path, "missing_blobs.txt").decode() == "".join(f"{blob_id_for(i)}\n" for i in gone)
    m = manifest(tmp_path)
    assert m["complete"] is True and (m["rows"], m["skipped"]) == (ROWS, {"missing": len(gone)})


@pytest.mark.parametrize(
    "unsigned, advice",
    [
        (False, "pass --no-sign-request to send unsigned requests, or check your AWS credentials and AWS_PROFILE."),
        (True, "configure AWS credentials (AWS_PROFILE, ~/.aws/credentials) and drop --no-sign-request."),
    ],
    ids=["signed", "unsigned"],
)
def test_access_denied_stops_at_once_with_advice(edu_mirror, proxy, bucket, tmp_path, unsigned, advice):
    proxy.inject(ACCESS_DENIED)  # every request: the bucket need not exist
    started = time.monotonic()
    extra = ("--no-sign-request",) if unsigned else ()
    result = fetch_cli(edu_mirror, tmp_path, bucket, proxy.endpoint, "--num-proc", "2", "--workers", "8", *extra)
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert f"error: S3 denied access to bucket '{bucket}' (AccessDenied: Access Denied): {advice}" in result.stderr
    assert "Traceback" not in result.stderr
    # no retries: each of the 8 requests in flight at most once
    assert proxy.total <= 8
    assert elapsed < 15
    assert not (tmp_path / SUBSET / "input.txt").exists()
    assert manifest(tmp_path)["rows"] == 0


def test_unknown_bucket_says_to_check_the_bucket_name(edu_mirror, s3, bucket, tmp_path):
    result = fetch_cli(edu_mirror, tmp_path, bucket, s3, "--limit", "20")  # the bucket was never created
    assert result.returncode == 1, result.stderr
    assert (f"error: bucket '{bucket}' does not exist at {s3}. Pass --bucket with the right name, "
            "or --s3-endpoint-url if the bucket is served elsewhere.") in result.stderr
    assert "Traceback" not in result.stderr


def test_unreachable_endpoint_is_named_in_the_error(edu_mirror, bucket, tmp_path):
    with closed_port() as endpoint:
        # many requests in flight: the first to run out of attempts ends the run, well before the average one
        result = fetch_cli(edu_mirror, tmp_path, bucket, endpoint, "--num-proc", "1", "--workers", "64")
    assert result.returncode == 1, result.stderr
    assert f"error: cannot connect to S3 at {endpoint} after 8 attempts" in result.stderr
    assert "Check the network, or pass --s3-endpoint-url to use another endpoint." in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / SUBSET / "input.txt").exists()


#: rows of the invalid-id mirror whose blob_id is not 40 lowercase hex characters
INVALID = {
    0: lambda good: good.upper(),
    3: lambda good: good[:39],
    17: lambda good: good + "0",
    18: lambda good: "",
    19: lambda good: None,
    40: lambda good: "../" + good[3:],
    59: lambda good: "g" * 40,
    60: lambda good: " " + good[1:],
    61: lambda good: good[:20] + "\n" + good[21:],
    99: lambda good: good[:39] + "G",
}


def _rows_with_invalid_ids(subset: str, start: int, stop: int) -> pa.Table:
    table = rows_for(subset, start, stop)
    ids = [INVALID[i](blob_id_for(i)) if i in INVALID else blob_id_for(i) for i in range(start, stop)]
    return table.set_column(0, SCHEMAS[subset].field("blob_id"), pa.array(ids, pa.string()))


def test_invalid_blob_ids_are_skipped_and_never_requested(s3, proxy, bucket, tmp_path):
    sizes = [60, 40]
    mirror = build_mirror(tmp_path / "mirror", {SUBSET: sizes}, rows=_rows_with_invalid_ids)
    rows = list(datasets.load_dataset(str(mirror), SUBSET, split="train"))
    assert [rows[i]["blob_id"] for i in sorted(INVALID)] == [INVALID[i](blob_id_for(i)) for i in sorted(INVALID)]
    # every row's well-formed id is stored, so a guessed correction of an invalid one would be found
    stored = sources(range(sum(sizes)))
    put_blobs(s3, bucket, stored)
    result = fetch_cli(mirror, tmp_path / "out", bucket, proxy.endpoint, *PROXIED, "-q")
    assert result.returncode == 0, result.stderr
    assert output(tmp_path / "out") == expected(rows, stored)
    m = manifest(tmp_path / "out")
    assert m["skipped"] == {"invalid": len(INVALID)} and m["documents"] == sum(sizes) - len(INVALID)
    assert (m["missing_blob_ids"], m["corrupt_blobs"]) == ([], [])
    assert output(tmp_path / "out", "missing_blobs.txt") == b""
    assert proxy.total == sum(sizes) - len(INVALID)
    for i in INVALID:
        assert proxy.requests(key(blob_id_for(i))) == 0


@pytest.mark.parametrize(("option", "values"), [("--workers", ("1", "64")), ("--s3-client", ("lean", "urllib3", "boto3"))])
def test_runs_differing_only_in_how_blobs_are_fetched_give_byte_identical_output(
    edu_mirror, dataset, s3, bucket, tmp_path, option, values
):
    stored = sources(i for i in range(ROWS) if i % 31 != 9)
    put_blobs(s3, bucket, stored)
    outs = [tmp_path / v for v in values]
    for value, out in zip(values, outs):
        result = fetch_cli(edu_mirror, out, bucket, s3, option, value, "-q")
        assert result.returncode == 0, result.stderr
    assert all(output(out) == expected(dataset, stored) for out in outs)
    assert len({output(out, "missing_blobs.txt") for out in outs}) == 1 and output(outs[0], "missing_blobs.txt")
    assert len({manifest(out)["sha256"] for out in outs}) == 1


def test_workers_bounds_the_requests_in_flight_over_all_processes(s3, proxy, bucket, tmp_path):
    mirror = build_mirror(tmp_path / "mirror", {SUBSET: [3, 3]})  # one chunk for each of the 2 processes
    put_blobs(s3, bucket, sources(range(6)))
    proxy.latency = 0.2  # each answer waits this long, so one request at a time arrives at least this far apart
    args = [CLI, *command(mirror, tmp_path / "out", bucket, proxy.endpoint, "--workers", "1", "--num-proc", "2", "-q")]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **ENV})
    arrivals: list[float] = []  # when the proxy's count of requests grew
    while proc.poll() is None:
        arrivals += [time.monotonic()] * (proxy.total - len(arrivals))
        time.sleep(0.005)
    assert proc.wait() == 0, proc.stderr.read()
    arrivals += [time.monotonic()] * (proxy.total - len(arrivals))
    assert len(arrivals) == 6
    assert min(b - a for a, b in zip(arrivals, arrivals[1:])) > 0.15


def test_limit_fetches_only_the_first_rows(edu_mirror, dataset, s3, proxy, bucket, tmp_path):
    limit = SIZES[0] + 30  # into the second file
    stored = sources(range(limit))  # a request for any other row still reaches the proxy, and is counted
    put_blobs(s3, bucket, stored)
    result = fetch_cli(edu_mirror, tmp_path, bucket, proxy.endpoint, "--limit", str(limit), *PROXIED, "-q")
    assert result.returncode == 0, result.stderr
    assert output(tmp_path) == expected(dataset, stored, limit=limit)
    m = manifest(tmp_path)
    assert m["complete"] is True and (m["rows"], m["documents"]) == (limit, limit)
    assert proxy.total == limit
    assert all(proxy.requests(key(blob_id_for(i))) == 1 for i in range(limit))
    assert proxy.requests(key(blob_id_for(limit))) == 0


def wait_for_rows(out: Path, proc: subprocess.Popen, timeout: float = 60) -> int:
    """Wait until a checkpoint records rows written while the run goes on; returns how many."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            rows = manifest(out)["rows"]
        except (FileNotFoundError, json.JSONDecodeError, KeyError):
            rows = 0
        if rows:
            return rows
        time.sleep(0.01)
    pytest.fail("the run ended or stalled before any row was checkpointed")


def test_kill_9_then_rerun_gives_identical_output_without_fetching_written_rows_again(
    edu_mirror, dataset, s3, proxy, bucket, tmp_path
):
    gone = [5, SIZES[0] + 7]  # the first is recorded before the kill, and must survive it
    stored = sources(i for i in range(ROWS) if i not in gone)
    put_blobs(s3, bucket, stored)
    proxy.latency = 0.02  # two requests in flight: a run of a few seconds
    args = command(edu_mirror, tmp_path, bucket, proxy.endpoint, "--num-proc", "1", "--workers", "2")
    proc = subprocess.Popen([CLI, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **ENV})
    try:
        written = wait_for_rows(tmp_path, proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    time.sleep(0.3)  # requests the killed run had on the wire reach the proxy
    m = manifest(tmp_path)
    assert m["complete"] is False and m["rows"] == written < ROWS
    assert not (tmp_path / SUBSET / "input.txt").exists()
    before = proxy.total
    proxy.latency = 0.0

    result = run_cli(*args, env=ENV)
    assert result.returncode == 0, result.stderr
    assert f"resuming python-edu after {written} rows already written" in result.stderr
    assert output(tmp_path) == expected(dataset, stored)
    assert proxy.total - before == ROWS - written
    assert all(proxy.requests(key(blob_id_for(i))) == 1 for i in range(written))
    assert output(tmp_path, "missing_blobs.txt").decode() == "".join(f"{blob_id_for(i)}\n" for i in gone)
    assert manifest(tmp_path)["skipped"] == {"missing": len(gone)}


def test_jsonl_lines_hold_the_text_and_every_metadata_column(edu_mirror, dataset, s3, bucket, tmp_path):
    gone = {7, SIZES[0] + 2}
    stored = sources(i for i in range(ROWS) if i not in gone) | {blob_id_for(8): "print('数学 🙂')\n".encode()}
    put_blobs(s3, bucket, stored)
    result = fetch_cli(edu_mirror, tmp_path, bucket, s3, "--format", "jsonl", "-q")
    assert result.returncode == 0, result.stderr
    lines = output(tmp_path, "input.jsonl").decode("utf-8").splitlines()
    wanted = [{**row, "text": stored[row["blob_id"]].decode()} for row in dataset if row["blob_id"] in stored]
    assert [json.loads(line) for line in lines] == wanted
    columns = ["blob_id", "repo_name", "path", "length_bytes", "score", "int_score", "text"]
    assert all(list(json.loads(line)) == columns for line in lines)
    assert wanted[7]["text"] == "print('数学 🙂')\n" and wanted[7]["blob_id"] == blob_id_for(8)
    m = manifest(tmp_path)
    assert m["format"] == "jsonl" and m["skipped"] == {"missing": len(gone)}
    assert output(tmp_path, "missing_blobs.txt").decode() == "".join(f"{blob_id_for(i)}\n" for i in sorted(gone))


def test_nanogpt_template_heads_each_file_with_repo_and_path(edu_mirror, dataset, s3, bucket, tmp_path):
    padded = {2: b"\n\n   x = 2   \n\n", SIZES[0]: b"\tdef g():\n    return 1\n\n\n"}
    stored = sources(range(ROWS)) | {blob_id_for(i): raw for i, raw in padded.items()}
    put_blobs(s3, bucket, stored)
    result = fetch_cli(edu_mirror, tmp_path, bucket, s3, "--template", "nanogpt", "-q")
    assert result.returncode == 0, result.stderr
    render = lambda row, text: f"# {row['repo_name'].strip()}: {row['path'].strip()}\n{text.strip()}"  # noqa: E731
    data = output(tmp_path)
    assert data == expected(dataset, stored, render, separator="\n")
    assert data.startswith(
        f"# {dataset[0]['repo_name']}: {dataset[0]['path']}\n{python_source_for(0).strip()}\n"
        f"# {dataset[1]['repo_name']}: {dataset[1]['path']}\n".encode()
    )
    assert f"\n# {dataset[2]['repo_name']}: {dataset[2]['path']}\nx = 2\n# ".encode() in data


def test_terms_notice_once_and_unsigned_requests_without_credentials(
    edu_mirror, dataset, s3, bucket, tmp_path, monkeypatch
):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("AWS_CONFIG_FILE", "AWS_SHARED_CREDENTIALS_FILE"):
        empty = tmp_path / name.lower()
        empty.write_text("")
        monkeypatch.setenv(name, str(empty))
    stored = sources(range(ROWS))
    put_blobs(s3, bucket, stored)  # readable by anyone, like the real bucket
    result = fetch_cli(edu_mirror, tmp_path / "out", bucket, s3)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count(TERMS_CONTACT) == 1
    assert "Its terms ask that bulk downloads be agreed with Software Heritage and INRIA first" in result.stderr
    assert result.stderr.count(UNSIGNED_NOTICE) == 1
    assert output(tmp_path / "out") == expected(dataset, stored)


@pytest.mark.parametrize("extra", [(), ("--no-sign-request",)], ids=["signed", "unsigned"])
def test_unknown_aws_profile_is_a_clear_error(edu_mirror, bucket, tmp_path, monkeypatch, extra):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_PROFILE", "no-such-profile")
    with closed_port() as endpoint:  # the run must stop before any request
        result = fetch_cli(edu_mirror, tmp_path, bucket, endpoint, "--limit", "5", *extra)
    assert result.returncode == 1, result.stderr
    assert ("error: The config profile (no-such-profile) could not be found: AWS_PROFILE names a profile that "
            "~/.aws/config does not define; fix or unset AWS_PROFILE") in result.stderr
    assert "Traceback" not in result.stderr


def test_access_key_without_secret_is_a_clear_error(edu_mirror, bucket, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with closed_port() as endpoint:
        result = fetch_cli(edu_mirror, tmp_path, bucket, endpoint, "--limit", "5")
    assert result.returncode == 1, result.stderr
    assert ("error: the AWS credentials configured here cannot be used (Partial credentials found in env, missing: "
            "AWS_SECRET_ACCESS_KEY); fix them (AWS_ACCESS_KEY_ID with AWS_SECRET_ACCESS_KEY, AWS_PROFILE, "
            "~/.aws/credentials), or pass --no-sign-request: the bucket is public") in result.stderr
    assert "Traceback" not in result.stderr


def test_endpoint_url_without_scheme_is_a_usage_error(edu_mirror, bucket, tmp_path):
    result = fetch_cli(edu_mirror, tmp_path, bucket, "127.0.0.1:9000", "--limit", "5")
    assert result.returncode == 2, result.stderr
    assert "error: --s3-endpoint-url '127.0.0.1:9000' must start with http:// or https://" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / SUBSET).exists()


def _children(pid: int) -> list[int]:
    """Processes whose parent is ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(entry))
    return found


def _is_worker(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def test_kill_9_while_workers_start_leaves_no_worker_behind(edu_mirror, bucket, tmp_path):
    with closed_port() as endpoint:  # never reached: the run is killed first
        args = [CLI, *command(edu_mirror, tmp_path, bucket, endpoint, "--num-proc", "2", "-q")]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, **ENV})
        workers: list[int] = []
        try:
            deadline = time.monotonic() + 30
            while len(workers) < 2 and time.monotonic() < deadline and proc.poll() is None:
                workers = [pid for pid in _children(proc.pid) if _is_worker(pid)]
                time.sleep(0.005)
            assert len(workers) == 2, "the workers never started"
            proc.kill()  # while the workers are still importing, before they can ask to die with it
            proc.wait(timeout=30)
            deadline = time.monotonic() + 3
            while any(map(_is_worker, workers)) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert [pid for pid in workers if _is_worker(pid)] == []
        finally:
            proc.kill()
            for pid in workers:  # orphans this run left, if any
                if _is_worker(pid):
                    os.kill(pid, signal.SIGKILL)



def test_rows_a_filter_drops_are_never_requested(edu_mirror, dataset, s3, proxy, bucket, tmp_path):
    put_blobs(s3, bucket, sources(range(ROWS)))
    result = fetch_cli(edu_mirror, tmp_path, bucket, proxy.endpoint, "--where", "int_score >= 5", *PROXIED, "-q")
    assert result.returncode == 0, result.stderr
    kept = [row for row in dataset if row["int_score"] >= 5]
    assert output(tmp_path) == expected(kept, sources(range(ROWS)))
    assert proxy.total == len(kept) < ROWS
    assert all(proxy.requests(key(row["blob_id"])) == (row["int_score"] >= 5) for row in dataset)
    assert manifest(tmp_path)["skipped"] == {"filtered": ROWS - len(kept)}


def test_token_shards_of_python_edu_decode_to_the_fetched_files(edu_mirror, dataset, s3, bucket, tmp_path):
    import numpy as np
    from tokenizers import Tokenizer

    import toytokenizer

    put_blobs(s3, bucket, sources(range(ROWS)))
    tok_json = toytokenizer.save(toytokenizer.train([python_source_for(i) for i in range(50)], 300), tmp_path / "tok")
    result = fetch_cli(edu_mirror, tmp_path, bucket, s3, "--format", "bin", "--tokenizer", str(tok_json), "-q")
    assert result.returncode == 0, result.stderr
    shards = sorted((tmp_path / SUBSET).glob("*.bin"), key=lambda p: int(p.stem.rsplit("_", 1)[1]))
    tokens = np.concatenate([np.fromfile(p, dtype=np.uint16, offset=1024) for p in shards]).tolist()
    starts = [i for i, t in enumerate(tokens) if t == 0] + [len(tokens)]
    decode = Tokenizer.from_file(str(tok_json)).decode
    documents = [decode(tokens[a + 1 : b], skip_special_tokens=False) for a, b in zip(starts, starts[1:])]
    assert "\n\n".join(documents).encode() == expected(dataset, sources(range(ROWS)))


def test_dedup_fetches_each_blob_once_and_drops_copied_files(edu_mirror, dataset, s3, proxy, bucket, tmp_path):
    rng = random.Random(0)  # python_source_for's files differ only in numbers, which MinHash's simplification erases
    names = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6)) for _ in range(400)]
    stored = {blob_id_for(i): "\n".join(f"def {rng.choice(names)}({rng.choice(names)}):\n    return {rng.choice(names)}"
                                         for _ in range(6)).encode() for i in range(sum(SIZES))}
    copies = {7: 2, SIZES[0] + 3: 2, SIZES[0] + 10: 40}  # row -> the earlier row whose file it copies
    for row, original in copies.items():
        stored[blob_id_for(row)] = stored[blob_id_for(original)]
    put_blobs(s3, bucket, stored)
    result = fetch_cli(edu_mirror, tmp_path, bucket, proxy.endpoint, "--dedup", *PROXIED, "-q")
    assert result.returncode == 0, result.stderr
    assert proxy.total == len(stored) and all(proxy.requests(key(b)) == 1 for b in stored)  # signed and written: one GET
    kept = {blob: data for blob, data in stored.items() if blob not in {blob_id_for(r) for r in copies}}
    assert output(tmp_path) == expected([r for r in dataset if r["blob_id"] in kept], kept)
    listed = [json.loads(line) for line in (tmp_path / SUBSET / "duplicates.jsonl").read_text().splitlines()]
    assert [(d["row"], d["duplicate_of"]["row"]) for d in listed] == list(copies.items())
    assert manifest(tmp_path)["skipped"] == {"duplicate": len(copies)}


def test_mix_fetches_only_the_drawn_rows_once(edu_mirror, s3, proxy, bucket, tmp_path):
    put_blobs(s3, bucket, sources(range(sum(SIZES))))
    result = run_cli("mix", f"{SUBSET}=1", "--documents", "100", "--format", "jsonl", "--source", str(edu_mirror),
                     "--bucket", bucket, "--s3-endpoint-url", proxy.endpoint, *PROXIED, "-o", str(tmp_path), "-q", env=ENV)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "input.jsonl").read_text().splitlines()
    assert len(lines) == 100
    drawn = json.loads((tmp_path / "manifest.json").read_text())["inputs"][0]["row_groups"]
    rows = sum(stop - start for _, start, stop in drawn)
    assert proxy.total == rows < sum(SIZES)  # the drawn row groups' blobs, each once; no other
    assert all(proxy.requests(key(blob_id_for(i))) <= 1 for i in range(sum(SIZES)))
