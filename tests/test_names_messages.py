"""Names in messages and in the summary: signed URLs and user info redacted, control
characters escaped (no forged log lines), names that are not UTF-8 carried through."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import make_model, random_records, write_jsonl

from o2v_batch.cli import main

SIGNATURE, KEY_ID, PASSWORD = "f00dfeedSIGNATURE", "AKIAEXAMPLEKEYID", "hunter2PASSWORD"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---------------------------------------------------------------- signed URLs and user info

PRESIGNED = (
    f"https://host/b/k.jsonl?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={KEY_ID}"
    f"%2F20260101%2Fus-east-1%2Fs3%2Faws4_request&X-Amz-Signature={SIGNATURE}"
)


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("input", "https://host/b/k.jsonl?<redacted>: unsupported scheme https://"),
        ("output", "https://host/b/k.jsonl?<redacted>: unsupported scheme https://"),
        ("userinfo", "ftp://<redacted>@host/in/: unsupported scheme ftp://"),
    ],
)
def test_signed_urls_and_user_info_never_reach_stderr(tmp_path, model_dir, where, expected):
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(2))
    args = {
        "input": (PRESIGNED, tmp_path / "out"),
        "output": (tmp_path / "in", PRESIGNED),
        "userinfo": (f"ftp://{KEY_ID}:{PASSWORD}@host/in/", tmp_path / "out"),
    }[where]

    result = invoke("transform", *args, "--model", model_dir)

    assert result.exit_code == 1
    assert result.stderr.startswith(f"Error: {expected} (use a local path, - or s3://)")
    for secret in (SIGNATURE, KEY_ID, PASSWORD):
        assert secret not in result.output


def test_an_echoed_authorization_header_loses_its_signature_and_key_id():
    from o2v_batch.io.s3_errors import describe_error

    echoed = ValueError(
        f"bad request: Authorization: AWS4-HMAC-SHA256 Credential={KEY_ID}/20260101/"
        f"us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-date, Signature={SIGNATURE}"
    )

    message = describe_error(echoed, "s3://b/in/a.jsonl")

    assert message == (
        "s3://b/in/a.jsonl: ValueError: bad request: Authorization: AWS4-HMAC-SHA256 "
        "Credential=<redacted>, SignedHeaders=host;x-amz-date, Signature=<redacted>"
    )


# ---------------------------------------------------------------- control characters


@pytest.mark.slow  # a whole job
def test_a_newline_in_a_shard_name_forges_no_log_line(tmp_path, model_dir):
    forged = "o2v-batch: shards: 99 ok"
    write_jsonl(tmp_path / "in" / f"a\n{forged}.jsonl", [{"in0": "not ids"}])
    write_jsonl(tmp_path / "in" / "b.jsonl", random_records(2))

    result = invoke("transform", tmp_path / "in", tmp_path / "out", "--model", model_dir)

    assert result.exit_code == 1
    assert not [line for line in result.stderr.splitlines() if line.startswith(forged)]
    name = f"{tmp_path}/in/a\\n{forged}.jsonl"
    assert f"o2v-batch: shard failed: {name}: line 1: " in result.stderr
    assert f"o2v-batch: failed: {name}: line 1: " in result.stderr
    assert "o2v-batch: shards: 1 ok, 1 failed, 0 skipped" in result.stderr


@pytest.mark.slow  # a whole job
def test_names_in_the_summary_are_shown(tmp_path, model_dir):
    bad = tmp_path / "in" / "tab\there\x1b[2J.jsonl"
    write_jsonl(bad, [{"in0": "not ids"}])
    summary = tmp_path / "summary.json"

    result = invoke(
        "transform", tmp_path / "in", tmp_path / "out", "--model", model_dir,
        "--summary", summary, "--on-bad-record", "emit-error",
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    document = json.loads(summary.read_bytes())
    name = f"{tmp_path}/in/tab\\there\\x1b[2J.jsonl"
    assert document["bad_records_by_shard"] == {name: 1}
    assert document["records_out_by_shard"] == {name: 0}


# ---------------------------------------------------------------- names that are not UTF-8


@pytest.mark.slow
def test_a_file_name_that_is_not_utf8_finishes_the_job_and_its_resume(tmp_path, model_dir):
    folder = os.fsencode(tmp_path / "in")
    os.makedirs(folder)
    name = os.fsdecode(folder + b"/caf\xe9.jsonl")
    write_jsonl(Path(name), random_records(3, seed=4))
    write_jsonl(tmp_path / "in" / "plain.jsonl", random_records(2, seed=5))
    command = [sys.executable, "-m", "o2v_batch", "transform", tmp_path / "in", tmp_path / "out"]
    command += ["--model", model_dir]

    first = subprocess.run(command, capture_output=True, timeout=120)
    again = subprocess.run([*command, "--resume"], capture_output=True, timeout=120)

    assert first.returncode == 0, first.stderr.decode()
    output = os.fsdecode(os.fsencode(tmp_path / "out") + b"/caf\xe9.jsonl.out")
    assert len(Path(output).read_bytes().splitlines()) == 3
    summary = json.loads((tmp_path / "out" / "_SUCCESS").read_bytes())
    assert summary["records_out_by_shard"] == {
        f"{tmp_path}/in/caf\\udce9.jsonl": 3,
        f"{tmp_path}/in/plain.jsonl": 2,
    }
    assert again.returncode == 0, again.stderr.decode()
    assert b"o2v-batch: shards: 0 ok, 0 failed, 2 skipped" in again.stderr
    assert f"o2v-batch: skipped: {tmp_path}/in/caf\\udce9.jsonl: ".encode() in again.stderr
