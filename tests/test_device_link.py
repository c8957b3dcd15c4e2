"""A GPU's host workers and its device process, run on the CPU: arrays through memory
files, the same bytes as whole workers, host workers that never load torch, and
killed processes or a stopped job that lose nothing."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from faulty_servers import MARKED_ID, MISBEHAVED
from pools import run
from test_engine_local import (
    RECORDS,
    SHARDS,
    alive,
    cpu_ticks,
    finished,
    start,
    stderr_of,
    wait_until,
    worker_pids,
    write_big_job,
)

from o2v_batch.execution import segments
from o2v_batch.execution.buckets import Prepared
from o2v_batch.execution.device_link import ArrayFile, DeviceServer, RemoteForward
from o2v_batch.execution.forward import LocalForward
from o2v_batch.execution.forward_work import Forward
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import (
    DEFAULT_FACTORY,
    DEVICE,
    DEVICE_FACTORY,
    HOST,
    HOST_FACTORY,
    Done,
    Failed,
    ServingOptions,
    WorkerSpec,
)
from o2v_batch.model.tokens import TokenIds

EXAMPLE_MODEL = str(Path(__file__).parents[1] / "examples" / "model")


def test_arrays_travel_through_a_memory_file_as_they_were():
    """Any dtype and shape, None kept in its place, the file grown when a call is larger
    than the last, a dtype changed where asked; the other side reads them from its own
    descriptor."""
    fd = segments.create(1, "test")[0]
    writer, reader = ArrayFile(fd), ArrayFile(os.dup(fd))
    rng = np.random.default_rng(0)
    for size in (3, 5000, 10, 200_000, 0):
        arrays = [
            rng.integers(1, 1000, size, dtype=np.int64),
            None,
            rng.random((size, 7), dtype=np.float32),
            np.arange(size % 5, dtype=np.int32),
        ]
        layout = writer.put(arrays)
        got = reader.get(layout)
        assert got[1] is None
        for want, have in zip(arrays, got, strict=True):
            if want is not None:
                assert have.dtype == want.dtype and have.shape == want.shape
                assert np.array_equal(have, want)
    # Token ids go as int32: the same values in half the bytes.
    ids = rng.integers(1, 3_000_000, 1000, dtype=np.int64)
    (got,) = reader.get(writer.put([ids], [np.int32]))
    assert got.dtype == np.int32 and np.array_equal(got, ids)
    segments.close([fd])


def _records(seed: int, n: int) -> list[bytes]:
    """in0 alone, pairs and in1 alone, mixed; some bad (an id past the vocabulary)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = rng.integers(1, 50, rng.integers(1, 30)).tolist()
        b = rng.integers(1, 50, rng.integers(1, 30)).tolist()
        record = [{"in0": a}, {"in0": a, "in1": b}, {"in1": b}][i % 3]
        if i % 97 == 5:
            record = {"in0": [*a, 10**6]}
        out.append(json.dumps(record).encode())
    return out


def _payloads(events) -> dict[int, bytes]:
    def payload(event) -> bytes:
        got = event.result.payload
        return bytes(got.view) if hasattr(got, "view") else bytes(got)

    return {i: payload(event) for i, event in events.items()}


def _maps_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


def test_host_workers_answer_as_whole_workers_and_never_load_torch():
    """The example model, mixed records under emit-error, mini-batches small and large:
    the same responses byte for byte; the device process loads torch, host workers not."""
    batches = [_records(seed, 300) for seed in range(10)]
    batches += [[b'{"in0": [1, 2]}'] * 5000, [b'{"in0": [3], "in1": [4, 5]}'] * 3000]
    options = ServingOptions(on_bad_record="emit-error")
    whole = [WorkerSpec(EXAMPLE_MODEL, "cpu", 1, options, DEFAULT_FACTORY)] * 2
    with WorkerPool(whole, shared_memory=True) as pool:
        expected = _payloads(run(pool, batches))
    split = [WorkerSpec(EXAMPLE_MODEL, "cpu", 1, options, DEVICE_FACTORY, role=DEVICE)]
    split += [WorkerSpec(EXAMPLE_MODEL, "cpu", 1, options, HOST_FACTORY, role=HOST)] * 2
    with WorkerPool(split, shared_memory=True) as pool:
        assert pool.capacity == 2 * pool.max_concurrent  # the device process takes none
        got = _payloads(run(pool, batches))
        roles = {w.spec.role: w.process.pid for w in pool._workers}
        assert _maps_torch(roles[DEVICE]) and not _maps_torch(roles[HOST])
    assert got == expected
    assert b'"error"' in got[0] and b'"scores"' in got[0] and b'"embeddings"' in got[0]


