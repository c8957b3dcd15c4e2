"""The writer thread: the outputs of a job's shards (`engines.shard_output`), written
on one thread so that storage never holds up the engine's dispatch, and committed as
they complete or in shard order; and the gate through which a Ray actor stops its
writers' commits when its driver stops the job."""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from o2v_batch.engines.shard_output import ShardOutput
from o2v_batch.io import describe_error, shown


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


# The reason of a shard whose output was complete only once its job had stopped: the
# output is dropped. Nobody reads it: the driver no longer listens to the actor.
STOPPED = "the job was stopped before its output was committed"


class CommitGate:
    """The outputs that writers of this process have committed, by URI, with their
    records; and a way to stop those commits from another thread. Once `close()` has
    returned, no writer holding the gate commits anything more (the output is dropped,
    as a failed shard's is), and what `close()` returned names every output committed.

    A Ray actor's writers hold one: when its driver stops the job, the actor's last
    answer then names each output it committed, and none is committed after it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._closed = False
        self._committed: dict[str, int] = {}

    def commit(self, output: ShardOutput) -> bool:
        """Commits `output` unless the gate is closed; whether it did."""
        with self._lock:
            if self._closed:
                return False
            output.commit()
            self._committed[output.uri] = output.records
            return True

    def close(self) -> dict[str, int]:
        """No more commits; the records of each output committed until now, by URI."""
        with self._lock:
            self._closed = True
            return dict(self._committed)


class _Outputs:
    """The shard outputs open on the writer thread, which owns them, and the rule of
    their commits: as they complete, or in shard order when `in_order`. What becomes of
    each shard goes to `outcomes`; `done_elsewhere` is told (from any thread) of each
    part a worker wrote into an output itself, as (shard, None or why it could not).
    Commits go through `gate` when given."""

    def __init__(
        self,
        in_order: bool,
        outcomes: queue.Queue,
        done_elsewhere: Callable[[tuple[int, str | None]], None],
        gate: CommitGate | None = None,
    ):
        self._gate = gate
        self._outputs: dict[int, ShardOutput] = {}
        self._failed: set[int] = set()
        self._in_order = in_order
        self._next_commit = 0  # in order: shards before it are committed or failed
        self._outcomes = outcomes
        self._done_elsewhere = done_elsewhere

    def elsewhere(self) -> bool:
        """Whether workers are writing parts of an open output."""
        return any(output.elsewhere for output in self._outputs.values())

    def written(self, idx: int, error: str | None) -> None:
        """A worker has written a part of shard `idx` into its output, or could not."""
        output = self._outputs.get(idx)
        if output is None:
            return  # the shard has failed
        output.elsewhere -= 1
        if error is not None:
            self._failed_shard(idx, f"cannot write {shown(output.uri)}: {error}")
        else:
            self._maybe_commit(idx)

    def abort_all(self) -> None:
        while self._outputs:
            self._outputs.popitem()[1].abort()

    def open(self, idx: int, uri: str, accept: str) -> None:
        try:
            done = self._done_elsewhere
            output = ShardOutput(uri, accept, lambda error: done((idx, error)))
        except Exception as exc:  # this shard's alone (its folder is a file, say)
            self._failed.add(idx)
            self._outcomes.put(Failed(idx, describe_error(exc, uri)))
            self._maybe_commit(idx)  # in order, the shards after it go on
            return
        self._outputs[idx] = output

    def add(self, idx: int, seq: int, payload: bytes, records: int) -> None:
        self._written(idx, lambda output: output.add(seq, payload, records))

    def fail(self, idx: int, seq: int, reason: str) -> None:
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

    def end(self, idx: int, total: int) -> None:
        if idx in self._outputs:
            self._outputs[idx].total = total
            self._maybe_commit(idx)

    def abort(self, idx: int) -> None:
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
            if self._gate is None:
                output.commit()
            elif not self._gate.commit(output):
                self._failed_shard(idx, STOPPED)
                return
        except Exception as exc:
            self._failed_shard(idx, describe_error(exc, output.uri))
            return
        del self._outputs[idx]
        self._outcomes.put(Committed(idx, output.records))


class WriterThread:
    """Writes the outputs of a job's shards on one thread. The caller hands over each
    shard's opening, parts and end through a bounded queue, waiting only when the
    writing falls behind (memory stays flat), and reads back what became of each
    shard with `outcomes()`. Shards are committed as they complete, or in shard order
    when `in_order` (stdout); an output that cannot be opened or written fails its
    shard alone. An error that is no one shard's (stdout closed) stops the writing
    and is raised by `outcomes()`. As a
    context manager it starts the thread; leaving it aborts every output not
    committed and joins the thread. Commits go through `gate` when given."""

    def __init__(self, maxsize: int, in_order: bool, gate: CommitGate | None = None):
        self._calls: queue.Queue = queue.Queue(maxsize)
        self._outcomes: queue.Queue = queue.Queue()  # at most two per shard
        # (shard, None or a reason): parts workers wrote into outputs themselves.
        self._done_elsewhere: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="o2v-batch writer", daemon=True)
        # Owned by the thread.
        self._outputs = _Outputs(in_order, self._outcomes, self._done_elsewhere.put, gate)

    def __enter__(self) -> WriterThread:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._calls.put(None)  # waits at most for the write under way
        self._thread.join()

    # -- the caller's side ------------------------------------------------

    def open(self, idx: int, uri: str, accept: str) -> None:
        self._calls.put((self._outputs.open, idx, uri, accept))

    def add(self, idx: int, seq: int, payload: bytes, records: int) -> None:
        """Part `seq` of shard `idx`, as ShardOutput.add takes it."""
        self._calls.put((self._outputs.add, idx, seq, payload, records))

    def fail(self, idx: int, seq: int, reason: str) -> None:
        """Part `seq` of shard `idx` fails the shard, as ShardOutput.fail rules."""
        self._calls.put((self._outputs.fail, idx, seq, reason))

    def end(self, idx: int, total: int) -> None:
        """Shard `idx` has `total` parts in all."""
        self._calls.put((self._outputs.end, idx, total))

    def abort(self, idx: int) -> None:
        """The caller failed shard `idx`: its output goes."""
        self._calls.put((self._outputs.abort, idx))

    def finish(self, poll: Callable[[], object] | None = None) -> None:
        """Returns once everything handed over is written, calling `poll` meanwhile:
        the workers' answers to what they were asked to write come through it."""
        self._calls.put(None)
        while self._thread.is_alive():
            if poll is not None:
                poll()
            self._thread.join(0.001 if poll is not None else None)

    def outcomes(self, errors: bool = True) -> list[Committed | Failed]:
        """What became of shards since the last call; raises the error that stopped the
        writing, if one did (without `errors`, leaves it out: once a stopped job's
        writer has ended, what it committed meanwhile still counts)."""
        found = []
        while True:
            try:
                outcome = self._outcomes.get_nowait()
            except queue.Empty:
                return found
            if isinstance(outcome, BaseException):
                if errors:
                    raise outcome
                continue
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
            while error is None and not self._stopping.is_set() and self._outputs.elsewhere():
                self._take_written(0.05)  # the last parts workers write
        finally:
            self._outputs.abort_all()

    def _next_call(self) -> tuple | None:
        """The next call, taking workers' writes as they are done meanwhile."""
        while True:
            self._take_written(0.0)
            if not self._outputs.elsewhere():
                return self._calls.get()
            try:
                return self._calls.get(timeout=0.05)
            except queue.Empty:
                continue

    def _take_written(self, wait: float) -> None:
        """Takes the parts workers have written into outputs, waiting up to `wait`
        seconds for the first."""
        written = []
        with contextlib.suppress(queue.Empty):
            written.append(self._done_elsewhere.get(block=wait > 0, timeout=wait or None))
            while True:
                written.append(self._done_elsewhere.get_nowait())
        for idx, error in written:
            self._outputs.written(idx, error)
