"""The lean S3 client sends what boto3 would: its URL, and requests S3 accepts as signed by those credentials."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import boto3
import botocore.session
import pytest
from botocore.config import Config
from botocore.credentials import RefreshableCredentials
from botocore.exceptions import ClientError
from moto.core import enable_iam_authentication

from s3servers import CREDENTIALS, moto_server, put_blobs
from smollm_corpus import __version__
from smollm_corpus.s3http import LeanGet, lean_get

BUCKET = "s3http-signed"
BLOB = "ab" * 20
TEXT = b"print('signed')\n"


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


def client(endpoint_url: str | None = None, region: str = "us-east-1", unsigned: bool = False):
    session = botocore.session.get_session()
    config = Config(region_name=region, signature_version=botocore.UNSIGNED if unsigned else None)
    return session, session.create_client("s3", endpoint_url=endpoint_url, config=config)


def lean(endpoint_url: str | None = None, region: str = "us-east-1", unsigned: bool = False, bucket: str = "softwareheritage"):
    session, c = client(endpoint_url, region, unsigned)
    return lean_get(c, None if unsigned else session.get_credentials(), bucket, 1.0, 1.0)


@pytest.mark.parametrize(("endpoint", "region", "url"), [
    (None, "us-east-1", "https://softwareheritage.s3.amazonaws.com/content/"),  # virtual-hosted, as boto3 does
    (None, "eu-west-3", "https://softwareheritage.s3.eu-west-3.amazonaws.com/content/"),
    ("http://127.0.0.1:9000", "us-east-1", "http://127.0.0.1:9000/softwareheritage/content/"),  # path style for an IP
])
def test_requests_go_where_boto3_sends_them_and_nothing_is_sent_to_find_out(endpoint, region, url):
    get = lean(endpoint, region)  # no server listens at any of these: the probe request is never sent
    assert isinstance(get, LeanGet)
    assert get.endpoint + get._prefix + "content/" == url
    assert get._region == region and get._service == "s3"


@dataclass(frozen=True)
class SignedS3:
    """A moto S3 that checks every signature, and the credentials it knows."""

    endpoint: str
    user: dict[str, str]  # an IAM user's long-term key
    role: dict[str, str]  # temporary credentials of an assumed role, with a session token


@pytest.fixture(scope="module")
def signed_s3() -> Iterator[SignedS3]:
    read = json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": "s3:GetObject", "Resource": f"arn:aws:s3:::{BUCKET}/*"}]})
    with moto_server() as endpoint:
        put_blobs(endpoint, BUCKET, {BLOB: TEXT})
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS)
        iam.create_user(UserName="s3http-reader")
        iam.put_user_policy(UserName="s3http-reader", PolicyName="read", PolicyDocument=read)
        key = iam.create_access_key(UserName="s3http-reader")["AccessKey"]
        trust = json.dumps({"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"AWS": "*"}, "Action": "sts:AssumeRole"}]})
        role = iam.create_role(RoleName="s3http-reader", AssumeRolePolicyDocument=trust)["Role"]
        iam.put_role_policy(RoleName="s3http-reader", PolicyName="read", PolicyDocument=read)
        sts = boto3.client("sts", endpoint_url=endpoint, region_name="us-east-1", **CREDENTIALS)
        temporary = sts.assume_role(RoleArn=role["Arn"], RoleSessionName="s3http")["Credentials"]
        yield SignedS3(
            endpoint,
            {"AWS_ACCESS_KEY_ID": key["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": key["SecretAccessKey"]},
            {"AWS_ACCESS_KEY_ID": temporary["AccessKeyId"], "AWS_SECRET_ACCESS_KEY": temporary["SecretAccessKey"],
             "AWS_SESSION_TOKEN": temporary["SessionToken"]},
        )


def fetch(get: LeanGet, key: str = "content/" + BLOB, loop: asyncio.AbstractEventLoop | None = None) -> bytes:
    """``get.get(key)`` run to its end on ``loop`` (a new one by default)."""
    if loop is not None:
        return loop.run_until_complete(get.get(key))
    with asyncio.Runner() as runner:
        return runner.run(get.get(key))


def signature_error(get: LeanGet) -> str:
    with enable_iam_authentication(), pytest.raises(ClientError) as raised:
        fetch(get)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return raised.value.response["Error"]["Code"]


@pytest.mark.parametrize("kind", ["user", "role"])
def test_signed_requests_are_accepted_and_a_wrong_secret_is_refused(monkeypatch, signed_s3: SignedS3, kind: str):
    for name, value in getattr(signed_s3, kind).items():
        monkeypatch.setenv(name, value)
    get = lean(signed_s3.endpoint, bucket=BUCKET)
    with enable_iam_authentication():
        assert gzip.decompress(fetch(get)) == TEXT

    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    assert signature_error(lean(signed_s3.endpoint, bucket=BUCKET)) == "SignatureDoesNotMatch"


def test_credentials_are_read_at_each_request_so_refreshed_ones_sign_the_next(signed_s3: SignedS3):
    current = {"access_key": signed_s3.user["AWS_ACCESS_KEY_ID"], "secret_key": signed_s3.user["AWS_SECRET_ACCESS_KEY"],
               "token": None}

    def refresh() -> dict[str, str | None]:
        # always about to expire: botocore refreshes them whenever they are read
        soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=1)
        return {**current, "expiry_time": soon.isoformat()}

    credentials = RefreshableCredentials.create_from_metadata(refresh(), refresh, "test")
    get = lean_get(client(signed_s3.endpoint)[1], credentials, BUCKET, 1.0, 1.0)
    with enable_iam_authentication():
        assert gzip.decompress(fetch(get)) == TEXT
    current["secret_key"] = "rotated-away"
    assert signature_error(get) == "SignatureDoesNotMatch"


def test_unsigned_requests_carry_no_signature():
    get = lean(unsigned=True)
    assert get is not None and get._credentials is None


def test_a_proxy_leaves_the_requests_to_boto3(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    assert lean() is None


def test_no_proxy_alone_or_bypassing_the_endpoint_keeps_the_lean_client(monkeypatch):
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert lean("http://127.0.0.1:9000") is not None
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.invalid:3128")
    assert lean("http://127.0.0.1:9000") is not None


class _OneRequestPerConnection(BaseHTTPRequestHandler):
    """Answers one GET, then closes the connection without saying so, as a server does with an idle one."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self.server.user_agents.append(self.headers["User-Agent"])
        self.send_response(200)
        self.send_header("Content-Length", str(len(TEXT)))
        self.end_headers()
        self.wfile.write(TEXT)
        self.close_connection = True


