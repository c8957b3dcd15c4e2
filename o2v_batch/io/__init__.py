"""Listing and opening inputs and outputs: local paths, s3:// URIs, stdin/stdout, manifests.

Every path of a job goes through this module: smart_open opens streams (local or
S3, compressed by extension) and one shared boto3 client lists, heads and aborts.
The S3 endpoint comes from the standard AWS_ENDPOINT_URL variable and the
credentials from the standard chain; no error message ever carries either.
"""

from __future__ import annotations

import abc
import concurrent.futures
import contextlib
import functools
import glob
import io
import json
import logging
import os
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

import boto3
import botocore.config
import botocore.exceptions
import smart_open
import smart_open.s3
import zstandard
from botocore.client import BaseClient

from o2v_batch.errors import InputError, O2VError, UnsafePathError

logger = logging.getLogger(__name__)

STDIO = "-"
PART_SIZE_ENV = "O2V_S3_PART_SIZE"
# Bytes of a stdout shard kept in memory before it spills to a temporary file.
STDOUT_SPOOL_BYTES = 8 * 2**20

# smart_open retries a dead endpoint 6 times, 10 s apart, on top of botocore's own
# retry policy (configured in s3_client). A dead endpoint would cost a minute per
# shard; botocore's policy alone is the one users can tune (AWS_MAX_ATTEMPTS).
smart_open.s3.RETRY.exceptions = []


@dataclass(frozen=True)
class Shard:
    """One input file or object: `rel` is its posix path relative to INPUT."""

    uri: str
    rel: str
    size: int


# ---------------------------------------------------------------- paths and URIs


