"""The transform job against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from helpers import make_model, random_records, write_json, write_jsonl

from devservers.local_s3 import LocalS3
from o2v_batch.config import TransformConfig
from o2v_batch.jobs.transform import transform

pytestmark = pytest.mark.s3
MiB = 2**20


def _tree(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _upload(client, bucket: str, prefix: str, root: Path) -> None:
    for rel, data in _tree(root).items():
        client.put_object(Bucket=bucket, Key=f"{prefix}{rel}", Body=data)


def _download(client, bucket: str, prefix: str) -> dict[str, bytes]:
    found = {}
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            found[item["Key"][len(prefix) :]] = body
    return found


def _run(input_uri, output_uri, model, **options):
    return transform(
        TransformConfig(input=str(input_uri), output=str(output_uri), model=str(model), **options),
        log=lambda line: None,
    )


def _without_summary(files: dict[str, bytes]) -> dict[str, bytes]:
    return {k: v for k, v in files.items() if k != "_SUCCESS"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("inputs")
    write_jsonl(root / "a.jsonl", random_records(40, seed=1))
    write_json(root / "x" / "b.json", random_records(30, seed=2))
    (root / "x" / "y").mkdir()
    data = b"".join(json.dumps(r).encode() + b"\n" for r in random_records(25, seed=3))
    (root / "x" / "y" / "c.jsonl.gz").write_bytes(gzip.compress(data))
    return root


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


def test_every_direction_gives_the_local_bytes(s3_server, s3_bucket, inputs, model, tmp_path):
    client = s3_server.client()
    _upload(client, s3_bucket, "in/", inputs)
    # A sibling sharing the string prefix must never be read.
    client.put_object(Bucket=s3_bucket, Key="in_old/stale.jsonl", Body=b'{"in0": [1]}\n')
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name in ("hyperparameters.json", "model.safetensors"):
            tar.add(model / name, arcname=name)
    client.put_object(Bucket=s3_bucket, Key="models/model.tar.gz", Body=buffer.getvalue())
    s3_model = f"s3://{s3_bucket}/models/model.tar.gz"

    reference = _run(inputs, tmp_path / "local", model)
    assert reference.shards_ok == 3
    expected = _without_summary(_tree(tmp_path / "local"))
    assert sorted(expected) == ["a.jsonl.out", "x/b.json.out", "x/y/c.jsonl.gz.out"]

    summary = _run(f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out/", s3_model)
    assert summary.shards_ok == 3
    written = _download(client, s3_bucket, "out/")
    assert _without_summary(written) == expected
    assert json.loads(written["_SUCCESS"])["records_out"] == 95

    _run(f"s3://{s3_bucket}/in", tmp_path / "from-s3", model)  # no trailing slash: the folder
    assert _without_summary(_tree(tmp_path / "from-s3")) == expected

    _run(inputs, f"s3://{s3_bucket}/to-s3/deep/", model)
    assert _without_summary(_download(client, s3_bucket, "to-s3/deep/")) == expected


def test_a_failed_shard_leaves_no_object_and_no_upload(
    s3_server, s3_bucket, model, tmp_path, monkeypatch
):
    client = s3_server.client()
    monkeypatch.setenv("O2V_S3_PART_SIZE", str(5 * MiB))
    # Over 5 MiB of output before the bad record: parts are already uploaded when it fails.
    good = [{"in0": [1 + i % 50] * 3} for i in range(60_000)]
    write_jsonl(tmp_path / "in" / "big.jsonl", [*good, {"in0": [1, 999]}])
    write_jsonl(tmp_path / "in" / "fine.jsonl", good[:10])
    summary = _run(tmp_path / "in", f"s3://{s3_bucket}/out/", model, max_payload=0.5)
    assert (summary.shards_ok, summary.shards_failed) == (1, 1)
    assert summary.failed[0]["reason"].endswith(
        "line 60001: in0 id 999 is out of range: vocab size is 60 (ids must be in 0..59)"
    )
    assert sorted(_download(client, s3_bucket, "out/")) == ["_PROGRESS", "fine.jsonl.out"]
    assert not client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")


def test_resume_aborts_an_upload_left_open_to_a_finished_output(
    s3_server, s3_bucket, inputs, model
):
    """A server killed as it completed an upload can keep the object and the upload
    both: --resume skips that shard as done, and still aborts the upload (its parts
    would stay billed). Uploads to other keys are not the job's to touch."""
    client = s3_server.client()
    _upload(client, s3_bucket, "in/", inputs)
    source, target = f"s3://{s3_bucket}/in/", f"s3://{s3_bucket}/out/"
    assert _run(source, target, model).shards_ok == 3
    before = _download(client, s3_bucket, "out/")
    for key in ("out/x/b.json.out", "out/notes.txt"):
        upload = client.create_multipart_upload(Bucket=s3_bucket, Key=key)
        client.upload_part(
            Bucket=s3_bucket, Key=key, UploadId=upload["UploadId"], PartNumber=1, Body=b"old"
        )

    summary = _run(source, target, model, resume=True)

    assert (summary.shards_skipped, summary.shards_ok, summary.shards_failed) == (3, 0, 0)
    left = client.list_multipart_uploads(Bucket=s3_bucket).get("Uploads", [])
    assert [u["Key"] for u in left] == ["out/notes.txt"]
    assert _without_summary(_download(client, s3_bucket, "out/")) == _without_summary(before)


