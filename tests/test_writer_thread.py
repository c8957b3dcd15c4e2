"""The writer thread: shards' outputs written off the dispatch loop, atomically, with
outcomes and errors handed back; a job's dispatch goes on while a write is slow."""

from __future__ import annotations

import errno
import os
import threading
from pathlib import Path

import pytest
from helpers import make_model, write_jsonl

from o2v_batch.config import TransformConfig
from o2v_batch.engines.writer import STOPPED, CommitGate, Committed, Failed, WriterThread
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.inputs.formats import JSONLINES
from o2v_batch.io.local import _LocalWriter
from o2v_batch.jobs.transform import transform


def writer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "o2v-batch writer"]


def test_shards_are_committed_as_they_complete(tmp_path: Path) -> None:
    with WriterThread(2, in_order=False) as writer:
        writer.open(0, str(tmp_path / "a.out"), JSONLINES)
        writer.open(1, str(tmp_path / "b.out"), JSONLINES)
        writer.add(0, 1, b"1\n", 1)
        writer.add(1, 0, b"b\n", 1)
        writer.end(1, 1)
        writer.add(0, 0, b"0\n2\n", 2)
        writer.end(0, 2)
        writer.finish()
        assert writer.outcomes() == [Committed(1, 1), Committed(0, 3)]
    assert (tmp_path / "a.out").read_bytes() == b"0\n2\n1\n"
    assert (tmp_path / "b.out").read_bytes() == b"b\n"
    assert writer_threads() == []


def test_a_closed_gate_commits_nothing_more_and_named_what_was_committed(tmp_path: Path) -> None:
    """A Ray actor's writers commit through its gate: once the driver has closed it, a
    shard complete afterwards is dropped, and close() named every output committed."""
    gate = CommitGate()
    with WriterThread(2, in_order=False, gate=gate) as writer:
        writer.open(0, str(tmp_path / "a.out"), JSONLINES)
        writer.open(1, str(tmp_path / "b.out"), JSONLINES)
        writer.add(0, 0, b"0\n1\n", 2)
        writer.end(0, 1)
        writer.add(1, 0, b"b\n", 1)
        # A call waits for room in the queue of two: once this one is in, the thread has
        # taken add(1, 0), so it has committed shard 0.
        writer.add(1, 1, b"c\n", 1)
        writer.add(1, 2, b"d\n", 1)
        committed = gate.close()
        writer.end(1, 3)  # complete once closed
        writer.finish()
        assert writer.outcomes() == [Committed(0, 2), Failed(1, STOPPED)]
    assert committed == {str(tmp_path / "a.out"): 2}
    assert os.listdir(tmp_path) == ["a.out"]  # and no temp file of b
    assert (tmp_path / "a.out").read_bytes() == b"0\n1\n"


def test_in_order_commits_wait_for_every_earlier_shard(tmp_path: Path) -> None:
    with WriterThread(2, in_order=True) as writer:
        for idx in range(3):
            writer.open(idx, str(tmp_path / f"{idx}.out"), JSONLINES)
        writer.add(2, 0, b"2\n", 1)
        writer.end(2, 1)
        writer.abort(1)  # the caller failed it: no outcome
        writer.add(0, 0, b"0\n", 1)
        writer.end(0, 1)
        writer.finish()
        assert writer.outcomes() == [Committed(0, 1), Committed(2, 1)]
    assert sorted(os.listdir(tmp_path)) == ["0.out", "2.out"]


def test_a_bad_part_fails_the_shard_once_the_parts_before_it_are_in(tmp_path: Path) -> None:
    with WriterThread(2, in_order=False) as writer:
        writer.open(0, str(tmp_path / "a.out"), JSONLINES)
        writer.fail(0, 2, "line 9: bad")
        writer.fail(0, 1, "line 5: bad")
        writer.add(0, 0, b"0\n", 1)
        writer.add(0, 3, b"3\n", 1)  # after the failure: ignored
        writer.end(0, 4)
        writer.finish()
        assert writer.outcomes() == [Failed(0, "line 5: bad")]
    assert os.listdir(tmp_path) == []


def test_a_commit_that_fails_is_the_shards_failure(tmp_path: Path, monkeypatch) -> None:
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(os, "replace", read_only)
    with WriterThread(2, in_order=False) as writer:
        writer.open(0, str(tmp_path / "a.out"), JSONLINES)
        writer.add(0, 0, b"0\n", 1)
        writer.end(0, 1)
        writer.finish()
        reason = f"cannot write {tmp_path / 'a.out'}: Read-only file system"
        assert writer.outcomes() == [Failed(0, reason)]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("in_order", [False, True])
