"""`--engine ray` on a local Ray instance (2 CPUs), checked byte for byte against the
local engine on the same inputs, with local folders and with S3."""

from __future__ import annotations

import _thread
import contextlib
import datetime
import fcntl
import gzip
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import pytest
import ray_servers
from click.testing import CliRunner
from helpers import make_model, random_records, write_json, write_jsonl

from o2v_batch.cli import main
from o2v_batch.config import TransformConfig
from o2v_batch.engines import ray_actor, ray_driver
from o2v_batch.engines.ray import MISSING_RAY
from o2v_batch.engines.ray_driver import ActorPlan, plan_actors
from o2v_batch.errors import ConfigError, O2VError
from o2v_batch.execution import worker
from o2v_batch.execution.protocol import DEVICE, HOST
from o2v_batch.io import discard_partial
from o2v_batch.jobs.transform import transform

TESTS = Path(__file__).resolve().parent
JSON = "application/json"
# Summary fields both engines must agree on, and those that only agree when no shard
# fails (the local engine reads a little ahead of a failure, the Ray engine does not).
SAME = ("shards_ok", "shards_failed", "shards_skipped", "records_out", "bad_records")
SAME_WHEN_OK = ("records_in", "truncated_sequences", "mini_batches", "largest_mini_batch_bytes")


@pytest.fixture(scope="module")
def ray_instance(s3_server):
    """One Ray for the module; it starts after s3_server, so its workers see the S3 endpoint."""
    ray = pytest.importorskip("ray")
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH")) if p)
    ray.init(
        address="local",  # never another session's Ray on this machine
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.ERROR,
        # The faulty servers below are imported by name in the actors.
        runtime_env={"env_vars": {"PYTHONPATH": path}},
    )
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


# -- inputs and comparisons ---------------------------------------------------------

# --invocation-timeout for the tests of hung actors: a healthy mini-batch takes milliseconds.
HANG_S = 2.0
BIG = {"in0": [1] * 700}  # over a 0.001 MB cap (1048 bytes)
# Why each shard of `inputs` that can fail does, after "<shard>: ".
REASONS = {
    "bad.jsonl": "line 4: in0 id 999 is out of range: vocab size is 60 (ids must be in 0..59)",
    "big.json": f"instances[2]: record is {len(json.dumps(BIG)):,} bytes, "
    "over the --max-payload cap of 1,048 bytes",
}
# One local-engine run per set of options, shared by the tests that compare with it.
CASES = {
    "small-mini-batches": {"max_payload": 0.001},
    "json-out-emit-error": {"max_payload": 0.001, "accept": JSON, "on_bad_record": "emit-error"},
    "join-classification-no-cap": {
        "max_payload": 0,
        "join_source": "Input",
        "mode": "classification",
    },
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    """Nested jsonlines, JSON and gzipped shards, a bad record, an oversize one, and a
    "boom" record (line 61 of a.jsonl) that only the faulty servers notice."""
    root = tmp_path_factory.mktemp("inputs") / "in"
    records = random_records(360, seed=5)
    write_jsonl(
        root / "a.jsonl", [*records[:60], {"in0": [4, 5, 6], "tag": "boom"}, *records[60:120]]
    )
    write_json(root / "sub" / "b.json", records[120:240])
    gz = root / "sub" / "deeper" / "c.jsonl.gz"
    gz.parent.mkdir(parents=True)
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records[240:]).encode()))
    write_jsonl(root / "bad.jsonl", [*records[:3], {"in0": [1, 999]}, *records[3:9]])
    # Compact JSON, so the big record's size is len(json.dumps(BIG)).
    (root / "big.json").write_text(json.dumps({"instances": [*records[:2], BIG, *records[2:6]]}))
    return root


@pytest.fixture(scope="module")
def reference(inputs, model_dir, tmp_path_factory):
    """case -> (output folder, summary) of the local engine, run once per case."""
    runs = {}

    def local(case: str):
        if case not in runs:
            out = tmp_path_factory.mktemp("local") / "out"
            summary, _ = run(inputs, out, model_dir, workers=1, **CASES[case])
            runs[case] = out, summary
        return runs[case]

    return local


