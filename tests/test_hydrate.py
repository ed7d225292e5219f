"""Hydration against a real moto S3 server through real boto3, and through a proxy injecting S3's faults."""

from __future__ import annotations

import hashlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from collections.abc import Iterator

import pytest

from s3servers import (
    ACCESS_DENIED,
    BAD_GATEWAY,
    CREDENTIALS,
    CUT,
    GATEWAY_TIMEOUT,
    INTERNAL_ERROR,
    RESET,
    SLOW_DOWN,
    TRUNCATED,
    FaultProxy,
    moto_server,
    put_blobs,
    s3_client,
    s3_error,
)
from smollm_corpus.errors import SmollmCorpusError
from smollm_corpus.hydrate import (
    CORRUPT_RETRIES,
    Blob,
    BlobStatus,
    Hydrator,
    S3AccessDenied,
    S3BucketNotFound,
    S3Failed,
    S3Options,
    S3Unreachable,
    credentials_available,
)

BUCKET = "softwareheritage"


def blob_id(name: object) -> str:
    return hashlib.sha1(f"hydrate:{name}".encode()).hexdigest()


#: what the published recipe's decode gives for each stored text
SPECIAL = {
    blob_id("latin1"): (b"caf\xe9 \xff\xfeok", "caf ok"),
    blob_id("unicode"): ("数学 🙂 e\u0301".encode(), "数学 🙂 e\u0301"),
    blob_id("empty"): (b"", ""),
}
MANY = [blob_id(i) for i in range(500)]
TEXTS = {b: f"def f{i}(x):\n    return x + {i}\n".encode() for i, b in enumerate(MANY)}
TEXTS.update({b: raw for b, (raw, _) in SPECIAL.items()})
A, B, C = MANY[:3]


def ok(blob: str) -> Blob:
    return Blob(BlobStatus.OK, TEXTS[blob].decode())


@pytest.fixture(autouse=True)
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Signed requests find the test credentials; nothing goes through a proxy or to instance metadata."""
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", CREDENTIALS["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", CREDENTIALS["aws_secret_access_key"])
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def s3() -> Iterator[str]:
    with moto_server() as endpoint:
        put_blobs(endpoint, BUCKET, TEXTS)
        yield endpoint


@pytest.fixture
def proxy(s3: str) -> Iterator[FaultProxy]:
    with FaultProxy(s3) as proxy:
        yield proxy


CLIENT = "lean"


@pytest.fixture(autouse=True, params=["lean", "boto3"])
def client(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test runs with both clients: they must behave alike in every case."""
    global CLIENT
    CLIENT = request.param
    yield request.param
    CLIENT = "lean"


def hydrator(endpoint: str, threads: int = 4, **options: object) -> Hydrator:
    return Hydrator(S3Options(endpoint_url=endpoint, **{"client": CLIENT, **options}), threads)


def test_texts_come_back_in_order_decoded_like_the_recipe(s3: str) -> None:
    ids = [*SPECIAL, A, B]
    with hydrator(s3) as h:
        blobs = h.fetch(ids)
    assert blobs == [*(Blob(BlobStatus.OK, text) for _, text in SPECIAL.values()), ok(A), ok(B)]


def test_missing_blob_is_reported_without_retrying(proxy: FaultProxy) -> None:
    gone = blob_id("removed upstream")
    proxy.inject(s3_error(404), B)  # a bare 404, without S3's NoSuchKey body
    with hydrator(proxy.endpoint) as h:
        assert h.fetch([A, gone, B]) == [ok(A), Blob(BlobStatus.MISSING), Blob(BlobStatus.MISSING)]
    assert proxy.requests(f"content/{gone}") == 1
    assert proxy.requests(f"content/{B}") == 1


def test_invalid_ids_are_never_requested(proxy: FaultProxy) -> None:
    invalid = [A.upper(), A[:39], A + "0", "", None, "content/../" + A[11:], "g" * 40]
    with hydrator(proxy.endpoint) as h:
        assert h.fetch([]) == []
        assert h.fetch(invalid) == [Blob(BlobStatus.INVALID)] * len(invalid)
        assert proxy.total == 0
        assert h.fetch([None, A, "x", B]) == [Blob(BlobStatus.INVALID), ok(A), Blob(BlobStatus.INVALID), ok(B)]
    assert proxy.total == 2


def test_corrupt_body_is_fetched_again_then_reported_corrupt(proxy: FaultProxy) -> None:
    proxy.inject(TRUNCATED, A)
    proxy.inject(TRUNCATED, B, times=1)
    with hydrator(proxy.endpoint) as h:
        assert h.fetch([A, B, C]) == [Blob(BlobStatus.CORRUPT), ok(B), ok(C)]
    assert proxy.requests(f"content/{A}") == 1 + CORRUPT_RETRIES
    assert proxy.requests(f"content/{B}") == 2


@pytest.mark.parametrize(
    "fault",
    [SLOW_DOWN, INTERNAL_ERROR, BAD_GATEWAY, GATEWAY_TIMEOUT, RESET, CUT, s3_error(400, "RequestTimeout", "Idle.")],
    ids=["503-SlowDown", "500-InternalError", "502", "504", "connection-reset", "reset-mid-body", "400-RequestTimeout"],
)
def test_transient_fault_is_retried_until_success(proxy: FaultProxy, fault) -> None:
    proxy.inject(fault, A, times=2)
    with hydrator(proxy.endpoint) as h:
        assert h.fetch([A, B]) == [ok(A), ok(B)]
    assert proxy.requests(f"content/{A}") == 3
    assert proxy.requests(f"content/{B}") == 1