class _ClosingServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _OneRequestPerConnection)
        self.user_agents: list[str] = []
        self.closed = threading.Semaphore(0)

    def shutdown_request(self, request) -> None:
        super().shutdown_request(request)
        self.closed.release()


def test_a_connection_the_server_closed_is_replaced_and_the_tool_names_itself():
    server = _ClosingServer()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        get = lean(f"http://127.0.0.1:{server.server_address[1]}", unsigned=True)
        with asyncio.Runner() as runner:
            loop = runner.get_loop()
            for _ in range(3):
                assert fetch(get, loop=loop) == TEXT
                assert server.closed.acquire(timeout=10)  # the next request finds its connection closed
            get.close()
    finally:
        server.shutdown()
        server.server_close()
    assert server.user_agents == [f"smollm-corpus/{__version__}"] * 3


class _RawServer:
    """A TCP server on 127.0.0.1 that answers each request with ``reply(request_number)`` bytes (None: stay silent)."""

    def __init__(self, reply) -> None:
        import socket

        self.reply, self.connections, self.requests = reply, 0, 0
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self._held: list = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            self._held.append(conn)
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn) -> None:
        buffer = b""
        for _ in range(1000):  # bounded: the tests send a few requests
            while b"\r\n\r\n" not in buffer:
                data = conn.recv(65536)
                if not data:
                    return
                buffer += data
            _, buffer = buffer.split(b"\r\n\r\n", 1)
            self.requests += 1
            answer = self.reply(self.requests)
            if answer is not None:
                conn.sendall(answer)

    def close(self) -> None:
        self.sock.close()
        for conn in self._held:
            conn.close()


@pytest.fixture
def raw_server():
    servers = []

    def start(reply):
        servers.append(_RawServer(reply))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def test_answers_in_chunks_or_with_a_length_keep_one_connection(raw_server):
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nprint\r\n3\r\n(1)\r\n0\r\n\r\n"
    sized = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nprint(2)"
    server = raw_server(lambda n: chunked if n % 2 else sized)
    get = lean(server.url, unsigned=True)
    with asyncio.Runner() as runner:
        bodies = [fetch(get, loop=runner.get_loop()) for _ in range(4)]
        get.close()
    assert bodies == [b"print(1)", b"print(2)"] * 2
    assert server.connections == 1 and server.requests == 4


def test_an_error_without_a_body_is_named_by_its_status(raw_server):
    server = raw_server(lambda n: b"HTTP/1.1 503 Slow Down\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(ClientError) as raised:
        fetch(lean(server.url, unsigned=True))
    assert raised.value.response["Error"] == {"Code": "503", "Message": "Slow Down"}
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 503


def test_a_silent_server_times_out_and_garbage_is_refused(raw_server):
    from botocore.exceptions import HTTPClientError

    silent = raw_server(lambda n: None)
    started = time.monotonic()
    with pytest.raises(HTTPClientError, match="no answer for 1 s"):
        fetch(lean(silent.url, unsigned=True))  # the read timeout is 1 s
    assert 0.9 < time.monotonic() - started < 10
    garbage = raw_server(lambda n: b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    with pytest.raises(HTTPClientError, match="not valid HTTP"):
        fetch(lean(garbage.url, unsigned=True))


def test_a_connection_closed_before_the_whole_answer_fails_the_request(raw_server):
    from botocore.exceptions import HTTPClientError

    def reply(n):
        return b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nConnection: close\r\n\r\nprint("

    server = raw_server(reply)
    get = lean(server.url, unsigned=True)
    with asyncio.Runner() as runner:
        loop = runner.get_loop()
        task = loop.create_task(get.get("content/" + BLOB))
        loop.run_until_complete(asyncio.sleep(0.3))
        server.close()  # the rest of the body never comes
        with pytest.raises(HTTPClientError):
            loop.run_until_complete(asyncio.wait_for(task, 10))
