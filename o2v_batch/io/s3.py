"""s3://bucket/key: one shared boto3 client lists, heads and aborts; smart_open
streams reads and multipart writes. The endpoint comes from the standard
AWS_ENDPOINT_URL variable and the credentials from the standard chain; no error
message ever carries either."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import boto3
import botocore.config
import botocore.exceptions
import smart_open
import smart_open.s3
from botocore.client import BaseClient

from o2v_batch.errors import InputError
from o2v_batch.io.base import AtomicWriter, Shard, hidden, is_output, is_summary, shown
from o2v_batch.io.s3_errors import (
    S3_FAILURES,
    botocore_error,
    describe_error,
    is_s3,
    not_found,
    redirect_message,
    split_s3,
)

PART_SIZE_ENV = "O2V_S3_PART_SIZE"

# smart_open retries a dead endpoint 6 times, 10 s apart, on top of botocore's own
# retry policy (configured in s3_client). A dead endpoint would cost a minute per
# shard; botocore's policy alone is the one users can tune (AWS_MAX_ATTEMPTS).
smart_open.s3.RETRY.exceptions = []


# ---------------------------------------------------------------- the client


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

    Cached per process; rebuilt only when the AWS_* environment changes (a test
    pointing AWS_ENDPOINT_URL elsewhere, for instance).
    """
    key = tuple(os.environ.get(name) for name in _CLIENT_ENV)
    with _CLIENT_LOCK:  # threads listing a manifest would otherwise each build one
        return _cached_client(key)


