"""Benchmark: fetching python-edu contents from an S3-compatible endpoint, recipe vs smollm-corpus.

A small asyncio server on 127.0.0.1 (its own process, its CPU reported separately) answers
``GET /<bucket>/content/<blob_id>`` with a gzip'd Python file after a fixed delay, standing in
for S3's first-byte latency; unknown keys get S3's 404 NoSuchKey. A local python-edu mirror
lists the served blob ids plus a few missing ones, as upstream has.

(a) the published recipe: ``load_dataset(DIR, "python-edu", split="train")``, then
    ``ds.map(download, input_columns="blob_id", num_proc=16)`` with one ``get_object`` at a
    time on a per-process boto3 client, then ``ds.filter(download_success)``;
(b) ``smollm-corpus fetch python-edu --source DIR -o OUT -q --s3-endpoint-url URL``, and the
    same with ``--s3-client boto3`` (every request sent by boto3 itself).

    .venv/bin/python benchmarks/bench_hydrate.py                      # 20,000 blobs, 30 ms
    .venv/bin/python benchmarks/bench_hydrate.py --blobs 2000 --runs 1 --only a
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from common import Measurement  # noqa: E402

BUCKET = "softwareheritage"
FULL_BLOBS = 7_678_448  # python-edu rows
PROJECTED_CORES = 16
PREFIX_GETS_PER_S = 5_500  # S3's documented floor per partitioned key prefix
TARGET_MINUTES = 30
#: client CPU per blob of (b), start-up included: a core then carries 2,000 blobs/s
CPU_BUDGET_MS = 0.5
RECIPE_NUM_PROC = 16
ROW_GROUP_ROWS = 1000
MEAN_SOURCE_BYTES = 1600
RUN_TIMEOUT_S = 1800


# ---------------------------------------------------------------------------------------------
# blobs and mirror


_IMPORTS = (
    "os", "sys", "re", "json", "math", "random", "time", "logging", "argparse", "csv",
    "from pathlib import Path", "from collections import defaultdict, Counter",
    "from typing import Dict, List, Optional", "from dataclasses import dataclass",
    "import numpy as np", "import pandas as pd", "import matplotlib.pyplot as plt", "import unittest",
)


class SourceMaker:
    """Python files of a realistic size and shape: docstrings, functions, a class, a main block."""

    def __init__(self, pool: common.TextPool) -> None:
        self.words = [w for w in pool.words() if w.isascii()]
        self.sentences = pool.sentences

    def _name(self, rng: random.Random, most: int = 3) -> str:
        return "_".join(rng.choices(self.words, k=rng.randint(1, most)))

    def _phrase(self, rng: random.Random, most: int = 70) -> str:
        """A sentence cut at a word boundary: code comments and docstrings are short."""
        return rng.choice(self.sentences)[:most].rsplit(" ", 1)[0].rstrip(",;:")

    def _function(self, rng: random.Random, names: list[str], indent: str = "") -> list[str]:
        args = rng.sample(names, rng.randint(0, 3))
        if indent:
            args.insert(0, "self")
        result, item = rng.choice(names), rng.choice(("i", "item", "row", "line", "x"))
        lines = [f"{indent}def {self._name(rng)}({', '.join(args)}):", f'{indent}    """{self._phrase(rng)}.']
        if args and rng.random() < 0.6:
            lines += ["", f"{indent}    Args:"] + [f"{indent}        {a}: {rng.choice(self.words)}" for a in args if a != "self"]
        lines += [f'{indent}    """', f"{indent}    {result} = {rng.choice(['[]', '{}', '0', 'None', repr(rng.choice(self.words))])}"]
        for _ in range(rng.randint(1, 5)):
            kind, other = rng.random(), rng.choice(names)
            if kind < 0.3:
                lines += [f"{indent}    for {item} in range(len({other})):",
                          f"{indent}        {result}.append({other}[{item}] * {rng.randint(0, 9)})"]
            elif kind < 0.55:
                lines += [f"{indent}    if {result} is None or len({result}) > {rng.randint(1, 80)}:",
                          f'{indent}        print(f"{self._phrase(rng, 50)}: {{{result}}}")']
            elif kind < 0.75:
                lines.append(f"{indent}    # {self._phrase(rng)}")
                lines.append(f"{indent}    {other} = {result} * {rng.random():.3f}")
            else:
                lines += [f"{indent}    try:", f"{indent}        {result} = {other}.{rng.choice(names)}()",
                          f"{indent}    except (ValueError, KeyError) as exc:", f"{indent}        raise RuntimeError(exc)"]
        lines += [f"{indent}    return {result}", ""]
        return lines

    def source(self, rng: random.Random) -> str:
        # lognormal sizes around the published mean; sigma 0.7 gives code's long tail
        target = min(40_000, max(150, int(rng.lognormvariate(0, 0.7) / 1.278 * MEAN_SOURCE_BYTES)))
        names = [self._name(rng, 2) for _ in range(rng.randint(4, 12))]  # a file reuses its names
        lines = [f'"""{rng.choice(self.sentences)}"""', ""]  # a module docstring may run long
        lines += [m if " " in m else f"import {m}" for m in rng.sample(_IMPORTS, rng.randint(1, 5))] + ["", ""]
        size = sum(len(x) + 1 for x in lines)
        while True:
            if rng.random() < 0.25:
                fields = rng.sample(names, rng.randint(1, min(4, len(names))))
                block = [f"class {self._name(rng, 2).title().replace('_', '')}:", f'    """{self._phrase(rng)}."""', "",
                         f"    def __init__(self, {', '.join(fields)}):", *(f"        self.{f} = {f}" for f in fields), ""]
                block += self._function(rng, names, "    ")
            else:
                block = self._function(rng, names) + [""]
            grown = size + sum(len(x) + 1 for x in block)
            if grown - target > target - size:  # stop at whichever side of the target is nearer
                break
            lines, size = lines + block, grown
        if rng.random() < 0.4:
            lines += ['if __name__ == "__main__":', f"    {self._name(rng)}()"]
        return "\n".join(lines) + "\n"