def test_large_output_is_written_in_several_parts(
    s3_server, s3_bucket, model, tmp_path, monkeypatch
):
    client = s3_server.client()
    monkeypatch.setenv("O2V_S3_PART_SIZE", str(5 * MiB))
    write_jsonl(tmp_path / "in" / "big.jsonl", [{"in0": [1 + i % 50, 2]} for i in range(90_000)])
    _run(tmp_path / "in", tmp_path / "local", model, max_payload=1)
    _run(tmp_path / "in", f"s3://{s3_bucket}/out/", model, max_payload=1)
    head = client.head_object(Bucket=s3_bucket, Key="out/big.jsonl.out", PartNumber=1)
    assert head["PartsCount"] >= 2
    assert (
        _download(client, s3_bucket, "out/big.jsonl.out")[""]
        == (tmp_path / "local" / "big.jsonl.out").read_bytes()
    )


def test_server_stopped_mid_job_then_resume(tmp_path, inputs, model):
    """Our own server: it is killed while the job runs, then started again on the same data."""
    data = tmp_path / "s3data"
    many = tmp_path / "many"
    for i in range(12):
        write_jsonl(many / f"part-{i:02d}.jsonl", random_records(3000, seed=i))
    # Same mini-batches as the job below: float results depend on how records are batched.
    _run(many, tmp_path / "reference", model, max_payload=0.01, workers=1)
    expected = _without_summary(_tree(tmp_path / "reference"))

    server = LocalS3(data)
    server.start()
    try:
        client = server.client()
        client.create_bucket(Bucket="nightly")
        _upload(client, "nightly", "in/", many)
        env = {**os.environ, **server.env(), "AWS_MAX_ATTEMPTS": "2"}
        command = [
            sys.executable,
            "-m",
            "o2v_batch",
            "transform",
            "s3://nightly/in/",
            "s3://nightly/out/",
        ]
        command += ["--model", str(model), "--max-payload", "0.01", "--workers", "1"]
        job = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        while not client.list_objects_v2(Bucket="nightly", Prefix="out/").get("KeyCount"):
            assert time.monotonic() < deadline and job.poll() is None, "no output appeared"
            time.sleep(0.1)
        port = server.port
        server.stop(timeout=0)
        _, stderr = job.communicate(timeout=120)
        assert job.returncode == 1, stderr
        assert f"cannot reach the S3 endpoint http://127.0.0.1:{port}" in stderr
        assert "Traceback" not in stderr
        assert env["AWS_SECRET_ACCESS_KEY"] not in stderr

        server.start()
        client = server.client()
        deadline = time.monotonic() + 30
        while True:  # the S3 gateway answers before its volumes are back
            try:
                client.get_object(Bucket="nightly", Key="in/part-00.jsonl")
                break
            except Exception:
                assert time.monotonic() < deadline, "the restarted server never served the data"
                time.sleep(0.5)
        done = subprocess.run(
            [*command, "--resume"], env=env, capture_output=True, text=True, timeout=180
        )
        assert done.returncode == 0, done.stderr
        assert _without_summary(_download(client, "nightly", "out/")) == expected
        assert not client.list_multipart_uploads(Bucket="nightly").get("Uploads")
    finally:
        server.stop(timeout=2)
