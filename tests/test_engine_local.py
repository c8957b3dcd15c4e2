"""Worker faults and interruption: nothing lost, nothing partial, no process left behind."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import faulty_servers
import pytest
from conftest import replacing_servers
from helpers import make_model, random_records, write_jsonl
from processes import default_sigint

from o2v_batch.config import TransformConfig
from o2v_batch.jobs.transform import transform

# Whole jobs, killed workers and signals: real processes.
pytestmark = pytest.mark.slow

SHARDS, RECORDS = 8, 10_000
# Small mini-batches: the job runs several seconds and has many in flight to lose.
JOB_OPTIONS = ("--max-payload", "0.01", "--workers", "2", "--no-progress")


# -- processes, from /proc (Linux) ------------------------------------------


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text.rsplit(")", 1)[1].split()  # the command name may hold spaces and ')'
    return fields[0], int(fields[1])


def worker_pids(parent: int) -> list[int]:
    """The parent's multiprocessing workers (not its resource tracker)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or (_stat(int(entry)) or ("", 0))[1] != parent:
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
        except FileNotFoundError:
            continue
        if b"spawn_main" in cmdline and b"resource_tracker" not in cmdline:
            pids.append(int(entry))
    return sorted(pids)


def cpu_ticks(pid: int) -> int:
    """User + system CPU time a process has used, in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def alive(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def wait_until(condition, timeout: float, what: str) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.05)


# -- the job --------------------------------------------------------------


def finished(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.out") if not p.name.startswith("."))


def start(
    data: Path, out: Path, *extra: str, program: tuple[str, ...] = ("-m", "o2v_batch")
) -> subprocess.Popen:
    """The command on the job, its stderr kept beside `out`; `program` runs it (Python
    code that calls the command's main, to set a private switch first)."""
    command = [sys.executable, *program, "transform", str(data / "in"), str(out)]
    with open(out.parent / f"{out.name}.stderr", "w") as log:  # the child keeps its own copy
        return subprocess.Popen(
            [*command, "--model", str(data / "model"), *JOB_OPTIONS, *extra],
            stdout=subprocess.DEVNULL,
            stderr=log,
            # A job started from `nohup ... &` inherits an ignored SIGINT and keeps it
            # (as documented); the job under test takes Ctrl-C however pytest was started.
            preexec_fn=default_sigint,
        )


def stderr_of(out: Path) -> str:
    return (out.parent / f"{out.name}.stderr").read_text()


def run_to_end(data: Path, out: Path, *extra: str) -> None:
    process = start(data, out, *extra)
    assert process.wait(timeout=300) == 0, stderr_of(out)


@pytest.fixture(scope="module")
def big_job(tmp_path_factory) -> Path:
    return write_big_job(tmp_path_factory.mktemp("big-job"))


def write_big_job(data: Path) -> Path:
    """8 shards x 10,000 records, the model, and `reference/`: the outputs of an unfaulted run."""
    make_model(data / "model")
    for i in range(SHARDS):
        write_jsonl(data / "in" / f"part-{i}.jsonl", random_records(RECORDS, seed=i))
    run_to_end(data, data / "reference")
    return data


def assert_outputs_equal_reference(data: Path, out: Path) -> None:
    names = [f"part-{i}.jsonl.out" for i in range(SHARDS)]
    assert finished(out) == names
    for name in names:
        got = (out / name).read_bytes()
        assert got.count(b"\n") == RECORDS, name  # every record exactly once
        assert got == (data / "reference" / name).read_bytes(), name


def test_worker_killed_mid_job_is_replaced_and_nothing_is_lost(big_job, tmp_path):
    out = tmp_path / "out"
    process = start(big_job, out)
    try:
        wait_until(lambda: finished(out), 120, "the first output shard")
        workers = worker_pids(process.pid)
        assert len(workers) == 2
        # The busiest worker has surely loaded its model and holds mini-batches; the
        # other may still be loading on a loaded machine.
        victim = max(workers, key=cpu_ticks)
        os.kill(victim, signal.SIGKILL)
        assert process.wait(timeout=300) == 0, stderr_of(out)
    finally:
        process.kill()
    assert not alive(victim)
    assert_outputs_equal_reference(big_job, out)
    summary = json.loads((out / "_SUCCESS").read_text())
    assert summary["worker_restarts"] == 1
    assert summary["records_in"] == summary["records_out"] == SHARDS * RECORDS


@pytest.mark.parametrize(("signum", "status"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_stops_the_job_cleanly_and_resume_finishes_it(big_job, tmp_path, signum, status):
    out = tmp_path / "out"
    process = start(big_job, out)
    try:
        wait_until(lambda: finished(out), 120, "the first output shard")
        workers = worker_pids(process.pid)
        assert workers
        process.send_signal(signum)
        code = process.wait(timeout=60)
    finally:
        process.kill()
    assert code == status, stderr_of(out)
    assert "o2v-batch: shards: " in stderr_of(out)  # the summary so far
    # Counts that add up: every record read was written, bad, or not written.
    counts = re.search(
        r"records: ([\d,]+) in, ([\d,]+) out, ([\d,]+) bad, ([\d,]+) not written",
        stderr_of(out),
    )
    records_in, records_out, bad, not_written = (int(n.replace(",", "")) for n in counts.groups())
    assert records_in == records_out + bad + not_written and not_written > 0
    assert records_out == RECORDS * len(finished(out))
    # The shards written are whole; the others have no .out and no temp debris.
    done = finished(out)
    assert 0 < len(done) < SHARDS
    for name in done:
        assert (out / name).read_bytes() == (big_job / "reference" / name).read_bytes()
    assert [p for p in out.rglob("*") if p.name.startswith(".")] == []
    assert not (out / "_SUCCESS").exists()
    wait_until(lambda: not any(map(alive, workers)), 3, f"workers {workers} to exit")
    run_to_end(big_job, out, "--resume")
    assert_outputs_equal_reference(big_job, out)
    # The shards finished before the signal count too: the whole output, every line.
    assert "not counted" not in stderr_of(out)
    summary = json.loads((out / "_SUCCESS").read_text())
    lines = sum(p.read_bytes().count(b"\n") for p in (big_job / "in").iterdir())
    assert summary["records_in"] == summary["records_out"] == lines == SHARDS * RECORDS
    assert summary["shards_skipped"] == len(done)


# -- a model that hangs or fails on one record --------------------------------

SMALL = 40
MARKED = {"in0": [1, 2, 3], "tag": "boom"}  # faulty_servers.MARKER; the real server ignores "tag"


@pytest.fixture(scope="module")
def small_job(tmp_path_factory) -> Path:
    """Three shards, the marked record first in b.jsonl, and `reference/` from the real server."""
    data = tmp_path_factory.mktemp("small-job")
    make_model(data / "model")
    for i, name in enumerate("abc"):
        records = random_records(SMALL, seed=10 + i)
        write_jsonl(data / "in" / f"{name}.jsonl", [MARKED, *records] if name == "b" else records)
    summary = run(data, data / "model", data / "reference")
    assert summary.shards_ok == 3
    return data


def run(data: Path, model: Path, out: Path, logged: list[str] | None = None, **options):
    config = TransformConfig(
        input=str(data / "in"), output=str(out), model=str(model), max_payload=0.002, **options
    )
    return transform(config, log=(logged if logged is not None else []).append)


def recovery_lines(logged: list[str]) -> list[str]:
    return [line for line in logged if "; retrying the mini-batch" in line or "new worker" in line]


def test_hung_forward_is_timed_out_and_retried(small_job, tmp_path, replace_servers):
    model = shutil.copytree(small_job / "model", tmp_path / "model")  # gets the marker file
    replace_servers("faulty_servers:HangOnce")
    logged: list[str] = []
    summary = run(small_job, model, tmp_path / "out", logged, invocation_timeout=3)
    assert (model / faulty_servers.MISBEHAVED).exists()  # it did hang
    assert (summary.worker_restarts, summary.mini_batch_retries) == (1, 1)
    [line] = recovery_lines(logged)
    shard = re.escape(str(small_job / "in" / "b.jsonl"))
    assert re.fullmatch(
        r"o2v-batch: worker \d+ timed out after 3 s \(--invocation-timeout\); started a new "
        rf"worker and retrying the mini-batch from {shard}: line 1 \(attempt 2 of 4\)",
        line,
    )
    assert "o2v-batch: faults: 1 worker restart, 1 mini-batch retry" in logged
    assert (summary.shards_ok, summary.shards_failed) == (3, 0)
    for name in ("a", "b", "c"):
        got = (tmp_path / "out" / f"{name}.jsonl.out").read_bytes()
        assert got == (small_job / "reference" / f"{name}.jsonl.out").read_bytes()


def test_a_crashed_worker_is_replaced_in_one_line_and_counted(small_job, tmp_path, replace_servers):
    model = shutil.copytree(small_job / "model", tmp_path / "model")  # gets the marker file
    replace_servers("faulty_servers:CrashOnce")
    logged: list[str] = []
    summary = run(small_job, model, tmp_path / "out", logged)
    assert (model / faulty_servers.MISBEHAVED).exists()  # it did crash
    [line] = recovery_lines(logged)
    shard = re.escape(str(small_job / "in" / "b.jsonl"))
    assert re.fullmatch(
        r"o2v-batch: worker \d+ exited with status 3; started a new worker and retrying the "
        rf"mini-batch from {shard}: line 1 \(attempt 2 of 4\)",
        line,
    )
    assert (summary.worker_restarts, summary.mini_batch_retries) == (1, 1)
    assert (summary.shards_ok, summary.records_out) == (3, 3 * SMALL + 1)
    for name in ("a", "b", "c"):
        got = (tmp_path / "out" / f"{name}.jsonl.out").read_bytes()
        assert got == (small_job / "reference" / f"{name}.jsonl.out").read_bytes()


def test_a_forward_that_always_fails_fails_its_shard_alone(small_job, tmp_path, replace_servers):
    replace_servers("faulty_servers:AlwaysRaise")
    logged: list[str] = []
    summary = run(small_job, small_job / "model", tmp_path / "out", logged, max_retries=1)
    shard = str(small_job / "in" / "b.jsonl")
    assert recovery_lines(logged) == [
        "o2v-batch: the worker raised RuntimeError: the model broke on a marked record; "
        f"retrying the mini-batch from {shard}: line 1 (attempt 2 of 2)"
    ]
    assert (summary.worker_restarts, summary.mini_batch_retries) == (0, 1)
    assert summary.records_out == 2 * SMALL
    assert summary.records_in == summary.records_out + summary.records_not_written
    reason = (
        f"{shard}: mini-batch from line 1: the worker raised RuntimeError: "
        "the model broke on a marked record; gave up after 2 attempts"
    )
    assert summary.failed == [{"shard": shard, "reason": reason}]
    assert (summary.shards_ok, summary.shards_failed) == (2, 1)
    # The shards written, and what a --resume counts for them.
    assert sorted(os.listdir(tmp_path / "out")) == ["_PROGRESS", "a.jsonl.out", "c.jsonl.out"]
    progress = json.loads((tmp_path / "out" / "_PROGRESS").read_text())
    assert progress["records_out_by_shard"] == {
        str(small_job / "in" / f"{name}.jsonl"): SMALL for name in ("a", "c")
    }
    for name in ("a", "c"):
        got = (tmp_path / "out" / f"{name}.jsonl.out").read_bytes()
        assert got == (small_job / "reference" / f"{name}.jsonl.out").read_bytes()


def test_a_retried_mini_batch_is_one_line_on_stderr_and_in_the_summary(small_job, tmp_path):
    job = (
        replacing_servers("faulty_servers:AlwaysRaise")
        + "from o2v_batch.config import TransformConfig; from o2v_batch.jobs.transform import transform; "
        f"transform(TransformConfig({str(small_job / 'in')!r}, {str(tmp_path / 'out')!r}, "
        f"{str(small_job / 'model')!r}, max_retries=1, workers=1, progress=False))"
    )
    done = subprocess.run(
        [sys.executable, "-c", job],
        capture_output=True,
        text=True,
        timeout=300,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]
            ),
        },
    )
    assert done.returncode == 0, done.stderr
    lines = done.stderr.splitlines()
    assert [line.split("; ")[1] for line in lines if line.startswith("o2v-batch: the worker")] == [
        f"retrying the mini-batch from {small_job / 'in' / 'b.jsonl'}: line 1 (attempt 2 of 2)"
    ]
    assert "o2v-batch: faults: 0 worker restarts, 1 mini-batch retry" in lines
    assert not [line for line in lines if not line.startswith("o2v-batch: ")]  # no traceback


