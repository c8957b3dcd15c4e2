"""Which processes of a test are still there. One that has exited is gone even while
it waits, a zombie, for a parent that has not collected it (PID 1 in some containers);
and a helper such as multiprocessing's resource tracker ends a moment after its parent."""

from __future__ import annotations

import signal
import time

import psutil


def default_sigint() -> None:
    """A `preexec_fn` that gives a child the default SIGINT handler: one started from
    `nohup ... &` inherits an ignored SIGINT and keeps it, so a test that stops its
    child with SIGINT (Ctrl-C) would wait for nothing."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def alive(processes: list[psutil.Process], within: float = 10.0) -> list[psutil.Process]:
    """The processes still running after up to `within` seconds of waiting for them."""
    deadline = time.monotonic() + within
    while True:
        running = [p for p in processes if _running(p)]
        if not running or time.monotonic() > deadline:
            return running
        time.sleep(0.05)


def _running(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
