"""The server's worker pool, driven from one thread: requests in from the HTTP side,
results out to it as asyncio futures.

WorkerPool is not thread-safe, so one thread owns it: it submits the requests waiting
in its intake while the pool has room, polls for results, and settles each request's
future on the server's event loop. Worker restarts and retries are the pool's own, as
in transform.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from o2v_batch.errors import describe
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import BatchResult, Done, Failed, WorkerSpec
from o2v_batch.execution.recovery import Recovery
from o2v_batch.execution.segments import SharedPayload
from o2v_batch.inputs.formats import JSONLINES
from o2v_batch.reporting.messages import recovered
from o2v_batch.reporting.metrics import ServeMetrics
from o2v_batch.serve.invocations import Invocation, bad_record, invocation

# Seconds between two looks at the intake while mini-batches are in flight: a request
# arriving then waits at most this long for its worker.
_BUSY_POLL_S = 0.002
# While idle the thread sleeps on the intake, woken at once by a request.
_IDLE_WAIT_S = 0.1
_WARM_UP = -1  # the task id of the warm-up request
# A real record, served as a request's are: id 1 is in every vocabulary (it has at least
# two ids) and in0 is every model's. Its answer means a worker can serve.
_WARM_UP_REQUEST = invocation(b'{"in0": [1]}\n', JSONLINES, JSONLINES)
STOPPED = "the server stopped before the request was served"


@dataclass(frozen=True)
class Outcome:
    """How a request ended: the worker's result, or why it got none."""

    result: BatchResult | None
    failure: str | None = None


@dataclass
class _Pending:
    invocation: Invocation
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future


class Dispatcher(threading.Thread):
    """Owns the WorkerPool; `ready` is set once a worker has served the warm-up request,
    `warm_up_failure` says why it could not."""

    def __init__(
        self,
        specs: list[WorkerSpec],
        max_concurrent: int,
        max_retries: int,
        invocation_timeout: float,
        log: Callable[[str], None],
        metrics: ServeMetrics,
        on_failure: Callable[[str], None],
        on_ready: Callable[[], None],
    ) -> None:
        super().__init__(name="o2v-dispatcher", daemon=True)
        # Requests and responses travel through shared memory, as in transform: the
        # pipes carry only small messages.
        self._pool = WorkerPool(
            specs,
            max_concurrent,
            max_retries,
            invocation_timeout,
            on_recovery=self._recovered,
            shared_memory=True,
        )
        self.capacity = self._pool.capacity
        self._log = log
        self._on_failure = on_failure  # the pool cannot serve: the server must stop
        self._on_ready = on_ready
        self._intake: queue.SimpleQueue[_Pending] = queue.SimpleQueue()
        self._in_flight: dict[int, _Pending] = {}
        self._ids = itertools.count()
        self._stopping = threading.Event()
        self.ready = threading.Event()
        self.warm_up_failure: str | None = None
        self.failure: str | None = None
        self._metrics = metrics
        metrics.queue_depth.set_function(self._intake.qsize)
        metrics.in_flight.set_function(lambda: len(self._in_flight))
        self._loading_since = 0.0  # when run() started the workers: the load time counts from then

    def submit(self, invocation: Invocation) -> asyncio.Future:
        """Queues a request; its future resolves to an Outcome on the calling loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        if self.failure is not None:
            future.set_result(Outcome(None, self.failure))
        else:
            self._intake.put(_Pending(invocation, loop, future))
        return future

    def stop(self) -> None:
        """Stops the workers; the server has answered its requests (or given up on them)."""
        self._stopping.set()

    def run(self) -> None:
        self._loading_since = time.monotonic()
        try:
            with self._pool as pool:
                warm_up = _WARM_UP_REQUEST
                pool.submit(_WARM_UP, warm_up.positions, warm_up.records, JSONLINES, JSONLINES)
                self._serve(pool)
            self._settle_all(STOPPED)
        except Exception as exc:  # the model cannot load, workers keep dying while loading
            self.failure = describe(exc)
            self._settle_all(self.failure)
            self._on_failure(self.failure)

    def _serve(self, pool: WorkerPool) -> None:
        while not self._stopping.is_set():
            while pool.has_room():
                try:
                    pending = self._intake.get(timeout=0 if pool.in_flight() else _IDLE_WAIT_S)
                except queue.Empty:
                    break
                task_id = next(self._ids)
                self._in_flight[task_id] = pending
                request = pending.invocation
                pool.submit(
                    task_id,
                    request.positions,
                    request.records,
                    request.content_type,
                    request.accept,
                )
            if pool.in_flight():
                for event in pool.poll(_BUSY_POLL_S if pool.has_room() else _IDLE_WAIT_S):
                    self._settled(event)

    def _settled(self, event: Done | Failed) -> None:
        if isinstance(event, Done):
            _own_payload(event.result)
        if event.task_id == _WARM_UP:
            self._warmed_up(event)
            return
        pending = self._in_flight.pop(event.task_id)
        if isinstance(event, Done):
            records = len(pending.invocation.records)
            self._metrics.served(records, bad=event.result.error is not None)
            _settle(pending, Outcome(event.result))
        else:
            _settle(pending, Outcome(None, event.reason))

    def _warmed_up(self, event: Done | Failed) -> None:
        if isinstance(event, Failed):
            self.warm_up_failure = event.reason
        elif event.result.error is not None:
            self.warm_up_failure = bad_record(event.result, JSONLINES)
        else:
            self._metrics.loaded(time.monotonic() - self._loading_since)
            self._on_ready()  # logged before /ping says 200
            self.ready.set()
            return
        self._log(
            f"o2v-batch: the warm-up request failed, so /ping answers 503: {self.warm_up_failure}"
        )

    def _settle_all(self, reason: str) -> None:
        """Every request still waiting ends with `reason`."""
        waiting = list(self._in_flight.values())
        self._in_flight.clear()
        while True:
            try:
                waiting.append(self._intake.get_nowait())
            except queue.Empty:
                break
        for pending in waiting:
            _settle(pending, Outcome(None, reason))

    def _recovered(self, event: Recovery) -> None:
        retried = event.task_id is not None and event.task_id != _WARM_UP
        self._metrics.recovered(event.restarted, retried)
        if event.task_id == _WARM_UP and not event.restarted:
            return  # the warm-up tries again: its failure, if it fails, is logged once
        retry = None
        if retried:
            retry = f"retrying a request (attempt {event.attempt} of {self._pool.max_retries + 1})"
        self._log(recovered(event.reason, event.restarted, retry, event.process))


def _own_payload(result: BatchResult) -> None:
    """A response in a worker's segment becomes bytes of the server's own (one copy, as
    a pipe's would be), and the segment goes back to the worker at once."""
    shared = result.payload
    if isinstance(shared, SharedPayload):
        result.payload = bytes(shared.view)
        shared.release()


def _settle(pending: _Pending, outcome: Outcome) -> None:
    def settle() -> None:
        if not pending.future.done():
            pending.future.set_result(outcome)

    # Once the server has stopped its loop is closed: nobody waits for the answer.
    with contextlib.suppress(RuntimeError):
        pending.loop.call_soon_threadsafe(settle)
