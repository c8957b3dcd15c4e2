"""The pool's workers as a whole: one per spec, started (spares taken first), a lost
one's place taken by a new one, waited on together, and all stopped at the end. A GPU's
host workers are linked to its device process as they start (device_link.py).

Nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import queue
import socket
import time
from collections.abc import Callable, Iterator
from multiprocessing.connection import wait
from multiprocessing.reduction import send_handle

from o2v_batch.execution import segments
from o2v_batch.execution.handle import WorkerHandle
from o2v_batch.execution.protocol import DEVICE, HOST, Attach, WorkerSpec
from o2v_batch.execution.worker import Spares

# Stop waiting for a worker that ignores the stop message after this long.
STOP_GRACE_S = 5.0


class Crew:
    """The workers of a pool, and what callers did with their responses in segments."""

    def __init__(self, specs: list[WorkerSpec], spares: Spares | None, counts: tuple[int, int]):
        self._ctx = mp.get_context("spawn")
        self.specs = specs
        self._spares = spares  # processes started early, taken before new ones
        self._counts = counts  # request and response segments per worker
        self.workers: list[WorkerHandle] = []
        # What callers did with responses in segments, from any thread: (worker, a
        # protocol.Release or segments.RemoteWrite).
        self.handed: queue.SimpleQueue = queue.SimpleQueue()

    def __iter__(self) -> Iterator[WorkerHandle]:
        return iter(self.workers)

    def __contains__(self, w: WorkerHandle) -> bool:
        return w in self.workers

    def start(self) -> None:
        """Every spec's worker, in order: device processes come before their host workers."""
        self.workers = []
        for index in range(len(self.specs)):
            self.workers.append(self._start(index))

    def _start(self, index: int) -> WorkerHandle:
        spec = self.specs[index]
        counts = self._counts if spec.takes_mini_batches else (0, 0)
        w = WorkerHandle.start(self._ctx, index, spec, self._spares, counts)
        if spec.role == HOST:
            self._link(w, self.device_process(spec.device))
        return w

    def _link(self, host: WorkerHandle, device: WorkerHandle | None) -> None:
        """A socket pair between a host worker and its device process, an end to each. A
        device process already gone never gets its end: the host worker finds its link
        closed at its first call and exits (protocol.DEVICE_LOST)."""
        ours, theirs = socket.socketpair()
        with ours, theirs, contextlib.suppress(OSError):
            send_handle(host.conn, ours.fileno(), host.process.pid)
            if device is not None:
                device.conn.send(Attach())
                send_handle(device.conn, theirs.fileno(), device.process.pid)

    def device_process(self, device: str) -> WorkerHandle | None:
        """The device process of `device` (None where the job has none)."""
        found = (w for w in self.workers if w.spec.role == DEVICE and w.spec.device == device)
        return next(found, None)

    def remove(self, w: WorkerHandle) -> None:
        """A lost worker leaves: its pipe and segments closed, what it was asked to
        write written here."""
        self.workers.remove(w)
        w.close()
        w.shared.write_here()

    def replace(self, w: WorkerHandle) -> None:
        """A new worker takes the place of `w`, removed."""
        self.workers.append(self._start(w.index))

    def least_busy(self, max_concurrent: int) -> WorkerHandle | None:
        """The ready worker holding the fewest mini-batches, if one holds fewer than
        max_concurrent."""
        ready = [
            w
            for w in self.workers
            if w.ready and w.spec.takes_mini_batches and len(w.in_flight) < max_concurrent
        ]
        return min(ready, key=lambda w: len(w.in_flight)) if ready else None

    def in_flight(self) -> int:
        return sum(len(w.in_flight) for w in self.workers)

    def wait(self, timeout: float, invocation_timeout: float) -> list[tuple[WorkerHandle, object]]:
        """(worker, handle) for each pipe with a message and each process that ended,
        within `timeout` or until a mini-batch is overdue."""
        now = time.monotonic()
        for w in self.workers:
            if w.in_flight:
                timeout = min(timeout, max(0.0, w.head_started + invocation_timeout - now))
        handles = {h: w for w in self.workers for h in (w.conn, w.process.sentinel)}
        return [(handles[handle], handle) for handle in wait(list(handles), timeout=timeout)]

    def overdue(self, invocation_timeout: float) -> list[WorkerHandle]:
        """The workers whose mini-batch took longer than `invocation_timeout`."""
        now = time.monotonic()
        return [
            w for w in self.workers if w.in_flight and now - w.head_started > invocation_timeout
        ]

    def give_back(self, died: Callable[[WorkerHandle], None]) -> None:
        """Tells workers which of their segments callers released, and which responses
        to write into outputs themselves (those of a lost worker the parent writes);
        `died` gets a worker found dead meanwhile."""
        while True:
            try:
                w, message = self.handed.get_nowait()
            except queue.Empty:
                return
            if w not in self.workers:  # a lost worker's segments went with it
                if isinstance(message, segments.RemoteWrite):
                    message.here()
                continue
            try:
                w.pass_on(message)
            except OSError:  # it died since the last poll: its exit says how
                died(w)

    def close(self, graceful: bool) -> None:
        """Stops the workers, device processes last: host workers finish what they hold."""
        for last in (False, True):
            stopping = [w for w in self.workers if (w.spec.role == DEVICE) == last]
            for w in stopping:
                w.stop(graceful)
            deadline = time.monotonic() + STOP_GRACE_S
            for w in stopping:
                w.join(deadline)
                w.close()
        self.workers = []
