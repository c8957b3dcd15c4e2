"""A worker pool of tests' fake servers, run to the end: shared by the pool's tests."""

from __future__ import annotations

import time

import psutil

from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import Done, Failed, ServingOptions, WorkerSpec


def pool_of(tmp_path, factory, workers=2, **kwargs) -> WorkerPool:
    spec = WorkerSpec(str(tmp_path), "cpu", 1, ServingOptions(), f"fake_servers:{factory}")
    return WorkerPool([spec] * workers, **kwargs)


def run(
    pool: WorkerPool, batches: list[list[bytes]], deadline: float = 60.0
) -> dict[int, Done | Failed]:
    events: dict[int, Done | Failed] = {}
    todo = list(enumerate(batches))
    end = time.monotonic() + deadline
    while len(events) < len(batches):
        assert time.monotonic() < end, "the pool stopped answering"
        while todo and pool.has_room():
            task_id, records = todo.pop(0)
            pool.submit(
                task_id,
                list(range(len(records))),
                records,
                "application/jsonlines",
                "application/jsonlines",
            )
        for event in pool.poll(0.5):
            assert event.task_id not in events, "every task is answered once"
            events[event.task_id] = event
    return events


def pids() -> list[int]:
    """The worker processes running under this process, a pool's and spares alike, as
    the system lists them (an exited one waiting to be collected is not running)."""
    this = psutil.Process()
    deadline = time.monotonic() + 10
    while True:
        workers, forked = [], False
        for child in this.children():
            try:
                status, command = child.status(), child.cmdline()
            except psutil.NoSuchProcess:
                continue
            if status == psutil.STATUS_ZOMBIE:
                continue
            # One just forked runs this process's command, then none, until its
            # interpreter starts.
            forked |= command in ([], this.cmdline())
            if "spawn_main" in " ".join(command):
                workers.append(child.pid)
        if not forked or time.monotonic() > deadline:
            return sorted(workers)
        time.sleep(0.01)


def expected(batches: list[list[bytes]]) -> dict[int, bytes]:
    return {i: b"".join(r.upper() + b"\n" for r in b) for i, b in enumerate(batches)}
