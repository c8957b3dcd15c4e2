"""How this process talks to S3: the retry policy, the one boto3 client built from it
and the standard AWS_* variables, S3 URIs, and botocore errors turned into InputError.

boto3 and botocore are imported on the first S3 call, so that a job that never touches
S3 never loads them (workers and `import o2v_batch` stay quick).
"""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from o2v_batch.errors import InputError
from o2v_batch.io.base import scheme_of, shown

if TYPE_CHECKING:
    from botocore.client import BaseClient


@dataclass
class Retry:
    """How S3 calls are retried: botocore's policy, the one policy of every call (listing,
    reading, uploading). Unset, attempts and mode follow AWS_MAX_ATTEMPTS and AWS_RETRY_MODE."""

    attempts: int | None = None  # every try, the first included; None: AWS_MAX_ATTEMPTS, else 5
    mode: str | None = None  # standard, adaptive or legacy; None: AWS_RETRY_MODE, else standard
    connect_timeout: float = 10.0  # seconds
    read_timeout: float = 60.0

    def settings(self) -> tuple[int, str, float, float]:
        """(attempts, mode, connect timeout, read timeout), the variables read now."""
        attempts = self.attempts
        if attempts is None:
            # An explicit retries config hides the standard variables from botocore.
            text = os.environ.get("AWS_MAX_ATTEMPTS", "5")
            if not text.isdigit():
                raise InputError(f"AWS_MAX_ATTEMPTS must be a whole number, not {text!r}")
            attempts = int(text)
        mode = self.mode or os.environ.get("AWS_RETRY_MODE", "standard")
        return attempts, mode, self.connect_timeout, self.read_timeout


# The retry policy of every S3 call of this process; callers may tune it
# (`RETRY.attempts = 10`), and the calls after follow.
RETRY = Retry()

# The variables that change which endpoint, credentials or retries a client gets.
_CLIENT_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_MAX_ATTEMPTS",
    "AWS_RETRY_MODE",
)
_CLIENT_LOCK = threading.Lock()


def s3_client() -> BaseClient:
    """The process's boto3 S3 client, shared with smart_open.

    Cached per process; rebuilt only when the AWS_* environment or RETRY changes (a
    test pointing AWS_ENDPOINT_URL elsewhere, for instance).
    """
    key = (tuple(os.environ.get(name) for name in _CLIENT_ENV), RETRY.settings())
    with _CLIENT_LOCK:  # threads listing a manifest would otherwise each build one
        return _cached_client(*key)


@functools.lru_cache(maxsize=4)
def _cached_client(env: tuple[str | None, ...], retry: tuple[int, str, float, float]) -> BaseClient:
    import boto3
    import botocore.config

    del env  # only the cache key; boto3 reads the environment itself
    attempts, mode, connect_timeout, read_timeout = retry
    config = botocore.config.Config(
        # total_max_attempts counts the first try, as AWS_MAX_ATTEMPTS does.
        retries={"mode": mode, "total_max_attempts": attempts},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=32,
    )
    # A session per client: boto3's default session is not thread-safe.
    client = boto3.session.Session().client("s3", config=config)
    # Before botocore's region redirector, which asks the bucket's region of the same
    # endpoint again and again when a redirect does not name it (a RecursionError).
    client.meta.events.register_first("needs-retry.s3", _refuse_blind_redirect)
    return client


def _refuse_blind_redirect(response=None, request_dict=None, **kwargs) -> None:
    """A redirect that names no region cannot be followed: one line naming the endpoint
    and the redirect, instead of botocore asking for the bucket's region forever."""
    if response is None or response[0] is None:
        return  # a connection error: botocore's retries deal with it
    http, parsed = response
    headers = parsed.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    region = headers.get("x-amz-bucket-region") or parsed.get("Error", {}).get("Region")
    if http.status_code in (301, 302, 307) and not region:
        from o2v_batch.io.s3_errors import redirect_message

        url = (request_dict or {}).get("url", "")
        raise InputError(redirect_message(url, http.status_code, headers.get("location")))


def is_s3(uri: str) -> bool:
    """True for s3://bucket/key URIs."""
    return scheme_of(uri) == "s3"


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key"); the key may be empty."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not is_s3(uri) or not bucket:
        raise InputError(f"not an s3://bucket/key URI: {shown(uri)}")
    return bucket, key


@contextlib.contextmanager
def as_input_errors(uri: str, *, missing: str | None = None) -> Iterator[None]:
    """Turn botocore errors into InputError; a 404 says `missing` when given."""
    try:
        yield
    except Exception as exc:
        from o2v_batch.io import s3_errors

        error = s3_errors.botocore_error(exc) if isinstance(exc, s3_errors.S3_FAILURES) else None
        if error is None:
            raise
        if missing and s3_errors.not_found(error):
            raise InputError(missing) from exc
        raise InputError(s3_errors.describe_error(error, uri)) from exc