def tree(root: Path) -> dict[str, bytes]:
    """Every file under root, hidden ones too (debris would show), except the summaries
    (_SUCCESS, and _PROGRESS of a job with failed shards): their times differ."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name not in ("_SUCCESS", "_PROGRESS")
    }


def progress(root: Path) -> dict[str, int] | None:
    """The counts a --resume would take from a job that did not finish every shard."""
    path = root / "_PROGRESS"
    return json.loads(path.read_text())["records_out_by_shard"] if path.exists() else None


def run(input_path, output_path, model, **options):
    logged: list[str] = []
    config = TransformConfig(
        input=str(input_path), output=str(output_path), model=str(model), **options
    )
    return transform(config, log=logged.append), logged


def by_shard(failed: list[dict]) -> list[dict]:
    return sorted(failed, key=lambda f: f["shard"])


def assert_same_summary(ray_summary, local_summary) -> None:
    fields = SAME + (SAME_WHEN_OK if not local_summary.shards_failed else ())
    for name in fields:
        assert getattr(ray_summary, name) == getattr(local_summary, name), name
    assert ray_summary.bad_records_by_shard == local_summary.bad_records_by_shard
    assert by_shard(ray_summary.failed) == by_shard(local_summary.failed)


# -- the engine against the local engine --------------------------------------------


@pytest.mark.ray
@pytest.mark.parametrize(
    ("case", "failing"),
    [
        ("small-mini-batches", ["bad.jsonl", "big.json"]),
        ("json-out-emit-error", []),
        ("join-classification-no-cap", ["bad.jsonl"]),
    ],
)
def test_outputs_are_byte_identical_to_the_local_engine(
    ray_instance, inputs, model_dir, reference, tmp_path, case, failing
):
    local_out, local = reference(case)
    summary, logged = run(inputs, tmp_path / "ray", model_dir, engine="ray", **CASES[case])

    assert tree(tmp_path / "ray") == tree(local_out)
    assert len(tree(local_out)) == 5 - len(failing)
    expected = [
        {"shard": str(inputs / n), "reason": f"{inputs / n}: {REASONS[n]}"} for n in failing
    ]
    assert by_shard(summary.failed) == by_shard(local.failed) == expected
    assert_same_summary(summary, local)
    for failure in expected:
        assert f"o2v-batch: shard failed: {failure['reason']}" in logged
    assert (tmp_path / "ray" / "_SUCCESS").exists() == (not failing)
    assert progress(tmp_path / "ray") == progress(local_out)
    assert (progress(local_out) is not None) == bool(failing)


@pytest.fixture
def node_actors(monkeypatch) -> list:
    """Jobs on CPU split as on a GPU (the tests' switch): the Ray engine runs a node of
    the local engine in its actor. Yields the actor plans the driver made."""
    monkeypatch.setattr(worker, "_split", True)
    plans = []

    def plan(*args, **kwargs):
        plans.append(plan_actors(*args, **kwargs))
        return plans[-1]

    monkeypatch.setattr(ray_driver, "plan_actors", plan)
    return plans


@pytest.mark.ray
@pytest.mark.parametrize("case", ["small-mini-batches", "join-classification-no-cap"])
def test_a_gpu_actor_runs_a_node_of_the_local_engine(
    ray_instance, inputs, model_dir, reference, tmp_path, node_actors, case
):
    """Host workers on the actor's cores and a device process, kept from one shard to
    the next: the same bytes and summary as the local engine."""
    local_out, local = reference(case)
    summary, _ = run(inputs, tmp_path / "ray", model_dir, engine="ray", **CASES[case])

    assert [plan.node for plan in node_actors] == [((DEVICE, "cpu", 1), (HOST, "cpu", 1))]
    assert tree(tmp_path / "ray") == tree(local_out)
    assert_same_summary(summary, local)
    assert progress(tmp_path / "ray") == progress(local_out)


@pytest.mark.ray
def test_a_node_actor_restarts_its_lost_device_process_and_says_so(
    ray_instance, model_dir, tmp_path, node_actors
):
    """kill -9 of the device process in a GPU's actor: its pool starts another and
    retries what was lost; the driver counts the restart and logs it, the bytes are
    those of an undisturbed run."""
    for i in range(6):
        write_jsonl(tmp_path / "in" / f"part-{i}.jsonl", random_records(2000, seed=i))
    options = {"max_payload": 0.002, "engine": "ray"}
    clean, _ = run(tmp_path / "in", tmp_path / "clean", model_dir, **options)
    assert clean.worker_restarts == 0

    killed = []
    killer = threading.Thread(target=lambda: killed.append(_kill_device_process()))
    killer.start()
    summary, logged = run(tmp_path / "in", tmp_path / "out", model_dir, **options)
    killer.join()

    assert killed == [True]
    assert summary.worker_restarts >= 1
    assert any("lost its device process; started a new worker" in line for line in logged), logged
    assert tree(tmp_path / "out") == tree(tmp_path / "clean")
    assert summary.shards_ok == 6


def wait_for(condition, timeout: float = 120) -> None:
    """Until `condition()` holds, or `timeout` seconds have passed (the test's asserts
    then say what is missing)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


# The three shards of `three_shards`, in the driver's order (largest first), with their
# records; a node actor serves them in one call (--max-concurrent-transforms 4).
THREE = {"a.jsonl": 600, "b.jsonl": 400, "c.jsonl": 200}
THREE_OPTIONS = {"engine": "ray", "max_concurrent_transforms": 4}


@pytest.fixture
def three_shards(model_dir, tmp_path, node_actors) -> tuple[Path, Path]:
    """THREE's shards, and their outputs by a clean run."""
    for seed, (name, n) in enumerate(THREE.items()):
        write_jsonl(tmp_path / "in" / name, random_records(n, seed=seed))
    clean, _ = run(tmp_path / "in", tmp_path / "clean", model_dir, **THREE_OPTIONS)
    assert (clean.shards_ok, clean.records_out) == (3, sum(THREE.values()))
    return tmp_path / "in", tmp_path / "clean"


@pytest.mark.ray
@pytest.mark.parametrize(
    "actor",
    [
        # It has committed all its call's shards but the last, and holds the call open.
        ray_servers.ShardWorkerHoldingItsLastShard,
        # Its commit of the last one waits for the stop, and tries once answered.
        ray_servers.ShardWorkerCommittingAsItIsStopped,
    ],
    ids=["committed-while-its-call-went-on", "complete-as-the-job-stops"],
)
def test_a_stopped_job_counts_every_output_a_node_actor_committed(
    ray_instance, model_dir, tmp_path, three_shards, monkeypatch, actor
):
    """Ctrl-C once a GPU's actor has committed the outputs of two of its call's three
    shards: the progress file that --resume reads counts those two, and the third's
    output is not there, even when it is complete as the job stops (the stop shuts the
    actor's commits first: committed after the actor's answer, it would be an output
    that --resume finds and no count). --resume then serves only that one, and the job's
    counts and bytes are a clean run's."""
    inputs, clean = three_shards
    product = ray_actor.ShardWorker
    monkeypatch.setattr(ray_actor, "ShardWorker", actor)
    out = tmp_path / "out"
    committed = [out / "a.jsonl.out", out / "b.jsonl.out"]

    def stop_once_committed() -> None:
        wait_for(lambda: all(path.exists() for path in committed))
        _thread.interrupt_main()  # Ctrl-C

    stopper = threading.Thread(target=stop_once_committed)
    stopper.start()
    with pytest.raises(KeyboardInterrupt):
        run(inputs, out, model_dir, **THREE_OPTIONS)
    stopper.join()

    assert progress(out) == {str(inputs / "a.jsonl"): 600, str(inputs / "b.jsonl"): 400}
    assert sorted(p.name for p in out.iterdir()) == ["_PROGRESS", "a.jsonl.out", "b.jsonl.out"]

    monkeypatch.setattr(ray_actor, "ShardWorker", product)
    summary, _ = run(inputs, out, model_dir, resume=True, **THREE_OPTIONS)
    assert (summary.shards_ok, summary.shards_skipped) == (1, 2)
    assert summary.records_out == sum(THREE.values())  # the skipped shards counted too
    assert tree(out) == tree(clean)


@pytest.mark.ray
def test_what_a_node_actor_committed_stays_done_when_its_call_fails_later(
    ray_instance, model_dir, tmp_path, three_shards, monkeypatch
):
    """A GPU's actor commits all its call's shards but the last, then dies, each time
    Ray retries the call: the last shard fails alone, the others are ok and counted."""
    inputs, clean = three_shards
    monkeypatch.setattr(ray_actor, "ShardWorker", ray_servers.ShardWorkerLostWithItsLastShard)
    summary, logged = run(inputs, tmp_path / "out", model_dir, max_retries=1, **THREE_OPTIONS)

    assert (summary.shards_ok, summary.shards_failed) == (2, 1)
    assert summary.records_out == 1000
    [failure] = summary.failed
    assert failure["shard"] == str(inputs / "c.jsonl")
    assert "its Ray actor died" in failure["reason"]
    assert f"o2v-batch: shard failed: {failure['reason']}" in logged
    assert tree(tmp_path / "out") == {k: v for k, v in tree(clean).items() if k != "c.jsonl.out"}


@pytest.mark.ray
def test_sigterm_stops_a_ray_job_with_143_and_resume_finishes_it(ray_instance, model_dir, tmp_path):
    """The command with --engine ray (a Ray of its own) gets SIGTERM once a shard is
    written: it exits 143, as the local engine does, after the summary so far, with no
    temp file left and every committed shard counted in _PROGRESS; --resume counts
    them all and writes a clean run's bytes."""
    for i in range(8):
        write_jsonl(tmp_path / "in" / f"s{i}.jsonl", random_records(3000, seed=i))
    clean, _ = run(tmp_path / "in", tmp_path / "clean", model_dir, max_payload=0.002)
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    command = [sys.executable, "-m", "o2v_batch", "transform", str(tmp_path / "in"), str(out)]
    options = ["--model", str(model_dir), "--engine", "ray", "--max-payload", "0.002"]
    process = subprocess.Popen(
        [*command, *options, "--no-progress"], env=env, stderr=subprocess.PIPE, text=True
    )
    try:
        wait_for(lambda: list(out.glob("*.out")))
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 143, stderr
    assert "o2v-batch: terminated" in stderr and "o2v-batch: shards: " in stderr
    done = sorted(path.name for path in out.glob("*.out"))
    assert 0 < len(done) < 8, stderr
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == []
    assert progress(out) == {str(tmp_path / "in" / name[: -len(".out")]): 3000 for name in done}

    summary, _ = run(tmp_path / "in", out, model_dir, engine="ray", resume=True, max_payload=0.002)
    assert (summary.shards_ok, summary.shards_skipped) == (8 - len(done), len(done))
    assert summary.records_out == clean.records_out == 24000
    assert tree(out) == tree(tmp_path / "clean")


@pytest.mark.ray
def test_sigterm_left_at_its_default_ends_a_python_api_job_with_143_once_it_has_unwound(
    ray_instance, model_dir, tmp_path, request
):
    """transform() from a program that leaves SIGTERM at its default: the signal, arriving
    while the driver waits on Ray, ends the job as SystemExit(143) once it has unwound,
    as the CLI's handler does: committed shards counted in _PROGRESS, no temp file."""
    for i in range(8):
        write_jsonl(tmp_path / "in" / f"s{i}.jsonl", random_records(3000, seed=i))
    out = tmp_path / "out"
    # This module's Ray (ray_instance) put in a handler of its own.
    previous = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    request.addfinalizer(lambda: signal.signal(signal.SIGTERM, previous))

    def terminate_once_written() -> None:
        wait_for(lambda: list(out.glob("*.out")))
        os.kill(os.getpid(), signal.SIGTERM)

    terminator = threading.Thread(target=terminate_once_written)
    terminator.start()
    with pytest.raises(SystemExit) as stopped:
        run(tmp_path / "in", out, model_dir, engine="ray", max_payload=0.002)
    terminator.join()

    assert stopped.value.code == 143
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # as the program left it
    done = sorted(path.name for path in out.glob("*.out"))
    assert 0 < len(done) < 8
    assert [path.name for path in out.iterdir() if path.name.startswith(".")] == []
    assert progress(out) == {str(tmp_path / "in" / name[: -len(".out")]): 3000 for name in done}


def _kill_device_process(timeout: float = 60.0) -> bool:
    """SIGKILL the first worker a ShardWorker actor started (its device process: the
    crew starts device processes first), once it has loaded the model."""
    import psutil

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for actor in psutil.process_iter(["cmdline"]):
            if not any("ShardWorker" in part for part in actor.info["cmdline"] or []):
                continue
            with contextlib.suppress(psutil.Error):
                workers = [
                    child for child in actor.children() if "spawn_main" in " ".join(child.cmdline())
                ]
                workers.sort(key=lambda child: child.create_time())
                # Loaded: torch's library is mapped (a host worker never maps it).
                if workers and any("libtorch" in m.path for m in workers[0].memory_maps()):
                    workers[0].kill()
                    return True
        time.sleep(0.05)
    return False


@pytest.mark.ray
def test_resume_skips_finished_shards_without_starting_actors(
    ray_instance, inputs, served_by, reference, tmp_path
):
    local_out, _ = reference("small-mini-batches")
    shutil.copytree(local_out / "sub", tmp_path / "out")
    before = tree(tmp_path / "out")
    model = served_by("nowhere:Nothing")  # an actor would fail to start
    summary, _ = run(inputs / "sub", tmp_path / "out", model, engine="ray", resume=True)
    assert (summary.shards_ok, summary.shards_skipped) == (0, 2)
    assert tree(tmp_path / "out") == before
    assert (tmp_path / "out" / "_SUCCESS").exists()


@pytest.mark.ray
@pytest.mark.s3
def test_s3_in_s3_out_with_an_s3_model_equals_the_local_engine(
    ray_instance, s3_server, s3_bucket, inputs, model_dir, reference
):
    client = s3_server.client()
    for path in sorted(inputs.rglob("*")):
        if path.is_file():
            key = "in/" + path.relative_to(inputs).as_posix()
            client.put_object(Bucket=s3_bucket, Key=key, Body=path.read_bytes())
    for name in ("hyperparameters.json", "model.safetensors"):
        body = (model_dir / name).read_bytes()
        client.put_object(Bucket=s3_bucket, Key=f"model/{name}", Body=body)
    # An upload an earlier, killed run left open to an output: the job aborts it.
    client.create_multipart_upload(Bucket=s3_bucket, Key="out/a.jsonl.out")
    base = f"s3://{s3_bucket}"
    args = ["transform", f"{base}/in/", f"{base}/out/", "--model", f"{base}/model/"]
    result = CliRunner().invoke(main, [*args, "--max-payload", "0.001", "--engine", "ray"])
    assert result.exit_code == 1, result.output  # bad.jsonl and big.json fail

    listing = client.list_objects_v2(Bucket=s3_bucket, Prefix="out/").get("Contents", [])
    written = {
        item["Key"][len("out/") :]: client.get_object(Bucket=s3_bucket, Key=item["Key"])[
            "Body"
        ].read()
        for item in listing
    }
    local_out, local = reference("small-mini-batches")
    # Two shards failed: the progress a --resume counts from is there, beside the outputs.
    progress = json.loads(written.pop("_PROGRESS"))
    assert written == tree(local_out)
    assert progress["shards_failed"] == local.shards_failed == 2
    assert progress["records_out"] == local.records_out
    assert client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", []) == []
    failures = sorted(line for line in result.output.splitlines() if "shard failed" in line)
    expected = [f"o2v-batch: shard failed: {f['reason']}" for f in by_shard(local.failed)]
    assert failures == [line.replace(str(inputs), f"{base}/in") for line in expected]


@pytest.mark.ray
@pytest.mark.parametrize("accept", ["application/vnd.apache.parquet", "application/x-npy"])
def test_columnar_outputs_are_byte_identical_to_the_local_engine(
    ray_instance, inputs, model_dir, tmp_path, accept
):
    options = {"accept": accept, "max_payload": 0.001, "on_bad_record": "emit-error"}
    local_summary, _ = run(inputs, tmp_path / "local", model_dir, workers=1, **options)
    summary, _ = run(inputs, tmp_path / "ray", model_dir, engine="ray", **options)
    suffix = ".npy" if accept.endswith("npy") else ".parquet"
    names = ["a.jsonl", "bad.jsonl", "big.json", "sub/b.json", "sub/deeper/c.jsonl.gz"]
    assert sorted(tree(tmp_path / "local")) == [name + suffix for name in names]
    assert tree(tmp_path / "ray") == tree(tmp_path / "local")
    assert_same_summary(summary, local_summary)


# -- faults -------------------------------------------------------------------------


def faulty_model(model_dir: Path, tmp_path: Path) -> Path:
    """A copy of the model, so the marker file is this test's own."""
    return Path(shutil.copytree(model_dir, tmp_path / "model"))


@pytest.fixture
def served_by(monkeypatch, model_dir, tmp_path):
    """served_by("module:function"): a copy of the model whose Ray actors build that
    server instead of the product's (ray_servers.py)."""
    monkeypatch.setattr(ray_actor, "ShardWorker", ray_servers.ShardWorkerWithServers)

    def model(factory: str) -> Path:
        copy = faulty_model(model_dir, tmp_path)
        (copy / ray_servers.SERVERS).write_text(factory)
        return copy

    return model


@pytest.mark.ray
@pytest.mark.parametrize("factory", ["CrashOnce", "HangOnce"])
def test_an_actor_that_dies_or_hangs_mid_shard_is_restarted_and_the_shard_retried(
    ray_instance, inputs, served_by, reference, tmp_path, factory
):
    model = served_by(f"faulty_servers:{factory}")
    summary, _ = run(
        inputs,
        tmp_path / "out",
        model,
        engine="ray",
        invocation_timeout=HANG_S,
        **CASES["small-mini-batches"],
    )
    assert (model / "misbehaved").exists()  # it did misbehave once
    assert summary.worker_restarts == 1
    # Same bytes as an unfaulted run, and no temp file left by the killed actor.
    local_out, local = reference("small-mini-batches")
    assert tree(tmp_path / "out") == tree(local_out)
    assert_same_summary(summary, local)


@pytest.mark.ray
@pytest.mark.parametrize("factory", ["AlwaysCrash", "AlwaysHang", "AlwaysRaise"])
def test_a_shard_whose_retries_run_out_fails_alone(
    ray_instance, inputs, model_dir, served_by, reference, tmp_path, replace_servers, factory
):
    options = {**CASES["small-mini-batches"], "max_retries": 1, "invocation_timeout": HANG_S}
    model = served_by(f"faulty_servers:{factory}")
    summary, logged = run(inputs, tmp_path / "out", model, engine="ray", **options)

    shard = str(inputs / "a.jsonl")
    failure = {f["shard"]: f["reason"] for f in summary.failed}[shard]
    if factory == "AlwaysCrash":
        pattern = (
            r": its Ray actor died \(Actor\w*Error; Ray's logs say why\); gave up after 2 attempts"
        )
        assert re.fullmatch(re.escape(shard) + pattern, failure)
    elif factory == "AlwaysHang":  # worded as the local engine words a hung worker
        pattern = (
            rf": mini-batch from line \d+: worker \d+ timed out after {HANG_S:g} s "
            r"\(--invocation-timeout\); gave up after 2 attempts"
        )
        assert re.fullmatch(re.escape(shard) + pattern, failure)
    else:  # worded as the local engine words it
        replace_servers(f"faulty_servers:{factory}")
        local, _ = run(inputs, tmp_path / "local", model_dir, workers=1, **options)
        assert failure == {f["shard"]: f["reason"] for f in local.failed}[shard]
        assert failure.startswith(f"{shard}: mini-batch from line ")
        assert failure.endswith(
            ": the worker raised RuntimeError: the model broke on a marked record; gave up after 2 attempts"
        )
    assert f"o2v-batch: shard failed: {failure}" in logged
    assert summary.shards_failed == 3  # with bad.jsonl and big.json
    local_out, _ = reference("small-mini-batches")
    assert tree(tmp_path / "out") == {
        k: v for k, v in tree(local_out).items() if k != "a.jsonl.out"
    }


@pytest.mark.ray
def test_a_model_that_cannot_load_fails_the_job(ray_instance, inputs, served_by, tmp_path):
    model = served_by("fake_servers:FailToLoad")
    with pytest.raises(O2VError) as caught:
        run(inputs, tmp_path / "out", model, engine="ray")
    assert str(caught.value) == "cannot load the model on cpu: ValueError: no such model"
    assert tree(tmp_path / "out") == {}


# -- no Ray needed ------------------------------------------------------------------


def test_missing_ray_says_how_to_install_it(monkeypatch, inputs, tmp_path, model_dir):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now raises ImportError
    with pytest.raises(O2VError) as caught:
        run(inputs, tmp_path / "out", model_dir, engine="ray")
    assert (
        str(caught.value)
        == MISSING_RAY
        == (
            "--engine ray needs Ray: pip install -e '.[ray]' in a checkout, "
            'or pip install "$(ls dist/o2v_batch-*.whl)[ray]" for a built wheel'
        )
    )
    args = ["transform", str(inputs), str(tmp_path / "out"), "--model", str(model_dir)]
    result = CliRunner().invoke(main, [*args, "--engine", "ray"])
    assert result.exit_code == 2  # a usage error, as every missing extra is
    assert result.output.endswith(f"Error: {MISSING_RAY}\n")
    assert not (tmp_path / "out").exists()


@pytest.mark.ray
@pytest.mark.parametrize("stdio", ["input", "output"])
def test_stdin_and_stdout_are_refused(inputs, tmp_path, model_dir, stdio):
    pytest.importorskip("ray")
    paths = {"input": inputs, "output": tmp_path / "out", stdio: "-"}
    with pytest.raises(ConfigError) as caught:
        run(paths["input"], paths["output"], model_dir, engine="ray")
    assert str(caught.value) == (
        "--engine ray reads and writes shards on the cluster: "
        "INPUT and OUTPUT cannot be - (stdin or stdout)"
    )


def gpu_actors(count: int, cores: int, hosts: int) -> ActorPlan:
    node = ((DEVICE, "cuda:0", 1),) + ((HOST, "cuda:0", 1),) * hosts
    return ActorPlan(count, "cuda:0", 1, {"num_gpus": 1, "num_cpus": cores}, node)


def config_with(**options) -> TransformConfig:
    return TransformConfig(input="in", output="out", model="m", engine="ray", **options)


@pytest.mark.parametrize(
    ("options", "shards", "cluster", "expected"),
    [
        # (cluster CPUs, largest node's CPUs, GPUs)
        ({}, 10, (2, 2, 0), ActorPlan(1, "cpu", 2, {"num_cpus": 2.0})),
        ({}, 10, (16, 8, 0), ActorPlan(8, "cpu", 2, {"num_cpus": 2.0})),
        ({}, 3, (16, 8, 0), ActorPlan(3, "cpu", 2, {"num_cpus": 2.0})),
        ({}, 10, (1, 1, 0), ActorPlan(1, "cpu", 1, {"num_cpus": 1.0})),
        ({"workers": 2}, 10, (2, 2, 0), ActorPlan(2, "cpu", 1, {"num_cpus": 1.0})),
        ({"workers": 4}, 10, (2, 2, 0), ActorPlan(4, "cpu", 1, {"num_cpus": 0.5})),
        ({"workers": 1}, 10, (16, 4, 0), ActorPlan(1, "cpu", 4, {"num_cpus": 4.0})),
        ({"devices": "cpu"}, 10, (16, 8, 2), ActorPlan(8, "cpu", 2, {"num_cpus": 2.0})),
        # An actor per GPU, each a node of the local engine on its share of the cores: a
        # device process and host workers (one per core left, or --workers in all).
        ({}, 10, (16, 8, 2), gpu_actors(2, cores=8, hosts=7)),
        ({}, 10, (4, 4, 2), gpu_actors(2, cores=2, hosts=1)),
        ({}, 10, (1, 1, 2), gpu_actors(2, cores=1, hosts=1)),
        ({"devices": "cuda"}, 1, (16, 8, 4), gpu_actors(1, cores=4, hosts=3)),
        ({"workers": 3}, 10, (16, 8, 2), gpu_actors(2, cores=8, hosts=2)),
        ({"workers": 2}, 10, (16, 8, 2), gpu_actors(2, cores=8, hosts=1)),
        # The GPU nodes' fewest cores per GPU, where the driver found some.
        ({}, 10, (40, 32, 2, 4), gpu_actors(2, cores=4, hosts=3)),
    ],
)
def test_plan_actors(options, shards, cluster, expected):
    assert plan_actors(config_with(**options), shards, *cluster) == expected


def test_a_gpu_actor_takes_shards_enough_for_its_host_workers_within_a_fair_share():
    """A GPU's actor serves several shards at once (its host workers would idle on one
    small shard): up to every host worker's mini-batches in flight, but no more than an
    even share of what is left among the actors. A CPU actor takes one at a time."""
    MiB, KiB = 2**20, 2**10
    config = config_with(max_payload=1, max_concurrent_transforms=2)
    gpu = gpu_actors(2, cores=4, hosts=3)  # 6 mini-batches in flight: 6 shards, 6 MiB

    def groups(plan: ActorPlan, sizes: list[int]) -> list[list[int]]:
        take, todo = ray_driver._taker(config, plan, sizes), deque(range(len(sizes)))
        return [take(todo) for _ in iter(lambda: bool(todo), False)]

    sizes = [10 * MiB, 2 * MiB, 2 * MiB] + [1 * MiB] * 7
    assert groups(gpu, sizes) == [[0], [1, 2, 3], [4, 5, 6], [7], [8], [9]]
    tiny = [KiB] * 20
    assert [len(g) for g in groups(gpu, tiny)] == [6, 6, 4, 2, 1, 1]
    cpu = plan_actors(config, 20, 8, 8, 0)
    assert groups(cpu, tiny) == [[i] for i in range(20)]


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("cuda", "--devices cuda: the Ray cluster has no GPUs"),
        (
            "cuda:0,cuda:1",
            "--devices cuda:0,cuda:1: with --engine ray, Ray assigns the GPUs (use auto, cuda or cpu)",
        ),
    ],
)
def test_plan_actors_refuses_devices_ray_cannot_give(devices, message):
    with pytest.raises(ConfigError) as caught:
        plan_actors(config_with(devices=devices), 4, 8, 8, 0)
    assert str(caught.value) == message


