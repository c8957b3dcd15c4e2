"""One pool worker as the parent holds it: its process and pipe, what it said of
itself, the mini-batches it holds in order, and its segments.

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing as mp
import signal
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from o2v_batch.errors import WorkerError
from o2v_batch.execution import segments
from o2v_batch.execution.exits import exit_reason, oom_killed_since, oom_kills
from o2v_batch.execution.protocol import (
    BatchResult,
    Done,
    Failed,
    Fatal,
    Ready,
    Release,
    ServeRequest,
    Started,
    WorkerSpec,
    Wrote,
)
from o2v_batch.execution.worker import Spares, start_process


@dataclass
class Task:
    """A mini-batch in the pool, from submit to its answer."""

    task_id: int
    request: ServeRequest
    attempts: int = 0
    slot: int | None = None  # the request segment its lines are in, while a worker has it


@dataclass
class WorkerHandle:
    """A worker process and what the parent knows of it."""

    index: int  # its place in the pool's specs, kept by the worker replacing it
    spec: WorkerSpec
    process: mp.Process
    conn: Connection
    shared: segments.WorkerSegments
    started: bool = False
    ready: bool = False
    oom_kills: int | None = None  # the cgroup's OOM kills when it was started
    pid: int | None = None
    in_flight: deque[Task] = field(default_factory=deque)
    head_started: float = 0.0

    @classmethod
    def start(
        cls, ctx, index: int, spec: WorkerSpec, spares: Spares | None, counts: tuple[int, int]
    ) -> WorkerHandle:
        """A worker for `spec` (a spare if one fits) with `counts` request and response
        segments, sent its spec and its segments."""
        requests, responses = counts
        spec = dataclasses.replace(spec, request_segments=requests, segments=responses)
        started = spares.take(spec.factory) if spares else None
        process, parent = started or start_process(ctx, spec.factory)
        shared = segments.WorkerSegments(requests, responses)
        w = cls(index, spec, process, parent, shared, oom_kills=oom_kills())
        # A worker already gone (its interpreter could not start) closed its end: its
        # exit, seen by the pool's poll(), says why.
        with contextlib.suppress(OSError):
            parent.send(spec)
            segments.send(parent, shared.fds, process.pid)
        return w

    # work

    def assign(self, task: Task) -> None:
        """Sends the worker `task`; OSError when it died since it was last heard from."""
        if not self.in_flight:
            self.head_started = time.monotonic()
        self.in_flight.append(task)
        request, task.slot = self.shared.request(task.request)
        self.conn.send(request)

    def note(self, message) -> Done | Failed | None:
        """Takes in a message from the worker: what it says of itself (started, ready,
        a write done) is kept here; a mini-batch's answer is returned."""
        if isinstance(message, Wrote):
            self.shared.wrote(message)
        elif isinstance(message, Started):
            self.started = True
        elif isinstance(message, Ready):
            self.ready, self.pid = True, message.pid
        elif isinstance(message, Fatal):
            raise WorkerError(f"cannot load the model on {self.spec.device}: {message.reason}")
        else:
            return message
        return None

    def answered(self, task_id: int) -> Task:
        """The task the worker answered (the oldest it holds): its request segment is
        free again, and the next one's time starts."""
        task = self.in_flight.popleft()
        assert task.task_id == task_id, "workers answer in order"
        if task.slot is not None:
            self.shared.free.append(task.slot)
        self.head_started = time.monotonic()
        return task

    def take_payload(self, result: BatchResult, handed: Callable) -> None:
        """A response in one of the worker's segments becomes a SharedPayload; what a
        caller does with it goes to `handed` as (this worker, message)."""
        placed = result.placed
        if placed is None:
            return
        result.payload = self.shared.views.payload(placed, lambda message: handed((self, message)))
        result.placed = None

    def pass_on(self, message: Release | segments.RemoteWrite) -> None:
        """Tells the worker what a caller did with one of its responses: released it,
        or asks the worker to write it into an output."""
        self.conn.send(self.shared.pass_on(message))

    # faults and the end

    def exit_reason(self) -> str:
        """How the process ended, the cgroup's OOM killer named if it was that."""
        code = self.process.exitcode
        killed = code == -signal.SIGKILL and oom_killed_since(self.oom_kills)
        return exit_reason(code, oom_killed=killed)

    def stop(self, graceful: bool) -> None:
        """Asks the worker to stop; kills it unless graceful and ready (one still
        loading holds no work: a tiny job need not wait for its torch import)."""
        if not graceful or not self.ready:
            self.process.kill()
        with contextlib.suppress(OSError):
            self.conn.send(None)

    def join(self, deadline: float) -> None:
        """Waits for the process until `deadline` (time.monotonic()), then kills it."""
        self.process.join(max(0.0, deadline - time.monotonic()))
        if self.process.is_alive():
            self.process.kill()
            self.process.join()

    def close(self) -> None:
        """Closes its pipe and its segments."""
        self.conn.close()
        self.shared.close()
