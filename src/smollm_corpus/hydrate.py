"""Hydration: fetch python-edu file contents from Software Heritage's S3 bucket.

Each blob lives at ``content/<blob_id>`` in the bucket, gzip-compressed. A :class:`Hydrator`
fetches a chunk of blobs concurrently on an asyncio event loop of its own, in a thread of its
own (so any thread may call it), and returns them in the chunk's order.

boto3 spends about a millisecond of CPU per request, which is what bounds a process. The
boto3 client is built once per Hydrator with the per-request work it does not need turned off,
and by default only decides what to send: :mod:`.s3http` then sends that same request for
each blob at a fraction of the CPU (``client="boto3"`` sends every request through boto3, from
a pool of threads, one per request in flight).
A client must not cross a fork and cannot be pickled: construct the Hydrator inside the
process that uses it (the pipeline's spawned workers each build their own).
"""

from __future__ import annotations

import asyncio
import gzip
import random
import re
import threading
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum

import botocore
import pyarrow as pa
import botocore.client
import botocore.exceptions
import botocore.session
from botocore import UNSIGNED
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    CredentialRetrievalError,
    NoCredentialsError,
    PartialCredentialsError,
    ProfileNotFound,
)

from .errors import SmollmCorpusError
from .s3http import USER_AGENT, lean_get

#: Software Heritage ids are lowercase SHA1 hex. S3 keys are case-sensitive and the dataset only
#: holds lowercase ids, so anything else is reported as invalid rather than guessed at.
BLOB_ID = re.compile(r"[0-9a-f]{40}")
#: extra GETs of a body that fails to gunzip before it is reported corrupt
CORRUPT_RETRIES = 3
#: full-jitter exponential backoff: attempt n sleeps uniform(0, min(CAP, BASE * 2**(n-1))) seconds
BACKOFF_BASE = 0.1
BACKOFF_CAP = 10.0
CONNECT_TIMEOUT = 10.0
READ_TIMEOUT = 30.0

_DENIED_CODES = frozenset(
    {
        "AccessDenied",
        "AccountProblem",
        "AllAccessDisabled",
        "ExpiredToken",
        "InvalidAccessKeyId",
        "InvalidToken",
        "SignatureDoesNotMatch",
        "TokenRefreshRequired",
    }
)
_TRANSIENT_CODES = frozenset(
    {"InternalError", "RequestTimeout", "ServiceUnavailable", "SlowDown", "Throttling", "ThrottlingException"}
)
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)


class S3AccessDenied(SmollmCorpusError):
    """S3 refused the request's credentials or signature."""


class S3BucketNotFound(SmollmCorpusError):
    """The bucket does not exist at the endpoint."""


class S3Unreachable(SmollmCorpusError):
    """The endpoint could not be connected to, even after retries."""


class S3Failed(SmollmCorpusError):
    """A blob still failed after its retry budget (throttling, server errors, dropped connections)."""


@dataclass(frozen=True)
class S3Options:
    """Where and how to reach the bucket; plain data, so it can be sent to worker processes."""

    bucket: str = "softwareheritage"
    endpoint_url: str | None = None  # None: boto3's default, which honours AWS_ENDPOINT_URL
    region: str = "us-east-1"
    unsigned: bool = False  # botocore UNSIGNED signature, like ``aws s3 --no-sign-request``
    client: str = "lean"  # "lean": boto3's request, sent by s3http.LeanGet; "boto3": boto3's get_object
    max_attempts: int = 8  # per request, exponential backoff with full jitter between attempts


class BlobStatus(str, Enum):
    """What became of one blob."""

    OK = "ok"
    MISSING = "missing"  # the bucket has no such key: removed upstream
    CORRUPT = "corrupt"  # the body kept failing to gunzip
    INVALID = "invalid"  # not a 40-character lowercase hex id; never requested


@dataclass(frozen=True)
class Blob:
    """One fetched blob: its status, and its text when the status is OK."""

    status: BlobStatus
    text: str | None = None  # only for OK


_MISSING = Blob(BlobStatus.MISSING)
_CORRUPT = Blob(BlobStatus.CORRUPT)
_INVALID = Blob(BlobStatus.INVALID)


def credentials_available(probe: bool = True) -> bool:
    """True when boto3's default credential chain finds credentials (call once, in the main process).

    With ``probe`` False the chain is not searched (no instance-metadata request): only the
    configuration is checked, and the answer is False.

    Raises:
        S3AccessDenied: AWS_PROFILE names a profile that is not configured.
    """
    try:
        session = botocore.session.Session()
        session.get_scoped_config()  # an AWS_PROFILE that is not configured fails here
        return probe and session.get_credentials() is not None
    except ProfileNotFound as error:
        raise S3AccessDenied(
            f"{error}: AWS_PROFILE names a profile that ~/.aws/config does not define; fix or unset "
            "AWS_PROFILE (the bucket is public: --no-sign-request needs no credentials)"
        ) from None
    except BotoCoreError as error:  # partial keys, a failing credential_process, an unreadable config
        raise S3AccessDenied(
            f"the AWS credentials configured here cannot be used ({error}); fix them (AWS_ACCESS_KEY_ID with "
            "AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws/credentials), or pass --no-sign-request: the bucket is public"
        ) from None


