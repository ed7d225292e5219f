"""A lean S3 GetObject: the request boto3 would send, signed the same way, sent with urllib3.

boto3 spends about a millisecond of CPU on each GetObject (endpoint rules, signing through its
generic request model, event hooks, response parsing); fetching python-edu is millions of tiny
GETs, so that is what bounds a process. :class:`LeanGet` asks the boto3 client once what it
would send (the URL, from its endpoint rules, region and addressing style, and whether and
where it signs), then builds each request from that: signed by botocore's own S3 SigV4 signer
with the client's credentials (refreshed as boto3 refreshes them), and sent over a urllib3
connection pool with botocore's CA bundle.

Failures are raised as the botocore exceptions boto3 would raise (``ClientError`` with S3's
error code and HTTP status, ``EndpointConnectionError``, ``HTTPClientError``), so the hydrator
classifies both clients' errors alike. Where boto3 would do something this module does not
reproduce (a proxy, another signature scheme), :func:`lean_get` returns None and boto3 stays
in use.
"""

from __future__ import annotations

import re
import urllib.request
from urllib.parse import urlsplit

import botocore.client
import urllib3
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError, HTTPClientError
from botocore.httpsession import get_cert_path

_SCOPE = re.compile(r"^AWS4-HMAC-SHA256 Credential=[^/]+/\d{8}/(?P<region>[^/]+)/(?P<service>[^/]+)/aws4_request,")
_CODE = re.compile(rb"<Code>([^<]*)</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]*)</Message>")
_PROBE_KEY = "content/" + "0" * 40


class _Captured(Exception):
    def __init__(self, request) -> None:
        self.request = request


def lean_get(client: botocore.client.BaseClient, credentials, bucket: str, threads: int,
             connect_timeout: float, read_timeout: float) -> LeanGet | None:
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
        scheme=url.scheme, netloc=url.netloc, prefix=url.path[: -len(_PROBE_KEY)],
        region=scope.group("region") if scope else None, service=scope.group("service") if scope else None,
        credentials=credentials if scope else None, config=client.meta.config,
        threads=threads, connect_timeout=connect_timeout, read_timeout=read_timeout,
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


class LeanGet:
    """GETs of ``<prefix><key>`` at one endpoint, SigV4-signed when ``credentials`` are given; thread-safe."""

    def __init__(self, *, scheme: str, netloc: str, prefix: str, region: str | None, service: str | None,
                 credentials, config: Config, threads: int, connect_timeout: float,
                 read_timeout: float) -> None:
        self.endpoint = f"{scheme}://{netloc}"
        self._prefix, self._host = prefix, netloc
        self._region, self._service, self._credentials = region, service, credentials
        self._config = config  # the signer reads the client's S3 settings (payload signing) from it
        timeout = urllib3.Timeout(connect=connect_timeout, read=read_timeout)
        tls = {"cert_reqs": "CERT_REQUIRED", "ca_certs": get_cert_path(True)} if scheme == "https" else {}
        # no retries here (the hydrator retries, per request); as a Retry, which urlopen would
        # otherwise build from False on every request
        self._pool = urllib3.connection_from_url(
            self.endpoint, maxsize=threads, block=True, retries=urllib3.Retry(total=False, redirect=False),
            timeout=timeout, **tls
        )

    def get(self, key: str) -> bytes:
        """The body of ``key``, as stored (no content decoding).

        Raises:
            ClientError: S3 answered with an error (code and HTTP status as boto3 reports them).
            EndpointConnectionError: the endpoint could not be connected to.
            HTTPClientError: the connection failed or timed out after it was made.
        """
        path = self._prefix + key
        headers = self._signed(path) if self._credentials is not None else {}
        try:
            response = self._pool.urlopen("GET", path, headers=headers, decode_content=False, preload_content=True,
                                          redirect=False, assert_same_host=False)
        except (urllib3.exceptions.NewConnectionError, urllib3.exceptions.ConnectTimeoutError) as error:
            raise EndpointConnectionError(endpoint_url=self.endpoint, error=error) from error
        except (urllib3.exceptions.HTTPError, OSError) as error:
            raise HTTPClientError(error=error) from error
        if response.status == 200:
            return response.data
        code = _CODE.search(response.data)
        message = _MESSAGE.search(response.data)
        raise ClientError({
            "Error": {"Code": code.group(1).decode() if code else str(response.status),
                      "Message": message.group(1).decode() if message else response.reason or ""},
            "ResponseMetadata": {"HTTPStatusCode": response.status},
        }, "GetObject")

    def _signed(self, path: str) -> dict[str, str]:
        """The headers of a GET of ``path`` signed by botocore, with credentials as they are now."""
        # Host is given, not left to urllib3: what is signed is then what is sent, and botocore
        # does not parse the URL again to find it (a quarter of its signing time).
        request = AWSRequest(method="GET", url=self.endpoint + path, headers={"Host": self._host})
        request.context["client_config"] = self._config
        S3SigV4Auth(self._credentials.get_frozen_credentials(), self._service, self._region).add_auth(request)
        return dict(request.headers.items())

    def close(self) -> None:
        self._pool.close()
