"""A worker process: its start-up (start_server, shared with Ray actors), its reader and
its loop of mini-batches (worker_loop.py), Spares, worker processes started before their
model is known, and how one ended (its exit, the kernel's OOM killer, an interpreter
that could not start). Nothing here imports torch: the factory's module does, in the worker.
"""

from __future__ import annotations

import contextlib
import importlib
import multiprocessing as mp
import os
import queue
import signal
import subprocess
import threading
from collections.abc import Iterator
from multiprocessing import spawn
from multiprocessing.connection import Connection
from typing import Any

from o2v_batch.errors import describe
from o2v_batch.execution import allocator, segments, worker_loop
from o2v_batch.execution.protocol import (
    DEFAULT_FACTORY,
    Fatal,
    Ready,
    Release,
    Started,
    WorkerSpec,
    WriteAt,
)
from o2v_batch.model.devices import worker_device

# How long the interpreter of a worker that could not start may take to show why.
PROBE_TIMEOUT_S = 30.0
# The last lines of its stderr that a start-up failure quotes.
STDERR_LINES = 3
# A "module:function" every worker of this process builds its server with instead of
# the product's: tests' servers that hang, crash or fail to load. Private, set by the
# tests' fixtures; None: the product's own.
_replaced_factory: str | None = None


# Whether this process's workers overlap their stages (protocol.WorkerSpec.pipelined):
# None, GPU workers do. Private, set by the tests' fixtures to run the stages on CPU.
_pipelined: bool | None = None


def server_factory(default: str = DEFAULT_FACTORY) -> str:
    """The factory a WorkerSpec names: `default` (the caller's server), unless replaced."""
    return _replaced_factory or default


def pipelining() -> bool | None:
    """Whether a WorkerSpec's worker overlaps its stages: None, as its device says."""
    return _pipelined


def start_server(spec: WorkerSpec) -> Any:
    """Builds a worker's server: the one start-up path of pool workers and Ray actors."""
    _prepare_imports()
    device = worker_device(spec.device)
    module, _, name = spec.factory.partition(":")
    factory = getattr(importlib.import_module(module), name)
    return factory(spec.model_dir, device, spec.options, spec.threads)


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
    except (EOFError, OSError):
        os._exit(0)
    try:
        server = start_server(spec)
    except Exception as exc:  # reported as plain text: the parent makes it the job's error
        conn.send(Fatal(describe(exc)))
        return
    conn.send(Ready(os.getpid()))
    requests: queue.SimpleQueue = queue.SimpleQueue()
    endpoint = worker_loop.Endpoint(conn, threading.Lock(), requests_in, responses)
    reader = threading.Thread(
        target=_receive, args=(conn, requests, responses, endpoint.sending), daemon=True
    )
    reader.start()
    pipelined = spec.pipelines and worker_loop.has_phases(server)
    loop = worker_loop.serve_pipelined if pipelined else worker_loop.serve_in_turn
    loop(server, requests, endpoint)
    reader.join()  # writes asked for before the stop are done
    # Every answer is sent: skip the interpreter's teardown (torch's takes most of a
    # second), which the whole command would otherwise wait for.
    os._exit(0)


def _receive(
    conn: Connection,
    requests: queue.SimpleQueue,
    responses: segments.Responses,
    sending: threading.Lock,
) -> None:
    """The worker's reader: requests queue up for its loop; segments come back, and
    responses are written into outputs, at once."""
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
    with _stop_signals_held():
        process.start()
    child.close()
    return process, parent


@contextlib.contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait until the block ends (in the main thread, where their
    handlers run): a job stopped while a worker is being launched would otherwise
    leave it without its start-up data, and it would print an EOFError traceback. A
    signal ignored stays ignored, so that the worker inherits that too."""
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

    def __init__(self, factory: str, count: int):
        ctx = mp.get_context("spawn")
        self._factory = factory
        self._started = [start_process(ctx, factory) for _ in range(count)]

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


# -- how a worker process ended -------------------------------------------


def exit_reason(code: int | None, oom_killed: bool = False) -> str:
    """How a worker process ended, as the end of a sentence naming it."""
    if code is None:
        return "stopped answering"
    if code < 0:
        name = signal.Signals(-code).name
        cause = " (out of memory: the kernel's OOM killer)" if oom_killed else ""
        return f"was killed by {name}{cause}"
    return f"exited with status {code}"


# Where this process's cgroup counts the processes the kernel's OOM killer killed in it.
_OOM_COUNTERS = {
    "": ("/sys/fs/cgroup", "memory.events"),  # cgroup v2: the line "0::<path>"
    "memory": ("/sys/fs/cgroup/memory", "memory.oom_control"),  # v1's memory controller
}


def oom_kills() -> int | None:
    """How many processes of this process's cgroup (its workers' too) the kernel's OOM
    killer has killed, or None where no cgroup counts them or they cannot be read."""
    for path in _oom_counter_files():
        count = _oom_kill_count(path)
        if count is not None:
            return count
    return None


def _oom_counter_files() -> list[str]:
    try:
        with open("/proc/self/cgroup") as lines:
            cgroups = [line.rstrip("\n").split(":", 2) for line in lines]
    except OSError:
        return []
    files = []
    for _, controllers, path in (cgroup for cgroup in cgroups if len(cgroup) == 3):
        for controller in controllers.split(","):
            if controller in _OOM_COUNTERS:
                root, name = _OOM_COUNTERS[controller]
                files.append(f"{root}{path.rstrip('/')}/{name}")
    return files


def _oom_kill_count(path: str) -> int | None:
    try:
        with open(path) as counters:
            for line in counters:
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
    except (OSError, ValueError):
        pass
    return None


def oom_killed_since(before: int | None) -> bool:
    """The OOM killer has killed in this cgroup since it counted `before` (from oom_kills)."""
    now = oom_kills()
    return now is not None and before is not None and now > before


def start_failure(code: int | None) -> str:
    """Why a worker ended before its own code ran. Its interpreter (the one
    multiprocessing spawns) is run once more with its output captured, for the exec
    error or the last lines it wrote; when that one runs fine, the worker's exit says it."""
    executable = os.fsdecode(spawn.get_executable())
    try:
        probe = subprocess.run(
            [executable, "-c", "import multiprocessing.spawn"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=PROBE_TIMEOUT_S,
        )
    except OSError as exc:
        return f"cannot run {executable}: {exc.strerror or exc}"
    except subprocess.TimeoutExpired:
        return exit_reason(code)
    if probe.returncode == 0:
        return exit_reason(code)
    return f"{executable} {exit_reason(probe.returncode)}{_last_lines(probe.stderr)}"


def _last_lines(stderr: bytes) -> str:
    lines = [line.strip() for line in stderr.decode(errors="replace").splitlines()]
    last = [line for line in lines if line][-STDERR_LINES:]
    return f": {' | '.join(last)}" if last else ""