def test_a_mini_batch_hung_in_the_device_process_is_retried_on_a_new_one(tmp_path):
    """A host worker's overdue mini-batch: the host worker and its device process are
    replaced (the forward pass is where it hung), and every mini-batch is answered as
    whole workers answer it."""
    model = shutil.copytree(EXAMPLE_MODEL, tmp_path / "model")
    batches = [_records(seed, 200) for seed in range(6)]
    batches[3] = [*batches[3][:50], json.dumps({"in0": [MARKED_ID, 7]}).encode()]
    options = ServingOptions(on_bad_record="emit-error")
    whole = [WorkerSpec(str(model), "cpu", 1, options, DEFAULT_FACTORY)]
    with WorkerPool(whole, shared_memory=True) as pool:
        expected = _payloads(run(pool, batches))
    told = []
    split = [
        WorkerSpec(str(model), "cpu", 1, options, "faulty_servers:hang_once_device", role=DEVICE),
        *[WorkerSpec(str(model), "cpu", 1, options, HOST_FACTORY, role=HOST)] * 2,
    ]
    # Both host workers' mini-batches wait behind the hung one: both go overdue.
    with WorkerPool(split, invocation_timeout=3, on_recovery=told.append) as pool:
        got = _payloads(run(pool, batches, deadline=120))
    assert got == expected
    assert (model / MISBEHAVED).exists()  # it did hang
    reasons = [r.reason for r in told]
    assert any("timed out after 3 s" in r for r in reasons), reasons
    assert any(r.startswith("device process") for r in reasons), reasons


def test_a_forward_pass_failing_in_the_device_process_fails_its_mini_batch_alone(tmp_path):
    """The device process's error comes back as the worker's, its mini-batch is retried
    and then fails; every other mini-batch is answered, the processes kept."""
    batches = [_records(seed, 100) for seed in range(5)]
    batches[2] = [json.dumps({"in0": [MARKED_ID]}).encode()]
    options = ServingOptions(on_bad_record="emit-error")  # every mini-batch is forwarded
    split = [
        WorkerSpec(EXAMPLE_MODEL, "cpu", 1, options, "faulty_servers:raising_device", role=DEVICE),
        WorkerSpec(EXAMPLE_MODEL, "cpu", 1, options, HOST_FACTORY, role=HOST),
    ]
    told = []
    with WorkerPool(split, max_retries=1, on_recovery=told.append) as pool:
        events = run(pool, batches)
    failed = {i: e.reason for i, e in events.items() if isinstance(e, Failed)}
    assert failed == {
        2: "the worker raised RuntimeError: the device broke on a marked record; "
        "gave up after 2 attempts"
    }
    assert all(isinstance(e, Done) for i, e in events.items() if i != 2)
    assert [r.restarted for r in told] == [False]  # one retry, no process lost


def test_a_lost_host_workers_link_and_files_close_in_the_device_process():
    """Host workers killed and replaced, three times: the device process holds no more
    descriptors than before (each link's socket and memory files close with it)."""
    batches = [_records(seed, 100) for seed in range(8)]
    options = ServingOptions(on_bad_record="emit-error")  # every mini-batch is forwarded
    split = [WorkerSpec(EXAMPLE_MODEL, "cpu", 1, options, DEVICE_FACTORY, role=DEVICE)]
    split += [WorkerSpec(EXAMPLE_MODEL, "cpu", 1, options, HOST_FACTORY, role=HOST)] * 2
    with WorkerPool(split, shared_memory=True) as pool:
        expected = _payloads(run(pool, batches))
        device = next(w for w in pool._workers if w.spec.role == DEVICE)
        held = f"/proc/{device.process.pid}/fd"
        before = len(os.listdir(held))
        assert sum(
            "memfd:o2v-batch-forward" in os.readlink(f"{held}/{fd}") for fd in os.listdir(held)
        )
        for _ in range(3):
            host = next(w for w in pool._workers if w.spec.role == HOST)
            os.kill(host.process.pid, signal.SIGKILL)
            assert _payloads(run(pool, batches)) == expected
        wait_until(lambda: len(os.listdir(held)) <= before, 10, "the links to close")
        assert device.process.is_alive()


# -- whole jobs (test_engine_local's: eight shards, the reference from whole workers) --

# The command, its workers split into host workers and a device process on CPU.
SPLIT = (
    "-c",
    "from o2v_batch.execution import worker; worker._split = True; "
    "from o2v_batch.cli import main; main(prog_name='o2v-batch')",
)