# -- a node kept from call to call (a GPU's Ray actor's) ------------------------------


def test_a_node_serves_call_after_call_even_after_one_ended_early(tmp_path):
    """A call that ends with mini-batches in flight (here its log raises at a shard's
    failure) leaves nothing for the next: that one's outputs are a fresh job's."""
    from o2v_batch.engines.local import Node
    from o2v_batch.execution.planning import plan_workers
    from o2v_batch.jobs.transform import checked_model, plan
    from o2v_batch.reporting.report import Faults

    model = make_model(tmp_path / "model")
    write_jsonl(tmp_path / "first" / "bad.jsonl", [{"in0": [1, 999]}])
    for i in range(3):
        write_jsonl(tmp_path / "first" / f"ok-{i}.jsonl", random_records(3000, seed=i))
        write_jsonl(tmp_path / "second" / f"part-{i}.jsonl", random_records(2000, seed=9 + i))
    options = {"model": str(model), "max_payload": 0.01, "progress": False}
    fresh = TransformConfig(
        input=str(tmp_path / "second"), output=str(tmp_path / "fresh"), **options
    )
    transform(fresh, log=lambda line: None)

    def tasks(source: str, target: str) -> list:
        config = TransformConfig(
            input=str(tmp_path / source), output=str(tmp_path / target), **options
        )
        model_dir, hp = checked_model(config)
        return config, model_dir, plan(config, hp).tasks

    config, model_dir, first = tasks("first", "out-1")
    node = Node(config, model_dir, plan_workers(["cpu"], 2))
    try:

        def log(line: str) -> None:
            raise RuntimeError(line)

        with pytest.raises(RuntimeError, match=r"bad\.jsonl"):
            node.serve(first, log, Faults())
        _, _, second = tasks("second", "out-2")
        lines: list[str] = []
        node.serve(second, lines.append, Faults())
    finally:
        node.close()
    assert lines == []
    assert [t.report.status for t in second] == ["ok"] * 3
    out, expected = tmp_path / "out-2", tmp_path / "fresh"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        p.name for p in expected.iterdir() if p.name != "_SUCCESS"
    )
    for path in out.iterdir():
        assert path.read_bytes() == (expected / path.name).read_bytes()


