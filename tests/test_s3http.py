"""The lean S3 client sends what boto3 would: its URL, and requests S3 accepts as signed by those credentials."""

from __future__ import annotations

import datetime
import gzip
import json
import threading
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


def signature_error(get: LeanGet) -> str:
    with enable_iam_authentication(), pytest.raises(ClientError) as raised:
        get.get("content/" + BLOB)
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    return raised.value.response["Error"]["Code"]


@pytest.mark.parametrize("kind", ["user", "role"])
def test_signed_requests_are_accepted_and_a_wrong_secret_is_refused(monkeypatch, signed_s3: SignedS3, kind: str):
    for name, value in getattr(signed_s3, kind).items():
        monkeypatch.setenv(name, value)
    get = lean(signed_s3.endpoint, bucket=BUCKET)
    with enable_iam_authentication():
        assert gzip.decompress(get.get("content/" + BLOB)) == TEXT

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
        assert gzip.decompress(get.get("content/" + BLOB)) == TEXT
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


def test_a_connection_the_server_closed_is_replaced_before_the_next_request_and_the_tool_names_itself():
    server = _ClosingServer()
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        get = lean(f"http://127.0.0.1:{server.server_address[1]}", unsigned=True)
        for _ in range(3):
            assert get.get("content/" + BLOB) == TEXT
            assert server.closed.acquire(timeout=10)  # the next request finds its connection closed
        get.close()
    finally:
        server.shutdown()
        server.server_close()
    assert server.user_agents == [f"smollm-corpus/{__version__}"] * 3
