"""A worker pool of tests' fake servers, run to the end: shared by the pool's tests."""

from __future__ import annotations

import time

from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import Done, Failed, ServingOptions, WorkerSpec


def pool_of(tmp_path, factory, workers=2, pipelined=None, **kwargs) -> WorkerPool:
    spec = WorkerSpec(
        str(tmp_path), "cpu", 1, ServingOptions(), f"fake_servers:{factory}", pipelined=pipelined
    )
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


def pids(pool: WorkerPool) -> list[int]:
    return [w.process.pid for w in pool._workers]


def expected(batches: list[list[bytes]]) -> dict[int, bytes]:
    return {i: b"".join(r.upper() + b"\n" for r in b) for i, b in enumerate(batches)}
