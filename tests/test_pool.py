from __future__ import annotations

import os
import signal
import subprocess
import sys

import psutil
import pytest
from pools import expected, pids, pool_of, run
from processes import alive

from o2v_batch.errors import WorkerError
from o2v_batch.execution.planning import MIN_BYTES_PER_WORKER, plan_workers
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import (
    DEVICE,
    HOST,
    WHOLE,
    Done,
    Failed,
    ServingOptions,
    WorkerSpec,
)
from o2v_batch.execution.recovery import Recovery
from o2v_batch.execution.worker import Spares

BATCHES = [[f"rec-{i}-{j}".encode() for j in range(i % 5 + 1)] for i in range(40)]


def test_every_batch_answered_once_with_bounded_in_flight(tmp_path):
    with pool_of(tmp_path, "Echo", max_concurrent=2) as pool:
        assert pool.capacity == 4
        events = run(pool, BATCHES)
        assert pool.in_flight() == 0
    assert {i: e.result.payload for i, e in events.items()} == expected(BATCHES)


@pytest.mark.parametrize("factory", ["CrashOnce", "HangOnce"])
def test_dead_or_hung_worker_is_replaced_and_its_batch_retried(tmp_path, factory):
    batches = [*BATCHES[:10], [b"boom"], *BATCHES[10:20]]
    recoveries: list[Recovery] = []
    with pool_of(tmp_path, factory, invocation_timeout=2.0, on_recovery=recoveries.append) as pool:
        before = pids()
        events = run(pool, batches)
        after = pids()
    # One worker replaced: one new process in its place, the other still serving.
    assert [r.restarted for r in recoveries] == [True]
    assert len(set(before) - set(after)) == len(set(after) - set(before)) == 1
    assert all(isinstance(e, Done) for e in events.values())
    assert {i: e.result.payload for i, e in events.items()} == expected(batches)


def test_retries_run_out_and_only_that_batch_fails(tmp_path):
    batches = [BATCHES[0], [b"boom"], BATCHES[2]]
    with pool_of(tmp_path, "AlwaysRaise", workers=1, max_retries=2) as pool:
        events = run(pool, batches)
    assert isinstance(events[1], Failed)
    assert (
        events[1].reason
        == "the worker raised RuntimeError: the model broke; gave up after 3 attempts"
    )
    assert events[0].result.payload == expected(batches)[0]
    assert events[2].result.payload == expected(batches)[2]


def test_worker_killed_from_outside_is_replaced(tmp_path):
    recoveries: list[Recovery] = []
    with pool_of(tmp_path, "Echo", workers=1, on_recovery=recoveries.append) as pool:
        run(pool, BATCHES[:2])
        [pid] = pids()
        os.kill(pid, signal.SIGKILL)
        events = run(pool, BATCHES)
        assert pids() != [pid]
    assert {i: e.result.payload for i, e in events.items()} == expected(BATCHES)
    # A kill by someone else is no sign of the kernel's OOM killer: no guess of one.
    assert [r.reason for r in recoveries] == [f"worker {pid} was killed by SIGKILL"]


def test_a_worker_found_dead_when_sent_work_says_how_it_died(tmp_path):
    recoveries: list[Recovery] = []
    with pool_of(tmp_path, "Echo", workers=1, on_recovery=recoveries.append) as pool:
        run(pool, BATCHES[:1])
        [pid] = pids()
        worker = psutil.Process(pid)
        worker.terminate()
        assert alive([worker]) == []  # gone before the pool looks: sending it work finds out
        events = run(pool, BATCHES[:3])
    assert {i: e.result.payload for i, e in events.items()} == expected(BATCHES[:3])
    assert recoveries[0] == Recovery(f"worker {pid} was killed by SIGTERM", True, 0, 2)


def test_a_worker_that_cannot_load_fails_the_job(tmp_path):
    with (
        pytest.raises(WorkerError, match="cannot load the model on cpu: ValueError: no such model"),
        pool_of(tmp_path, "FailToLoad") as pool,
    ):
        run(pool, BATCHES[:1])


def test_wait_ready_returns_once_every_worker_loaded_or_raises_before_any_work(tmp_path):
    with pool_of(tmp_path, "Echo") as pool:
        assert not any(w.ready for w in pool._workers)  # started, not loaded yet
        pool.wait_ready()
        assert all(w.ready for w in pool._workers)
    with (
        pytest.raises(WorkerError, match="cannot load the model on cpu: ValueError: no such model"),
        pool_of(tmp_path, "FailToLoad") as pool,
    ):
        pool.wait_ready()


def test_close_leaves_no_processes(tmp_path):
    pool = pool_of(tmp_path, "Echo")
    with pool:
        run(pool, BATCHES[:4])
        assert len(pids()) == 2
    assert pids() == []


def test_a_pool_takes_its_workers_from_spares_first(tmp_path):
    """Spares started before the model is known serve as the pool's workers; one left
    unused stops when the spares close, and no process outlives the pool."""
    spec = WorkerSpec(str(tmp_path), "cpu", 1, ServingOptions(), "fake_servers:Echo")
    with Spares([spec.factory] * 3) as spares:
        started = pids()
        assert len(started) == 3
        with WorkerPool([spec] * 2, spares=spares) as pool:
            events = run(pool, BATCHES[:6])
            # No process of its own: its two workers are spares, and the third waits.
            assert pids() == started
        assert {i: e.result.payload for i, e in events.items()} == expected(BATCHES[:6])
        assert len(pids()) == 1
    assert pids() == []


