"""The per-shard reorder buffer: the results of a shard's parts (mini-batches, the
pieces they were split into, oversize records' places) arrive in any order and are
written in input order, framed by the accept type's codec, atomically. The local
engine writes its shards' outputs on a writer thread, so storage never holds up
its dispatch."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from o2v_batch.errors import O2VError
from o2v_batch.execution.segments import SharedPayload
from o2v_batch.io import AtomicWriter, describe_error, open_write, shown
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


@dataclass(frozen=True, slots=True)
class Committed:
    """Shard `idx`'s output is published whole, with `records` predictions."""

    idx: int
    records: int


@dataclass(frozen=True, slots=True)
class Failed:
    """Shard `idx` failed for `reason` while written; nothing of its output remains."""

    idx: int
    reason: str


class WriterThread:
    """Writes the outputs of a job's shards on one thread. The caller hands over each
    shard's opening, parts and end through a bounded queue, waiting only when the
    writing falls behind (memory stays flat), and reads back what became of each
    shard with `outcomes()`. Shards are committed as they complete, or in shard order
    when `in_order` (stdout); an output that cannot be opened or written fails its
    shard alone. An error that is no one shard's (stdout closed) stops the writing
    and is raised by `outcomes()`. As a
    context manager it starts the thread; leaving it aborts every output not
    committed and joins the thread."""

    def __init__(self, maxsize: int, in_order: bool):
        self._calls: queue.Queue = queue.Queue(maxsize)
        self._outcomes: queue.Queue = queue.Queue()  # at most two per shard
        # (shard, None or a reason): parts workers wrote into outputs themselves.
        self._done_elsewhere: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="o2v-batch writer", daemon=True)
        # Owned by the thread.
        self._outputs: dict[int, ShardOutput] = {}
        self._failed: set[int] = set()
        self._in_order = in_order
        self._next_commit = 0  # in order: shards before it are committed or failed

    def __enter__(self) -> WriterThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._calls.put(None)  # waits at most for the write under way
        self._thread.join()

    # -- the caller's side ------------------------------------------------

    def open(self, idx: int, uri: str, accept: str) -> None:
        self._calls.put((self._open, idx, uri, accept))

    def add(self, idx: int, seq: int, payload: bytes, records: int) -> None:
        """Part `seq` of shard `idx`, as ShardOutput.add takes it."""
        self._calls.put((self._add, idx, seq, payload, records))

    def fail(self, idx: int, seq: int, reason: str) -> None:
        """Part `seq` of shard `idx` fails the shard, as ShardOutput.fail rules."""
        self._calls.put((self._fail, idx, seq, reason))

    def end(self, idx: int, total: int) -> None:
        """Shard `idx` has `total` parts in all."""
        self._calls.put((self._end, idx, total))

    def abort(self, idx: int) -> None:
        """The caller failed shard `idx`: its output goes."""
        self._calls.put((self._abort, idx))

    def finish(self, poll: Callable[[], object] | None = None) -> None:
        """Returns once everything handed over is written, calling `poll` meanwhile:
        the workers' answers to what they were asked to write come through it."""
        self._calls.put(None)
        while self._thread.is_alive():
            if poll is not None:
                poll()
            self._thread.join(0.001 if poll is not None else None)

    def outcomes(self) -> list[Committed | Failed]:
        """What became of shards since the last call; raises the error that stopped the
        writing, if one did."""
        found = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return found
            if isinstance(outcome, BaseException):
                raise outcome
            found.append(outcome)

    # -- the thread ---------------------------------------------------------

    def _run(self) -> None:
        error: BaseException | None = None
        try:
            while (call := self._next_call()) is not None:
                if error is not None or self._stopping.is_set():
                    continue  # drained, so that the caller never waits on a full queue
                function, *args = call
                try:
                    function(*args)
                except BaseException as exc:  # the caller raises it; the outputs go on exit
                    error = exc
                    self._outcomes.put(exc)
            while error is None and not self._stopping.is_set() and self._elsewhere():
                self._take_written(0.05)  # the last parts workers write
        finally:
            self._abort_all()

    def _next_call(self) -> tuple | None:
        """The next call, taking workers' writes as they are done meanwhile."""
        while True:
            self._take_written(0.0)
            if not self._elsewhere():
                return self._calls.get()
            try:
                return self._calls.get(timeout=0.05)
            except queue.Empty:
                continue

    def _elsewhere(self) -> bool:
        return any(output.elsewhere for output in self._outputs.values())

    def _take_written(self, wait: float) -> None:
        """Takes the parts workers have written into outputs, waiting up to `wait`
        seconds for the first."""
        written = []
        with contextlib.suppress(queue.Empty):
            written.append(self._done_elsewhere.get(block=wait > 0, timeout=wait or None))
            while True:
                written.append(self._done_elsewhere.get_nowait())
        for idx, error in written:
            output = self._outputs.get(idx)
            if output is None:
                continue  # the shard has failed
            output.elsewhere -= 1
            if error is not None:
                self._failed_shard(idx, f"cannot write {shown(output.uri)}: {error}")
            else:
                self._maybe_commit(idx)

    def _abort_all(self) -> None:
        while self._outputs:
            self._outputs.popitem()[1].abort()

    def _open(self, idx: int, uri: str, accept: str) -> None:
        try:
            done = self._done_elsewhere.put
            output = ShardOutput(uri, accept, lambda error: done((idx, error)))
        except Exception as exc:  # this shard's alone (its folder is a file, say)
            self._failed.add(idx)
            self._outcomes.put(Failed(idx, describe_error(exc, uri)))
            self._maybe_commit(idx)  # in order, the shards after it go on
            return
        self._outputs[idx] = output

    def _add(self, idx: int, seq: int, payload: bytes, records: int) -> None:
        self._written(idx, lambda output: output.add(seq, payload, records))

    def _fail(self, idx: int, seq: int, reason: str) -> None:
        self._written(idx, lambda output: output.fail(seq, reason))

    def _written(self, idx: int, write: Callable[[ShardOutput], str | None]) -> None:
        output = self._outputs.get(idx)
        if output is None:
            return  # the shard has failed
        try:
            failure = write(output)
        except Exception as exc:  # the output cannot be written (e.g. S3 went away)
            failure = describe_error(exc, output.uri)
        if failure is not None:
            self._failed_shard(idx, failure)
        self._maybe_commit(idx)

    def _end(self, idx: int, total: int) -> None:
        if idx in self._outputs:
            self._outputs[idx].total = total
            self._maybe_commit(idx)

    def _abort(self, idx: int) -> None:
        output = self._outputs.pop(idx, None)
        if output is not None:
            output.abort()
        self._failed.add(idx)
        self._maybe_commit(idx)

    def _failed_shard(self, idx: int, reason: str) -> None:
        self._outputs.pop(idx).abort()
        self._failed.add(idx)
        self._outcomes.put(Failed(idx, reason))

    def _maybe_commit(self, idx: int) -> None:
        if not self._in_order:
            if idx in self._outputs and self._outputs[idx].complete:
                self._commit(idx)
            return
        while self._next_commit in self._failed or (
            self._next_commit in self._outputs and self._outputs[self._next_commit].complete
        ):
            if self._next_commit not in self._failed:
                self._commit(self._next_commit)
            self._next_commit += 1

    def _commit(self, idx: int) -> None:
        output = self._outputs[idx]
        try:
            output.commit()
        except Exception as exc:
            self._failed_shard(idx, describe_error(exc, output.uri))
            return
        del self._outputs[idx]
        self._outcomes.put(Committed(idx, output.records))
