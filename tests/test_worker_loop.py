"""A worker's loop: pipelined, a server's phases of consecutive mini-batches run side by
side, and the answers are the same, in the same order, as served one after another."""

from __future__ import annotations

import json
import queue
import threading

import fake_servers
import faulty_servers
import pytest
import slow_servers
from helpers import make_model, random_records
from pools import expected, pids, pool_of, run

from o2v_batch.execution import segments
from o2v_batch.execution.inference import Server
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import Done, Failed, ServeRequest, ServingOptions, WorkerSpec
from o2v_batch.execution.recovery import Recovery
from o2v_batch.execution.worker_loop import (
    PIPELINE_DEPTH,
    STAGE_BROKE,
    Endpoint,
    has_phases,
    serve_in_turn,
    serve_pipelined,
)
from o2v_batch.serve.worker import InvocationServer, create_server

S = 0.1  # seconds a slow phase takes
JSONL = "application/jsonlines"


class Pipe(list):
    """The worker's end of its pipe, keeping what is sent."""

    def send(self, message) -> None:
        self.append(message)


def serve_here(loop, batches: list[list[bytes]], model_dir, server=None, content_types=None):
    """Runs a worker's loop in this process over `batches`, then the stop: its answers."""
    server = server or fake_servers.Phased(str(model_dir), "cpu", ServingOptions(), 1)
    requests: queue.SimpleQueue = queue.SimpleQueue()
    for task_id, records in enumerate(batches):
        content_type = content_types[task_id] if content_types else JSONL
        positions = list(range(len(records)))
        requests.put(ServeRequest(task_id, positions, records, content_type, JSONL))
    requests.put(None)
    pipe = Pipe()
    loop(server, requests, Endpoint(pipe, threading.Lock(), [], segments.Responses([])))
    return list(pipe)


def payloads(answers: list[Done | Failed]) -> dict[int, bytes | str]:
    return {
        a.task_id: a.result.payload if isinstance(a, Done) else f"failed: {a.reason}"
        for a in answers
    }


# -- the loop, in this process --------------------------------------------------


def test_the_stop_comes_after_every_answer_asked_before_it(tmp_path):
    batches = [[b"prepare:0.02", b"predict:0.05", f"rec-{i}".encode()] for i in range(8)]
    answers = serve_here(serve_pipelined, batches, tmp_path)
    assert [a.task_id for a in answers] == list(range(8))
    assert payloads(answers) == expected(batches)


@pytest.mark.parametrize("phase", ["prepare", "predict", "finish"])
def test_a_phase_that_raises_fails_its_mini_batch_alone(tmp_path, phase):
    batches = [[f"rec-{i}".encode()] for i in range(5)]
    batches[2].append(f"{phase}:fail".encode())
    answers = serve_here(serve_pipelined, batches, tmp_path)
    assert [a.task_id for a in answers] == list(range(5))
    assert payloads(answers) == {
        **expected(batches),
        2: f"failed: RuntimeError: {phase} broke",
    }
    assert payloads(answers) == payloads(serve_here(serve_in_turn, batches, tmp_path))


def test_answers_keep_their_order_whatever_each_phase_takes(tmp_path):
    batches = [
        [f"prepare:0.0{i % 3}".encode(), f"predict:0.0{(i * 7) % 5}".encode(), b"x"]
        for i in range(20)
    ]
    answers = serve_here(serve_pipelined, batches, tmp_path)
    assert [a.task_id for a in answers] == list(range(20))
    assert payloads(answers) == expected(batches)


def test_a_serve_requests_caps_stay_its_own_when_pipelined(tmp_path):
    """`serve` caps sequence lengths per request: the cap of the mini-batch being prepared
    never reaches the one on the device."""
    server = create_server(str(make_model(tmp_path / "m")), "cpu", ServingOptions(), 1)
    records = [json.dumps(r).encode() for r in random_records(60, seed=3)]
    types = [f"{JSONL};infer_max_seqlens=2,3" if i % 2 else JSONL for i in range(12)]
    answers = serve_here(serve_pipelined, [records] * 12, tmp_path, server, types)
    served = [server.serve(list(range(60)), records, t, JSONL) for t in types]
    assert [a.result for a in answers] == served
    assert served[0].truncated < served[1].truncated


def test_which_servers_run_their_phases_side_by_side():
    def server(cls):
        return cls.__new__(cls)

    class OwnPrepare(fake_servers.Phased):
        def prepare(self, *args):
            return super().prepare(*args)

    assert has_phases(server(Server)) and has_phases(server(InvocationServer))
    assert has_phases(server(fake_servers.Phased)) and has_phases(server(OwnPrepare))
    # Only serve: whole. A serve wrapped below the phases (to slow it, to make it
    # fail) would be skipped by them: whole too.
    assert not has_phases(server(fake_servers.Echo))
    assert not has_phases(server(faulty_servers.AlwaysRaise))
    assert not has_phases(server(slow_servers.Slow))


