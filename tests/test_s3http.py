"""The urllib3 S3 client sends what boto3 would: its URL, and a signature equal to botocore's own."""

from __future__ import annotations

import datetime

import botocore.auth
import botocore.session
import pytest
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

from smollm_corpus.s3http import LeanGet, lean_get

KEY = "content/" + "ab" * 20
NOW = datetime.datetime(2026, 11, 22, 9, 30, 5, tzinfo=datetime.timezone.utc)


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
    return lean_get(c, None if unsigned else session.get_credentials(), bucket, 4, 1.0, 1.0)


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


@pytest.mark.parametrize("endpoint", [None, "http://127.0.0.1:9000"])
@pytest.mark.parametrize("token", [None, "session-token/with+odd=chars"])
def test_signature_is_the_one_botocore_computes(monkeypatch, endpoint, token):
    get = lean(endpoint)
    get._credentials = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    path = get._prefix + KEY
    ours = get.sign(path, NOW)

    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW.replace(tzinfo=None))
    request = AWSRequest(method="GET", url=get.endpoint + path, headers={"X-Amz-Content-SHA256": get._payload})
    botocore.auth.S3SigV4Auth(get._credentials, "s3", "us-east-1").add_auth(request)
    assert ours["Authorization"] == request.headers["Authorization"]
    assert ours["x-amz-date"] == request.headers["X-Amz-Date"] == "20261122T093005Z"
    assert ours.get("x-amz-security-token") == request.headers.get("X-Amz-Security-Token")


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
