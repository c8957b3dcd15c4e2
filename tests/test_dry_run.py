"""`transform --dry-run`: its plan is the job's (outputs, --resume skips, array-job
nodes, formats, mini-batches), it names bad records as the job does and exits as the
job would, and it starts no worker and writes nothing but the --summary file."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_model, random_records, write_json, write_jsonl

from o2v_batch.config import TransformConfig
from o2v_batch.jobs.dry_run import PREVIEW_RECORDS, ShardPreview, dry_run
from o2v_batch.jobs.transform import transform

JSONL, JSON = "application/jsonlines", "application/json"
# The JSON form's keys, as the README documents them.
TOP_KEYS = {
    "dry_run",
    "model",
    "num_shards",
    "shard_index",
    "records_checked_per_shard",
    "shards",
    "totals",
    "exit_status",
}
TOTALS_KEYS = {
    "process",
    "skip",
    "other-node",
    "fail",
    "mini_batches",
    "records_checked",
    "bad_records",
}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


def _inputs(root: Path) -> Path:
    write_jsonl(root / "a.jsonl", random_records(40, seed=1))
    write_json(root / "x" / "b.json", random_records(30, seed=2))
    data = b"".join(json.dumps(r).encode() + b"\n" for r in random_records(25, seed=3))
    (root / "x" / "y").mkdir()
    (root / "x" / "y" / "c.jsonl.gz").write_bytes(gzip.compress(data))
    return root


def _cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "o2v_batch", "transform", *map(str, args), "--no-progress"]
    return subprocess.run(command, capture_output=True, text=True, input=stdin, timeout=120)


def _job(input_uri, output_uri, model, **options):
    config = TransformConfig(
        input=str(input_uri), output=str(output_uri), model=str(model), workers=1, **options
    )
    return transform(config, log=lambda line: None)


def _preview(input_uri, output_uri, model, **options):
    config = TransformConfig(
        input=str(input_uri), output=str(output_uri), model=str(model), **options
    )
    return dry_run(config)


def _files(root: Path) -> set[str]:
    return (
        {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
        if root.exists()
        else set()
    )


def _by_status(shards: list[ShardPreview], status: str) -> set[str]:
    return {s.output or s.input for s in shards if s.status == status}


@pytest.mark.slow  # a whole job to compare with
def test_the_plan_is_what_the_job_writes(tmp_path, model_dir):
    inputs, out = _inputs(tmp_path / "in"), tmp_path / "out"
    summary = tmp_path / "plan.json"
    before = _files(tmp_path)
    options = ["--model", model_dir, "--max-payload", "1KB", "--summary", summary, "--workers", "1"]
    done = _cli(inputs, out, *options, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert _files(tmp_path) == before | {"plan.json"}, "the summary is all it writes"
    plan = json.loads(summary.read_text())
    lines = done.stdout.splitlines()
    assert len(lines) == len(plan["shards"]) + 1 == 4, "one line per shard, then the whole"
    assert lines[0].startswith(f"process  {inputs / 'a.jsonl'} -> {out / 'a.jsonl.out'}  {JSONL}")
    formats = {Path(s["input"]).name: (s["content_type"], s["accept"]) for s in plan["shards"]}
    assert formats == {
        "a.jsonl": (JSONL, JSONL),
        "b.json": (JSON, JSON),
        "c.jsonl.gz": (JSONL, JSONL),
    }

    summary.unlink()
    assert _cli(inputs, out, *options).returncode == 0
    written = json.loads(summary.read_text())
    assert {str(out / f) for f in _files(out) - {"_SUCCESS"}} == {
        s["output"] for s in plan["shards"]
    }
    # Every shard is under 100 records: read whole, its count is exact, not an estimate.
    assert all(s["mini_batches_exact"] for s in plan["shards"])
    assert plan["totals"]["mini_batches"] == written["mini_batches"] > 3
    assert plan["totals"]["records_checked"] == written["records_in"] == 95


def test_the_json_form_has_its_documented_schema(tmp_path, model_dir):
    inputs = _inputs(tmp_path / "in")
    summary = tmp_path / "plan.json"
    _preview(inputs, tmp_path / "out", model_dir, summary=str(summary), num_shards=2)
    plan = json.loads(summary.read_text())
    assert set(plan) == TOP_KEYS
    assert plan["dry_run"] is True and plan["exit_status"] == 0
    assert plan["records_checked_per_shard"] == PREVIEW_RECORDS
    assert set(plan["totals"]) == TOTALS_KEYS
    assert set(plan["shards"][0]) == set(ShardPreview.__dataclass_fields__)
    assert {s["status"] for s in plan["shards"]} == {"process", "other-node"}
    assert plan["totals"]["process"] + plan["totals"]["other-node"] == 3


@pytest.mark.slow  # whole jobs to compare with
def test_resume_skips_what_the_job_skips(tmp_path, model_dir):
    inputs, out = _inputs(tmp_path / "in"), tmp_path / "out"
    _job(inputs / "a.jsonl", out, model_dir)
    _job(inputs / "x" / "b.json", out / "x", model_dir)
    plan = _preview(inputs, out, model_dir, resume=True)
    assert _by_status(plan.shards, "skip") == {
        str(out / "a.jsonl.out"),
        str(out / "x" / "b.json.out"),
    }
    assert _by_status(plan.shards, "process") == {str(out / "x" / "y" / "c.jsonl.gz.out")}
    summary = _job(inputs, out, model_dir, resume=True)
    assert {s["shard"] for s in summary.skipped} == {
        str(inputs / "a.jsonl"),
        str(inputs / "x" / "b.json"),
    }
    assert summary.shards_ok == 1


@pytest.mark.slow  # whole jobs to compare with
def test_each_array_node_is_planned_as_it_runs(tmp_path, model_dir):
    inputs = tmp_path / "in"
    for i, n in enumerate((50, 5, 20, 20, 8)):
        write_jsonl(inputs / f"s{i}.jsonl", random_records(n, seed=i))
    planned, written = [], []
    for node in (0, 1):
        out = tmp_path / f"out{node}"
        plan = _preview(inputs, tmp_path / "out", model_dir, num_shards=2, shard_index=node)
        planned.append({Path(s.input).name for s in plan.shards if s.status == "process"})
        others = {Path(s.input).name for s in plan.shards if s.status == "other-node"}
        assert others | planned[-1] == {f"s{i}.jsonl" for i in range(5)}
        assert not others & planned[-1]
        _job(inputs, out, model_dir, num_shards=2, shard_index=node)
        written.append({f.removesuffix(".out") for f in _files(out) if f.endswith(".out")})
    assert planned == written
    assert all(planned), "both nodes have shards"


@pytest.mark.slow  # whole jobs to compare with
@pytest.mark.parametrize(
    "name, content, place",
    [
        ("bad.jsonl", '{"in0": [1]}\n{"in0": [1]}\n{"in0": [999]}\n{"in1": [2]}\n', "line 3"),
        ("bad.json", '{"instances": [{"in0": [1]}, {"in1": "x"}]}', "instances[1]"),
    ],
)
@pytest.mark.parametrize("policy, status", [("fail", 1), ("emit-error", 0)])
def test_a_bad_record_is_named_as_the_job_names_it(
    tmp_path, model_dir, name, content, place, policy, status
):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_text(content)
    write_jsonl(tmp_path / "in" / "good.jsonl", random_records(5))
    out, summary = tmp_path / "out", tmp_path / "job.json"
    options = ["--model", model_dir, "--on-bad-record", policy, "--workers", "1"]
    done = _cli(tmp_path / "in", out, *options, "--dry-run")
    assert done.returncode == status, done.stderr
    assert not out.exists()
    shard = tmp_path / "in" / name
    [message] = [
        line for line in done.stderr.splitlines() if line.startswith("o2v-batch: bad record: ")
    ]
    assert message.startswith(f"o2v-batch: bad record: {shard}: {place}: ")
    [line] = [line for line in done.stdout.splitlines() if f" {shard} -> " in line]
    assert line.startswith("fail " if policy == "fail" else "process ")

    job = _cli(tmp_path / "in", out, *options, "--summary", summary)
    assert job.returncode == status, job.stderr
    written = json.loads(summary.read_text())
    if policy == "fail":
        reason = message.removeprefix("o2v-batch: bad record: ")
        assert written["failed"] == [{"shard": str(shard), "reason": reason}]
        assert line.endswith(f"would fail: {reason}")
    else:
        assert written["bad_records_by_shard"] == {str(shard): 1}


@pytest.mark.slow  # a whole job to compare with
def test_a_shard_fails_at_the_record_the_job_fails_at(tmp_path, model_dir):
    # The workers read every record of a mini-batch before they check token ids: the
    # malformed line 3 fails the shard, not the out-of-range id on line 1.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"in0": [999]}\n{"in0": [1]}\nnope\n')
    plan = _preview(tmp_path / "in", tmp_path / "out", model_dir)
    [shard] = plan.shards
    assert [b["line"] for b in shard.bad_records] == [1, 3]
    assert shard.reason.startswith(f"{tmp_path / 'in' / 'a.jsonl'}: line 3, column 1: ")
    summary = _job(tmp_path / "in", tmp_path / "out", model_dir)
    assert summary.failed == [{"shard": shard.input, "reason": shard.reason}]


def test_a_corrupt_shard_fails_under_either_policy(tmp_path, model_dir):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl.gz").write_bytes(gzip.compress(b'{"in0": [1]}\n' * 9)[:-12])
    plan = _preview(tmp_path / "in", tmp_path / "out", model_dir, on_bad_record="emit-error")
    [shard] = plan.shards
    assert (shard.status, plan.exit_status) == ("fail", 1)
    summary = _job(tmp_path / "in", tmp_path / "out", model_dir, on_bad_record="emit-error")
    assert summary.failed == [{"shard": shard.input, "reason": shard.reason}]


def test_existing_outputs_are_refused_as_the_job_refuses_them(tmp_path, model_dir):
    inputs, out = _inputs(tmp_path / "in"), tmp_path / "out"
    write_jsonl(out / "a.jsonl.out", [{"earlier": 1}])
    dry = _cli(inputs, out, "--model", model_dir, "--dry-run")
    job = _cli(inputs, out, "--model", model_dir, "--workers", "1")
    assert dry.returncode == job.returncode == 2
    assert "Error: output already exists: " in dry.stderr
    assert dry.stderr == job.stderr
    assert dry.stdout == ""


def test_it_starts_no_worker_and_imports_no_torch(
    tmp_path, model_dir, monkeypatch, replace_servers
):
    inputs, out = _inputs(tmp_path / "in"), tmp_path / "out"
    # A worker would import this module first (spawned workers get the parent's sys.path).
    marker = tmp_path / "worker-started"
    (tmp_path / "spy.py").write_text(f"open({str(marker)!r}, 'w').close()\nServer = None\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    replace_servers("spy:Server")
    plan = _preview(inputs, out, model_dir)
    assert plan.exit_status == 0 and not marker.exists() and not out.exists()
    with pytest.raises(Exception):  # noqa: B017 - the job itself does start one
        _job(inputs, out, model_dir, max_retries=0)
    assert marker.exists()

    code = (
        "import sys\nfrom o2v_batch.cli import main\n"
        f"try:\n    main({['transform', str(inputs), str(out), '--model', str(model_dir), '--dry-run']!r})\n"
        "except SystemExit as exit:\n    print('torch' in sys.modules, exit.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.splitlines()[-1] == "False 0", done.stderr


@pytest.mark.slow  # whole jobs to compare with
def test_a_large_shards_mini_batches_are_estimated(tmp_path, model_dir):
    inputs = tmp_path / "in"
    write_jsonl(inputs / "big.jsonl", random_records(4 * PREVIEW_RECORDS, seed=5, pairs=False))
    data = b"".join(json.dumps(r).encode() + b"\n" for r in random_records(300, seed=6))
    (inputs / "big.jsonl.gz").write_bytes(gzip.compress(data))
    plan = _preview(inputs, tmp_path / "out", model_dir, max_payload=2 / 1024)
    big, packed = plan.shards
    assert (big.records_checked, big.mini_batches_exact) == (PREVIEW_RECORDS, False)
    assert packed.mini_batches is None and plan.totals()["mini_batches"] is None
    summary = _job(inputs / "big.jsonl", tmp_path / "out", model_dir, max_payload=2 / 1024)
    assert abs(big.mini_batches - summary.mini_batches) <= 0.2 * summary.mini_batches


def test_stdin_is_read_like_a_shard(tmp_path, model_dir):
    records = "".join(json.dumps(r) + "\n" for r in random_records(7))
    done = _cli("-", tmp_path / "out", "--model", model_dir, "--dry-run", stdin=records)
    assert done.returncode == 0, done.stderr
    line = done.stdout.splitlines()[0]
    assert line.startswith(f"process  - -> {tmp_path / 'out' / 'stdin.out'}  {JSONL} -> {JSONL}")
    assert "size unknown  1 mini-batch  7 records checked, 0 bad" in line
    assert not (tmp_path / "out").exists()


@pytest.mark.s3
def test_an_s3_job_is_planned_as_it_runs(s3_server, s3_bucket, model_dir, tmp_path):
    client = s3_server.client()
    inputs = _inputs(tmp_path / "in")
    for path in _files(inputs):
        client.put_object(Bucket=s3_bucket, Key=f"in/{path}", Body=(inputs / path).read_bytes())
    source, out = f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out/"
    plan = _preview(source, out, model_dir)
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="out/")
    assert listed["KeyCount"] == 0
    assert [s.records_checked for s in plan.shards] == [40, 30, 25]
    _job(source, out, model_dir)
    listed = client.list_objects_v2(Bucket=s3_bucket, Prefix="out/")
    keys = {f"s3://{s3_bucket}/{item['Key']}" for item in listed["Contents"]}
    assert keys - {out + "_SUCCESS"} == {s.output for s in plan.shards}
