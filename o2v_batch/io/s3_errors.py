"""Failed S3 calls in one line, free of credentials and signed URLs: what botocore
raises, in words. Loaded with the S3 client (io/s3_client.py), so never by a job that
does not touch S3."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

import botocore.exceptions

from o2v_batch.io.base import described, one_line, redacted, shown

BOTOCORE_ERRORS = (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
# smart_open wraps botocore errors in OSError or ValueError.
S3_FAILURES = (*BOTOCORE_ERRORS, OSError, ValueError)

_HTTP_REASONS = {
    botocore.exceptions.ReadTimeoutError: "read timed out",
    botocore.exceptions.ConnectTimeoutError: "connect timed out",
    botocore.exceptions.ConnectionClosedError: "connection closed",
    botocore.exceptions.SSLError: "TLS error",
}


def botocore_error(exc: BaseException) -> BaseException | None:
    """The botocore error behind `exc` (smart_open wraps them in OSError or ValueError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, BOTOCORE_ERRORS):
            return current
        seen.add(id(current))
        current = (
            getattr(current, "backend_error", None) or current.__cause__ or current.__context__
        )
    return None


def not_found(error: BaseException) -> bool:
    """True for a 404 on an object (not on its bucket)."""
    if not isinstance(error, botocore.exceptions.ClientError):
        return False
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def describe_error(exc: BaseException, uri: str) -> str:
    """A one-line message for a failed call on `uri`, free of credentials and signed URLs:
    the botocore error behind it in words, else as base.described says any error."""
    error = botocore_error(exc) or exc
    message = _botocore_message(error, shown(uri))
    return described(error, uri) if message is None else one_line(redacted(message))


def _botocore_message(error: BaseException, uri: str) -> str | None:
    """What a botocore error means for `uri` (as messages show it); None for another error."""
    if isinstance(error, botocore.exceptions.ClientError):
        return _describe_client_error(error, uri)
    if isinstance(error, botocore.exceptions.ProxyConnectionError):
        proxy = _base_url(error.kwargs.get("proxy_url", ""))
        return f"cannot reach the proxy {proxy} ({_network_reason(error)})"
    if isinstance(
        error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
    ):
        endpoint = _base_url(error.kwargs.get("endpoint_url", ""))
        reason = _HTTP_REASONS.get(type(error)) or _network_reason(error)
        return f"cannot reach the S3 endpoint {endpoint} ({reason})"
    if isinstance(error, botocore.exceptions.NoCredentialsError):
        return (
            f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or use an instance role)"
        )
    return None


def redirect_message(url: str, status: int, location: str | None) -> str:
    """Why an S3 call answered by a redirect naming no region failed."""
    to = f"to {shown(location)}" if location else "with no Location"
    return one_line(
        f"the S3 endpoint {_base_url(url)} answered with a redirect that an S3 client "
        f"cannot follow (check AWS_ENDPOINT_URL): {status} {to}"
    )


def _describe_client_error(exc: botocore.exceptions.ClientError, uri: str) -> str:
    code = exc.response.get("Error", {}).get("Code", "")
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    if code == "NoSuchBucket":
        bucket = uri.removeprefix("s3://").partition("/")[0]  # a URI the client took
        return f"{uri}: bucket {bucket} does not exist (404)"
    if status == 404 or code in ("NoSuchKey", "NotFound", "404"):
        return f"{uri}: not found (404)"
    if status == 403 or code == "AccessDenied":
        detail = "" if code in ("AccessDenied", "403", "") else f", {code}"
        return f"{uri}: access denied (403{detail})"
    return f"{uri}: S3 error {code or 'unknown'} ({status})"


def _network_reason(exc: BaseException) -> str:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, socket.gaierror):
            return "host name not resolved"
        if isinstance(current, ConnectionRefusedError):
            return "connection refused"
        if isinstance(current, TimeoutError):
            return "timed out"
        if isinstance(current, OSError) and current.strerror:
            return current.strerror.lower()
        seen.add(id(current))
        kwargs = getattr(current, "kwargs", None)  # botocore keeps the urllib3 error there
        nested = kwargs.get("error") if isinstance(kwargs, dict) else None
        current = nested or current.__cause__ or current.__context__
    return "connection failed"


def _base_url(url: str) -> str:
    """scheme://host:port of a URL: no user info, path or query (signatures live there)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
