"""The worker pool: one process per device (or CPU workers), bounded mini-batches
in flight, plain-data results, and dead or hung worker detection with retries.

Nothing here imports torch: workers are spawned, build their server themselves
(the factory sets torch's threads) and exchange only bytes and plain data.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from o2v_batch.devices import worker_device
from o2v_batch.errors import O2VError, WorkerError
from o2v_batch.protocol import Done, Failed, Fatal, Ready, ServeRequest, WorkerSpec

MAX_CPU_WORKERS = 8
# Stop waiting for a worker that ignores the stop message after this long.
STOP_GRACE_S = 5.0


# -- sizing -----------------------------------------------------------------


def plan_workers(
    devices: list[str], workers: int | None, cpu_count: int | None = None
) -> list[tuple[str, int]]:
    """(device, torch threads) per worker: one per GPU by default; on CPU, cores are shared out."""
    cores = cpu_count or os.cpu_count() or 1
    if devices != ["cpu"]:
        n = workers or len(devices)
        return [(devices[i % len(devices)], max(1, cores // n)) for i in range(n)]
    # One single-threaded worker per core (up to 8, then threads per worker): it keeps
    # every core busy, parsing included, and never leaves torch threads waiting on a
    # core the parent holds (measured: scripts/bench.py).
    n = workers or min(cores, MAX_CPU_WORKERS)
    return [("cpu", max(1, cores // n)) for _ in range(n)]


# -- the worker process ---------------------------------------------------


def start_server(spec: WorkerSpec) -> Any:
    """Builds a worker's server: the one start-up path of pool workers and Ray actors."""
    _prepare_imports()
    device = worker_device(spec.device)
    module, _, name = spec.factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    return factory(spec.model_dir, device, spec.options, spec.threads)


def _prepare_imports() -> None:
    # Spinning OpenMP threads stall whenever the parent or another worker takes the
    # core (measured on 2 cores: 2 threads fell from 160,000 to 7,000 records/s).
    # Read once, when torch loads: so set before the factory's module imports it.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _worker_main(conn: Connection, factory: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    # The factory's module (torch, for the real server) loads before the worker knows
    # its model: a spare does this while the parent checks the model and lists inputs.
    _prepare_imports()
    with contextlib.suppress(Exception):  # a broken module fails below, in start_server
        importlib.import_module(factory.partition(":")[0])
    try:
        spec = conn.recv()
    except (EOFError, OSError):
        os._exit(0)
    if spec is None:  # a spare that was not needed
        os._exit(0)
    try:
        server = start_server(spec)
    except Exception as exc:  # reported as plain text: the parent makes it the job's error
        conn.send(Fatal(describe(exc)))
        return
    conn.send(Ready(os.getpid()))
    requests: queue.SimpleQueue = queue.SimpleQueue()

    def receive() -> None:
        while True:
            try:
                message = conn.recv()
            except (EOFError, OSError):
                os._exit(0)  # the parent is gone: never linger as an orphan
            requests.put(message)
            if message is None:
                return

    threading.Thread(target=receive, daemon=True).start()
    while (request := requests.get()) is not None:
        try:
            result = server.serve(
                request.positions, request.records, request.content_type, request.accept
            )
            conn.send(Done(request.task_id, result))
        except Exception as exc:  # one line in the job's log, not a traceback per retry
            conn.send(Failed(request.task_id, describe(exc)))
    # Every answer is sent: skip the interpreter's teardown (torch's takes most of a
    # second), which the whole command would otherwise wait for.
    os._exit(0)


def describe(exc: BaseException) -> str:
    """An exception as one line of text: our own errors carry their message."""
    return str(exc) if isinstance(exc, O2VError) else f"{type(exc).__name__}: {exc}"


# -- processes started ahead of time ---------------------------------------


def _start_process(ctx: Any, factory: str) -> tuple[mp.Process, Connection]:
    """A worker process loading `factory`'s module; it waits for its WorkerSpec."""
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=_worker_main, args=(child, factory), daemon=True, name="o2v-worker"
    )
    process.start()
    child.close()
    return process, parent


