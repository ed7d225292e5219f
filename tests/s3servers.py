"""S3 for tests, on 127.0.0.1 only: a real moto server, and a proxy in front of it that misbehaves on cue.

moto keeps its buckets per process, not per server: every server started here sees the same
buckets, so tests that need a clean slate use a bucket name of their own.
"""

from __future__ import annotations

import gzip
import http.client
import json
import logging
import re
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

import boto3
from botocore.config import Config
from moto.server import ThreadedMotoServer

#: what moto accepts; any value works, but boto3 must find some to sign with
CREDENTIALS = {"aws_access_key_id": "testing", "aws_secret_access_key": "testing"}
#: seconds any single socket operation of the proxy may take before it gives up
SOCKET_TIMEOUT = 10.0


@contextmanager
def moto_server() -> Iterator[str]:
    """Run moto's S3 on a free port of 127.0.0.1; yields its endpoint URL."""
    # werkzeug logs every request to stderr otherwise
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def s3_client(endpoint: str):
    """A plain boto3 client for ``endpoint`` with the test credentials."""
    # no checksum headers on upload: the real bucket's objects predate them
    config = Config(request_checksum_calculation="when_required", max_pool_connections=8)
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", config=config, **CREDENTIALS)


def put_blobs(endpoint: str, bucket: str, blobs: Mapping[str, bytes]) -> None:
    """Store each text gzip-compressed at ``content/<blob_id>`` of ``bucket``, as Software Heritage does.

    The bucket is created if needed, readable by anyone (unsigned requests) like the real one.
    """
    client = s3_client(endpoint)
    try:
        client.create_bucket(Bucket=bucket)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{bucket}/*"}
            ],
        }
        client.put_bucket_policy(Bucket=bucket, Policy=json.dumps(policy))
        with ThreadPoolExecutor(max_workers=8) as pool:
            for _ in pool.map(
                lambda item: client.put_object(Bucket=bucket, Key=f"content/{item[0]}", Body=gzip.compress(item[1])),
                blobs.items(),
            ):
                pass
    finally:
        client.close()


@dataclass(frozen=True)
class Fault:
    """One way a request goes wrong: an error answer, a dropped connection, or a cut body."""

    kind: str  # "error", "reset", "truncate" or "cut"
    status: int = 0
    code: str = ""  # S3 error code in an XML body; empty: no body, as from a load balancer
    message: str = ""


def s3_error(status: int, code: str = "", message: str = "") -> Fault:
    """An error answer with S3's XML body (or none, without ``code``)."""
    return Fault("error", status, code, message)


SLOW_DOWN = s3_error(503, "SlowDown", "Please reduce your request rate.")
INTERNAL_ERROR = s3_error(500, "InternalError", "We encountered an internal error. Please try again.")
BAD_GATEWAY = s3_error(502)
GATEWAY_TIMEOUT = s3_error(504)
ACCESS_DENIED = s3_error(403, "AccessDenied", "Access Denied")
#: the connection is closed abruptly (TCP reset) without an answer
RESET = Fault("reset")
#: the object's real answer with only the first half of its body (a valid HTTP message)
TRUNCATED = Fault("truncate")
#: the object's real headers and half its body, then the connection closes
CUT = Fault("cut")

_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"})


@dataclass
class _Rule:
    fault: Fault
    pattern: re.Pattern[str]
    left: int | None


class FaultProxy:
    """An HTTP proxy on 127.0.0.1 in front of an S3 server that answers chosen requests with faults.

    It keeps connections alive as S3 does, counts requests per object key, and waits
    ``latency`` seconds before handling each request. Use it as a context manager.
    """

    def __init__(self, upstream: str, latency: float = 0.0) -> None:
        parts = urlsplit(upstream)
        self._upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.latency = latency
        self._lock = threading.Lock()
        self._rules: list[_Rule] = []
        self._counts: Counter[str] = Counter()
        self._server = _Server(self)
        self.endpoint = f"http://127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05})

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._thread.join()
        self._server.close_all()

    def inject(self, fault: Fault, match: str = "", times: int | None = None) -> None:
        """Answer the next ``times`` requests (None: every one) whose object key matches ``match`` with ``fault``.

        ``match`` is a regular expression searched in the key (``content/<blob_id>``); rules added
        first are tried first.
        """
        with self._lock:
            self._rules.append(_Rule(fault, re.compile(match), times))

    def requests(self, key: str) -> int:
        """How many requests for object ``key`` the proxy received, faulty or not."""
        with self._lock:
            return self._counts[key]

    @property
    def total(self) -> int:
        """How many requests the proxy received in all."""
        with self._lock:
            return sum(self._counts.values())

    def _take(self, key: str) -> Fault | None:
        with self._lock:
            self._counts[key] += 1
            for rule in self._rules:
                if rule.left != 0 and rule.pattern.search(key):
                    if rule.left is not None:
                        rule.left -= 1
                    return rule.fault
        return None

    def _forward(
        self, method: str, path: str, headers: list[tuple[str, str]], body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        conn = http.client.HTTPConnection(*self._upstream, timeout=SOCKET_TIMEOUT)
        try:
            conn.request(method, path, body=body, headers=dict(headers))
            response = conn.getresponse()
            return response.status, response.getheaders(), response.read()
        finally:
            conn.close()


class _Server(ThreadingHTTPServer):
    # handler threads are joined on close: nothing outlives the proxy
    daemon_threads = False

    def __init__(self, proxy: FaultProxy) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.proxy = proxy
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()

    def process_request(self, request, client_address) -> None:
        with self._connections_lock:
            self._connections.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_all(self) -> None:
        """Drop idle keep-alive connections so their handler threads end, then join them."""
        with self._connections_lock:
            for conn in self._connections:
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 does
    # headers and body go out in separate writes: with Nagle on, each answer waits out a delayed ACK
    disable_nagle_algorithm = True
    timeout = SOCKET_TIMEOUT  # an idle connection is closed after this
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: pytest shows failures, not every request

    def do_GET(self) -> None:
        proxy = self.server.proxy
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        key = unquote(path).split("/", 2)[2] if path.count("/") >= 2 else ""
        fault = proxy._take(key)
        if proxy.latency:
            time.sleep(proxy.latency)
        if fault is not None and fault.kind == "reset":
            self._reset()
            return
        if fault is not None and fault.kind == "error":
            self._answer(fault.status, *_error_body(fault, key))
            return
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP]
        status, upstream_headers, payload = proxy._forward(self.command, self.path, headers, body)
        kept = [(k, v) for k, v in upstream_headers if k.lower() not in _HOP_BY_HOP | {"content-length"}]
        if fault is not None and fault.kind == "cut":
            self._answer(status, kept, payload, cut=True)
            self.close_connection = True
            return
        if fault is not None and fault.kind == "truncate" and status == 200:
            payload = payload[: len(payload) // 2]
        self._answer(status, kept, payload)

    do_PUT = do_POST = do_DELETE = do_GET

    def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes, cut: bool = False) -> None:
        """Send a whole answer, or with ``cut`` only the first half of its announced body."""
        self.send_response_only(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)

    def _reset(self) -> None:
        # linger 0: closing sends a TCP reset instead of a clean FIN
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True


def _error_body(fault: Fault, key: str) -> tuple[list[tuple[str, str]], bytes]:
    request_id = uuid.uuid4().hex[:16].upper()
    headers = [("x-amz-request-id", request_id), ("x-amz-id-2", uuid.uuid4().hex)]
    if not fault.code:
        return headers, b""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{fault.code}</Code><Message>{fault.message}</Message><Key>{key}</Key>"
        f"<RequestId>{request_id}</RequestId><HostId>{uuid.uuid4().hex}</HostId></Error>"
    )
    return [*headers, ("Content-Type", "application/xml")], xml.encode()
