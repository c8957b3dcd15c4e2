"""Whole transform jobs whose workers run pipelined (on CPU, as asked): byte for byte
the outputs of workers that serve one mini-batch after another, bad records, failing
forward passes and killed workers included."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from faulty_servers import MARKER
from helpers import make_model, random_records
from test_engine_local import alive, cpu_ticks, finished, wait_until, worker_pids

from o2v_batch.config import TransformConfig
from o2v_batch.execution import worker
from o2v_batch.jobs.transform import transform

SHARDS, RECORDS = 3, 400
# Whole jobs, each against another.
pytestmark = pytest.mark.slow

# Bad in shards a and b; c is all good, so that it is written under --on-bad-record fail.
BAD_LINES = {
    7: '{"in0": [1, 2',
    150: '{"in0": [999]}',
    151: '{"tag": 1}',
    260: '{"in0": [0, 99999], "in1": [3]}',
    261: '{"in0": [1], "in1": [2]',
}
MARKED = json.dumps({"in0": [1, 2, 3], "tag": MARKER.decode()})
# Small mini-batches: many in flight through every stage.
OPTIONS = {"max_payload": 0.002, "workers": 2, "progress": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("pipelined")
    make_model(folder / "model")
    (folder / "in").mkdir()
    for i, name in enumerate("abc"):
        lines = [json.dumps(r) for r in random_records(RECORDS, seed=20 + i)]
        if name != "c":
            for at, line in BAD_LINES.items():
                lines[at] = line
        (folder / "in" / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def run(
    data: Path, out: Path, logged: list[str] | None = None, pipelined: bool | None = None, **options
):
    """A job whose workers overlap their stages on CPU (`pipelined`), or not."""
    config = TransformConfig(str(data / "in"), str(out), str(data / "model"), **options)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(worker, "_pipelined", pipelined)
        return transform(config, log=(logged if logged is not None else []).append)


def outputs(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name.endswith(".out")}


def counts(summary) -> dict:
    """What a summary says of the outputs, not of this run's time, nor of how far a
    failed shard was read before its failure stopped it."""
    got = dataclasses.asdict(summary)
    for name in ("seconds", "records_per_second", "mini_batches", "largest_mini_batch_bytes"):
        got.pop(name)
    if summary.shards_failed:
        for name in ("records_in", "records_not_written", "truncated_sequences"):
            got.pop(name)
    return got


@pytest.mark.parametrize("on_bad_record", ["emit-error", "fail"])
def test_pipelined_workers_write_the_same_bytes(data, tmp_path, on_bad_record):
    options = {**OPTIONS, "on_bad_record": on_bad_record}
    whole = run(data, tmp_path / "whole", pipelined=False, **options)
    pipelined = run(data, tmp_path / "pipelined", pipelined=True, **options)
    assert outputs(tmp_path / "pipelined") == outputs(tmp_path / "whole")
    assert counts(pipelined) == counts(whole)
    if on_bad_record == "fail":
        assert (whole.shards_ok, whole.shards_failed) == (1, 2)
        assert list(outputs(tmp_path / "whole")) == ["c.jsonl.out"]
    else:
        assert (whole.shards_ok, whole.bad_records) == (3, 2 * len(BAD_LINES))


def test_a_failing_forward_pass_fails_its_shard_alone(data, tmp_path, replace_servers):
    """The marked record's mini-batch fails in the device stage; the others go on."""
    folder = tmp_path / "data"
    shutil.copytree(data / "model", folder / "model")
    (folder / "in").mkdir()
    for name in "ac":
        shutil.copy(data / "in" / "c.jsonl", folder / "in" / f"{name}.jsonl")
    good = (data / "in" / "c.jsonl").read_text()
    (folder / "in" / "b.jsonl").write_text(f"{MARKED}\n{good}")
    reference = run(folder, tmp_path / "reference", **OPTIONS)
    assert reference.shards_ok == 3
    replace_servers("faulty_servers:RaiseInPredict")
    summary = run(folder, tmp_path / "out", pipelined=True, max_retries=1, **OPTIONS)
    shard = str(folder / "in" / "b.jsonl")
    reason = (
        f"{shard}: mini-batch from line 1: the worker raised RuntimeError: the model broke "
        "on a marked record (thread o2v-predict); gave up after 2 attempts"
    )
    assert summary.failed == [{"shard": shard, "reason": reason}]
    assert (summary.shards_ok, summary.worker_restarts, summary.mini_batch_retries) == (2, 0, 1)
    written = outputs(tmp_path / "out")
    assert list(written) == ["a.jsonl.out", "c.jsonl.out"]
    assert all(written[name] == outputs(tmp_path / "reference")[name] for name in written)


# -- a pipelined worker killed mid-job --------------------------------------------

BIG_SHARDS, BIG_RECORDS = 8, 10_000
BIG_OPTIONS = {"max_payload": 0.005, "workers": 2, "progress": False}


@pytest.fixture(scope="module")
def big_job(tmp_path_factory) -> Path:
    """Eight shards of 10,000 records, the model, and `reference/` from unpipelined workers."""
    folder = tmp_path_factory.mktemp("big-pipelined")
    make_model(folder / "model")
    (folder / "in").mkdir()
    for i in range(BIG_SHARDS):
        lines = [json.dumps(r) for r in random_records(BIG_RECORDS, seed=i)]
        (folder / "in" / f"part-{i}.jsonl").write_text("\n".join(lines) + "\n")
    assert run(folder, folder / "reference", pipelined=False, **BIG_OPTIONS).shards_ok == BIG_SHARDS
    return folder


def test_a_pipelined_worker_killed_mid_job_loses_nothing(big_job, tmp_path):
    out = tmp_path / "out"
    config = {"input": str(big_job / "in"), "output": str(out), "model": str(big_job / "model")}
    job = (
        "from o2v_batch.config import TransformConfig; from o2v_batch.jobs.transform import transform; "
        "from o2v_batch.execution import worker; worker._pipelined = True; "
        f"transform(TransformConfig(**{config!r}, **{BIG_OPTIONS!r}))"
    )
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen([sys.executable, "-c", job], stderr=stderr)
    try:
        wait_until(lambda: finished(out), 120, "the first output shard")
        workers = worker_pids(process.pid)
        assert len(workers) == 2
        victim = max(workers, key=cpu_ticks)  # surely loaded, with mini-batches in its stages
        os.kill(victim, signal.SIGKILL)
        assert process.wait(timeout=300) == 0, (tmp_path / "stderr").read_text()
    finally:
        process.kill()
    assert not alive(victim)
    assert finished(out) == [f"part-{i}.jsonl.out" for i in range(BIG_SHARDS)]
    assert outputs(out) == outputs(big_job / "reference")
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["worker_restarts"] == 1
    assert summary["records_in"] == summary["records_out"] == BIG_SHARDS * BIG_RECORDS