def _decode(body: bytes) -> str:
    """Gunzip and decode ``body`` as the published recipe does: undecodable bytes are dropped."""
    # gzip.decompress measured within 2 us of a bare zlib call per blob, and it is the recipe's own
    return gzip.decompress(body).decode("utf-8", errors="ignore")


def _no_credentials(error: Exception) -> S3AccessDenied:
    return S3AccessDenied(
        f"no usable AWS credentials ({error}). The bucket is public: pass --no-sign-request "
        "to send unsigned requests, or configure credentials (AWS_PROFILE, ~/.aws/credentials)."
    )


class Hydrator:
    """Fetches blobs concurrently on an event loop of its own. One per process; never pickled or forked."""

    def __init__(self, options: S3Options, threads: int) -> None:
        """Build the client, and an event loop that keeps ``threads`` requests in flight.

        With ``client="boto3"`` each request in flight takes one of ``threads`` threads, as boto3 blocks.

        Raises:
            ValueError: ``threads`` or ``options.max_attempts`` is less than 1.
        """
        if threads < 1 or options.max_attempts < 1:
            raise ValueError(f"threads and max_attempts must be 1 or more, got {threads} and {options.max_attempts}")
        if options.client not in ("lean", "boto3"):
            raise ValueError(f"unknown S3 client {options.client!r}; choose lean or boto3")
        self._options = options
        self._threads = threads
        session = botocore.session.get_session()
        self._client = _make_client(session, options, threads)
        self._lean = None
        self._pool = None
        if options.client == "lean":
            try:
                credentials = None if options.unsigned else session.get_credentials()
                self._lean = lean_get(self._client, credentials, options.bucket, CONNECT_TIMEOUT, READ_TIMEOUT)
            except _CREDENTIAL_ERRORS as error:  # boto3 would meet them at the first request
                raise _no_credentials(error) from error
        if self._lean is None:
            self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hydrate")
        self._endpoint = self._lean.endpoint if self._lean is not None else self._client.meta.endpoint_url
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="hydrate", daemon=True)
        self._thread.start()

    def __enter__(self) -> Hydrator:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def fetch(self, blob_ids: Sequence[str]) -> list[Blob]:
        """Fetch every blob of ``blob_ids`` concurrently; thread-safe.

        An id that is not 40 lowercase hex characters (None included) comes back INVALID, unrequested.

        Returns:
            One Blob per id, in the same order.

        Raises:
            S3AccessDenied, S3BucketNotFound, S3Unreachable, S3Failed: the first error any blob
            met; the rest of the fetch is abandoned at once.
        """
        future = asyncio.run_coroutine_threadsafe(self._fetch_all(blob_ids), self._loop)
        try:
            return future.result()
        finally:
            future.cancel()  # interrupted (Ctrl-C, SIGTERM): the requests in flight are dropped

    async def _fetch_all(self, blob_ids: Sequence[str]) -> list[Blob]:
        results: list[Blob] = [_INVALID] * len(blob_ids)
        todo = iter([i for i, b in enumerate(blob_ids) if isinstance(b, str) and BLOB_ID.fullmatch(b)])

        async def drain() -> None:
            for i in todo:  # shared: each index goes to one of them
                results[i] = await self._fetch_one(blob_ids[i])

        tasks = [asyncio.ensure_future(drain()) for _ in range(self._threads)]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                if task.exception() is not None:
                    raise task.exception()
        finally:
            # after an error, or when the caller gives up: the other requests are dropped
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return results

    def close(self) -> None:
        """Stop the loop and release the connections and threads."""
        if self._thread.is_alive():
            if self._lean is not None:
                self._loop.call_soon_threadsafe(self._lean.close)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._client.close()

    async def _get(self, key: str) -> bytes:
        if self._lean is not None:
            return await self._lean.get(key)
        return await self._loop.run_in_executor(self._pool, self._boto3_get, key)

    def _boto3_get(self, key: str) -> bytes:
        return self._client.get_object(Bucket=self._options.bucket, Key=key)["Body"].read()

    async def _fetch_one(self, blob_id: str) -> Blob:
        key = "content/" + blob_id
        failures = corrupt = 0
        while True:
            try:
                body = await self._get(key)
            except ClientError as error:
                if self._is_missing(error, blob_id):
                    return _MISSING
                last_error: Exception = error
            except _CREDENTIAL_ERRORS as error:
                raise _no_credentials(error) from error
            except BotoCoreError as error:  # connection refused, reset or timed out; body cut short
                last_error = error
            else:
                try:
                    return Blob(BlobStatus.OK, _decode(body))
                except (OSError, EOFError, zlib.error):
                    # usually damaged on the way: a fresh GET cures it
                    corrupt += 1
                    if corrupt > CORRUPT_RETRIES:
                        return _CORRUPT
                    continue
            failures += 1
            if failures >= self._options.max_attempts:
                raise self._exhausted(blob_id, failures, last_error) from last_error
            await asyncio.sleep(random.uniform(0, min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (failures - 1))))

    def _is_missing(self, error: ClientError, blob_id: str) -> bool:
        """True for a missing key, False for an error worth retrying; raises when retrying cannot help."""
        code = error.response.get("Error", {}).get("Code", "")
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = f"{code}: {error.response.get('Error', {}).get('Message', '')}"
        bucket = self._options.bucket
        if code == "NoSuchBucket":
            raise S3BucketNotFound(
                f"bucket '{bucket}' does not exist at {self._endpoint}. Pass --bucket with the right name, "
                "or --s3-endpoint-url if the bucket is served elsewhere."
            ) from error
        if code == "NoSuchKey" or status == 404:
            return True
        if status == 403 or code in _DENIED_CODES:
            if self._options.unsigned:
                advice = "configure AWS credentials (AWS_PROFILE, ~/.aws/credentials) and drop --no-sign-request"
            else:
                advice = "pass --no-sign-request to send unsigned requests, or check your AWS credentials and AWS_PROFILE"
            raise S3AccessDenied(f"S3 denied access to bucket '{bucket}' ({detail}): {advice}.") from error
        if status >= 500 or code in _TRANSIENT_CODES:
            return False
        raise S3Failed(
            f"S3 answered {status} ({detail}) for blob {blob_id} in bucket '{bucket}' at {self._endpoint}. "
            "Check --bucket, --region and --s3-endpoint-url."
        ) from error

    def _exhausted(self, blob_id: str, attempts: int, error: Exception) -> SmollmCorpusError:
        if isinstance(error, botocore.exceptions.ConnectionError):  # refused, DNS, connect timeout
            return S3Unreachable(
                f"cannot connect to S3 at {self._endpoint} after {attempts} attempts ({error}). "
                "Check the network, or pass --s3-endpoint-url to use another endpoint."
            )
        return S3Failed(
            f"blob {blob_id} still failing after {attempts} attempts ({error}). "
            "S3 may be throttling or failing for a while: rerun the same command to resume where it stopped."
        )