def test_a_worker_a_node_restarted_before_its_first_call_is_counted_in_that_call(
    tmp_path, replace_servers
):
    """A worker lost as the node starts (here: it dies loading, once) is replaced; the
    next call's faults and log say so, as a job's would."""
    from o2v_batch.engines.local import Node
    from o2v_batch.execution.planning import plan_workers
    from o2v_batch.jobs.transform import checked_model, plan
    from o2v_batch.reporting.report import Faults

    model = make_model(tmp_path / "model")
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(50, seed=1))
    config = TransformConfig(
        input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(model), progress=False
    )
    model_dir, hp = checked_model(config)
    tasks = plan(config, hp).tasks
    replace_servers("fake_servers:CrashOnLoadOnce")
    node = Node(config, model_dir, plan_workers(["cpu"], 1))
    try:
        node.pool.wait_ready()
        faults, lines = Faults(), []
        node.serve(tasks, lines.append, faults)
    finally:
        node.close()
    assert (model / "crashed").exists()  # it did die once
    assert (faults.worker_restarts, faults.mini_batch_retries) == (1, 0)
    [line] = lines
    assert re.fullmatch(
        r"o2v-batch: worker \d+ exited with status 3 while loading the model; started a new worker",
        line,
    ), line
    assert tasks[0].report.status == "ok"
