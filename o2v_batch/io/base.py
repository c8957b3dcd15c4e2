"""What every transport shares: the shard record, the atomic writer, the
transport interface and the registry that picks a transport by scheme."""

from __future__ import annotations

import abc
import importlib
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import BinaryIO, Protocol, cast

from o2v_batch.errors import InputError

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


# Scheme -> module. Modules are imported on first use, so a job that never
# touches S3 never imports boto3 (workers and `import o2v_batch` stay quick).
_TRANSPORTS: dict[str, str] = {}


def register_transport(scheme: str, module: str) -> None:
    """Route URIs of `scheme` to `module`: "" for local paths, "-" for stdin/stdout."""
    _TRANSPORTS[scheme] = module


def scheme_of(uri: str) -> str:
    """ "s3" for s3://..., "-" for stdin/stdout, "" for a local path."""
    if uri == STDIO:
        return STDIO
    match = _SCHEME.match(uri)
    return match.group(1) if match else ""


def transport_for(uri: str) -> Transport:
    """The transport module for `uri`; an unknown scheme is an InputError."""
    scheme = scheme_of(uri)
    module = _TRANSPORTS.get(scheme)
    if module is None:
        known = ", ".join(f"{name}://" for name in sorted(_TRANSPORTS) if name not in ("", STDIO))
        raise InputError(
            f"{shown(uri)}: unsupported scheme {shown(scheme)}:// (use a local path, - or {known})"
        )
    return cast(Transport, importlib.import_module(module))