# -- in the pool's worker processes ----------------------------------------------


def spec(device: str = "cpu", pipelined: bool | None = None) -> WorkerSpec:
    return WorkerSpec("m", device, 1, ServingOptions(), "fake_servers:Phased", pipelined=pipelined)


def test_a_pipelined_worker_holds_a_mini_batch_per_stage():
    assert PIPELINE_DEPTH == 3
    assert WorkerPool([spec("cuda:0")] * 2).capacity == 2 * PIPELINE_DEPTH
    assert WorkerPool([spec("cpu", pipelined=True)], max_concurrent=5).capacity == 5
    # On CPU workers serve one mini-batch after another unless asked: two each, as set.
    assert WorkerPool([spec("cpu")] * 2).capacity == 4
    assert WorkerPool([spec("cuda:0", pipelined=False)], max_concurrent=1).capacity == 1
    assert spec("cuda:1").pipelines and not spec("cpu").pipelines


def phases_side_by_side(log) -> set[tuple[str, str]]:
    """The pairs of phases ("prepare id:1", "predict id:0") that ran at the same time,
    from a fake_servers.Logged worker's log of their starts and ends, in order."""
    running, together = set(), set()
    for line in log.read_text().splitlines():
        phase, event, name = line.split()
        if event == "start":
            together |= {(f"{phase} {name}", other) for other in running}
            together |= {(other, f"{phase} {name}") for other in running}
            running.add(f"{phase} {name}")
        else:
            running.remove(f"{phase} {name}")
    return together


def test_a_pipelined_worker_overlaps_its_phases(tmp_path):
    """Mini-batches whose prepare and predict take a while: pipelined, each one after the
    first is prepared while the one before it runs its predict; one after another, no
    two phases ever run at the same time."""
    n = 4
    batches = [[f"prepare:{S}".encode(), f"predict:{S}".encode(), b"id:%d" % i] for i in range(n)]
    for pipelined in (True, False):
        (tmp_path / "phases").unlink(missing_ok=True)
        with pool_of(tmp_path, "Logged", workers=1, pipelined=pipelined) as pool:
            events = run(pool, batches)
        assert {i: e.result.payload for i, e in events.items()} == expected(batches)
        together = phases_side_by_side(tmp_path / "phases")
        if pipelined:
            for i in range(1, n):
                assert (f"prepare id:{i}", f"predict id:{i - 1}") in together, i
        else:
            assert together == set()


def test_answers_keep_their_order_through_the_pool(tmp_path):
    batches = [
        [f"predict:0.0{(i * 7) % 5}".encode(), *(f"rec-{i}-{j}".encode() for j in range(i % 4))]
        for i in range(30)
    ]
    with pool_of(tmp_path, "Phased", pipelined=True) as pool:
        events = run(pool, batches)  # the pool asserts that each worker answers in order
    assert {i: e.result.payload for i, e in events.items()} == expected(batches)


def test_a_failing_phase_fails_its_task_alone_through_the_pool(tmp_path):
    batches = [[f"rec-{i}".encode()] for i in range(9)]
    for i, phase in ((1, "prepare"), (4, "predict"), (7, "finish")):
        batches[i].append(f"{phase}:fail".encode())
    recoveries: list[Recovery] = []
    with pool_of(
        tmp_path, "Phased", workers=1, pipelined=True, max_retries=0, on_recovery=recoveries.append
    ) as pool:
        [pid] = pids()
        events = run(pool, batches)
        assert pids() == [pid]  # the worker that failed the tasks serves on
    assert recoveries == []
    failed = {i: e.reason for i, e in events.items() if isinstance(e, Failed)}
    assert failed == {
        i: f"the worker raised RuntimeError: {phase} broke; gave up after 1 attempts"
        for i, phase in ((1, "prepare"), (4, "predict"), (7, "finish"))
    }
    done = {i: e.result.payload for i, e in events.items() if isinstance(e, Done)}
    assert done == {i: p for i, p in expected(batches).items() if i not in failed}


@pytest.mark.parametrize("phase", ["prepare", "predict", "finish"])
def test_a_broken_stage_ends_its_worker_and_the_pool_carries_on(tmp_path, phase):
    """A stage that breaks never leaves the pool waiting: the worker exits, and a new one
    serves what it held."""
    batches = [[f"rec-{i}".encode()] for i in range(8)]
    batches[3].append(f"{phase}:break".encode())
    recoveries: list[Recovery] = []
    with pool_of(
        tmp_path, "Phased", workers=1, pipelined=True, on_recovery=recoveries.append
    ) as pool:
        [pid] = pids()
        events = run(pool, batches)
        assert pids() != [pid]
    assert (tmp_path / "broke").exists()
    assert {i: e.result.payload for i, e in events.items()} == expected(batches)
    [recovery] = recoveries
    assert recovery.restarted
    assert recovery.reason.endswith(f"exited with status {STAGE_BROKE}")