def is_s3(uri: str) -> bool:
    """True for s3://bucket/key URIs."""
    return uri.startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/some/key -> ("bucket", "some/key"); the key may be empty."""
    bucket, _, key = uri[len("s3://") :].partition("/")
    if not is_s3(uri) or not bucket:
        raise InputError(f"not an s3://bucket/key URI: {uri}")
    return bucket, key


def _unsafe_reason(rel: str) -> str | None:
    """Why `rel` could land outside the folder it is joined to, or None when it cannot."""
    if not rel:
        return "empty path"
    if "\0" in rel:
        return "NUL character"
    if "\\" in rel:
        return "backslash"
    if rel.startswith("/"):
        return "absolute path"
    if re.match(r"[A-Za-z]:", rel):
        return "drive letter"
    if re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", rel):
        return "absolute URI"
    if ".." in rel.split("/"):
        return "'..' segment"
    return None


def output_uri(output: str, rel: str) -> str:
    """`<output>/<rel>.out` for a folder or S3 prefix; `-` stays `-` (stdout)."""
    if output == STDIO:
        return STDIO
    reason = _unsafe_reason(rel)
    if reason:
        raise UnsafePathError(
            f"refusing output path for {rel!r} ({reason}): it could escape {output}"
        )
    return f"{output.rstrip('/')}/{rel}.out"


def _hidden(rel: str) -> bool:
    # Spark and Hadoop skip names starting with "." or "_" (hidden files, temp
    # files, _SUCCESS, _temporary/), in every folder of the path.
    return any(part[:1] in (".", "_") for part in rel.split("/"))


# ---------------------------------------------------------------- S3 client and errors


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
    return boto3.session.Session().client("s3", config=config)


def _botocore_error(exc: BaseException) -> BaseException | None:
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


_HTTP_REASONS = {
    botocore.exceptions.ReadTimeoutError: "read timed out",
    botocore.exceptions.ConnectTimeoutError: "connect timed out",
    botocore.exceptions.ConnectionClosedError: "connection closed",
    botocore.exceptions.SSLError: "TLS error",
}


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


def describe_s3_error(exc: BaseException, uri: str) -> str:
    """A one-line message for a failed S3 call on `uri`, free of credentials and signed URLs.

    Errors of ours (O2VError) already carry their message and pass through as they are.
    """
    error = _botocore_error(exc) or exc
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
    return _redact(message)


def _redact(message: str) -> str:
    # A last guard: botocore messages are templates, but never trust them with secrets.
    # URLs lose their user info and query (where signatures live).
    message = re.sub(r"(\w+://)(?:[^/\s@]*@)?([^\s?#\"']*)(?:[?#][^\s\"']*)?", r"\1\2", message)
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        value = os.environ.get(name)
        if value:
            message = message.replace(value, "***")
    return message


# smart_open wraps botocore errors in OSError or ValueError.
_S3_FAILURES = (
    botocore.exceptions.BotoCoreError,
    botocore.exceptions.ClientError,
    OSError,
    ValueError,
)


@contextlib.contextmanager
def _s3_errors(uri: str, *, missing: str | None = None) -> Iterator[None]:
    """Turn botocore errors into InputError; a 404 says `missing` when given."""
    try:
        yield
    except _S3_FAILURES as exc:
        error = _botocore_error(exc)
        if error is None:
            raise
        if missing and _not_found(error):
            raise InputError(missing) from exc
        raise InputError(describe_s3_error(error, uri)) from exc


def _not_found(error: BaseException) -> bool:
    if not isinstance(error, botocore.exceptions.ClientError):
        return False
    return error.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound")


def _head_size(uri: str) -> int | None:
    """Size of an S3 object, or None when it does not exist."""
    bucket, key = split_s3(uri)
    try:
        return s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
        if _not_found(exc):
            return None
        raise InputError(describe_s3_error(exc, uri)) from exc


def exists(uri: str) -> bool:
    """True when the local file or S3 object exists; `-` never does."""
    if uri == STDIO:
        return False
    if is_s3(uri):
        return bool(split_s3(uri)[1]) and _head_size(uri) is not None
    return os.path.exists(uri)


# ---------------------------------------------------------------- listing


def list_shards(input: str, output: str | None = None, *, manifest: bool = False) -> list[Shard]:
    """The shards of INPUT, sorted by `rel` (a manifest keeps its own order).

    INPUT is `-` (stdin), a file, a folder, an S3 object, an S3 prefix, or with
    `manifest=True` a manifest file. A folder or prefix means every file below
    it, recursively, except:
    - names starting with "." or "_" anywhere in the relative path (hidden
      files, temp files, `_SUCCESS`, `_temporary/`), as Spark and Hadoop do;
    - the OUTPUT folder or prefix when it lies inside INPUT;
    - local folders reached through a symlink (never followed), and S3 folder
      markers (zero-byte keys ending with "/").
    `s3://b/in` names the object `in` if it exists, else the folder `in/`
    (never `in_old/`). A missing INPUT is an InputError; an empty one is [].
    """
    if manifest:
        return _manifest_shards(input)
    if input == STDIO:
        return [Shard(STDIO, STDIO, -1)]
    if is_s3(input):
        return _s3_shards(input, output)
    return _local_shards(input, output)


def _local_shards(input: str, output: str | None) -> list[Shard]:
    if os.path.isfile(input):
        return [Shard(input, os.path.basename(input), os.path.getsize(input))]
    if not os.path.isdir(input):
        raise InputError(f"input not found: {input}")
    skip = os.path.realpath(output) if output and output != STDIO and not is_s3(output) else None
    shards = []
    # followlinks=False: a symlinked folder shows up in `folders` but is never entered.
    for root, folders, files in os.walk(input):
        folders[:] = [
            name
            for name in folders
            if not _hidden(name) and os.path.realpath(os.path.join(root, name)) != skip
        ]
        for name in files:
            path = os.path.join(root, name)
            if _hidden(name) or not os.path.isfile(path):  # sockets, fifos, broken links
                continue
            rel = Path(os.path.relpath(path, input)).as_posix()
            shards.append(Shard(path, rel, os.path.getsize(path)))
    return sorted(shards, key=lambda shard: shard.rel)


def _s3_shards(input: str, output: str | None) -> list[Shard]:
    bucket, key = split_s3(input)
    if key and not key.endswith("/"):
        size = _head_size(input)
        if size is not None:
            return [Shard(input, key.rpartition("/")[2], size)]
        key += "/"
    skip = _output_prefix_inside(bucket, key, output)
    shards, found = [], False
    paginator = s3_client().get_paginator("list_objects_v2")
    with _s3_errors(input):
        for page in paginator.paginate(Bucket=bucket, Prefix=key):
            for item in page.get("Contents", []):
                found = True
                name, size = item["Key"], item["Size"]
                rel = name[len(key) :]
                marker = name.endswith("/") and size == 0
                if marker or _hidden(rel) or (skip and name.startswith(skip)):
                    continue
                shards.append(Shard(f"s3://{bucket}/{name}", rel, size))
    if key and not found:
        raise InputError(f"input not found: {input}")
    return sorted(shards, key=lambda shard: shard.rel)


def _output_prefix_inside(bucket: str, key: str, output: str | None) -> str | None:
    """The output's key prefix when it lies strictly inside s3://bucket/key."""
    if not output or not is_s3(output):
        return None
    out_bucket, out_key = split_s3(output)
    out_prefix = out_key.rstrip("/") + "/"
    inside = out_bucket == bucket and out_prefix.startswith(key) and out_prefix != key
    return out_prefix if inside and out_key.strip("/") else None