def test_discard_partial_removes_only_the_killed_writers_temp_file(tmp_path):
    (tmp_path / "sub").mkdir()
    names = [
        ".a.jsonl.out.0123456789ab.tmp",  # a.jsonl.out's: goes
        ".a.jsonl.out.0123456789ab.tmp.x",
        ".ab.jsonl.out.0123456789ab.tmp",
        ".a.jsonl.out.zz.tmp",
        "a.jsonl.out",
    ]
    for name in names:
        (tmp_path / "sub" / name).write_text("x")
    discard_partial([str(tmp_path / "sub" / "a.jsonl.out")])
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(names[1:])


@pytest.mark.s3
def test_discard_partial_aborts_only_the_outputs_multipart_upload(s3_server, s3_bucket, caplog):
    client = s3_server.client()
    for key in ("out/a.jsonl.out", "out/a.jsonl.out2"):
        client.create_multipart_upload(Bucket=s3_bucket, Key=key)
    discard_partial([f"s3://{s3_bucket}/out/a.jsonl.out"])
    left = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [upload["Key"] for upload in left] == ["out/a.jsonl.out2"]
    assert not caplog.records  # said only when it cannot (test_io_s3.py)


# -- the examples -------------------------------------------------------------------

EXAMPLES = TESTS.parent / "examples"