def test_an_output_that_cannot_be_opened_fails_its_shard_alone(
    tmp_path: Path, in_order: bool
) -> None:
    (tmp_path / "file").write_text("")
    with WriterThread(2, in_order=in_order) as writer:
        writer.open(0, str(tmp_path / "file" / "a.out"), JSONLINES)
        writer.add(0, 0, b"a\n", 1)
        writer.end(0, 1)
        writer.open(1, str(tmp_path / "b.out"), JSONLINES)
        writer.add(1, 0, b"b\n", 1)
        writer.end(1, 1)
        writer.finish()
        [failed, committed] = writer.outcomes()
    assert isinstance(failed, Failed) and failed.idx == 0
    assert failed.reason == f"cannot write {tmp_path}/file/a.out: File exists"  # makedirs
    assert committed == Committed(1, 1)
    assert sorted(os.listdir(tmp_path)) == ["b.out", "file"]
    assert (tmp_path / "b.out").read_bytes() == b"b\n"
    assert writer_threads() == []


def test_leaving_on_an_exception_aborts_every_output(tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt), WriterThread(2, in_order=False) as writer:
        for idx in range(2):
            writer.open(idx, str(tmp_path / f"{idx}.out"), JSONLINES)
            writer.add(idx, 0, b"0\n", 1)
        raise KeyboardInterrupt
    assert os.listdir(tmp_path) == []  # no temp file either
    assert writer_threads() == []


def test_the_caller_waits_once_the_queue_is_full(tmp_path: Path, monkeypatch) -> None:
    started, release = threading.Event(), threading.Event()
    real_write = _LocalWriter.write

    def write(self, data: bytes) -> None:
        started.set()
        release.wait(timeout=30)
        real_write(self, data)

    monkeypatch.setattr(_LocalWriter, "write", write)
    returned = [threading.Event() for _ in range(4)]

    def caller(writer: WriterThread) -> None:
        for seq, done in enumerate(returned):
            writer.add(0, seq, b"%d\n" % seq, 1)
            done.set()

    with WriterThread(2, in_order=False) as writer:
        writer.open(0, str(tmp_path / "a.out"), JSONLINES)
        thread = threading.Thread(target=caller, args=(writer,))
        thread.start()
        assert started.wait(timeout=30)  # the thread holds part 0
        assert returned[2].wait(timeout=30)  # parts 1 and 2 are queued
        assert not returned[3].wait(0.2)
        release.set()
        assert returned[3].wait(timeout=30)
        thread.join()
        writer.end(0, 4)
        writer.finish()
        assert writer.outcomes() == [Committed(0, 4)]
    assert (tmp_path / "a.out").read_bytes() == b"0\n1\n2\n3\n"


def test_the_pool_gets_mini_batches_while_a_write_is_slow(
    tmp_path: Path, monkeypatch, replace_servers
) -> None:
    """The first write of the job blocks until the pool has received more mini-batches;
    with writes on the dispatch loop they would never come."""
    # One more mini-batch is always possible: taking the part it writes frees a place in
    # the writer's queue, so the dispatch loop hands over a result and submits again.
    # More is not: the queue and the pool may both be full when the write begins.
    ahead = 1
    records = [{"in0": [i % 50 + 1]} for i in range(60)]
    write_jsonl(tmp_path / "in" / "a.jsonl", records)
    submitted: list[int] = []
    blocked_at: list[int] = []  # mini-batches submitted when the first write began
    caught_up, released = threading.Event(), []
    real_submit, real_write = WorkerPool.submit, _LocalWriter.write

    def submit(pool: WorkerPool, task_id: int, *args) -> None:
        submitted.append(task_id)
        if blocked_at and len(submitted) >= blocked_at[0] + ahead:
            caught_up.set()
        real_submit(pool, task_id, *args)

    def write(self, data: bytes) -> None:
        if self.uri.endswith("a.jsonl.out") and not blocked_at:
            blocked_at.append(len(submitted))
            released.append(caught_up.wait(timeout=30))
        real_write(self, data)

    monkeypatch.setattr(WorkerPool, "submit", submit)
    monkeypatch.setattr(_LocalWriter, "write", write)
    config = TransformConfig(
        input=str(tmp_path / "in"),
        output=str(tmp_path / "out"),
        model=str(make_model(tmp_path / "model")),
        strategy="SingleRecord",
        workers=1,
        max_concurrent_transforms=4,
    )
    replace_servers("fake_servers:Echo")
    summary = transform(config, log=lambda line: None)
    assert released == [True]
    assert summary.shards_ok == 1 and len(submitted) == len(records)
    lines = (tmp_path / "in" / "a.jsonl").read_bytes().upper()
    assert (tmp_path / "out" / "a.jsonl.out").read_bytes() == lines
    assert writer_threads() == []
