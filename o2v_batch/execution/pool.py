"""The worker pool: worker processes on the devices (on GPUs, host workers feeding
a device process per GPU; on CPU, whole workers), bounded mini-batches in flight, plain-data results, and dead or hung
worker detection with retries. The workers' side is worker.py. The pool's parts:
its workers as a whole (crew.py), each as the parent holds it (handle.py), and
its bookkeeping of retries (recovery.py).

Nothing here imports torch: workers are spawned, build their server themselves
(the factory sets torch's threads) and exchange only bytes and plain data.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from o2v_batch.errors import WorkerError
from o2v_batch.execution import segments
from o2v_batch.execution.crew import Crew
from o2v_batch.execution.exits import start_failure
from o2v_batch.execution.handle import Task, WorkerHandle
from o2v_batch.execution.protocol import (
    DEVICE,
    DEVICE_LOST,
    HOST,
    Done,
    Failed,
    ServeRequest,
    WorkerSpec,
)
from o2v_batch.execution.recovery import Recovery, Retries
from o2v_batch.execution.worker import Spares

# How long a host worker that lost its device process waits for that process's end
# to be seen, before the host worker's successor is linked.
DEVICE_GONE_S = 5.0


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
        # Each worker gets a request segment per mini-batch it may hold, and puts large
        # responses in segments of its own (segments.py): a few more than it may hold,
        # as the caller keeps some until written.
        shared = shared_memory and segments.SUPPORTED
        counts = (max_concurrent, max_concurrent + 2) if shared else (0, 0)
        self._workers = Crew(specs, spares, counts)
        self.max_concurrent = max_concurrent
        self.invocation_timeout = invocation_timeout
        # Waiting mini-batches, results for the next poll; told of every restart and retry.
        self._retries = Retries(max_retries, on_recovery)

    @property
    def max_retries(self) -> int:
        return self._retries.max_retries

    # lifecycle

    def __enter__(self) -> WorkerPool:
        self._workers.start()
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # After an error or an interrupt nothing the workers hold is wanted: stop them now.
        self.close(graceful=exc_type is None)

    def close(self, graceful: bool = True) -> None:
        self._workers.close(graceful)

    # work

    @property
    def takers(self) -> int:
        """Workers that take mini-batches (not a GPU's device process)."""
        return sum(spec.takes_mini_batches for spec in self._workers.specs)

    @property
    def capacity(self) -> int:
        return self.takers * self.max_concurrent

    def in_flight(self) -> int:
        return self._workers.in_flight() + len(self._retries.waiting)

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
        self._retries.waiting.append(Task(task_id, request))
        self._dispatch()

    def wait_ready(self) -> None:
        """Returns once every worker has loaded its model; raises as poll does when one
        cannot (WorkerError), before any mini-batch is asked for."""
        assert not self.in_flight(), "wait_ready is for a pool that holds nothing yet"
        while not all(w.ready for w in self._workers):
            self.poll(0.1)

    def poll(self, timeout: float) -> list[Done | Failed]:
        """Waits up to `timeout` for results; detects dead and hung workers meanwhile.
        A payload in a worker's segment comes as a SharedPayload: its release hands
        the segment back (on the next poll), from any thread."""
        self._dispatch()
        if not self._retries.events:
            for w, handle in self._workers.wait(timeout, self.invocation_timeout):
                if w in self._workers:
                    self._service(w, handle)
            self._check_hung()
            self._dispatch()
        events, self._retries.events = self._retries.events, []
        return events

    def _dispatch(self) -> None:
        # Segments handed back first, so that a worker never lacks what is free.
        self._workers.give_back(self._died)
        waiting = self._retries.waiting
        while waiting:
            w = self._workers.least_busy(self.max_concurrent)
            if w is None:
                return
            try:
                w.assign(waiting.popleft())
            except OSError:  # it died since the last poll: its exit says how
                self._died(w)

    def _service(self, w: WorkerHandle, handle) -> None:
        if handle is w.process.sentinel and not w.conn.poll():
            self._died(w)
            return
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            self._died(w)
            return
        answer = w.note(message)
        if answer is None:
            return
        task = w.answered(answer.task_id)
        if isinstance(answer, Done):
            w.take_payload(answer.result, self._workers.handed.put)
            self._retries.events.append(answer)
        else:
            self._retries.raised(task, answer.reason)

    # faults

    def _died(self, w: WorkerHandle) -> None:
        w.process.join(1.0)
        if not w.started:  # another would fail alike: the job cannot run
            raise WorkerError(
                f"worker {w.index} could not start: {start_failure(w.process.exitcode)}"
            )
        self._lost(w, w.exit_reason())

    def _check_hung(self) -> None:
        for w in self._workers.overdue(self.invocation_timeout):
            if w not in self._workers:  # lost with a device process before it, this pass
                continue
            # A host worker's mini-batch hangs where its forward pass runs: its device
            # process goes too (its other host workers' mini-batches are retried), unless
            # it is a new one, still loading, that took a hung one's place this pass.
            device = self._workers.device_process(w.spec.device) if w.spec.role == HOST else None
            for process in (w.process, device.process if device and device.ready else None):
                if process is not None:
                    process.kill()
                    process.join()
            self._lost(w, f"timed out after {self.invocation_timeout:g} s (--invocation-timeout)")

    def _lost(self, w: WorkerHandle, reason: str) -> None:
        """A worker died or hung: replace it and retry what it held. A host worker's
        device process, if gone too, is replaced first, so the new one links to its
        successor."""
        if not w.ready:
            self._retries.loading_failed(w.spec.device, reason)
        self._workers.remove(w)
        device = self._workers.device_process(w.spec.device) if w.spec.role == HOST else None
        if device is not None:
            if w.process.exitcode == DEVICE_LOST:  # it is on its way out, if not gone yet
                device.process.join(DEVICE_GONE_S)
            if not device.process.is_alive():
                self._died(device)
        name = "device process" if w.spec.role == DEVICE else "worker"
        what = f"{name} {w.process.pid} {reason}" + ("" if w.ready else " while loading the model")
        recovery = self._retries.lost(w.in_flight, what, name)
        self._workers.replace(w)
        self._retries.tell(recovery)
