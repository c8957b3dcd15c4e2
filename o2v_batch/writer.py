"""The per-shard reorder buffer: the results of a shard's parts (mini-batches, the
pieces they were split into, oversize records' places) arrive in any order and are
written in input order, framed by the accept type's codec, atomically."""

from __future__ import annotations

import contextlib

from o2v_batch.errors import O2VError
from o2v_batch.io import AtomicWriter, open_write
from o2v_batch.responses import Framer, codec_for


class ShardOutput:
    """The output of one input shard, written as its parts complete in order; parts
    are framed as consecutive mini-batches are."""

    def __init__(self, uri: str, accept: str):
        self.uri = uri
        self._pending: dict[int, bytes | str] = {}  # a str: the reason a part failed
        self._next = 0
        self.total: int | None = None  # parts in the shard, once reading ends
        self.records = 0
        codec = codec_for(accept)
        self._framer: Framer | None = None
        self._writer: AtomicWriter | None = open_write(uri)
        try:
            self._framer = codec.start(self._writer)
        except BaseException:
            self.abort()
            raise

    def add(self, seq: int, payload: bytes, records: int) -> str | None:
        """Takes the result of part `seq`; writes every result now in order. Returns the
        reason of a failed part (fail) that every part before it has now reached."""
        self._pending[seq] = payload
        self.records += records
        return self._write()

    def fail(self, seq: int, reason: str) -> str | None:
        """Part `seq` fails the shard for `reason`, once every part before it is in:
        an earlier part's failure comes first, so the first bad record names it.
        Returns the reason that fails the shard now, if any."""
        self._pending[seq] = reason
        return self._write()

    def _write(self) -> str | None:
        while self._next in self._pending:
            part = self._pending[self._next]
            if isinstance(part, str):
                return part
            self._framer.add(self._pending.pop(self._next))
            self._next += 1
        return None

    @property
    def complete(self) -> bool:
        return self.total is not None and self._next == self.total

    def commit(self) -> None:
        assert self.complete, "every mini-batch is written before the commit"
        self._framer.finish()
        writer, self._writer = self._writer, None
        writer.commit()

    def abort(self) -> None:
        """Best effort: an upload that cannot be aborted now is aborted by the next run."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._pending.clear()
            if self._framer is not None:
                self._framer.discard()
            with contextlib.suppress(O2VError):
                writer.abort()
