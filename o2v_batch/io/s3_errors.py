"""S3 URIs, and one-line descriptions of failed S3 calls, free of credentials and
signed URLs."""

from __future__ import annotations

import os
import re
import socket
from urllib.parse import urlsplit

import botocore.exceptions

from o2v_batch.errors import InputError, O2VError
from o2v_batch.io.base import one_line, scheme_of, shown

# smart_open wraps botocore errors in OSError or ValueError.
S3_FAILURES = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    OSError,
    ValueError,
)

_HTTP_REASONS = {
    botocore.exceptions.ReadTimeoutError: "read timed out",
    botocore.exceptions.ConnectTimeoutError: "connect timed out",
    botocore.exceptions.ConnectionClosedError: "connection closed",
    botocore.exceptions.SSLError: "TLS error",
}


def is_s3(uri: str) -> bool:
    """True for s3://bucket/key URIs."""
    return scheme_of(uri) == "s3"


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key"); the key may be empty."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not is_s3(uri) or not bucket:
        raise InputError(f"not an s3://bucket/key URI: {shown(uri)}")
    return bucket, key


def botocore_error(exc: BaseException) -> BaseException | None:
    """The botocore error behind `exc` (smart_open wraps them in OSError or ValueError)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(
            current, (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError)
        ):
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
    """A one-line message for a failed call on `uri`, free of credentials and signed URLs.

    Errors of ours (O2VError) already carry their message and pass through as they are.
    """
    error = botocore_error(exc) or exc
    uri = shown(uri)
    if isinstance(error, O2VError):
        message = str(error)
    elif isinstance(error, botocore.exceptions.ClientError):
        message = _describe_client_error(error, uri)
    elif isinstance(error, botocore.exceptions.ProxyConnectionError):
        proxy = _base_url(error.kwargs.get("proxy_url", ""))
        message = f"cannot reach the proxy {proxy} ({_network_reason(error)})"
    elif isinstance(
        error, (botocore.exceptions.ConnectionError, botocore.exceptions.HTTPClientError)
    ):
        endpoint = _base_url(error.kwargs.get("endpoint_url", ""))
        reason = _HTTP_REASONS.get(type(error)) or _network_reason(error)
        message = f"cannot reach the S3 endpoint {endpoint} ({reason})"
    elif isinstance(error, botocore.exceptions.NoCredentialsError):
        message = (
            f"{uri}: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or use an instance role)"
        )
    else:
        message = f"{uri}: {type(error).__name__}: {' '.join(str(error).split())}"
    return one_line(_redact(message))


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
        return f"{uri}: bucket {split_s3(uri)[0]} does not exist (404)"
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


def _redact(message: str) -> str:
    # A last guard: botocore messages are templates, but never trust them with secrets.
    # URLs lose their user info and query (where signatures live).
    message = re.sub(r"(\w+://)(?:[^/\s@]*@)?([^\s?#\"']*)(?:[?#][^\s\"']*)?", r"\1\2", message)
    # An Authorization header echoed back: its key id and signature.
    message = re.sub(r"\b(Credential|Signature)=[^\s,;&\"']+", r"\1=<redacted>", message)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value:
            message = message.replace(value, "***")
    return message