@dataclass
class Blobs:
    """What the server serves, and the row order of the mirror (served ids plus missing ones)."""

    served: dict[str, bytes]  # blob_id -> gzip'd body
    lengths: dict[str, int]  # blob_id -> uncompressed bytes
    order: list[str]

    @property
    def text_bytes(self) -> int:
        return sum(self.lengths.values())

    @property
    def gz_bytes(self) -> int:
        return sum(len(b) for b in self.served.values())


def ensure_blobs(work: Path, count: int) -> Path:
    """Generate ``count`` blobs once; blob ids are git blob SHA-1s of the contents, as in the Stack v2."""
    path = work / f"blobs-{count}.pkl"
    if path.exists():
        return path
    rng = random.Random(f"python-edu:{count}")
    maker = SourceMaker(common.text_pool())
    served, lengths = {}, {}
    for _ in range(count):
        data = maker.source(rng).encode("utf-8")
        blob_id = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        served[blob_id], lengths[blob_id] = gzip.compress(data, mtime=0), len(data)
    # about 1 in 7,700 rows upstream answer NoSuchKey; keep a few so that path is exercised
    missing = [hashlib.sha1(f"removed:{i}".encode()).hexdigest() for i in range(max(1, count // 5000))]
    order = list(served) + missing
    rng.shuffle(order)
    tmp = path.with_suffix(".tmp")
    # plain containers: a pickled class of a script run as __main__ would not load elsewhere
    tmp.write_bytes(pickle.dumps({"served": served, "lengths": lengths, "order": order}))
    os.replace(tmp, path)
    return path


def load_blobs(path: Path) -> Blobs:
    return Blobs(**pickle.loads(path.read_bytes()))


class EduRows:
    """``rows`` callable for ``build_mirror``: python-edu metadata rows for the blob ids, in order."""

    def __init__(self, blobs: Blobs) -> None:
        self.blobs = blobs

    def __call__(self, subset: str, start: int, stop: int):  # -> pa.Table
        import pyarrow as pa
        from mirror import SCHEMAS

        rng = random.Random(f"{subset}:{start}")
        rows = []
        for blob_id in self.blobs.order[start:stop]:
            score = rng.uniform(3.5, 5.0)
            rows.append({
                "blob_id": blob_id,
                "repo_name": f"{rng.choice(('alice', 'bob', 'ml-lab', 'cs101'))}{rng.randrange(999)}/project{rng.randrange(50)}",
                "path": f"/src/pkg{rng.randrange(20)}/module_{rng.randrange(10**4)}.py",
                "length_bytes": self.blobs.lengths.get(blob_id, rng.randint(200, 5000)),
                "score": score,
                "int_score": round(score),
            })
        return pa.Table.from_pylist(rows, schema=SCHEMAS[subset])


def ensure_mirror(work: Path, blobs_path: Path) -> Path:
    """A python-edu mirror of two parquet files listing the blobs, built once."""
    from mirror import build_mirror

    root = work / "mirrors" / f"python-edu-{blobs_path.stem}"
    done = root / ".complete"
    if not done.exists():
        shutil.rmtree(root, ignore_errors=True)
        blobs = load_blobs(blobs_path)
        half = len(blobs.order) // 2
        build_mirror(root, {"python-edu": [half, len(blobs.order) - half]}, row_group_size=ROW_GROUP_ROWS, rows=EduRows(blobs))
        done.write_text("")  # written last: a half-built mirror is rebuilt next time
    return root


# ---------------------------------------------------------------------------------------------
# the S3-compatible server (runs in its own process via common.python_call)


_XML = '<?xml version="1.0" encoding="UTF-8"?>\n'


def _http(status: str, headers: dict[str, str], body: bytes, head_only: bool = False) -> bytes:
    lines = [f"HTTP/1.1 {status}", "Server: AmazonS3", "x-amz-request-id: 4442587FB7D0A2F9", *(f"{k}: {v}" for k, v in headers.items())]
    # a HEAD answer announces the body a GET would get; an error's body is not announced
    length = 0 if head_only and not status.startswith("200") else len(body)
    lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)


def _error(code: str, status: str, message: str, resource: str, head_only: bool) -> bytes:
    body = f"{_XML}<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource></Error>"
    return _http(status, {"Content-Type": "application/xml"}, body.encode(), head_only)


class _Store:
    """Prebuilt responses, and counters the benchmark reads through /__bench/stats."""

    def __init__(self, blobs: Blobs, delay_s: float) -> None:
        self.delay_s = delay_s
        self.objects: dict[str, tuple[bytes, bytes]] = {}
        for blob_id, body in blobs.served.items():
            headers = {
                "Content-Type": "application/octet-stream",
                "ETag": f'"{hashlib.md5(body).hexdigest()}"',
                "Last-Modified": "Tue, 14 Mar 2023 10:00:00 GMT",
                "Accept-Ranges": "bytes",
            }
            self.objects[f"content/{blob_id}"] = (_http("200 OK", headers, body), _http("200 OK", headers, body, True))
        self.counts: Counter[str] = Counter()
        self.in_flight = self.peak_in_flight = 0

    def respond(self, method: str, bucket: str, key: str, query: str) -> tuple[str, bytes]:
        """(kind of request, response bytes) for an S3 request."""
        head = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return "other", _error("MethodNotAllowed", "405 Method Not Allowed", "read-only endpoint", key, head)
        if not bucket:
            body = f"{_XML}<ListAllMyBucketsResult><Buckets><Bucket><Name>{BUCKET}</Name></Bucket></Buckets></ListAllMyBucketsResult>"
            return "service", _http("200 OK", {"Content-Type": "application/xml"}, body.encode(), head)
        if bucket != BUCKET:
            return "other", _error("NoSuchBucket", "404 Not Found", "The specified bucket does not exist", bucket, head)
        if not key:
            if "location" in query:
                body = f"{_XML}<LocationConstraint/>"
            else:
                body = f"{_XML}<ListBucketResult><Name>{BUCKET}</Name><KeyCount>0</KeyCount><IsTruncated>false</IsTruncated></ListBucketResult>"
            return "bucket", _http("200 OK", {"Content-Type": "application/xml", "x-amz-bucket-region": "us-east-1"}, body.encode(), head)
        found = self.objects.get(key)
        if found is None:
            return "missing", _error("NoSuchKey", "404 Not Found", "The specified key does not exist.", key, head)
        return "object", found[1] if head else found[0]

    def stats(self) -> bytes:
        import resource

        usage = resource.getrusage(resource.RUSAGE_SELF)
        body = json.dumps({
            "cpu_s": usage.ru_utime + usage.ru_stime,
            "counts": dict(self.counts),
            "peak_in_flight": self.peak_in_flight,
        }).encode()
        return _http("200 OK", {"Content-Type": "application/json"}, body)


def _route(target: str, headers: str) -> tuple[str, str, str]:
    """(bucket, key, query) from a path-style or virtual-host-style request."""
    from urllib.parse import unquote

    path, _, query = target.partition("?")
    path = unquote(path)
    for line in headers.split("\r\n"):
        if line[:5].lower() == "host:":
            host = line[5:].strip().split(":")[0]
            if host.startswith(f"{BUCKET}."):
                return BUCKET, path.lstrip("/"), query
            break
    bucket, _, key = path.lstrip("/").partition("/")
    return bucket, key, query


def serve(blobs: str, port_file: str, delay_ms: float) -> None:
    """Serve the blobs on 127.0.0.1 until SIGTERM; write the chosen port to ``port_file``."""
    import asyncio

    store = _Store(load_blobs(Path(blobs)), delay_ms / 1000)
    loop = asyncio.new_event_loop()

    class Protocol(asyncio.Protocol):
        def __init__(self) -> None:
            self.buffer = b""
            self.next_at = 0.0  # responses leave in request order on a connection
            self.transport: asyncio.Transport | None = None

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def connection_lost(self, exc: Exception | None) -> None:
            self.transport = None

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while self.transport is not None:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(self.buffer) > 65536:  # no sane request head is this long
                        self.transport.close()
                    return
                head = self.buffer[:end].decode("latin-1")
                length = 0
                for line in head.split("\r\n")[1:]:
                    if line[:15].lower() == "content-length:":
                        length = int(line[15:])
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                self.handle(head)

        def handle(self, head: str) -> None:
            request_line, _, headers = head.partition("\r\n")
            method, target, _ = (request_line.split(" ", 2) + ["", ""])[:3]
            close = "connection: close" in headers.lower()
            if target.startswith("/__bench/"):
                if target == "/__bench/reset":
                    store.counts.clear()
                    store.peak_in_flight = store.in_flight
                self.send(store.stats(), close, counted=False)
                return
            bucket, key, query = _route(target, headers)
            kind, response = store.respond(method, bucket, key, query)
            store.counts[f"{method} {kind}"] += 1
            store.in_flight += 1
            store.peak_in_flight = max(store.peak_in_flight, store.in_flight)
            at = max(loop.time() + store.delay_s, self.next_at)
            self.next_at = at
            loop.call_at(at, self.send, response, close)

        def send(self, response: bytes, close: bool, counted: bool = True) -> None:
            if counted:
                store.in_flight -= 1
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(response)
                if close:
                    self.transport.close()

    # a deep backlog: clients that open hundreds of connections at once must not see SYN drops
    server = loop.run_until_complete(loop.create_server(Protocol, "127.0.0.1", 0, backlog=4096))
    port = server.sockets[0].getsockname()[1]
    tmp = Path(port_file + ".tmp")
    tmp.write_text(str(port))
    os.replace(tmp, port_file)
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()
        loop.close()


class Server:
    """The server subprocess: start, read and reset its counters, stop."""

    def __init__(self, work: Path, blobs_path: Path, delay_ms: float) -> None:
        port_file = work / "server.port"
        port_file.unlink(missing_ok=True)
        env = common.base_env(work / "server-scratch")
        cmd = common.python_call("bench_hydrate", "serve", blobs=str(blobs_path), port_file=str(port_file), delay_ms=delay_ms)
        self.proc = common.start_group(cmd, env, work / "server.log")
        for _ in range(600):  # up to 60 s to load the blobs and bind
            if port_file.exists() or self.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not port_file.exists():
            self.stop()
            raise RuntimeError(f"the S3 server did not start; see {work / 'server.log'}")
        self.url = f"http://127.0.0.1:{port_file.read_text()}"
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def stats(self, reset: bool = False) -> dict:
        with self._opener.open(f"{self.url}/__bench/{'reset' if reset else 'stats'}", timeout=30) as resp:
            return json.load(resp)

    def stop(self) -> float:
        """Stop the server; its CPU seconds over its whole life."""
        self.proc.send_signal(signal.SIGTERM)
        for _ in range(100):
            pid, status, usage = os.wait4(self.proc.pid, os.WNOHANG)
            if pid:
                self.proc.returncode = os.waitstatus_to_exitcode(status)
                common.kill_group(self.proc.pid)
                return usage.ru_utime + usage.ru_stime
            time.sleep(0.1)
        common.kill_group(self.proc.pid)
        return float("nan")


# ---------------------------------------------------------------------------------------------
# (a) the published recipe (runs in a fresh interpreter via common.python_call)

_s3 = None
_s3_pid = 0


def _client():
    """The recipe's module-level client, one per process: a boto3 client must not cross a fork."""
    global _s3, _s3_pid
    if _s3 is None or _s3_pid != os.getpid():
        import boto3

        _s3, _s3_pid = boto3.client("s3"), os.getpid()  # endpoint and region come from the environment
    return _s3


def download_contents(blob_id: str) -> dict:
    from botocore.exceptions import ClientError

    key = f"content/{blob_id}"
    try:
        obj = _client().get_object(Bucket=BUCKET, Key=key)
        with gzip.GzipFile(fileobj=obj["Body"]) as fin:
            content = fin.read().decode("utf-8", errors="ignore")
        return {"text": content, "download_success": True}
    except ClientError as e:
        if e.response["Error"]["Code"] == "NoSuchKey":
            return {"text": "", "download_success": False}
        raise


def run_recipe(source: str, out: str, num_proc: int) -> None:
    import pyarrow.compute as pc
    from datasets import load_dataset

    ds = load_dataset(source, "python-edu", split="train")
    ds = ds.map(download_contents, input_columns="blob_id", num_proc=num_proc)
    ds = ds.filter(lambda x: x["download_success"])
    text_bytes = pc.sum(pc.binary_length(ds.data.column("text"))).as_py() or 0
    (Path(out) / "result.json").write_text(json.dumps({"rows": len(ds), "text_bytes": text_bytes}))


# ---------------------------------------------------------------------------------------------
# measuring


@dataclass
class Run:
    m: Measurement
    server: dict  # the server's counters during the run, and its CPU seconds


@dataclass
class Result:
    key: str
    label: str
    runs: list[Run] = field(default_factory=list)

    @property
    def error(self) -> str | None:
        failed = [r.m for r in self.runs if not r.m.ok]
        return failed[0].error() if failed else None

    def med(self, get: Callable[[Run], float]) -> float:
        return common.median(get(r) for r in self.runs)


def measure(key: str, tag: str, server: Server, mirror: Path, work: Path) -> Run:
    """One fresh-process run of approach ``key`` against the server, whose counters are reset first."""
    run_dir = work / "runs" / f"{key}-{tag}"
    shutil.rmtree(run_dir, ignore_errors=True)
    out, scratch = run_dir / "out", run_dir / "scratch"
    out.mkdir(parents=True)
    scratch.mkdir()
    aws_config = scratch / "aws-config"
    aws_config.write_text("[default]\nregion = us-east-1\ns3 =\n    addressing_style = path\n")
    env = common.base_env(
        scratch, AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AWS_CONFIG_FILE=str(aws_config), AWS_SHARED_CREDENTIALS_FILE=str(scratch / "no-credentials"),
    )
    if key == "a":
        env["AWS_ENDPOINT_URL_S3"] = server.url  # the recipe's bare boto3.client("s3") picks it up
        cmd = common.python_call("bench_hydrate", "run_recipe", source=str(mirror), out=str(out), num_proc=RECIPE_NUM_PROC)
    else:
        cmd = [str(common.cli_path() or "smollm-corpus"), "fetch", "python-edu", "--source", str(mirror), "-o", str(out),
               "-q", "--s3-endpoint-url", server.url, *(["--s3-client", "boto3"] if key == "b-boto3" else [])]
    before = server.stats(reset=True)
    m = common.run_measured(cmd, env=env, log=run_dir / "log.txt", watch=[scratch], timeout_s=RUN_TIMEOUT_S)
    after = server.stats()
    shutil.rmtree(out)
    shutil.rmtree(scratch)
    print(f"  {key} [{tag}]: {m.wall_s:.1f} s, CPU {m.cpu_s:.1f} s, server CPU {after['cpu_s'] - before['cpu_s']:.1f} s, "
          f"{after['counts']}; {'ok' if m.ok else m.error()}", file=sys.stderr, flush=True)
    return Run(m, {"cpu_s": after["cpu_s"] - before["cpu_s"], "counts": after["counts"], "peak_in_flight": after["peak_in_flight"]})


#: client processes each approach runs here; on PROJECTED_CORES cores the recipe still runs
#: RECIPE_NUM_PROC of them and the tool one per core, each with as many requests in flight as here
PROCESSES_HERE = {"a": RECIPE_NUM_PROC, "b": os.cpu_count() or 1, "b-boto3": os.cpu_count() or 1}


def projection(cpu_ms: float, in_flight_per_process: float, latency_ms: float) -> tuple[float, float]:
    """(blobs/s, minutes) for all of python-edu on PROJECTED_CORES cores, per the formula printed."""
    per_core = min(1000 / cpu_ms, in_flight_per_process / (latency_ms / 1000))
    rate = min(PROJECTED_CORES * per_core, PREFIX_GETS_PER_S)
    return rate, FULL_BLOBS / rate / 60


HEADERS = ["approach", "blobs/s", "vs (a)", "client CPU ms/blob", "server CPU ms/blob", "peak RSS MB",
           "peak PSS MB", "peak in flight", "requests per run", "wall s", f"projected, {PROJECTED_CORES} cores"]


def report(results: dict[str, Result], rows: int, delay_ms: float) -> tuple[list[list[str]], dict[str, dict]]:
    """Table rows, and per approach its blobs/s, CPU ms per blob and projected minutes."""
    summary = {}
    for key, r in results.items():
        if not r.error:
            cpu_ms = r.med(lambda x: x.m.cpu_s) * 1000 / rows
            in_flight = r.med(lambda x: x.server["peak_in_flight"])
            rate, minutes = projection(cpu_ms, in_flight / PROCESSES_HERE[key], delay_ms)
            summary[key] = {"bps": rows / r.med(lambda x: x.m.wall_s), "cpu_ms": cpu_ms, "in_flight": in_flight,
                            "rate": rate, "minutes": minutes}
    table = []
    for key, r in results.items():
        if key not in summary:
            table.append([r.label, f"error: {r.error}"] + ["—"] * (len(HEADERS) - 2))
            continue
        s = summary[key]
        requests = Counter()
        for x in r.runs:
            requests.update(x.server["counts"])
        table.append([
            r.label, common.num(s["bps"]), common.ratio(s["bps"], summary.get("a", {}).get("bps")), common.num(s["cpu_ms"], 2),
            common.num(r.med(lambda x: x.server["cpu_s"]) * 1000 / rows, 3),
            common.num(r.med(lambda x: x.m.peak_rss_mb), 0), common.num(r.med(lambda x: x.m.peak_pss_mb), 0),
            common.num(s["in_flight"], 0), ", ".join(f"{k}: {v // len(r.runs):,}" for k, v in sorted(requests.items())),
            common.num(r.med(lambda x: x.m.wall_s), 1), f"{s['rate']:,.0f}/s, {s['minutes']:,.0f} min",
        ])
    return table, summary


def targets(summary: dict[str, dict], delay_ms: float) -> list[str]:
    a, b = summary.get("a"), summary.get("b")
    both = "needs (a) and (b)"
    return [
        common.check(f"(b) >= 3x (a) blobs/s at {delay_ms:g} ms", b["bps"] >= 3 * a["bps"] if a and b else None,
                     f"{b['bps']:,.0f} vs 3 x {a['bps']:,.0f} = {3 * a['bps']:,.0f}" if a and b else both),
        common.check("(b) CPU per blob <= (a)'s", b["cpu_ms"] <= a["cpu_ms"] if a and b else None,
                     f"{b['cpu_ms']:.2f} vs {a['cpu_ms']:.2f} ms" if a and b else both),
        common.check(f"(b) CPU per blob <= {CPU_BUDGET_MS} ms", b["cpu_ms"] <= CPU_BUDGET_MS if b else None,
                     f"{b['cpu_ms']:.2f} ms" if b else "needs (b)"),
        common.check(f"(b) projected full run on {PROJECTED_CORES} cores < {TARGET_MINUTES} min",
                     b["minutes"] < TARGET_MINUTES if b else None, f"{b['minutes']:.0f} min" if b else "needs (b)"),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=common.HelpFormatter)
    parser.add_argument("--blobs", type=int, default=20_000, help="blobs the server holds (the mirror adds a few missing ones)")
    parser.add_argument("--delay-ms", type=float, default=30, help="server delay before each response, ms")
    parser.add_argument("--runs", type=int, default=3, help="runs per approach; the table shows medians")
    parser.add_argument("--work", type=Path, default=Path("/tmp/smollm-bench"), help="blobs, mirror and runs live here")
    parser.add_argument("--only", default="a,b,b-boto3", help="comma-separated approaches to run, from a,b,b-boto3")
    args = parser.parse_args()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    if not only <= set(PROCESSES_HERE) or args.runs < 1 or args.blobs < 1 or args.delay_ms < 0:
        parser.error("--only takes a, b and/or b-boto3; --runs and --blobs must be positive, --delay-ms not negative")
    common.install_cleanup()
    sys.path.insert(0, str(common.REPO / "tests"))  # for mirror.build_mirror

    work = (args.work / "hydrate").resolve()
    work.mkdir(parents=True, exist_ok=True)
    blobs_path = ensure_blobs(work, args.blobs)
    mirror = ensure_mirror(work, blobs_path)
    blobs = load_blobs(blobs_path)
    rows = len(blobs.order)

    print("# bench_hydrate: python-edu contents from an S3-compatible endpoint\n")
    print(common.machine_summary())
    print(f"- {len(blobs.served):,} blobs served + {rows - len(blobs.served)} missing (NoSuchKey); "
          f"mean {blobs.text_bytes / len(blobs.served):,.0f} B of Python, gzip {blobs.text_bytes / blobs.gz_bytes:.2f}x; "
          f"server delay {args.delay_ms:g} ms per request")
    print(f"- medians of {args.runs} run(s); each run a fresh process tree with empty cache and temp dirs\n")

    labels = {"a": f"(a) recipe: datasets map num_proc={RECIPE_NUM_PROC}, boto3", "b": "(b) smollm-corpus fetch",
              "b-boto3": "(b) smollm-corpus fetch --s3-client boto3"}
    results = {k: Result(k, label) for k, label in labels.items() if k in only}
    server = Server(work, blobs_path, args.delay_ms)
    try:
        for run in range(args.runs):
            print(f"run {run + 1}/{args.runs}", file=sys.stderr, flush=True)
            for key, result in results.items():
                result.runs.append(measure(key, f"r{run}", server, mirror, work))
    finally:
        server_cpu = server.stop()

    table, summary = report(results, rows, args.delay_ms)
    print(common.markdown_table(HEADERS, table))
    needed = FULL_BLOBS / (TARGET_MINUTES * 60)
    print(
        f"\nblobs/s: {rows:,} rows / wall seconds of the whole run (start-up, loading and writing included). "
        "Client CPU: user+sys of the client process tree (rusage of reaped children), server excluded. "
        f"Server CPU over the whole benchmark: {server_cpu:.1f} s.\n\n"
        f"Projection: per-core rate = min(1000 / client_cpu_ms_per_blob, in_flight_per_process / latency_s); "
        f"rate = min({PROJECTED_CORES} x per-core rate, {PREFIX_GETS_PER_S:,} GET/s per prefix); "
        f"time = {FULL_BLOBS:,} / rate; latency = --delay-ms ({args.delay_ms:g} ms). in_flight_per_process is the "
        f"peak the server saw here divided by the client processes here ((a): {PROCESSES_HERE['a']}, (b): "
        f"{PROCESSES_HERE['b']}); on {PROJECTED_CORES} cores the recipe keeps its {RECIPE_NUM_PROC} processes and the "
        "tool runs one per core, each with the same requests in flight. "
        f"A full run in {TARGET_MINUTES} min needs {needed:,.0f} blobs/s: at least {needed * args.delay_ms / 1000:,.0f} "
        f"requests in flight at {args.delay_ms:g} ms, and at most {PROJECTED_CORES * 1000 / needed:.1f} ms of client "
        f"CPU per blob on {PROJECTED_CORES} cores.\n"
    )
    if "a" in summary and "b" in summary:
        print(f"ratio (b)/(a) blobs/s: {summary['b']['bps'] / summary['a']['bps']:.2f}x")
    print("\n".join(targets(summary, args.delay_ms)))


if __name__ == "__main__":
    main()
