"""What every transport shares: the shard record, names as messages show them, the
atomic writer, the transport's face and the registry that picks a transport by scheme."""

from __future__ import annotations

import abc
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import BinaryIO, Protocol, cast

from o2v_batch.errors import InputError, O2VError

logger = logging.getLogger(__name__)

STDIO = "-"
# A URI scheme (RFC 3986) followed by "://"; anything else is a local path.
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)://")


@dataclass(frozen=True)
class Shard:
    """One input file or object: `rel` is its posix path relative to INPUT."""

    uri: str
    rel: str
    size: int


# A URI inside a name: scheme, optional userinfo, then up to a query or fragment.
# In s3:// URIs "?" and "#" belong to the key: only userinfo is redacted there.
_URI = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*://)(?:([^/?#\s]*)@)?([^?#\s]*)([?#]\S*)?")
_REDACTED = "<redacted>"


def shown(text: str) -> str:
    """`text` (a name, path or URI) as a human message may show it: a URI's userinfo
    and query string replaced by `<redacted>` (signatures and keys live there), and
    control characters, other unprintable ones, lone surrogates (a name that is not
    UTF-8) and backslashes escaped as `repr` writes them. A plain name is unchanged."""
    return "".join(_escaped(char, backslash=True) for char in _URI.sub(_redact_uri, text))


def one_line(message: str) -> str:
    """A message composed around `shown` names, made safe to print as one line: URIs
    redacted and unprintable characters escaped as by `shown`, but backslashes left
    as they are (a shown name's own escapes stay readable, and this is idempotent)."""
    return "".join(_escaped(char, backslash=False) for char in _URI.sub(_redact_uri, message))


def _redact_uri(match: re.Match[str]) -> str:
    scheme, userinfo, rest, query = match.groups()
    user = f"{_REDACTED}@" if userinfo is not None else ""
    if not query:
        tail = ""
    elif scheme.lower() == "s3://":
        tail = query
    else:
        tail = f"{query[0]}{_REDACTED}"
    return f"{scheme}{user}{rest}{tail}"


def _escaped(char: str, backslash: bool) -> str:
    if char == "\\":
        return "\\\\" if backslash else char
    return char if char.isprintable() else repr(char)[1:-1]


def described(exc: BaseException, uri: str) -> str:
    """A failed read or write of `uri` in one line, free of credentials and signed URLs:
    errors of ours (O2VError) carry their message, others say their type and text."""
    if isinstance(exc, O2VError):
        message = str(exc)
    else:
        message = f"{shown(uri)}: {type(exc).__name__}: {' '.join(str(exc).split())}"
    return one_line(redacted(message))


# The variables whose values are secrets, kept out of every message.
_SECRET_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def redacted(message: str) -> str:
    """A last guard on a message another library wrote: URLs lose their user info and
    query (where signatures live), an echoed Authorization header its key id and
    signature, and a secret of the environment is replaced by ***."""
    message = re.sub(r"(\w+://)(?:[^/\s@]*@)?([^\s?#\"']*)(?:[?#][^\s\"']*)?", r"\1\2", message)
    message = re.sub(r"\b(Credential|Signature)=[^\s,;&\"']+", r"\1=<redacted>", message)
    for name in _SECRET_VARIABLES:
        value = os.environ.get(name)
        if value:
            message = message.replace(value, "***")
    return message


def unsafe_reason(rel: str) -> str | None:
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
    if _SCHEME.match(rel):
        return "absolute URI"
    if ".." in rel.split("/"):
        return "'..' segment"
    return None


def hidden(rel: str) -> bool:
    """Spark and Hadoop skip names starting with "." or "_" (hidden files, temp
    files, _SUCCESS, _temporary/), in every folder of the path; so do listings."""
    return any(part[:1] in (".", "_") for part in rel.split("/"))


# The names the response formats give output shards (`a.jsonl.out`, `.parquet`, `.npy`).
OUTPUT_SUFFIXES = (".out", ".parquet", ".npy")


def is_output(name: str) -> bool:
    """An output shard's name (`<input name>.out`, `.parquet`, `.npy`): never read
    back as input."""
    return name.endswith(OUTPUT_SUFFIXES)


def is_summary(name: str) -> bool:
    """A job summary: `_SUCCESS`, or an array-job node's `_SUCCESS.K-of-N`. A folder
    below INPUT holding one is an earlier job's output, and is never read as input."""
    return name == "_SUCCESS" or name.startswith("_SUCCESS.")