def _manifest_shards(manifest: str) -> list[Shard]:
    with open_input(manifest) as stream:
        text = stream.read()
    try:
        document = json.loads(text)
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError
        raise InputError(f"{manifest}: not a valid manifest: invalid JSON ({exc})") from exc
    prefix, entries = _manifest_parts(manifest, document)
    seen: set[str] = set()
    for entry in entries:
        reason = _unsafe_reason(entry)
        if reason:
            raise UnsafePathError(f"{manifest}: unsafe manifest entry {entry!r} ({reason})")
        if entry in seen:
            raise InputError(f"{manifest}: duplicate manifest entry {entry!r}")
        seen.add(entry)
    uris = [prefix + entry for entry in entries]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        sizes = list(pool.map(_size_or_none, uris))
    for entry, uri, size in zip(entries, uris, sizes, strict=True):
        if size is None:
            raise InputError(f"{manifest}: manifest entry {entry!r} not found: {uri}")
    return [Shard(u, e, s) for u, e, s in zip(uris, entries, sizes, strict=True)]


def _manifest_parts(manifest: str, document: object) -> tuple[str, list[str]]:
    """The prefix (ending with "/") and the entries of a parsed manifest."""
    if not isinstance(document, list) or not document:
        raise InputError(
            f"{manifest}: not a valid manifest: expected a JSON list "
            '[{"prefix": "s3://bucket/prefix/"}, "relative/path", ...]'
        )
    head, *entries = document
    prefix = head.get("prefix") if isinstance(head, dict) else None
    if not isinstance(prefix, str) or not prefix or len(head) != 1:
        raise InputError(
            f"{manifest}: not a valid manifest: the first element must be "
            '{"prefix": "<folder or s3://bucket/prefix/>"}'
        )
    for index, entry in enumerate(entries, start=1):
        if not isinstance(entry, str):
            raise InputError(
                f"{manifest}: not a valid manifest: element {index} is not a string: {json.dumps(entry)}"
            )
    # SageMaker concatenates prefix and entry; a missing slash is surely meant.
    return (prefix if prefix.endswith("/") else prefix + "/"), entries


def _size_or_none(uri: str) -> int | None:
    if is_s3(uri):
        return _head_size(uri)
    return os.path.getsize(uri) if os.path.isfile(uri) else None


# ---------------------------------------------------------------- reading


def _open_zstd(raw: BinaryIO) -> BinaryIO:
    reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, closefd=True)
    return io.BufferedReader(reader, buffer_size=2**20)  # readline() and iteration


# smart_open's own .zst handler needs backports.zstd before Python 3.14; zstandard
# is already a dependency. smart_open infers every other compression from the name.
_DECOMPRESSORS = {".zst": _open_zstd}


def open_input(uri: str) -> BinaryIO:
    """A streaming binary reader; `.gz`, `.bz2` and `.zst` are decompressed on the fly.

    `-` is stdin. S3 objects are streamed, never downloaded whole.
    """
    if uri == STDIO:
        return sys.stdin.buffer
    decompress = _DECOMPRESSORS.get(os.path.splitext(uri)[1].lower())
    compression = "disable" if decompress else "infer_from_extension"
    if is_s3(uri):
        with _s3_errors(uri, missing=f"input not found: {uri}"):
            params = {"client": s3_client()}
            stream = smart_open.open(uri, "rb", compression=compression, transport_params=params)
    else:
        try:
            stream = smart_open.open(uri, "rb", compression=compression)
        except FileNotFoundError as exc:
            raise InputError(f"input not found: {uri}") from exc
        except OSError as exc:
            raise InputError(f"cannot read {uri}: {exc.strerror or exc}") from exc
    return decompress(stream) if decompress else stream


# ---------------------------------------------------------------- atomic writing


