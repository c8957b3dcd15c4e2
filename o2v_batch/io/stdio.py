"""`-`: stdin as the one input shard, stdout as an output that shows whole shards only."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from typing import BinaryIO

from o2v_batch.errors import StdoutClosed
from o2v_batch.io.base import STDIO, AtomicWriter, Shard, described, register_transport

SCHEME = STDIO
REMOTE = False  # this process's own stdin and stdout

# Bytes of a stdout shard kept in memory before it spills to a temporary file.
STDOUT_SPOOL_BYTES = 8 * 2**20


def list_shards(input: str, output: str | None) -> list[Shard]:
    """Stdin is one shard of unknown size."""
    return [Shard(STDIO, STDIO, -1)]


def list_outputs(output: str) -> set[str]:
    """No paths: stdout holds no earlier outputs."""
    return set()


def size(uri: str) -> int | None:
    """None: stdout never holds an earlier output, and stdin's size is unknown."""
    return None


def open_read(uri: str) -> BinaryIO:
    """Stdin's file descriptor, unbuffered: a reader thread waiting on an open pipe then
    holds no lock of sys.stdin's buffer, which the interpreter takes as it exits (on
    SIGTERM it aborted with "could not acquire lock ... at interpreter shutdown")."""
    try:
        fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):  # replaced by an object without one
        return sys.stdin.buffer
    return open(fd, "rb", buffering=0, closefd=False)


class _StdoutWriter(AtomicWriter):
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
            try:
                shutil.copyfileobj(self._spool, sys.stdout.buffer)
                sys.stdout.buffer.flush()
            except BrokenPipeError:
                raise StdoutClosed from None

    def _abort(self) -> None:
        self._spool.close()


def open_write(uri: str) -> AtomicWriter:
    return _StdoutWriter(uri)


def delete(uri: str) -> None:
    """Nothing to do: stdout keeps no files."""


def discard_partial(uris: Sequence[str]) -> None:
    """Nothing to do: a killed writer's spool is a temporary file the system removes."""


describe_error = described  # as a local file's

register_transport(sys.modules[__name__])
