"""A worker process: its start-up (start_server, shared with Ray actors), its reader and
its loop of mini-batches (worker_loop.py), and Spares, worker processes started before
their model is known (how one ended: exits.py). Nothing here imports torch: the
factory's module does, in the worker.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle
from typing import Any

from o2v_batch.errors import describe
from o2v_batch.execution import allocator, segments, worker_loop
from o2v_batch.execution.protocol import (
    DEFAULT_FACTORY,
    DEVICE,
    DEVICE_FACTORY,
    HOST,
    HOST_FACTORY,
    WHOLE,
    Attach,
    Fatal,
    Ready,
    Release,
    Started,
    WorkerSpec,
    WriteAt,
)
from o2v_batch.model.devices import worker_device

# A "module:function" every worker of this process builds its server with instead of
# the product's: tests' servers that hang, crash or fail to load. Private, set by the
# tests' fixtures; None: the product's own.
_replaced_factory: str | None = None


# Whether this process's jobs on CPU run host workers and a device process, as on a GPU
# (planning.plan_workers' split). Private, set by the tests' fixtures.
_split: bool = False

_ROLE_FACTORIES = {HOST: HOST_FACTORY, DEVICE: DEVICE_FACTORY}


def server_factory(default: str = DEFAULT_FACTORY, role: str = WHOLE) -> str:
    """The factory a WorkerSpec of `role` names: a whole worker's is `default` (the
    caller's server) unless replaced; a host worker's and a device process's are theirs."""
    if role != WHOLE:
        return _ROLE_FACTORIES[role]
    return _replaced_factory or default


def splitting() -> bool:
    """Whether jobs on CPU run host workers and a device process (tests only)."""
    return _split


def start_server(spec: WorkerSpec, link: int | None = None) -> Any:
    """Builds a worker's server: the one start-up path of pool workers and Ray actors. A
    host worker's factory also takes its `link` to its device process (device_link.py)."""
    _prepare_imports()
    device = worker_device(spec.device)
    module, _, name = spec.factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    extra = {} if link is None else {"link": link}
    return factory(spec.model_dir, device, spec.options, spec.threads, **extra)


def _prepare_imports() -> None:
    # Spinning OpenMP threads stall whenever the parent or another worker takes the
    # core (measured on 2 cores: 2 threads fell from 160,000 to 7,000 records/s). Read
    # once, when torch loads: so set before the factory's module imports it; malloc too.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    allocator.keep_freed_memory()


def _worker_main(conn: Connection, factory: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when to stop
    try:
        conn.send(Started())  # a loss before this says the worker could not start
    except OSError:
        os._exit(0)
    # The factory's module (torch, for the real server) loads before the worker knows
    # its model: a spare does this while the parent checks the model and lists inputs.
    _prepare_imports()
    with contextlib.suppress(Exception):  # a broken module fails below, in start_server
        importlib.import_module(factory.partition(":")[0])
    try:
        spec = conn.recv()
        if spec is None:  # a spare that was not needed
            os._exit(0)
        requests_in = segments.receive(conn, spec.request_segments)
        responses = segments.Responses(segments.receive(conn, spec.segments))
        link = recv_handle(conn) if spec.role == HOST else None
    except (EOFError, OSError):
        os._exit(0)
    try:
        server = start_server(spec, link)
    except Exception as exc:  # reported as plain text: the parent makes it the job's error
        conn.send(Fatal(describe(exc)))
        return
    conn.send(Ready(os.getpid()))
    requests: queue.SimpleQueue = queue.SimpleQueue()
    endpoint = worker_loop.Endpoint(conn, threading.Lock(), requests_in, responses)
    attach = getattr(server, "attach", None)  # a device process's: its host workers' links
    reader = threading.Thread(
        target=_receive, args=(conn, requests, responses, endpoint.sending, attach), daemon=True
    )
    reader.start()
    worker_loop.serve_in_turn(server, requests, endpoint)
    reader.join()  # writes asked for before the stop are done
    # Every answer is sent: skip the interpreter's teardown (torch's takes most of a
    # second), which the whole command would otherwise wait for.
    os._exit(0)


def _receive(
    conn: Connection,
    requests: queue.SimpleQueue,
    responses: segments.Responses,
    sending: threading.Lock,
    attach: Callable[[int], None] | None = None,
) -> None:
    """The worker's reader: requests queue up for its loop; segments come back, and
    responses are written into outputs, at once; a device process's links come in."""
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            os._exit(0)  # the parent is gone: never linger as an orphan
        if isinstance(message, Release):
            responses.release(message.slot)
        elif isinstance(message, WriteAt):
            wrote = responses.write(message)
            with sending:
                conn.send(wrote)
        elif isinstance(message, Attach) and attach is not None:
            attach(recv_handle(conn))
        else:
            requests.put(message)
            if message is None:
                return


# -- processes started ahead of time ---------------------------------------


def start_process(ctx: Any, factory: str) -> tuple[mp.Process, Connection]:
    """A worker process loading `factory`'s module; it waits for its WorkerSpec."""
    parent, child = ctx.Pipe()
    process = ctx.Process(
        target=_worker_main, args=(child, factory), daemon=True, name="o2v-worker"
    )
    with stop_signals_held():
        process.start()
    child.close()
    return process, parent


@contextlib.contextmanager
def stop_signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block ends (in the main thread, where their
    handlers run), so that a process launched in it is never left without its caller
    knowing it: a job stopped while a worker is being launched would otherwise leave it
    without its start-up data, and it would print an EOFError traceback. A signal
    ignored stays ignored, so that the process inherits that too."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held: list[int] = []
    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        handler = signal.getsignal(signum)
        if handler is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, lambda number, frame: held.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        for signum in held:  # now to the handlers the job set
            os.kill(os.getpid(), signum)


class Spares:
    """Worker processes started before their model is known, so that their slowest
    step (importing torch) overlaps the parent's model check and listing. A WorkerPool
    given them takes them before starting new ones; `close` ends those left unused."""

    def __init__(self, factories: list[str]):
        """A process for each of `factories` (one per worker, in the pool's order)."""
        ctx = mp.get_context("spawn")
        self._started = [(factory, start_process(ctx, factory)) for factory in factories]

    def take(self, factory: str) -> tuple[mp.Process, Connection] | None:
        for i, (loaded, started) in enumerate(self._started):
            if loaded == factory:
                del self._started[i]
                return started
        return None

    def __enter__(self) -> Spares:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Unused spares hold nothing: they stop at once."""
        for _, (process, conn) in self._started:
            process.kill()
            process.join()
            conn.close()
        self._started = []