def assert_transform_command(args: list[str]) -> None:
    """An example's command line is o2v-batch transform with options that exist and parse."""
    assert args[:2] == ["o2v-batch", "transform"]
    main.commands["transform"].make_context("transform", list(args[2:]))


def stub(bin_dir: Path, name: str) -> None:
    """A stand-in command that writes its arguments, one a line, to $STUB_ARGS, and exits
    with $STUB_STATUS."""
    bin_dir.mkdir(exist_ok=True)
    path = bin_dir / name
    path.write_text('#!/bin/sh\nprintf \'%s\\n\' "$@" > "$STUB_ARGS"\nexit "${STUB_STATUS:-0}"\n')
    path.chmod(0o755)


def run_example(script: str, tmp_path: Path, *args: str, **env: str) -> tuple[int, list[str], str]:
    """Runs examples/<script> with stubs first on PATH: (status, stub's arguments, stderr)."""
    environ = {
        **os.environ,
        "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}",
        "STUB_ARGS": str(tmp_path / "args"),
        **env,
    }
    done = subprocess.run(
        ["bash", str(EXAMPLES / script), *args], env=environ, capture_output=True, text=True
    )
    called = tmp_path / "args"
    return done.returncode, called.read_text().splitlines() if called.exists() else [], done.stderr