class Spares:
    """Worker processes started before their model is known, so that their slowest
    step (importing torch) overlaps the parent's model check and listing. A WorkerPool
    given them takes them before starting new ones; `close` ends those left unused."""

    def __init__(self, factory: str, count: int):
        ctx = mp.get_context("spawn")
        self._factory = factory
        self._started = [_start_process(ctx, factory) for _ in range(count)]

    def take(self, factory: str) -> tuple[mp.Process, Connection] | None:
        if factory != self._factory or not self._started:
            return None
        return self._started.pop(0)

    def __enter__(self) -> Spares:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unused spares hold nothing: they stop at once."""
        for process, conn in self._started:
            process.kill()
            process.join()
            conn.close()
        self._started = []


# -- the pool, parent side ------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    """The pool got over a fault: it replaced a lost worker, tries a mini-batch again, or both."""

    reason: str  # what went wrong: "worker 4242 was killed by SIGKILL (out of memory?)"
    restarted: bool  # a new worker took the lost one's place
    task_id: int | None = None  # the mini-batch tried again, if any
    attempt: int = 0  # its attempt about to start: 2 is the first retry


@dataclass
class _Task:
    task_id: int
    request: ServeRequest
    attempts: int = 0


@dataclass
class _Worker:
    spec: WorkerSpec
    process: mp.Process
    conn: Connection
    ready: bool = False
    pid: int | None = None
    in_flight: deque = field(default_factory=deque)
    head_started: float = 0.0


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
    ):
        self._ctx = mp.get_context("spawn")
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
        self.restarts = 0
        self._load_failures = 0

    # lifecycle

    def __enter__(self) -> WorkerPool:
        self._workers = [self._spawn(spec) for spec in self._specs]
        return self

    def __exit__(self, exc_type, *exc) -> None:
        # After an error or an interrupt nothing the workers hold is wanted: stop them now.
        self.close(graceful=exc_type is None)

    def _spawn(self, spec: WorkerSpec) -> _Worker:
        started = self._spares.take(spec.factory) if self._spares else None
        process, parent = started or _start_process(self._ctx, spec.factory)
        parent.send(spec)
        return _Worker(spec, process, parent)

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
            w.conn.close()
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
        """Waits up to `timeout` for results; detects dead and hung workers meanwhile."""
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
                w.conn.send(task.request)
            except OSError:
                self._lost(w, "its connection closed")

    def _service(self, w: _Worker, handle) -> None:
        if handle is w.process.sentinel and not w.conn.poll():
            w.process.join()
            self._lost(w, _exit_reason(w.process.exitcode))
            return
        try:
            message = w.conn.recv()
        except (EOFError, OSError):
            w.process.join(1.0)
            self._lost(w, _exit_reason(w.process.exitcode))
            return
        if isinstance(message, Ready):
            w.ready, w.pid = True, message.pid
        elif isinstance(message, Fatal):
            raise WorkerError(f"cannot load the model on {w.spec.device}: {message.reason}")
        else:
            task = w.in_flight.popleft()
            assert task.task_id == message.task_id, "workers answer in order"
            w.head_started = time.monotonic()
            if isinstance(message, Done):
                self._events.append(message)
            else:
                reason = f"the worker raised {message.reason}"
                if self._retry_or_fail(task, reason):
                    self._recovered(Recovery(reason, False, task.task_id, task.attempts + 1))

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
        w.conn.close()
        head, *rest = w.in_flight or [None]
        # Queued tasks it never started go back without using a retry.
        self._retry.extendleft(reversed(rest))
        # Only a ready worker holds tasks: one that was loading has no head.
        what = f"worker {w.process.pid} {reason}" + ("" if w.ready else " while loading the model")
        retried = head is not None and self._retry_or_fail(head, what)
        self.restarts += 1
        self._workers.append(self._spawn(w.spec))
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


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory?)" if name == "SIGKILL" else ""
        return f"was killed by {name}{hint}"
    return f"exited with status {code}"
