"""Responses through shared segments: what a worker puts there is what the parent
reads, a held segment is never overwritten, and no segment outlives its processes."""

from __future__ import annotations

import errno
import gc
import json
import os
import signal
import time

import numpy as np
import pytest
from helpers import make_model, random_records, write_jsonl
from pools import expected, pids, pool_of, run

import o2v_batch
from o2v_batch.config import TransformConfig
from o2v_batch.execution import segments
from o2v_batch.execution.protocol import Release
from o2v_batch.execution.recovery import Recovery
from o2v_batch.execution.segments import MIN_SHARED_BYTES, Responses, SharedPayload, Views
from o2v_batch.inputs.formats import Lines
from o2v_batch.io import local

pytestmark = pytest.mark.skipif(not segments.SUPPORTED, reason="no memory files here")

BIG = [[f"record {i} ".encode() * (MIN_SHARED_BYTES // 8)] for i in range(8)]
SMALL = [[b"small"]]


def _memory_files() -> int:
    """Memory files this process holds open."""
    names = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            names.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return sum(name.startswith("/memfd:o2v-batch") for name in names)


def test_large_responses_come_through_segments_and_small_ones_through_the_pipe(tmp_path):
    batches = [*BIG, *SMALL] * 3
    got, shared = {}, set()
    with pool_of(tmp_path, "Echo", workers=2, shared_memory=True) as pool:
        for task_id, records in enumerate(batches):
            pool.submit(task_id, [0], records, "application/jsonlines", "application/jsonlines")
            while not pool.has_room() or (task_id == len(batches) - 1 and pool.in_flight()):
                for event in pool.poll(0.5):
                    payload = event.result.payload
                    if isinstance(payload, SharedPayload):
                        shared.add(event.task_id)
                        got[event.task_id] = bytes(payload.view)
                        payload.release()
                    else:
                        got[event.task_id] = payload
    assert got == expected(batches)
    assert shared == {i for i, b in enumerate(batches) if b is not SMALL[0]}


def test_a_held_segment_is_never_overwritten_and_the_pipe_takes_over(tmp_path):
    # One worker, one in flight: 3 segments. Six responses held unreleased: three in
    # segments, then the pipe; every one still reads as it was answered.
    with pool_of(tmp_path, "Echo", workers=1, max_concurrent=1, shared_memory=True) as pool:
        held = run(pool, BIG[:6])
        shared = [i for i, e in held.items() if isinstance(e.result.payload, SharedPayload)]
        assert sorted(shared) == [0, 1, 2]
        wanted = expected(BIG)
        for i, event in held.items():
            payload = event.result.payload
            assert bytes(payload.view if i in shared else payload) == wanted[i]
        for event in held.values():
            if isinstance(event.result.payload, SharedPayload):
                event.result.payload.release()
        # Released, the segments serve again.
        again = run(pool, BIG[:3])
        assert all(isinstance(e.result.payload, SharedPayload) for e in again.values())
        assert {i: bytes(e.result.payload.view) for i, e in again.items()} == {
            i: wanted[i] for i in range(3)
        }


def test_a_response_outlives_the_worker_that_wrote_it(tmp_path):
    with pool_of(tmp_path, "Echo", workers=1, shared_memory=True) as pool:
        [kept] = run(pool, BIG[:1]).values()
        [pid] = pids()
        os.kill(pid, signal.SIGKILL)
        later = run(pool, BIG[1:3])
        assert pids() != [pid]
        # The lost worker's segment stays readable until let go; the new one has its own.
        assert bytes(kept.result.payload.view) == expected(BIG)[0]
        kept.result.payload.release()
        assert all(isinstance(e.result.payload, SharedPayload) for e in later.values())
        assert [bytes(e.result.payload.view) for e in later.values()] == [
            expected(BIG)[1],
            expected(BIG)[2],
        ]


def test_no_memory_file_outlives_the_pool(tmp_path):
    gc.collect()
    before = _memory_files()
    with pool_of(tmp_path, "Echo", workers=2, shared_memory=True) as pool:
        events = run(pool, BIG)
        assert _memory_files() > before
    del events
    gc.collect()
    assert _memory_files() == before


def test_a_view_kept_elsewhere_keeps_its_segment_from_reuse():
    fds = segments.create(1)
    try:
        responses, views = Responses(fds), Views(list(fds))
        first = b"a" * MIN_SHARED_BYTES
        placed = responses.place(first)
        told = []
        payload = views.payload(placed, told.append)
        array = np.asarray(payload.view)  # a zero-copy view, kept past the release
        payload.release()
        assert told == []  # not handed back
        assert responses.place(b"b" * MIN_SHARED_BYTES) is None
        assert bytes(array) == first
        # Once nothing views it, a payload hands its segment back.
        views.payload(placed, told.append).release()
        assert told == [Release(placed.slot)]
    finally:
        segments.close(fds)


def _written_elsewhere(pool, payload: SharedPayload, path, offset: int) -> str | None:
    """Hands `payload` to its worker to write at `offset` of `path`; its answer."""
    answers: list[str | None] = []
    payload.write_elsewhere(str(path), offset, answers.append)
    deadline = time.monotonic() + 30
    while not answers:
        assert time.monotonic() < deadline, "no answer to the write"
        pool.poll(0.05)
    return answers[0]


def test_a_worker_writes_its_response_into_an_output_region(tmp_path):
    target = tmp_path / "output"
    target.write_bytes(b"head:")
    with pool_of(tmp_path, "Echo", workers=1, max_concurrent=1, shared_memory=True) as pool:
        [first] = run(pool, BIG[:1]).values()
        assert _written_elsewhere(pool, first.result.payload, target, 5) is None
        # Written, the segment is free again: three responses fit in segments at once.
        again = run(pool, BIG[1:4])
        assert all(isinstance(e.result.payload, SharedPayload) for e in again.values())
    assert target.read_bytes() == b"head:" + expected(BIG)[0]


def test_a_lost_workers_response_is_written_by_the_parent(tmp_path):
    target = tmp_path / "output"
    target.write_bytes(b"")
    with pool_of(tmp_path, "Echo", workers=1, shared_memory=True) as pool:
        [kept] = run(pool, BIG[:1]).values()
        [pid] = pids()
        os.kill(pid, signal.SIGKILL)
        run(pool, BIG[1:2])  # the pool has replaced it
        assert _written_elsewhere(pool, kept.result.payload, target, 0) is None
    assert target.read_bytes() == expected(BIG)[0]


def test_a_write_into_an_output_gone_meanwhile_says_why_and_creates_nothing(tmp_path):
    gone = tmp_path / "aborted.tmp"
    with pool_of(tmp_path, "Echo", workers=1, shared_memory=True) as pool:
        [first] = run(pool, BIG[:1]).values()
        assert _written_elsewhere(pool, first.result.payload, gone, 0) == (
            "No such file or directory"
        )
    assert not gone.exists()


@pytest.mark.slow  # a whole job of 20,000 records
def test_the_parent_writes_none_of_the_responses_of_a_local_output(tmp_path, monkeypatch):
    """The workers write the responses into the output themselves: what the job's
    process writes into it is the framing."""
    make_model(tmp_path / "model")
    records = random_records(20_000, seed=1, pairs=False)
    write_jsonl(tmp_path / "in" / "a.jsonl", records)
    by_parent = []
    parent_write = local._LocalWriter.write
    monkeypatch.setattr(
        local._LocalWriter,
        "write",
        lambda writer, data: by_parent.append(len(data)) or parent_write(writer, data),
    )
    config = TransformConfig(str(tmp_path / "in"), str(tmp_path / "out"), str(tmp_path / "model"))
    summary = o2v_batch.transform(config)
    output = (tmp_path / "out" / "a.jsonl.out").read_bytes()
    assert summary.records_out == output.count(b"\n") == 20_000
    assert sum(by_parent) < len(output) / 100, (by_parent, len(output))
    # What the workers wrote is each record's embedding, as the model gives it.
    model = o2v_batch.load_model(str(tmp_path / "model"), mode="embedding")
    got = np.array([json.loads(line)["embeddings"] for line in output.splitlines()])
    for encoder, name in enumerate(("in0", "in1")):
        rows = [i for i, record in enumerate(records) if name in record]
        wanted = model.embed([records[i][name] for i in rows], encoder=encoder)
        np.testing.assert_allclose(got[rows], wanted, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(("iov_max", "buffers"), [(None, 5), (4, 1)])
def test_lines_in_runs_reach_the_worker_joined_by_newlines(tmp_path, monkeypatch, iov_max, buffers):
    """The parent's mini-batches of Blocks go into a request segment run by run, in one
    gathering write (joined first only when the runs and newlines are more buffers than
    one write takes): the worker reads the lines the joined bytes hold."""
    if iov_max is not None:
        monkeypatch.setattr(segments, "_IOV_MAX", iov_max)
    writes = []
    pwritev = segments.os.pwritev

    def noted(fd, buffers, offset):
        writes.append(len(buffers))
        return pwritev(fd, buffers, offset)

    monkeypatch.setattr(segments.os, "pwritev", noted)
    runs = [b"a" * MIN_SHARED_BYTES + b"\nb", b"c", b"d\n" + b"e" * 10]
    lines = Lines(runs, 5)
    with pool_of(tmp_path, "Echo", workers=1, shared_memory=True) as pool:
        pool.submit(0, [1, 2, 3, 4, 5], lines, "application/jsonlines", "application/jsonlines")
        events = []
        while not events:
            events = pool.poll(0.5)
    assert writes == [buffers]  # three runs, two newlines between them
    [done] = events
    payload = done.result.payload
    got = bytes(payload.view) if isinstance(payload, SharedPayload) else payload
    assert got == b"\n".join(runs).upper() + b"\n"


@pytest.mark.parametrize("failure", ["no memory", "short write"])
def test_a_request_segment_that_cannot_be_written_sends_the_lines_through_the_pipe(
    tmp_path, monkeypatch, failure
):
    def cannot(fd, buffers, offset):
        if failure == "short write":
            return os.pwrite(fd, buffers[0][:10], offset)
        raise OSError(errno.ENOMEM, "Cannot allocate memory")

    monkeypatch.setattr(segments.os, "pwritev", cannot)
    lines = Lines(b"a" * MIN_SHARED_BYTES + b"\nb", 2)
    recoveries: list[Recovery] = []
    with pool_of(
        tmp_path, "Echo", workers=1, shared_memory=True, on_recovery=recoveries.append
    ) as pool:
        pool.submit(0, [1, 2], lines, "application/jsonlines", "application/jsonlines")
        events = []
        while not events:
            events = pool.poll(0.5)
    assert recoveries == []  # the worker was never taken for lost
    [done] = events
    payload = done.result.payload
    got = bytes(payload.view) if isinstance(payload, SharedPayload) else payload
    assert got == b"A" * MIN_SHARED_BYTES + b"\nB\n"


def test_a_worker_places_a_response_in_the_segment_freed_last():
    """The segment freed last is used first, so a worker maps and faults in only as many
    segments as its responses need at once, not every one in turn."""
    fds = segments.create(3)
    try:
        responses = segments.Responses(fds)
        payload = b"x" * segments.MIN_SHARED_BYTES
        first = responses.place(payload)
        responses.release(first.slot)
        assert responses.place(payload).slot == first.slot
    finally:
        segments.close(fds)