def test_kubernetes_indexed_job_runs_one_share_per_pod():
    yaml = pytest.importorskip("yaml")
    job = yaml.safe_load((EXAMPLES / "kubernetes-indexed-job.yaml").read_text())
    spec = job["spec"]
    command = spec["template"]["spec"]["containers"][0]["command"]
    assert_transform_command(command)
    shards = int(command[command.index("--num-shards") + 1])
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == (
        "Indexed",
        shards,
        shards,
    )
    # The index comes from JOB_COMPLETION_INDEX; --resume makes a retried pod finish its share.
    assert "--resume" in command and "--shard-index" not in command


def test_aws_batch_array_job_submits_n_children_of_n_shards(tmp_path):
    stub(tmp_path / "bin", "aws")
    env = {"N": "6", "JOB_QUEUE": "queue", "JOB_DEFINITION": "o2v"}
    status, args, _ = run_example("aws-batch-array-job.sh", tmp_path, **env)
    assert status == 0
    assert args[:2] == ["batch", "submit-job"]
    assert args[args.index("--array-properties") + 1] == "size=6"
    command = json.loads(args[args.index("--container-overrides") + 1])["command"]
    assert_transform_command(command)
    assert command[command.index("--num-shards") + 1] == "6"
    assert "--resume" in command and "--shard-index" not in command