class AtomicWriter(abc.ABC):
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

    has_regions = False  # region() gives places another process may write

    def region(self, length: int) -> tuple[str, int] | None:
        """Where another process of this job may write the output's next `length` bytes
        itself (write_at: a local file and its offset), the writer moving past them; None
        where the transport has no such place (the bytes are then written here)."""
        return None

    @abc.abstractmethod
    def _commit(self) -> None: ...

    @abc.abstractmethod
    def _abort(self) -> None: ...

    def commit(self) -> None:
        """Publish everything written so far as the complete output."""
        if self._state == "aborted":
            raise InputError(f"{shown(self.uri)}: cannot commit an aborted output")
        if self._state == "open":
            self._state = "committed"
            self._commit()

    def abort(self) -> None:
        """Drop everything written; the output does not appear."""
        if self._state == "open":
            self._state = "aborted"
            self._abort()

    def __enter__(self) -> AtomicWriter:
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


class Transport(Protocol):
    """The face of a transport module (io/local.py, io/s3.py, io/stdio.py)."""

    SCHEME: str  # of the URIs it serves: "s3" for s3://..., "" for a plain path, "-"
    # Whether its URIs name objects in a remote store, reached over the network: what a
    # process needs as a local file (a model, say) is fetched into one first, and a
    # worker on another node reaches the object by its URI. False: every process on this
    # machine opens it by its name.
    REMOTE: bool

    def list_shards(self, input: str, output: str | None) -> list[Shard]:
        """The shards of INPUT sorted by `rel`, leaving out OUTPUT when it lies inside."""

    def list_outputs(self, output: str) -> set[str]:
        """The paths, relative to OUTPUT, of the files already there (none when missing)."""

    def size(self, uri: str) -> int | None:
        """Size in bytes, or None when `uri` does not exist."""

    def open_read(self, uri: str) -> BinaryIO:
        """A streaming binary reader of the bytes as stored."""

    def open_write(self, uri: str) -> AtomicWriter:
        """An atomic writer of `uri`."""

    def delete(self, uri: str) -> None:
        """Removes a file or object; one that is not there is no error."""

    def discard_partial(self, uris: Sequence[str]) -> None:
        """Best effort: remove what killed writers of these outputs left behind."""

    def describe_error(self, exc: BaseException, uri: str) -> str:
        """A failed call on `uri` in one line, free of credentials and signed URLs."""


# Scheme -> transport module. Each registers itself as it is imported (io/__init__.py
# imports them all); one that needs a heavy client library (boto3) imports it on first
# use, so a job that never touches S3 never loads it.
_TRANSPORTS: dict[str, Transport] = {}


def register_transport(module: ModuleType) -> None:
    """Routes URIs of `module.SCHEME` to the transport module: "" for plain paths."""
    _TRANSPORTS[module.SCHEME] = cast(Transport, module)


def scheme_of(uri: str) -> str:
    """ "s3" for s3://..., "-" for stdin/stdout, "" for a local path."""
    if uri == STDIO:
        return STDIO
    match = _SCHEME.match(uri)
    return match.group(1) if match else ""


def transport_for(uri: str) -> Transport:
    """The transport of `uri`: for a scheme none serves, one that refuses every call."""
    return _TRANSPORTS.get(scheme_of(uri)) or _Unsupported(uri)


class _Unsupported:
    """The transport of a URI whose scheme no transport serves: nothing on this machine
    reaches it, and every call on it is an InputError naming it and the schemes served."""

    REMOTE = True
    describe_error = staticmethod(described)

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self.SCHEME = scheme_of(uri)

    def _refused(self) -> InputError:
        known = ", ".join(f"{name}://" for name in sorted(_TRANSPORTS) if name not in ("", STDIO))
        return InputError(
            f"{shown(self.uri)}: unsupported scheme {shown(self.SCHEME)}:// "
            f"(use a local path, - or {known})"
        )

    def list_shards(self, input: str, output: str | None) -> list[Shard]:
        raise self._refused()

    def list_outputs(self, output: str) -> set[str]:
        raise self._refused()

    def size(self, uri: str) -> int | None:
        raise self._refused()

    def open_read(self, uri: str) -> BinaryIO:
        raise self._refused()

    def open_write(self, uri: str) -> AtomicWriter:
        raise self._refused()

    def delete(self, uri: str) -> None:
        raise self._refused()

    def discard_partial(self, uris: Sequence[str]) -> None:
        raise self._refused()