@functools.lru_cache(maxsize=4)
def _cached_client(env: tuple[str | None, ...]) -> BaseClient:
    del env  # only the cache key; boto3 reads the environment itself
    # An explicit retries config hides the standard variables from botocore, so honour them here.
    attempts = os.environ.get("AWS_MAX_ATTEMPTS", "5")
    if not attempts.isdigit():
        raise InputError(f"AWS_MAX_ATTEMPTS must be a whole number, not {attempts!r}")
    # total_max_attempts counts the first try, as AWS_MAX_ATTEMPTS does.
    retries = {
        "mode": os.environ.get("AWS_RETRY_MODE", "standard"),
        "total_max_attempts": int(attempts),
    }
    config = botocore.config.Config(
        retries=retries, connect_timeout=10, read_timeout=60, max_pool_connections=32
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
        url = (request_dict or {}).get("url", "")
        raise InputError(redirect_message(url, http.status_code, headers.get("location")))


@contextlib.contextmanager
def _s3_errors(uri: str, *, missing: str | None = None) -> Iterator[None]:
    """Turn botocore errors into InputError; a 404 says `missing` when given."""
    try:
        yield
    except S3_FAILURES as exc:
        error = botocore_error(exc)
        if error is None:
            raise
        if missing and not_found(error):
            raise InputError(missing) from exc
        raise InputError(describe_error(error, uri)) from exc


# ---------------------------------------------------------------- listing and reading


def size(uri: str) -> int | None:
    """Size of an S3 object, or None when it does not exist (a bucket is no object)."""
    bucket, key = split_s3(uri)
    if not key:
        return None
    try:
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        if not_found(exc):
            return None
        raise InputError(describe_error(exc, uri)) from exc


def list_shards(input: str, output: str | None) -> list[Shard]:
    """`s3://b/in` names the object `in` if it exists, else the folder `in/` (never
    `in_old/`); folder markers (zero-byte keys ending with "/") are skipped, and so are
    OUTPUT and earlier jobs' outputs when they lie inside."""
    bucket, key = split_s3(input)
    if key and not key.endswith("/"):
        found_size = size(input)
        if found_size is not None:
            return [Shard(input, key.rpartition("/")[2], found_size)]
        key += "/"
    skip = _output_prefix_inside(bucket, key, output)
    objects = _objects(bucket, key, input)
    if key and not objects:
        raise InputError(f"input not found: {shown(input)}")
    # Folders below INPUT holding a `_SUCCESS`: earlier jobs' outputs.
    done = {rel.rpartition("/")[0] + "/" for rel in objects if is_summary(rel.rpartition("/")[2])}
    done.discard("/")
    shards = [
        Shard(f"s3://{bucket}/{key}{rel}", rel, item_size)
        for rel, item_size in objects.items()
        if not (_marker(rel, item_size) or hidden(rel) or is_output(rel) or _inside(rel, done))
        and not (skip and (key + rel).startswith(skip))
    ]
    return sorted(shards, key=lambda shard: shard.rel)


def list_outputs(output: str) -> set[str]:
    bucket, key = split_s3(output)
    key = key.rstrip("/") + "/" if key.strip("/") else ""
    objects = _objects(bucket, key, output)
    return {rel for rel, n in objects.items() if not (_marker(rel, n) or hidden(rel))}


def _objects(bucket: str, key: str, uri: str) -> dict[str, int]:
    """Size by path relative to the prefix `key`, of every object below it (folder
    markers too, so that a folder holding only its marker is found, empty)."""
    objects = {}
    paginator = s3_client().get_paginator("list_objects_v2")
    with _s3_errors(uri):
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                objects[item["Key"][len(key) :]] = item["Size"]
    return objects


def _marker(rel: str, item_size: int) -> bool:
    """A folder marker: a zero-byte key ending with "/" (the folder itself: "")."""
    return item_size == 0 and (rel == "" or rel.endswith("/"))


def _inside(rel: str, folders: set[str]) -> bool:
    """Whether `rel` lies below one of `folders` (relative paths ending with "/")."""
    parts = rel.split("/")[:-1]
    return any("/".join(parts[: i + 1]) + "/" in folders for i in range(len(parts)))


def _output_prefix_inside(bucket: str, key: str, output: str | None) -> str | None:
    """The output's key prefix when it lies strictly inside s3://bucket/key."""
    if not output or not is_s3(output):
        return None
    out_bucket, out_key = split_s3(output)
    out_prefix = out_key.rstrip("/") + "/"
    inside = out_bucket == bucket and out_prefix.startswith(key) and out_prefix != key
    return out_prefix if inside and out_key.strip("/") else None


def open_read(uri: str) -> BinaryIO:
    """The object streamed, never downloaded whole."""
    with _s3_errors(uri, missing=f"input not found: {shown(uri)}"):
        params = {"client": s3_client()}
        return smart_open.open(uri, "rb", compression="disable", transport_params=params)


# ---------------------------------------------------------------- writing


class _S3Writer(AtomicWriter):
    """A smart_open multipart upload: completed on commit, aborted otherwise."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        bucket, key = split_s3(uri)
        with _s3_errors(uri):
            self._upload = smart_open.s3.open(
                bucket, key, "wb", min_part_size=_part_size(), client=s3_client()
            )

    def write(self, data: bytes) -> None:
        with _s3_errors(self.uri):
            self._upload.write(data)

    def _commit(self) -> None:
        try:
            with _s3_errors(self.uri):
                self._upload.close()
        except InputError:
            # Leave no multipart upload behind; the close error is the one to report.
            with contextlib.suppress(InputError):
                self._abort()
            raise

    def _abort(self) -> None:
        with _s3_errors(self.uri):
            self._upload.terminate()


def _part_size() -> int:
    value = os.environ.get(PART_SIZE_ENV)
    if value is None:
        return smart_open.s3.DEFAULT_PART_SIZE
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{PART_SIZE_ENV} must be a number of bytes, not {value!r}") from None


def open_write(uri: str) -> AtomicWriter:
    return _S3Writer(uri)


def delete(uri: str) -> None:
    bucket, key = split_s3(uri)
    with _s3_errors(uri):  # S3 answers a delete of a missing key with success
        s3_client().delete_object(Bucket=bucket, Key=key)


def discard_partial(uris: Sequence[str]) -> None:
    """Aborts the in-progress multipart uploads to these objects."""
    uploads: dict[str, set[str]] = {}
    for uri in uris:
        bucket, key = split_s3(uri)
        uploads.setdefault(bucket, set()).add(key)
    for bucket, keys in uploads.items():
        prefix = os.path.commonprefix(sorted(keys))  # noqa: RUF071 (S3 prefixes are strings)
        with contextlib.suppress(*S3_FAILURES):
            pages = (
                s3_client()
                .get_paginator("list_multipart_uploads")
                .paginate(Bucket=bucket, Prefix=prefix)
            )
            for upload in (u for page in pages for u in page.get("Uploads", [])):
                if upload["Key"] in keys:
                    s3_client().abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
