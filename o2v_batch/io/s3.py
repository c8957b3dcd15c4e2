"""s3://bucket/key: the shared client (io/s3_client.py) lists, heads and deletes,
smart_open streams reads, and multipart uploads write (io/s3_upload.py). The endpoint
comes from the standard AWS_ENDPOINT_URL variable and the credentials from the standard
chain; no error message ever carries either. boto3, botocore and smart_open load on the
first S3 call."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence
from typing import BinaryIO

from o2v_batch.errors import InputError
from o2v_batch.io.base import (
    AtomicWriter,
    Shard,
    hidden,
    is_output,
    is_summary,
    register_transport,
    shown,
)
from o2v_batch.io.s3_client import as_input_errors, is_s3, s3_client, split_s3
from o2v_batch.io.s3_upload import S3Writer

SCHEME = "s3"
REMOTE = True

logger = logging.getLogger(__name__)


def describe_error(exc: BaseException, uri: str) -> str:
    """A failed S3 call in one line: the botocore error behind it in words."""
    from o2v_batch.io import s3_errors

    return s3_errors.describe_error(exc, uri)


# ---------------------------------------------------------------- listing and reading


def size(uri: str) -> int | None:
    """Size of an S3 object, or None when it does not exist (a bucket is no object)."""
    bucket, key = split_s3(uri)
    if not key:
        return None
    from o2v_batch.io import s3_errors

    try:
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    except s3_errors.BOTOCORE_ERRORS as exc:
        if s3_errors.not_found(exc):
            return None
        raise InputError(s3_errors.describe_error(exc, uri)) from exc


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
    with as_input_errors(uri):
        for page in (
            s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        ):
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
    with as_input_errors(uri, missing=f"input not found: {shown(uri)}"):
        import smart_open

        params = {"client": s3_client()}
        return smart_open.open(uri, "rb", compression="disable", transport_params=params)


def open_write(uri: str) -> AtomicWriter:
    return S3Writer(uri)


def delete(uri: str) -> None:
    bucket, key = split_s3(uri)
    with as_input_errors(uri):  # S3 answers a delete of a missing key with success
        s3_client().delete_object(Bucket=bucket, Key=key)


def discard_partial(uris: Sequence[str]) -> None:
    """Aborts the in-progress multipart uploads to these objects. One that cannot be
    listed or aborted fails no job, but is said: its parts stay stored, and billed."""
    from o2v_batch.io.s3_errors import S3_FAILURES

    uploads: dict[str, set[str]] = {}
    for uri in uris:
        bucket, key = split_s3(uri)
        uploads.setdefault(bucket, set()).add(key)
    for bucket, keys in uploads.items():
        prefix = os.path.commonprefix(sorted(keys))  # noqa: RUF071 (S3 prefixes are strings)
        try:
            client = s3_client()
            pages = client.get_paginator("list_multipart_uploads").paginate(
                Bucket=bucket, Prefix=prefix
            )
            for upload in (u for page in pages for u in page.get("Uploads", [])):
                if upload["Key"] in keys:
                    client.abort_multipart_upload(
                        Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
        except S3_FAILURES as exc:
            where = f"s3://{bucket}/{prefix}"
            reason = describe_error(exc, where)
            logger.warning(
                "o2v-batch: could not abort the uploads a stopped run may have left open, "
                "whose parts stay stored (and billed) until a later run or an S3 lifecycle "
                "rule aborts them: %s",
                reason if reason.startswith(where) else f"{where}: {reason}",
            )


register_transport(sys.modules[__name__])