def test_ray_submit_runs_the_ray_engine_as_a_ray_job(tmp_path):
    stub(tmp_path / "bin", "ray")
    status, args, _ = run_example("ray-submit.sh", tmp_path, RAY_ADDRESS="http://head:8265")
    assert status == 0
    assert args[:4] == ["job", "submit", "--address", "http://head:8265"]
    command = args[args.index("--") + 1 :]
    assert_transform_command(command)
    assert command[command.index("--engine") + 1] == "ray"


@pytest.mark.parametrize("exit_status", [0, 1, 2])
def test_nightly_transforms_yesterday_with_resume_and_passes_the_status_on(tmp_path, exit_status):
    stub(tmp_path / "bin", "o2v-batch")
    env = {"IN_ROOT": "s3://b/events", "OUT_ROOT": "s3://b/emb", "LOCK": str(tmp_path / "lock")}
    status, args, _ = run_example(
        "nightly.sh", tmp_path, "--engine", "ray", STUB_STATUS=str(exit_status), **env
    )
    assert status == exit_status
    day = (datetime.date.today() - datetime.timedelta(days=1)).strftime("%Y/%m/%d")
    assert args[:3] == ["transform", f"s3://b/events/{day}/", f"s3://b/emb/{day}/"]
    assert_transform_command(["o2v-batch", *args])
    assert "--resume" in args and args[-2:] == ["--engine", "ray"]


