"""One shard's output: the results of its parts (mini-batches, the pieces they were
split into, oversize records' places) arrive in any order and are written in input
order, framed by the accept type's codec, into an atomic output committed once
every part is in."""

from __future__ import annotations

import contextlib
from collections.abc import Callable

from o2v_batch.errors import O2VError
from o2v_batch.execution.segments import SharedPayload
from o2v_batch.io import AtomicWriter, open_write
from o2v_batch.outputs.responses import Framer, TextCodec, codec_for


class ShardOutput:
    """The output of one input shard, written as its parts complete in order; parts
    are framed as consecutive mini-batches are."""

    def __init__(
        self, uri: str, accept: str, written_elsewhere: Callable[[str | None], None] | None = None
    ):
        self.uri = uri
        self._pending: dict[int, bytes | SharedPayload | str] = {}  # str: why a part failed
        self._next = 0
        self.total: int | None = None  # parts in the shard, once reading ends
        self.records = 0
        # Told (from any thread) when a worker has written a part into the output
        # itself: None, or why it could not. Without it, parts are written here.
        self.written_elsewhere = written_elsewhere
        self.elsewhere = 0  # parts being written by workers
        codec = codec_for(accept)
        self._text = isinstance(codec, TextCodec)
        self._framer: Framer | None = None
        self._writer: AtomicWriter | None = open_write(uri)
        try:
            self._framer = codec.start(self._writer)
        except BaseException:
            self.abort()
            raise

    def add(self, seq: int, payload: bytes | SharedPayload, records: int) -> str | None:
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
            del self._pending[self._next]
            if isinstance(part, SharedPayload):
                self._add_shared(part)
            else:
                self._framer.add(part)
            self._next += 1
        return None

    def _add_shared(self, part: SharedPayload) -> None:
        """A response still in a worker's segment: text goes into a region of a local
        output that the worker writes itself, or is written here straight from the
        segment, which is then released; a columnar codec, which may keep views of
        what it is given, gets a copy."""
        if self._text and self.written_elsewhere is not None:
            where = self._framer.region(len(part))
            if where is not None:
                self.elsewhere += 1
                part.write_elsewhere(*where, self.written_elsewhere)
                return
        try:
            self._framer.add(part.view if self._text else bytes(part.view))
        finally:
            part.release()

    @property
    def complete(self) -> bool:
        return self.total is not None and self._next == self.total and not self.elsewhere

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
