"""Per-shard output assembly: mini-batch results arrive in any order and are
written in input order, atomically, with the response framing around them."""

from __future__ import annotations

import contextlib

from o2v_batch.errors import O2VError
from o2v_batch.formats import Framing
from o2v_batch.io import ShardWriter, open_output


class ShardOutput:
    """The output of one input shard, written as its mini-batches complete in order."""

    def __init__(self, uri: str, framing: Framing):
        self.uri = uri
        self._framing = framing
        self._writer: ShardWriter | None = open_output(uri)
        self._pending: dict[int, bytes] = {}
        self._next = 0
        self._started = False
        self.total: int | None = None  # mini-batches in the shard, once reading ends
        self.records = 0

    def add(self, seq: int, payload: bytes, records: int) -> None:
        """Takes the result of mini-batch `seq`; writes every result now in order."""
        self._pending[seq] = payload
        self.records += records
        while self._next in self._pending:
            self._write(self._pending.pop(self._next))
            self._next += 1

    @property
    def buffered(self) -> int:
        return len(self._pending)

    @property
    def complete(self) -> bool:
        return self.total is not None and self._next == self.total

    def _write(self, payload: bytes) -> None:
        if not payload:
            return
        if self._started:
            payload = self._framing.separator + payload
        else:
            payload = self._framing.header + payload
            self._started = True
        self._writer.write(payload)

    def commit(self) -> None:
        assert self.complete, "every mini-batch is written before the commit"
        tail = (
            self._framing.footer if self._started else self._framing.header + self._framing.footer
        )
        if tail:
            self._writer.write(tail)
        writer, self._writer = self._writer, None
        writer.commit()

    def abort(self) -> None:
        """Best effort: an upload that cannot be aborted now is aborted by the next run."""
        if self._writer is not None:
            writer, self._writer = self._writer, None
            self._pending.clear()
            with contextlib.suppress(O2VError):
                writer.abort()