def test_spares_of_another_factory_are_not_taken(tmp_path):
    spec = WorkerSpec(str(tmp_path), "cpu", 1, ServingOptions(), "fake_servers:Echo")
    with Spares(["fake_servers:AlwaysRaise"]) as spares:
        [spare] = pids()
        with WorkerPool([spec], spares=spares) as pool:
            events = run(pool, BATCHES[:2])
            # Not taken: the pool started a worker of its own beside it.
            assert len(pids()) == 2 and spare in pids()
    assert {i: e.result.payload for i, e in events.items()} == expected(BATCHES[:2])


def test_worker_plan_on_cpu():
    """Whole workers, one single-threaded per core (up to 32, then threads each)."""

    def plan(workers, cores):
        return [
            (device, threads)
            for _, device, threads in plan_workers(["cpu"], workers, cpu_count=cores)
        ]

    assert {role for role, _, _ in plan_workers(["cpu"], None, 8)} == {WHOLE}
    assert plan(None, 2) == [("cpu", 1), ("cpu", 1)]
    assert plan(None, 32) == [("cpu", 1)] * 32
    assert plan(None, 128) == [("cpu", 4)] * 32
    assert plan(1, 2) == [("cpu", 2)]
    assert plan(2, 2) == [("cpu", 1), ("cpu", 1)]


def test_worker_plan_on_gpus():
    """A device process per GPU, then host workers (no torch), one per core left by
    default, spread over the GPUs in turn; --workers sets how many host workers."""
    two = ["cuda:0", "cuda:1"]
    devices = [(DEVICE, "cuda:0", 1), (DEVICE, "cuda:1", 1)]
    hosts = [(HOST, "cuda:0", 1), (HOST, "cuda:1", 1), (HOST, "cuda:0", 1)]
    assert (
        plan_workers(two, None, cpu_count=16)
        == devices + [(HOST, "cuda:0", 1), (HOST, "cuda:1", 1)] * 7
    )
    assert plan_workers(two, None, cpu_count=1) == devices + hosts[:2]  # one per GPU
    assert plan_workers(two, 1, cpu_count=16) == [devices[0], (HOST, "cuda:0", 1)]
    assert (
        plan_workers(["cuda:0"], None, cpu_count=16)
        == [(DEVICE, "cuda:0", 1)] + [(HOST, "cuda:0", 1)] * 15
    )
    assert plan_workers(["cuda:0"], None, cpu_count=64)[1:] == [(HOST, "cuda:0", 1)] * 32
    assert plan_workers(two, 3, cpu_count=16) == devices + hosts
    # Tests run the same roles on the CPU.
    assert plan_workers(["cpu"], 2, cpu_count=2, split=True) == [
        (DEVICE, "cpu", 1),
        (HOST, "cpu", 1),
        (HOST, "cpu", 1),
    ]


def test_a_small_input_gets_fewer_workers_by_default():
    """One worker per MIN_BYTES_PER_WORKER of input, at least one, never more than the
    cores give; --workers and an input of unknown size (stdin) keep the full plan."""
    per = MIN_BYTES_PER_WORKER

    def count(input_bytes, workers=None, devices=("cpu",), cores=8):
        plan = plan_workers(list(devices), workers, cpu_count=cores, input_bytes=input_bytes)
        return sum(role != DEVICE for role, _, _ in plan), plan

    assert count(None)[0] == count(100 * per)[0] == 8
    assert count(0)[0] == count(1)[0] == count(per)[0] == 1
    assert count(per + 1)[0] == 2
    assert count(3 * per)[0] == 3
    assert count(100, workers=4)[0] == 4
    # One worker of a small job gets the cores' torch threads.
    assert count(100)[1] == [(WHOLE, "cpu", 8)]
    # On GPUs a small job feeds one device: one device process, one host worker.
    assert count(100, devices=("cuda:0", "cuda:1"), cores=16)[1] == [
        (DEVICE, "cuda:0", 1),
        (HOST, "cuda:0", 1),
    ]
    assert count(3 * per, devices=("cuda:0", "cuda:1"), cores=16)[1] == [
        (DEVICE, "cuda:0", 1),
        (DEVICE, "cuda:1", 1),
        (HOST, "cuda:0", 1),
        (HOST, "cuda:1", 1),
        (HOST, "cuda:0", 1),
    ]


def test_workers_start_without_torch(tmp_path):
    """The pool and a torch-free server never import torch, in the worker or here."""
    with pool_of(tmp_path, "SaysIfTorch", workers=1) as pool:
        events = run(pool, [[b"a", b"b"]])
    assert events[0].result.payload == b"no torch\n" * 2
    code = (
        "import o2v_batch.execution.pool, o2v_batch.execution.planning, "
        "o2v_batch.execution.protocol, sys; print('torch' in sys.modules)"
    )
    assert (
        subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
        == "False\n"
    )
