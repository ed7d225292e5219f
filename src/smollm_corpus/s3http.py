"""A lean S3 GetObject: the request boto3 would send, signed the same way, sent on an asyncio event loop.

boto3 spends about a millisecond of CPU on each GetObject (endpoint rules, signing through its
generic request model, event hooks, response parsing); fetching python-edu is millions of tiny
GETs, so that is what bounds a process. :class:`LeanGet` asks the boto3 client once what it
would send (the URL, from its endpoint rules, region and addressing style, and whether and
where it signs), then builds each request from that: signed by botocore's own S3 SigV4 signer
with the client's credentials (refreshed as boto3 refreshes them), sent on asyncio's event loop
over keep-alive connections verified against botocore's CA bundle, and its answer parsed by
``httptools`` (llhttp, the C parser of Node.js). One thread carries every request in flight:
with a thread per request (``http.client``), the threads' hand-offs of the interpreter lock cost
more CPU than the requests themselves, and a pure-Python parser (``h11``) costs as much as the
rest of the request together (``benchmarks/README.md``).

Failures are raised as the botocore exceptions boto3 would raise (``ClientError`` with S3's
error code and HTTP status, ``EndpointConnectionError``, ``HTTPClientError``), so the hydrator
classifies both clients' errors alike. Where boto3 would do something this module does not
reproduce (a proxy, another signature scheme), :func:`lean_get` returns None and boto3 stays
in use.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import urllib.request
from urllib.parse import urlsplit

import botocore.client
import httptools
from botocore.auth import S3SigV4Auth
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError
from botocore.httpsession import get_cert_path

from . import __version__

_SCOPE = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,")
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_PROBE_KEY = "content/" + "0" * 40
USER_AGENT = f"smollm-corpus/{__version__}"


class _Captured(Exception):
    def __init__(self, request) -> None:
        self.request = request


def _frame(path: str, headers: dict[str, str]) -> bytes:
    """The bytes of a GET of ``path`` with ``headers``: S3's keys are hex here, the values botocore's own.

    Raises:
        ValueError: a value holds a line break (it would end the header early).
    """
    lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
    if lines.count("\n") != len(headers) or lines.count("\r") != len(headers) or not path.isprintable() or " " in path:
        raise ValueError(f"cannot send a header or path with a line break or a space: {path!r} {headers!r}")
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


def lean_get(client: botocore.client.BaseClient, credentials, bucket: str, connect_timeout: float,
             read_timeout: float) -> LeanGet | None:
    """A :class:`LeanGet` that sends what ``client.get_object(Bucket=bucket, ...)`` would, or None where it cannot.

    ``credentials`` are the client's (its session's ``get_credentials()``), None when it does not sign.
    """
    request = _what_boto3_sends(client, bucket)
    authorization = request.headers.get("Authorization")
    scope = None
    if authorization is not None:
        scope = _SCOPE.match(authorization.decode() if isinstance(authorization, bytes) else authorization)
        if scope is None:
            return None  # a signature scheme other than SigV4
    url = urlsplit(request.url)
    proxies = {scheme: proxy for scheme, proxy in urllib.request.getproxies().items() if scheme != "no"}
    if proxies and not urllib.request.proxy_bypass(url.hostname or ""):
        return None  # botocore sends through the proxy (with its own settings); this client does not
    if not url.path.endswith("/" + _PROBE_KEY) or url.query or (scope and credentials is None):
        return None
    return LeanGet(
        scheme=url.scheme, host=url.hostname, port=url.port, netloc=url.netloc, prefix=url.path[: -len(_PROBE_KEY)],
        region=scope.group("region") if scope else None, service=scope.group("service") if scope else None,
        credentials=credentials if scope else None, config=client.meta.config,
        connect_timeout=connect_timeout, read_timeout=read_timeout,
    )


def _what_boto3_sends(client: botocore.client.BaseClient, bucket: str):
    """The prepared request of a GetObject, caught just before it would be sent."""

    def capture(request, **kwargs):
        raise _Captured(request)

    event = "before-send.s3.GetObject"
    client.meta.events.register_first(event, capture, unique_id="smollm-corpus-capture")
    try:
        client.get_object(Bucket=bucket, Key=_PROBE_KEY)
    except _Captured as captured:
        return captured.request
    finally:
        client.meta.events.unregister(event, unique_id="smollm-corpus-capture")
    raise AssertionError("boto3 sent a request without emitting before-send")


class _Get:
    """What botocore's signer reads of a request, for a GET without a body or query.

    An ``AWSRequest`` would do, but its headers are an ``email.message.Message`` and its body is
    found by preparing the whole request: together a quarter of what signing costs.
    Headers are a plain dict: the signer names each header it sets or deletes one way only.
    Host is given: what is signed is then what is sent, and botocore does not parse the URL again
    to find it.
    """

    __slots__ = ("url", "headers", "context")
    method = "GET"
    params = None  # the signer then takes the query from the URL: there is none
    body = None  # the signer then hashes the empty payload, as for boto3's GET

    def __init__(self, url: str, headers: dict[str, str], context: dict) -> None:
        self.url, self.headers, self.context = url, headers, context


class _Signer(S3SigV4Auth):
    """botocore's S3 SigV4 signer for one set of credentials, deriving its signing key once a day.

    botocore derives the key from the secret for every request: four HMACs, a third of its
    signing time. It depends only on the secret, the day, the region and the service, so it is
    kept (as the AWS SDKs for Java and Go keep it); the rest of the signing is botocore's own.
    """

    def __init__(self, credentials, service_name: str, region_name: str) -> None:
        super().__init__(credentials, service_name, region_name)
        self._key: tuple[str, bytes] | None = None  # (day, signing key)

    def signature(self, string_to_sign: str, request) -> str:
        day = request.context["timestamp"][0:8]
        key = self._key
        if key is None or key[0] != day:
            derived = f"AWS4{self.credentials.secret_key}".encode()
            for part in (day, self._region_name, self._service_name, "aws4_request"):
                derived = self._sign(derived, part)
            key = self._key = (day, derived)
        return self._sign(key[1], string_to_sign, hex=True)


class _Connection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection, one request at a time, its answers parsed by httptools (llhttp)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, read_timeout: float) -> None:
        self._loop, self._read_timeout = loop, read_timeout
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer: asyncio.Future | None = None  # (status, reason, body) of the request in flight
        self._reason = b""
        self._body: list[bytes] = []
        self._heard = 0.0  # loop time the request was sent or the last bytes arrived
        self._timer: asyncio.TimerHandle | None = None
        self._kept = True  # the server keeps the connection open after its last answer
        self.lost = False
        self.answered = False  # bytes of an answer to the current request arrived

    # asyncio's side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(exc or ConnectionError("the server closed the connection before its answer was whole"))

    def data_received(self, data: bytes) -> None:
        self._heard, self.answered = self._loop.time(), True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:  # not HTTP, or an answer nobody asked for
            self._fail(ConnectionError(f"the server's answer is not valid HTTP/1.1 ({error})"))
            self.close()

    # the parser's side (llhttp's callbacks)

    def on_status(self, reason: bytes) -> None:
        self._reason = reason

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        answer, self._answer = self._answer, None
        body, self._body = b"".join(self._body), []
        self._kept = self._parser.should_keep_alive()
        self._stop_timer()
        if answer is not None and not answer.done():
            answer.set_result((self._parser.get_status_code(), self._reason, body))

    # the client's side

    def request(self, data: bytes) -> asyncio.Future:
        """Send ``data`` (one whole request); the future's result is (status, reason, body)."""
        self._answer = answer = self._loop.create_future()
        self._heard, self.answered = self._loop.time(), False
        self._timer = self._loop.call_at(self._heard + self._read_timeout, self._check_timeout)
        self._transport.write(data)
        return answer

    def reusable(self) -> bool:
        """True when the server keeps the connection open for another request."""
        return self._kept and not self.lost

    def close(self) -> None:
        self.lost = True
        if self._transport is not None:
            self._transport.abort()  # nothing is worth waiting for: the next request opens a new connection

    def _check_timeout(self) -> None:
        """Nothing heard for the read timeout: the request fails (with its connection); else look again later."""
        self._timer = None
        if self._answer is None:
            return
        due = self._heard + self._read_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._check_timeout)
            return
        self._fail(TimeoutError(f"no answer for {self._read_timeout:g} s"))
        self.close()

    def _fail(self, error: Exception) -> None:
        answer, self._answer = self._answer, None
        self._stop_timer()
        if answer is not None and not answer.done():
            answer.set_exception(error)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class LeanGet:
    """GETs of ``<prefix><key>`` at one endpoint, SigV4-signed when ``credentials`` are given.

    Coroutines of one event loop share its idle keep-alive connections: each request takes one,
    or opens one, and gives it back when the server keeps it open. Not thread-safe: call it from
    the loop's own thread.
    """

    def __init__(self, *, scheme: str, host: str, port: int | None, netloc: str, prefix: str, region: str | None,
                 service: str | None, credentials, config: Config, connect_timeout: float,
                 read_timeout: float) -> None:
        self.endpoint = f"{scheme}://{netloc}"
        self._prefix, self._netloc = prefix, netloc
        self._host, self._port = host, port or (443 if scheme == "https" else 80)
        self._region, self._service, self._credentials = region, service, credentials
        self._config = config  # the signer reads the client's S3 settings (payload signing) from it
        self._signer: _Signer | None = None  # for the credentials as they were at the last request
        self._unsigned = {"Host": netloc, "User-Agent": USER_AGENT}
        self._tls = ssl.create_default_context(cafile=get_cert_path(True)) if scheme == "https" else None
        self._connect_timeout, self._read_timeout = connect_timeout, read_timeout
        self._idle: list[_Connection] = []

    async def get(self, key: str) -> bytes:
        """The body of ``key``, as stored (no content decoding).

        Raises:
            ClientError: S3 answered with an error (code and HTTP status as boto3 reports them).
            EndpointConnectionError: the endpoint could not be connected to.
            HTTPClientError: the connection failed, or went silent for the read timeout, after it was made.
        """
        path = self._prefix + key
        headers = self._signed(path) if self._credentials is not None else self._unsigned
        request = _frame(path, headers)
        connection, reused = await self._connection()
        while True:
            try:
                status, reason, body = await connection.request(request)
                break
            except OSError as error:  # reset, closed, timed out, not HTTP
                connection.close()  # in no known state
                if reused and not connection.answered and not isinstance(error, TimeoutError):
                    # an idle connection the server closed as it was reused: the GET never reached
                    # it, so it is sent again on a new one (as urllib3 does)
                    connection, reused = await self._connection()
                    continue
                raise HTTPClientError(error=error) from error
            except BaseException:  # cancelled in flight: the answer would arrive for nobody
                connection.close()
                raise
        if connection.reusable():
            self._idle.append(connection)
        else:
            connection.close()
        if status == 200:
            return body
        code = _CODE.search(body)
        message = _MESSAGE.search(body)
        raise ClientError({
            "Error": {"Code": code.group(1).decode() if code else str(status),
                      "Message": message.group(1).decode() if message else reason.decode("latin-1")},
            "ResponseMetadata": {"HTTPStatusCode": status},
        }, "GetObject")

    async def _connection(self) -> tuple[_Connection, bool]:
        """An idle connection the server has not closed, or a new one; and whether it was idle."""
        while self._idle:
            connection = self._idle.pop()
            if not connection.lost:
                return connection, True
        loop = asyncio.get_running_loop()
        try:
            _, connection = await asyncio.wait_for(loop.create_connection(
                lambda: _Connection(loop, self._read_timeout), self._host, self._port, ssl=self._tls,
                server_hostname=self._host if self._tls else None), self._connect_timeout)
        except (OSError, asyncio.TimeoutError) as error:  # refused, unresolvable, timed out, TLS handshake failed
            raise EndpointConnectionError(endpoint_url=self.endpoint, error=error) from error
        return connection, False

    def _signed(self, path: str) -> dict[str, str]:
        """The headers of a GET of ``path`` signed by botocore, with credentials as they are now."""
        credentials = self._credentials.get_frozen_credentials()
        signer = self._signer
        if signer is None or signer.credentials != credentials:  # first request, or refreshed
            signer = self._signer = _Signer(credentials, self._service, self._region)
        request = _Get(self.endpoint + path, {"Host": self._netloc}, {"client_config": self._config})
        signer.add_auth(request)
        request.headers["User-Agent"] = USER_AGENT
        return request.headers

    def close(self) -> None:
        """Close the idle connections (from the loop's thread)."""
        for connection in self._idle:
            connection.close()
        self._idle.clear()

