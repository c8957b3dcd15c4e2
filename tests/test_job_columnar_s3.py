"""Parquet and .npy outputs on a real S3 server (SeaweedFS on loopback): the bytes of a
local run, nothing left by a failed shard, and --resume after SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import make_model, random_records, write_json, write_jsonl

from o2v_batch.config import TransformConfig
from o2v_batch.jobs.transform import transform
from o2v_batch.outputs import parquet
from o2v_batch.outputs.responses import NPY, PARQUET

pytestmark = [pytest.mark.s3, pytest.mark.slow]
MiB = 2**20


def run(input_uri, output_uri, model, **options):
    config = TransformConfig(str(input_uri), str(output_uri), str(model), **options)
    return transform(config, log=lambda line: None)


def local_tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "_SUCCESS"
    }


def s3_names(client, bucket: str, prefix: str) -> list[str]:
    """Every object under `prefix`, the job's summary files included, named relative to it."""
    names = []
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        names += [item["Key"][len(prefix) :] for item in page.get("Contents", [])]
    return sorted(names)


def s3_tree(client, bucket: str, prefix: str) -> dict[str, bytes]:
    """The outputs under `prefix` and their bytes, without the summary files."""
    return {
        name: client.get_object(Bucket=bucket, Key=prefix + name)["Body"].read()
        for name in s3_names(client, bucket, prefix)
        if name not in ("_SUCCESS", "_PROGRESS")
    }


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


@pytest.mark.parametrize(
    "options",
    [
        {"accept": PARQUET, "on_bad_record": "emit-error"},
        {
            "accept": PARQUET,
            "join_source": "Input",
            "embedding_dtype": "float16",
            "on_bad_record": "emit-error",
        },
        {"accept": NPY, "on_bad_record": "emit-error"},
    ],
)
def test_s3_output_is_the_local_bytes(s3_server, s3_bucket, model, tmp_path, options):
    records = random_records(60, seed=3)
    write_jsonl(tmp_path / "in" / "a.jsonl", [*records[:30], {"in0": [999]}])
    write_json(tmp_path / "in" / "x" / "b.json", records[30:])
    run(tmp_path / "in", tmp_path / "local", model, **options)
    expected = local_tree(tmp_path / "local")
    suffix = ".npy" if options["accept"] == NPY else ".parquet"
    assert sorted(expected) == [f"a.jsonl{suffix}", f"x/b.json{suffix}"]
    summary = run(tmp_path / "in", f"s3://{s3_bucket}/out/", model, **options)
    assert summary.shards_ok == 2
    assert s3_tree(s3_server.client(), s3_bucket, "out/") == expected


def test_a_failed_shard_leaves_no_object_and_no_upload(s3_server, s3_bucket, tmp_path, monkeypatch):
    client = s3_server.client()
    monkeypatch.setenv("O2V_S3_PART_SIZE", str(5 * MiB))
    monkeypatch.setattr(parquet, "ROW_GROUP_BYTES", MiB)  # row groups stream out as it runs
    wide = make_model(tmp_path / "wide", enc_dim=128)  # 512 bytes a row
    # 12 MiB of Parquet before the bad record: a part is uploaded when it fails.
    good = [{"in0": [1 + i % 50, 2 + i % 7]} for i in range(24_000)]
    write_jsonl(tmp_path / "in" / "big.jsonl", [*good, {"in0": [1, 999]}])
    write_jsonl(tmp_path / "in" / "fine.jsonl", good[:10])
    for accept in (PARQUET, NPY):
        output = f"s3://{s3_bucket}/{accept.rsplit('/', 1)[1]}/"
        # One worker: every mini-batch before the bad one is written before it fails.
        summary = run(tmp_path / "in", output, wide, accept=accept, max_payload=0.05, workers=1)
        assert (summary.shards_ok, summary.shards_failed) == (1, 1)
        assert summary.failed[0]["reason"].endswith(
            "line 24001: in0 id 999 is out of range: vocab size is 60 (ids must be in 0..59)"
        )
        prefix = output.split("/", 3)[3]
        # The shard that finished, and the progress a --resume counts it from.
        names = s3_names(client, s3_bucket, prefix)
        assert names == ["_PROGRESS", "fine.jsonl" + (".npy" if accept == NPY else ".parquet")]
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_resume_after_sigterm_equals_an_uninterrupted_run(s3_server, s3_bucket, model, tmp_path):
    client = s3_server.client()
    for i in range(8):
        write_jsonl(tmp_path / "in" / f"part-{i}.jsonl", random_records(3000, seed=i))
    options = ["--accept", PARQUET, "--max-payload", "0.01", "--workers", "1"]
    run(tmp_path / "in", tmp_path / "reference", model, accept=PARQUET, max_payload=0.01, workers=1)
    expected = local_tree(tmp_path / "reference")
    output = f"s3://{s3_bucket}/out/"
    command = [sys.executable, "-m", "o2v_batch", "transform", str(tmp_path / "in"), output]
    command += ["--model", str(model), *options]
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not client.list_objects_v2(Bucket=s3_bucket, Prefix="out/").get("KeyCount"):
        assert time.monotonic() < deadline and job.poll() is None, "no output appeared"
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 143, stderr
    assert 0 < len(s3_tree(client, s3_bucket, "out/")) < 8
    assert "_PROGRESS" in s3_names(client, s3_bucket, "out/")
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert s3_tree(client, s3_bucket, "out/") == expected
    # The resume that completes the job removes the progress its _SUCCESS now holds.
    assert "_PROGRESS" not in s3_names(client, s3_bucket, "out/")
    assert "records not counted" not in done.stderr
