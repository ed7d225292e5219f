"""A lean S3 GetObject: the request boto3 would send, signed the same way, sent with http.client.

boto3 spends about a millisecond of CPU on each GetObject (endpoint rules, signing through its
generic request model, event hooks, response parsing); fetching python-edu is millions of tiny
GETs, so that is what bounds a process. :class:`LeanGet` asks the boto3 client once what it
would send (the URL, from its endpoint rules, region and addressing style, and whether and
where it signs), then builds each request from that: signed by botocore's own S3 SigV4 signer
with the client's credentials (refreshed as boto3 refreshes them), and sent by the standard
library's ``http.client``, one keep-alive connection per thread, verified against botocore's CA
bundle. Through urllib3, as boto3 sends, a GET measured 1.5 times the CPU among 32 threads
(its pool, a second map of the headers, a response object of its own).

Failures are raised as the botocore exceptions boto3 would raise (``ClientError`` with S3's
error code and HTTP status, ``EndpointConnectionError``, ``HTTPClientError``), so the hydrator
classifies both clients' errors alike. Where boto3 would do something this module does not
reproduce (a proxy, another signature scheme), :func:`lean_get` returns None and boto3 stays
in use.
"""

from __future__ import annotations

import http.client
import re
import ssl
import threading
import urllib.request
from urllib.parse import urlsplit

import botocore.client
from botocore.auth import S3SigV4Auth
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError
from botocore.httpsession import get_cert_path
from urllib3.util import wait_for_read

from . import __version__

_SCOPE = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,")
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_PROBE_KEY = "content/" + "0" * 40
USER_AGENT = f"smollm-corpus/{__version__}"


class _Captured(Exception):
    def __init__(self, request) -> None:
        self.request = request


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
    Host is given, not left to http.client: what is signed is then what is sent, and botocore does
    not parse the URL again to find it.
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


class LeanGet:
    """GETs of ``<prefix><key>`` at one endpoint, SigV4-signed when ``credentials`` are given; thread-safe.

    Each thread keeps one keep-alive connection of its own, so no pool is shared between them.
    """

    def __init__(self, *, scheme: str, host: str, port: int | None, netloc: str, prefix: str, region: str | None,
                 service: str | None, credentials, config: Config, connect_timeout: float,
                 read_timeout: float) -> None:
        self.endpoint = f"{scheme}://{netloc}"
        self._prefix, self._netloc = prefix, netloc
        self._region, self._service, self._credentials = region, service, credentials
        self._config = config  # the signer reads the client's S3 settings (payload signing) from it
        self._signer: _Signer | None = None  # for the credentials as they were at the last request
        self._unsigned = {"Host": netloc, "User-Agent": USER_AGENT}
        if scheme == "https":
            tls = ssl.create_default_context(cafile=get_cert_path(True))
            self._new = lambda: http.client.HTTPSConnection(host, port, timeout=connect_timeout, context=tls)
        else:
            self._new = lambda: http.client.HTTPConnection(host, port, timeout=connect_timeout)
        self._read_timeout = read_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[http.client.HTTPConnection] = []  # every thread's, for close()

    def get(self, key: str) -> bytes:
        """The body of ``key``, as stored (no content decoding).

        Raises:
            ClientError: S3 answered with an error (code and HTTP status as boto3 reports them).
            EndpointConnectionError: the endpoint could not be connected to.
            HTTPClientError: the connection failed or timed out after it was made.
        """
        path = self._prefix + key
        headers = self._signed(path) if self._credentials is not None else self._unsigned
        connection = self._connection()
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except (http.client.HTTPException, OSError) as error:
            connection.close()  # in no known state: the next request opens a new one
            raise HTTPClientError(error=error) from error
        if response.status == 200:
            return body
        code = _CODE.search(body)
        message = _MESSAGE.search(body)
        raise ClientError({
            "Error": {"Code": code.group(1).decode() if code else str(response.status),
                      "Message": message.group(1).decode() if message else response.reason or ""},
            "ResponseMetadata": {"HTTPStatusCode": response.status},
        }, "GetObject")

    def _connection(self) -> http.client.HTTPConnection:
        """This thread's connection, open: a new one where there is none, or where the server closed it."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._new()
            with self._lock:
                self._connections.append(connection)
        elif connection.sock is not None and wait_for_read(connection.sock, timeout=0):
            # readable while idle: the server closed it (or sent what no request asked for); the
            # check urllib3's pool makes before it reuses a connection
            connection.close()
        if connection.sock is None:
            try:
                connection.connect()
            except OSError as error:  # refused, unresolvable, timed out, TLS handshake failed
                connection.close()
                raise EndpointConnectionError(endpoint_url=self.endpoint, error=error) from error
            connection.sock.settimeout(self._read_timeout)
        return connection

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
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()