def _make_client(session: botocore.session.Session, options: S3Options, threads: int) -> botocore.client.BaseClient:
    # LastModified is never used: skip the dateutil parse botocore does on every response
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=str)
    config = Config(
        region_name=options.region,
        signature_version=UNSIGNED if options.unsigned else None,
        # one attempt: retries happen in _fetch_one, per request, where every error is classified
        retries={"total_max_attempts": 1, "mode": "standard"},
        # the pool's threads are the client's only users, one request each
        max_pool_connections=threads,
        connect_timeout=CONNECT_TIMEOUT,
        read_timeout=READ_TIMEOUT,
        tcp_keepalive=True,
        # per-request work measured at about 0.25 ms CPU together, none of it needed here:
        # parameters are built by this module, the gzip trailer's CRC32 already checks every body,
        # and a fixed user agent skips rebuilding botocore's one on each call
        parameter_validation=False,
        response_checksum_validation="when_required",
        user_agent=f"{USER_AGENT} botocore/{botocore.__version__}",
    )
    return session.create_client("s3", endpoint_url=options.endpoint_url, config=config)


_hydrator: Hydrator | None = None  # the worker process's own


class Hydrate:
    """The stage that fetches each row's ``text`` from S3; rows whose blob is missing, corrupt or invalid are dropped.

    One :class:`Hydrator` per worker process, built at its first batch (clients cannot be pickled).
    """

    def __init__(self, options, threads: int) -> None:
        self.options, self.threads = options, threads

    def __call__(self, batch: pa.RecordBatch, rows: pa.Array) -> tuple[pa.RecordBatch, pa.Array, list]:
        global _hydrator
        if _hydrator is None:
            _hydrator = Hydrator(self.options, self.threads)
        ids = batch.column("blob_id").to_pylist()
        blobs = _hydrator.fetch(ids)
        positions = rows.to_pylist()
        keep, texts, skipped = [], [], []
        for i, (blob_id, blob) in enumerate(zip(ids, blobs)):
            if blob.status is BlobStatus.OK:
                keep.append(i)
                texts.append(blob.text)
            else:
                skipped.append((positions[i], blob.status.value, blob_id or ""))
        if skipped:
            batch, rows = batch.take(pa.array(keep, pa.int64())), rows.take(pa.array(keep, pa.int64()))
        hydrated = pa.RecordBatch.from_arrays([*batch.columns, pa.array(texts, pa.string())],
                                              names=[*batch.schema.names, "text"])
        return hydrated, rows, skipped