class ShardWriter(abc.ABC):
    """Bytes of one output that appear all at once on commit(), or never (abort()).

    As a context manager it commits on a clean exit and aborts on an exception.
    abort() after commit() or abort() does nothing, so it is safe in `finally`.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._state = "open"

    @abc.abstractmethod
    def write(self, data: bytes) -> None:
        """Append bytes to the output."""

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...

    def commit(self) -> None:
        """Publish everything written so far as the complete output."""
        if self._state == "aborted":
            raise InputError(f"{self.uri}: cannot commit an aborted output")
        if self._state == "open":
            self._state = "committed"
            self._commit()

    def abort(self) -> None:
        """Drop everything written; the output does not appear."""
        if self._state == "open":
            self._state = "aborted"
            self._abort()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        if exc_type is None:
            self.commit()
            return
        try:
            self.abort()
        except Exception:
            # The exception already on its way out says more than a failed cleanup.
            logger.warning("%s: abort failed", self.uri, exc_info=True)


_TEMP_GLOB = "[0-9a-f]" * 12  # matches secrets.token_hex(6)


def _temp_name(name: str, token: str) -> str:
    """The hidden temp file a local output is written to before its rename."""
    return f".{name}.{token}.tmp"


class _LocalWriter(ShardWriter):
    """A hidden temp file beside the target, renamed over it on commit."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        folder, name = os.path.split(os.path.abspath(uri))
        self._temp = os.path.join(folder, _temp_name(name, secrets.token_hex(6)))
        try:
            os.makedirs(folder, exist_ok=True)
            # os.open with 0o666 keeps the user's umask, unlike mkstemp's 0o600.
            self._file = os.fdopen(
                os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb"
            )
        except OSError as exc:
            raise InputError(f"cannot write {uri}: {exc.strerror or exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise InputError(f"cannot write {self.uri}: {exc.strerror or exc}") from exc

    def _commit(self) -> None:
        try:
            self._file.close()
            os.replace(self._temp, self.uri)
        except OSError as exc:
            self._abort()
            raise InputError(f"cannot write {self.uri}: {exc.strerror or exc}") from exc

    def _abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


class _S3Writer(ShardWriter):
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


def discard_partial(uris: Sequence[str]) -> None:
    """Removes what killed writers of these outputs left behind: hidden temp files
    beside local outputs, in-progress multipart uploads to S3 ones.

    A writer that dies (SIGKILL, a lost node, an S3 endpoint gone mid-shard) cannot
    clean up after itself; the next run writing the same output does it first.
    Best effort: a leftover is hidden and harmless, so cleanup never fails a job.
    """
    uploads: dict[str, set[str]] = {}
    for uri in uris:
        if is_s3(uri):
            bucket, key = split_s3(uri)
            uploads.setdefault(bucket, set()).add(key)
        elif uri != STDIO:
            folder, name = os.path.split(os.path.abspath(uri))
            for path in glob.glob(
                os.path.join(glob.escape(folder), _temp_name(glob.escape(name), _TEMP_GLOB))
            ):
                with contextlib.suppress(OSError):
                    os.unlink(path)
    for bucket, keys in uploads.items():
        prefix = os.path.commonprefix(sorted(keys))  # noqa: RUF071 (S3 prefixes are strings)
        with contextlib.suppress(*_S3_FAILURES):
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


def _part_size() -> int:
    value = os.environ.get(PART_SIZE_ENV)
    if value is None:
        return smart_open.s3.DEFAULT_PART_SIZE
    try:
        return int(value)
    except ValueError:
        raise InputError(f"{PART_SIZE_ENV} must be a number of bytes, not {value!r}") from None


class _StdoutWriter(ShardWriter):
    """Spooled, then copied to stdout on commit: stdout never shows part of a shard."""

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        # Held open across calls, closed by commit or abort.
        self._spool = tempfile.SpooledTemporaryFile(max_size=STDOUT_SPOOL_BYTES)  # noqa: SIM115

    def write(self, data: bytes) -> None:
        self._spool.write(data)

    def _commit(self) -> None:
        with self._spool:
            self._spool.seek(0)
            shutil.copyfileobj(self._spool, sys.stdout.buffer)
            sys.stdout.buffer.flush()

    def _abort(self) -> None:
        self._spool.close()


def open_output(uri: str) -> ShardWriter:
    """An atomic writer for a local path, an s3:// URI, or `-` (stdout)."""
    if uri == STDIO:
        return _StdoutWriter(uri)
    if is_s3(uri):
        return _S3Writer(uri)
    return _LocalWriter(uri)


def write_atomic(uri: str, data: bytes) -> None:
    """Write a small file (the `_SUCCESS` summary) all at once."""
    with open_output(uri) as writer:
        writer.write(data)