def test_lasting_server_errors_raise_s3_failed_naming_the_blob(proxy: FaultProxy) -> None:
    proxy.inject(INTERNAL_ERROR, A)
    with hydrator(proxy.endpoint, max_attempts=3) as h, pytest.raises(S3Failed) as raised:
        h.fetch([B, A, C])
    message = str(raised.value)
    assert A in message and "InternalError" in message and "rerun the same command" in message
    assert proxy.requests(f"content/{A}") == 3


@pytest.mark.parametrize(
    "fault",
    [
        ACCESS_DENIED,
        s3_error(403, "InvalidAccessKeyId", "The AWS Access Key Id you provided does not exist in our records."),
        s3_error(403, "SignatureDoesNotMatch", "The request signature we calculated does not match."),
        s3_error(400, "ExpiredToken", "The provided token has expired."),
    ],
    ids=lambda fault: fault.code,
)
def test_refused_credentials_raise_access_denied_at_once(proxy: FaultProxy, fault) -> None:
    proxy.inject(fault, A)
    with hydrator(proxy.endpoint) as h, pytest.raises(S3AccessDenied) as raised:
        h.fetch([A])
    assert fault.code in str(raised.value) and "--no-sign-request" in str(raised.value)
    assert proxy.requests(f"content/{A}") == 1


def test_unsigned_request_to_a_private_bucket_raises_access_denied(s3: str) -> None:
    private = "hydrate-private"
    client = s3_client(s3)
    client.create_bucket(Bucket=private)
    client.put_object(Bucket=private, Key=f"content/{A}", Body=b"")
    with hydrator(s3, bucket=private, unsigned=True) as h, pytest.raises(S3AccessDenied, match="credentials"):
        h.fetch([A])


def test_unsigned_requests_read_the_public_bucket_without_credentials(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with hydrator(s3, unsigned=True) as h:
        assert h.fetch([A, blob_id("nowhere")]) == [ok(A), Blob(BlobStatus.MISSING)]


def test_credentials_available_follows_the_default_chain(monkeypatch: pytest.MonkeyPatch) -> None:
    assert credentials_available()
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    assert not credentials_available()


def test_signed_requests_without_credentials_suggest_no_sign_request(
    s3: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(S3AccessDenied, match="--no-sign-request"):  # at the first request, or before it
        with hydrator(s3) as h:
            h.fetch([A])


def test_missing_bucket_raises_bucket_not_found(s3: str) -> None:
    with hydrator(s3, bucket="no-such-bucket") as h, pytest.raises(S3BucketNotFound) as raised:
        h.fetch([A, B])
    assert "'no-such-bucket'" in str(raised.value) and "--bucket" in str(raised.value)


def test_closed_port_raises_unreachable_naming_the_endpoint() -> None:
    with socket.socket() as probe:  # a port nothing listens on: bound, never listening
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"
        started = time.monotonic()
        with hydrator(endpoint, max_attempts=2) as h, pytest.raises(S3Unreachable) as raised:
            h.fetch([A, B, C])
    assert endpoint in str(raised.value) and "--s3-endpoint-url" in str(raised.value)
    assert time.monotonic() - started < 5


def test_order_is_kept_with_1_and_32_threads(s3: str) -> None:
    ids = [blob_id(f"gone {i}") if i % 50 == 7 else b for i, b in enumerate(MANY)]
    expected = [Blob(BlobStatus.MISSING) if b not in TEXTS else ok(b) for b in ids]
    for threads in (1, 32):
        with hydrator(s3, threads=threads) as h:
            assert h.fetch(ids) == expected


def test_fetches_from_several_threads_at_once_each_get_their_own_blobs(s3: str) -> None:
    ids = [b for i, b in enumerate(MANY) if i % 3]
    parts = [ids[i::3] for i in range(3)]
    with hydrator(s3, threads=8) as h, ThreadPoolExecutor(3) as callers:
        results = list(callers.map(h.fetch, parts))
    assert results == [[ok(b) for b in part] for part in parts]


def test_a_failure_cancels_the_rest_of_the_fetch(proxy: FaultProxy) -> None:
    # 2,000 requests of 20 ms on 8 threads would take 5 s; the failure comes 40 requests in
    proxy.latency = 0.02
    ids = [blob_id(f"absent {i}") for i in range(2000)]
    proxy.inject(ACCESS_DENIED, ids[40])
    with hydrator(proxy.endpoint, threads=8) as h:
        started = time.monotonic()
        with pytest.raises(S3AccessDenied):
            h.fetch(ids)
        assert time.monotonic() - started < 2
        seen = proxy.total
        time.sleep(0.2)
        # at most the requests that were in flight arrive after the error
        assert proxy.total <= seen + 8
    assert proxy.total < 200


def test_a_failure_cuts_other_blobs_backoff_short(proxy: FaultProxy) -> None:
    proxy.inject(INTERNAL_ERROR, A)
    proxy.inject(ACCESS_DENIED, B, times=1)
    started = time.monotonic()
    with hydrator(proxy.endpoint, threads=2) as h:
        with pytest.raises(S3AccessDenied):
            h.fetch([A, B])
        # the hydrator stays usable for the next chunk
        assert h.fetch([C]) == [ok(C)]
    # without the cut, A's 8 attempts would back off for up to 12.7 s
    assert time.monotonic() - started < 3
    assert proxy.requests(f"content/{A}") < 8


def test_errors_share_the_library_base() -> None:
    for error in (S3AccessDenied, S3BucketNotFound, S3Unreachable, S3Failed):
        assert issubclass(error, SmollmCorpusError)
