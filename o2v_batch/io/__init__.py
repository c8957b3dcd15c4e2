"""Listing, reading and atomically writing inputs, outputs, models and training data.

Every storage access of o2v-batch goes through here. A transport module per
scheme does the work, found by one registry (io/base.py) that each registers with:
local paths (io/local.py), s3:// URIs (io/s3.py), `-` for stdin/stdout
(io/stdio.py). Manifests (io/manifest.py) name shards on any of them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import BinaryIO

from o2v_batch.errors import UnsafePathError
from o2v_batch.io import local, s3, stdio  # noqa: F401 (each registers its scheme)
from o2v_batch.io.base import (
    STDIO,
    AtomicWriter,
    Shard,
    one_line,
    scheme_of,
    shown,
    transport_for,
    unsafe_reason,
)
from o2v_batch.io.compression import decompressed
from o2v_batch.io.manifest import manifest_shards

__all__ = [
    "STDIO",
    "AtomicWriter",
    "Shard",
    "delete",
    "describe_error",
    "discard_partial",
    "list_outputs",
    "list_shards",
    "one_line",
    "open_read",
    "open_write",
    "output_uri",
    "shown",
    "size",
    "transport_for",
    "write_atomic",
]


def list_shards(input: str, output: str | None = None, *, manifest: bool = False) -> list[Shard]:
    """The shards of INPUT, sorted by `rel` (a manifest keeps its own order).

    INPUT is `-` (stdin), a file, a folder, an S3 object, an S3 prefix, or with
    `manifest=True` a manifest file. A folder or prefix means every file below
    it, recursively, except:
    - names starting with "." or "_" anywhere in the relative path (hidden
      files, temp files, `_SUCCESS`, `_temporary/`), as Spark and Hadoop do;
    - the OUTPUT folder or prefix when it lies inside INPUT;
    - outputs of earlier jobs: `.out`/`.parquet`/`.npy` files, and every folder below INPUT holding
      a `_SUCCESS` (or an array job's `_SUCCESS.K-of-N`);
    - local folders reached through a symlink (never followed), and S3 folder
      markers (zero-byte keys ending with "/").
    `s3://b/in` names the object `in` if it exists, else the folder `in/`
    (never `in_old/`). A missing INPUT is an InputError; an empty one is [].
    """
    if manifest:
        with open_read(input) as stream:
            document = stream.read()
        return manifest_shards(input, document, size)
    return transport_for(input).list_shards(input, output)


def list_outputs(output: str) -> set[str]:
    """The paths, relative to OUTPUT, of the files already there (hidden names left
    out): what --resume skips and what the job refuses to clobber; none for stdout."""
    return transport_for(output).list_outputs(output)


def size(uri: str) -> int | None:
    """Size in bytes of a file or object; None when it does not exist (and for `-`)."""
    return transport_for(uri).size(uri)


def open_read(uri: str, *, decompress: bool = True) -> BinaryIO:
    """A streaming binary reader; `.gz`, `.bz2`, `.xz` and `.zst` are decompressed on
    the fly unless `decompress` is False. `-` is stdin. S3 objects are streamed,
    never downloaded whole."""
    stream = transport_for(uri).open_read(uri)
    return decompressed(stream, uri) if decompress else stream


def open_write(uri: str) -> AtomicWriter:
    """An atomic writer for a local path, an s3:// URI, or `-` (stdout)."""
    return transport_for(uri).open_write(uri)


def write_atomic(uri: str, data: bytes) -> None:
    """Write a small file (the `_SUCCESS` summary, a model file) all at once."""
    with open_write(uri) as writer:
        writer.write(data)


def delete(uri: str) -> None:
    """Removes a file or object (a summary an earlier run left); a missing one is no
    error, any other failure an InputError naming it."""
    transport_for(uri).delete(uri)


def discard_partial(uris: Sequence[str]) -> None:
    """Removes what killed writers of these outputs left behind: hidden temp files
    beside local outputs, in-progress multipart uploads to S3 ones.

    A writer that dies (SIGKILL, a lost node, an S3 endpoint gone mid-shard) cannot
    clean up after itself; the next run writing the same output does it first.
    Best effort: a leftover is hidden and harmless, so cleanup never fails a job.
    """
    by_scheme: dict[str, list[str]] = {}
    for uri in uris:
        by_scheme.setdefault(scheme_of(uri), []).append(uri)
    for same in by_scheme.values():
        transport_for(same[0]).discard_partial(same)


def describe_error(exc: BaseException, uri: str) -> str:
    """A one-line message for a failed read or write of `uri`, free of credentials
    and signed URLs, as its transport describes it. Errors of ours (O2VError) carry
    their message and pass through."""
    return transport_for(uri).describe_error(exc, uri)


def output_uri(output: str, rel: str, suffix: str = ".out") -> str:
    """`<output>/<rel><suffix>` for a folder or S3 prefix; `-` stays `-` (stdout)."""
    if output == STDIO:
        return STDIO
    reason = unsafe_reason(rel)
    if reason:
        raise UnsafePathError(
            f"refusing output path for {rel!r} ({reason}): it could escape {shown(output)}"
        )
    return f"{output.rstrip('/')}/{rel}{suffix}"
