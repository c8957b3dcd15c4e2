"""The worker pool: worker processes on the devices (several per GPU, or CPU
workers), bounded mini-batches in flight, plain-data results, and dead or hung
worker detection with retries. The workers' side is worker.py.

Nothing here imports torch: workers are spawned, build their server themselves
(the factory sets torch's threads) and exchange only bytes and plain data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import os
import queue
import signal
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait

from o2v_batch.errors import WorkerError
from o2v_batch.execution import segments
from o2v_batch.execution.protocol import (
    Done,
    Failed,
    Fatal,
    Ready,
    ServeRequest,
    SharedLines,
    Started,
    WorkerSpec,
    Wrote,
)
from o2v_batch.execution.worker import (
    Spares,
    exit_reason,
    oom_killed_since,
    oom_kills,
    start_failure,
    start_process,
)
from o2v_batch.execution.worker_loop import PIPELINE_DEPTH
from o2v_batch.inputs.formats import Lines

# Stop waiting for a worker that ignores the stop message after this long.
STOP_GRACE_S = 5.0


# -- the pool, parent side ------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """The pool got over a fault: it replaced a lost worker, tries a mini-batch again, or both."""

    reason: str  # what went wrong: "worker 4242 was killed by SIGKILL"
    restarted: bool  # a new worker took the lost one's place
    task_id: int | None = None  # the mini-batch tried again, if any
    attempt: int = 0  # its attempt about to start: 2 is the first retry


@dataclass
class _Task:
    task_id: int
    request: ServeRequest
    attempts: int = 0
    slot: int | None = None  # the request segment its lines are in, while a worker has it


@dataclass
class _Worker:
    index: int  # its place in the pool's specs, kept by the worker replacing it
    spec: WorkerSpec
    process: mp.Process
    conn: Connection
    started: bool = False
    ready: bool = False
    oom_kills: int | None = None  # the cgroup's OOM kills when it was started
    pid: int | None = None
    in_flight: deque = field(default_factory=deque)
    head_started: float = 0.0
    views: segments.Views | None = None  # its response segments, if it has them
    requests: list[int] = field(default_factory=list)  # its request segments
    free: list[int] = field(default_factory=list)  # those no mini-batch is in
    writing: dict[int, segments.RemoteWrite] = field(default_factory=dict)  # by slot


class WorkerPool:
    """Runs mini-batches on worker processes; results come back as Done or Failed events."""

    def __init__(
        self,
        specs: list[WorkerSpec],
        max_concurrent: int = 2,
        max_retries: int = 3,
        invocation_timeout: float = 600.0,
        on_recovery: Callable[[Recovery], None] | None = None,
        spares: Spares | None = None,
        shared_memory: bool = False,
    ):
        self._ctx = mp.get_context("spawn")
        # A pipelined worker (a GPU's) holds a mini-batch for each of its stages.
        if any(spec.pipelines for spec in specs):
            max_concurrent = max(max_concurrent, PIPELINE_DEPTH)
        # Each worker gets a request segment per mini-batch it may hold, and puts large
        # responses in segments of its own (segments.py): a few more than it may hold,
        # as the caller keeps some until written.
        shared = shared_memory and segments.SUPPORTED
        self._segments = (max_concurrent, max_concurrent + 2) if shared else (0, 0)
        # What callers did with responses in segments, from any thread: (worker, a
        # protocol.Release or segments.RemoteWrite).
        self._handed: queue.SimpleQueue = queue.SimpleQueue()
        self._spares = spares  # processes started early, taken before new ones
        self._specs = specs
        self.max_concurrent = max_concurrent
        self.max_retries = max_retries
        self.invocation_timeout = invocation_timeout
        # Told of every restart and retry as it happens, so the job can say so at once.
        self.on_recovery = on_recovery
        self._workers: list[_Worker] = []
        self._retry: deque[_Task] = deque()
        self._events: list[Done | Failed] = []
        self._load_failures = 0

    # lifecycle

    def __enter__(self) -> WorkerPool:
        self._workers = [self._spawn(index) for index in range(len(self._specs))]
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # After an error or an interrupt nothing the workers hold is wanted: stop them now.
        self.close(graceful=exc_type is None)

    def _spawn(self, index: int) -> _Worker:
        requests, responses = self._segments
        spec = dataclasses.replace(
            self._specs[index], request_segments=requests, segments=responses
        )
        started = self._spares.take(spec.factory) if self._spares else None
        process, parent = started or start_process(self._ctx, spec.factory)
        w = _Worker(index, spec, process, parent, oom_kills=oom_kills())
        if requests:
            w.requests, w.free = segments.create(requests, "request"), list(range(requests))
            w.views = segments.Views(segments.create(responses))
        # A worker already gone (its interpreter could not start) closed its end: its
        # exit, seen by poll(), says why.
        with contextlib.suppress(OSError):
            parent.send(spec)
            segments.send(parent, [*w.requests, *(w.views.fds if w.views else [])], process.pid)
        return w

    def close(self, graceful: bool = True) -> None:
        for w in self._workers:
            # One still loading holds no work: a tiny job need not wait for its torch import.
            if not graceful or not w.ready:
                w.process.kill()
            with contextlib.suppress(OSError):
                w.conn.send(None)
        deadline = time.monotonic() + STOP_GRACE_S
        for w in self._workers:
            w.process.join(max(0.0, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join()
            _close(w)
        self._workers = []

    # work

    @property
    def capacity(self) -> int:
        return len(self._specs) * self.max_concurrent

    def in_flight(self) -> int:
        return sum(len(w.in_flight) for w in self._workers) + len(self._retry)

    def has_room(self) -> bool:
        return self.in_flight() < self.capacity

    def submit(
        self,
        task_id: int,
        positions: Sequence[int],
        records: Sequence[bytes],
        content_type: str,
        accept: str,
    ) -> None:
        request = ServeRequest(task_id, positions, records, content_type, accept)
        self._retry.append(_Task(task_id, request))
        self._dispatch()

    def poll(self, timeout: float) -> list[Done | Failed]:
        """Waits up to `timeout` for results; detects dead and hung workers meanwhile.
        A payload in a worker's segment comes as a SharedPayload: its release hands
        the segment back (on the next poll), from any thread."""
        self._dispatch()
        if not self._events:
            handles = {}
            for w in self._workers:
                handles[w.conn] = w
                handles[w.process.sentinel] = w
            for handle in wait(list(handles), timeout=self._wait_time(timeout)):
                w = handles[handle]
                if w in self._workers:
                    self._service(w, handle)
            self._check_hung()
            self._dispatch()
        events, self._events = self._events, []
        return events

    def _wait_time(self, timeout: float) -> float:
        now = time.monotonic()
        for w in self._workers:
            if w.in_flight:
                timeout = min(timeout, max(0.0, w.head_started + self.invocation_timeout - now))
        return timeout

    def _dispatch(self) -> None:
        self._give_back()  # before new work, so that a worker never lacks what is free
        while self._retry:
            ready = [w for w in self._workers if w.ready and len(w.in_flight) < self.max_concurrent]
            if not ready:
                return
            w = min(ready, key=lambda w: len(w.in_flight))
            task = self._retry.popleft()
            if not w.in_flight:
                w.head_started = time.monotonic()
            w.in_flight.append(task)
            try:
                w.conn.send(self._request(w, task))
            except OSError:  # it died since the last poll: its exit says how
                self._died(w)

    @staticmethod
    def _request(w: _Worker, task: _Task) -> ServeRequest:
        """The request as `w` gets it: large lines go in one of its free request segments."""
        task.slot, records = None, task.request.records
        if not (w.free and isinstance(records, Lines)):
            return task.request
        if len(records.data) < segments.MIN_SHARED_BYTES:
            return task.request
        slot = w.free.pop()
        try:
            os.pwrite(w.requests[slot], records.data, 0)
        except OSError:  # short of memory: the pipe it is (the worker is fine)
            w.free.append(slot)
            return task.request
        task.slot = slot
        shared = SharedLines(slot, len(records.data), records.count)
        return dataclasses.replace(task.request, records=shared)

    def _service(self, w: _Worker, handle) -> None:
        if handle is w.process.sentinel and not w.conn.poll():
            self._died(w)
            return
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            self._died(w)
            return
        if isinstance(message, Wrote):
            w.writing.pop(message.slot).finished(message.error)
        elif isinstance(message, Started):
            w.started = True
        elif isinstance(message, Ready):
            w.ready, w.pid = True, message.pid
        elif isinstance(message, Fatal):
            raise WorkerError(f"cannot load the model on {w.spec.device}: {message.reason}")
        else:
            task = w.in_flight.popleft()
            assert task.task_id == message.task_id, "workers answer in order"
            if task.slot is not None:
                w.free.append(task.slot)
            w.head_started = time.monotonic()
            if isinstance(message, Done):
                self._take_payload(w, message.result)
                self._events.append(message)
            else:
                reason = f"the worker raised {message.reason}"
                if self._retry_or_fail(task, reason):
                    self._recovered(Recovery(reason, False, task.task_id, task.attempts + 1))

    def _take_payload(self, w: _Worker, result) -> None:
        placed = result.placed
        if placed is None:
            return
        handed = self._handed.put
        result.payload = w.views.payload(placed, lambda message: handed((w, message)))
        result.placed = None

    def _give_back(self) -> None:
        """Tells workers which of their segments callers released, and which responses
        to write into outputs themselves (those of a lost worker the parent writes)."""
        while True:
            try:
                w, message = self._handed.get_nowait()
            except queue.Empty:
                return
            alive = w in self._workers
            if isinstance(message, segments.RemoteWrite):
                if not alive:
                    message.here()
                    continue
                w.writing[message.payload.slot] = message
                message = message.request()
            if alive:  # a lost worker's segments went with it
                try:
                    w.conn.send(message)
                except OSError:  # it died since the last poll: its exit says how
                    self._died(w)

    def _died(self, w: _Worker) -> None:
        w.process.join(1.0)
        if not w.started:  # another would fail alike: the job cannot run
            raise WorkerError(
                f"worker {w.index} could not start: {start_failure(w.process.exitcode)}"
            )
        code = w.process.exitcode
        killed = code == -signal.SIGKILL and oom_killed_since(w.oom_kills)
        self._lost(w, exit_reason(code, oom_killed=killed))

    def _check_hung(self) -> None:
        now = time.monotonic()
        for w in list(self._workers):
            if w.in_flight and now - w.head_started > self.invocation_timeout:
                w.process.kill()
                w.process.join()
                self._lost(
                    w, f"timed out after {self.invocation_timeout:g} s (--invocation-timeout)"
                )

    def _lost(self, w: _Worker, reason: str) -> None:
        """A worker died or hung: replace it and retry what it held."""
        if not w.ready:
            self._load_failures += 1
            if self._load_failures > self.max_retries:
                raise WorkerError(f"worker on {w.spec.device} {reason} while loading the model")
        self._workers.remove(w)
        _close(w)
        for write in w.writing.values():  # what it was asked to write, the parent writes
            write.here()
        w.writing.clear()
        head, *rest = w.in_flight or [None]
        # Queued tasks it never started go back without using a retry.
        self._retry.extendleft(reversed(rest))
        # Only a ready worker holds tasks: one that was loading has no head.
        what = f"worker {w.process.pid} {reason}" + ("" if w.ready else " while loading the model")
        retried = head is not None and self._retry_or_fail(head, what)
        self._workers.append(self._spawn(w.index))
        if retried:
            self._recovered(Recovery(what, True, head.task_id, head.attempts + 1))
        else:
            self._recovered(Recovery(what, True))

    def _retry_or_fail(self, task: _Task, reason: str) -> bool:
        """True when the task goes back for another attempt; False when it failed for good."""
        task.attempts += 1
        if task.attempts > self.max_retries:
            self._events.append(
                Failed(task.task_id, f"{reason}; gave up after {task.attempts} attempts")
            )
            return False
        self._retry.appendleft(task)
        return True

    def _recovered(self, recovery: Recovery) -> None:
        if self.on_recovery is not None:
            self.on_recovery(recovery)


def _close(w: _Worker) -> None:
    w.conn.close()
    segments.close(w.requests)
    w.requests, w.free = [], []
    if w.views is not None:
        w.views.close()