@pytest.fixture(scope="module")
def engine_job(tmp_path_factory) -> Path:
    """test_engine_local's job: eight shards, the model, `reference/` from whole workers."""
    return write_big_job(tmp_path_factory.mktemp("split-job"))


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.out"))}


def roles(pid: int) -> tuple[int, list[int]]:
    """The job's device process and host workers, told apart by what they load."""
    workers = worker_pids(pid)
    device = [w for w in workers if _maps_torch(w)]
    assert len(device) == 1 and len(workers) == 3, workers
    return device[0], [w for w in workers if w != device[0]]


@pytest.mark.slow
@pytest.mark.parametrize("victim", [DEVICE, HOST])
def test_a_killed_device_process_or_host_worker_loses_nothing(engine_job, tmp_path, victim):
    """kill -9 of the device process: it is replaced, its host workers too (they exit
    when their link closes) and what they held is retried; of a host worker: it alone.
    The outputs are those of whole workers, byte for byte."""
    out = tmp_path / "out"
    process = start(engine_job, out, program=SPLIT)
    try:
        wait_until(lambda: finished(out), 120, "the first output shard")
        device, hosts = roles(process.pid)
        pid = device if victim == DEVICE else max(hosts, key=cpu_ticks)
        os.kill(pid, signal.SIGKILL)
        assert process.wait(timeout=300) == 0, stderr_of(out)
    finally:
        process.kill()
    assert not alive(pid)
    assert outputs(out) == outputs(engine_job / "reference")
    assert len(outputs(out)) == SHARDS
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["records_in"] == summary["records_out"] == SHARDS * RECORDS
    if victim == DEVICE:
        assert f"device process {pid} was killed by SIGKILL" in stderr_of(out)
        assert summary["worker_restarts"] >= 1
    else:
        assert summary["worker_restarts"] == 1


@pytest.mark.slow
def test_sigterm_stops_a_split_job_cleanly_and_resume_finishes_it(engine_job, tmp_path):
    out = tmp_path / "out"
    process = start(engine_job, out, program=SPLIT)
    try:
        wait_until(lambda: finished(out), 120, "the first output shard")
        workers = worker_pids(process.pid)
        process.send_signal(signal.SIGTERM)
        code = process.wait(timeout=60)
    finally:
        process.kill()
    assert code == 143, stderr_of(out)
    done = finished(out)
    assert 0 < len(done) < SHARDS
    for name in done:
        assert (out / name).read_bytes() == (engine_job / "reference" / name).read_bytes()
    assert [p for p in out.rglob("*") if p.name.startswith(".")] == []
    wait_until(lambda: not any(map(alive, workers)), 5, f"workers {workers} to exit")
    assert start(engine_job, out, "--resume", program=SPLIT).wait(timeout=300) == 0, stderr_of(out)
    assert outputs(out) == outputs(engine_job / "reference")


def test_the_host_worker_cuts_and_pads_its_calls_with_the_device_planner():
    """The device process sends its loop's planner over a new link first; the host
    worker's calls reach its forward cut into those device batches and padded, and
    come back as the same forward gives them for the ids themselves."""
    forward = LocalForward.load(EXAMPLE_MODEL, "cpu", ServingOptions())
    received = []

    class Recorded:
        hp, planner = forward.hp, forward.planner

        def __call__(self, work):
            received.append(work.ids)
            return forward(work)

    device_end, host_end = socket.socketpair()
    DeviceServer([Recorded()]).attach(device_end.detach())
    remote = RemoteForward(EXAMPLE_MODEL, host_end.detach())
    rng = np.random.default_rng(3)
    for n in (500, 7):
        ids = [
            TokenIds(rng.integers(1, 300, int(lengths.sum())), lengths)
            for lengths in (rng.integers(1, 60, n), rng.integers(1, 60, n))
        ]
        pairs = (rng.permutation(n)[: n // 2], rng.permutation(n)[: n // 2])
        work = Forward(ids, pairs, (True, False))
        got, want = remote(work), forward(work)
        np.testing.assert_array_equal(got.scores, want.scores)
        np.testing.assert_array_equal(got.embeddings[0], want.embeddings[0])
        assert got.embeddings[1] is None and want.embeddings[1] is None
        for encoder, prepared in enumerate(received[-1]):
            assert isinstance(prepared, Prepared)
            expected = forward.planner.prepare(ids[encoder], encoder)
            for name in ("tokens", "lengths", "order", "shapes"):
                assert np.array_equal(getattr(prepared, name), getattr(expected, name))
    assert remote.planner == forward.planner