def test_nightly_does_not_start_while_another_run_holds_the_lock(tmp_path):
    stub(tmp_path / "bin", "o2v-batch")
    lock = tmp_path / "lock"
    with lock.open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        status, args, stderr = run_example("nightly.sh", tmp_path, LOCK=str(lock), DAY="2024/05/01")
    assert (status, args) == (75, [])
    assert stderr == f"o2v-nightly: another run holds {lock}; not starting\n"


@pytest.mark.slow  # whole jobs
@pytest.mark.parametrize("engine", ["local", pytest.param("ray", marks=pytest.mark.ray)])
def test_an_output_that_cannot_be_written_fails_its_shard_alone(
    request, inputs, model_dir, tmp_path, engine
):
    """Both engines write a shard's output through the same writer: a folder that is a
    file fails that shard, named by its output, and the others are written."""
    if engine == "ray":
        request.getfixturevalue("ray_instance")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").write_text("a file where the shard's folder goes")
    summary, logged = run(inputs, out, model_dir, engine=engine)
    reasons = sorted(f["reason"] for f in summary.failed if "/sub/" in f["shard"])
    assert [reason.rpartition(": ")[0] for reason in reasons] == [
        f"cannot write {out}/sub/b.json.out",
        f"cannot write {out}/sub/deeper/c.jsonl.gz.out",
    ]
    assert [reason.rpartition(": ")[2] for reason in reasons] == [
        "File exists",  # the folder to make is a file
        "Not a directory",  # a folder to make is under that file
    ]
    assert summary.shards_ok == 2  # a.jsonl and big.json (bad.jsonl fails on a record)
    said = [line for line in logged if line.startswith("o2v-batch: shard failed: ")]
    for reason in reasons:  # each said once, as it happened
        assert sum(line.endswith(reason) for line in said) == 1, said
    assert (out / "a.jsonl.out").read_bytes().count(b"\n") == 121
