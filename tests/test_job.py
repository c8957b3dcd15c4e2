"""The transform job end to end on local files, checked against the model called directly;
what it checks before any work; --resume and its summary; progress on stderr."""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_model, random_records, read_predictions, write_json, write_jsonl

from o2v_batch import load_model
from o2v_batch.cli import main
from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard_output import ShardOutput
from o2v_batch.errors import OutputExistsError
from o2v_batch.jobs.transform import transform

JSONL, JSON = "application/jsonlines", "application/json"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def reference(model_dir):
    """Predictions computed one record at a time through the public API (memoized)."""
    model = load_model(str(model_dir))
    seen: dict[str, dict] = {}

    def predict(record: dict) -> dict:
        key = json.dumps(record, sort_keys=True)
        if key not in seen:
            if "in0" in record and "in1" in record:
                scores = model.score([record["in0"]], [record["in1"]])[0]
                seen[key] = {"scores": scores}
            else:
                encoder = 0 if "in0" in record else 1
                seen[key] = {
                    "embeddings": model.embed([record[f"in{encoder}"]], encoder=encoder)[0]
                }
        return seen[key]

    return predict


def assert_predictions(got: list[dict], records: list[dict], reference) -> None:
    assert len(got) == len(records)
    for i, (prediction, record) in enumerate(zip(got, records, strict=True)):
        expected = reference(record)
        assert prediction.keys() == expected.keys(), f"record {i}"
        for key, value in expected.items():
            np.testing.assert_allclose(prediction[key], value, atol=1e-5, err_msg=f"record {i}")


def run(input_path, output_path, model_dir, **options):
    logged: list[str] = []
    summary = transform(
        TransformConfig(
            input=str(input_path), output=str(output_path), model=str(model_dir), **options
        ),
        log=logged.append,
    )
    return summary, logged


# Jsonlines and JSON shards through a whole job: one worker in auto mode stays in the
# quick run (-m "not slow"), so that a broken pipeline shows there.
@pytest.mark.parametrize("workers", [1, pytest.param(2, marks=pytest.mark.slow)])
@pytest.mark.parametrize(
    "mode",
    [
        "auto",
        pytest.param("embedding", marks=pytest.mark.slow),
        pytest.param("classification", marks=pytest.mark.slow),
    ],
)
def test_outputs_equal_the_model_called_directly(tmp_path, model_dir, reference, mode, workers):
    records = random_records(200, seed=1, pairs=mode != "embedding")
    write_jsonl(tmp_path / "in" / "a.jsonl", records[:100])
    write_json(tmp_path / "in" / "b.json", records[100:])
    summary, _ = run(
        tmp_path / "in", tmp_path / "out", model_dir, mode=mode, workers=workers, max_payload=0.002
    )
    assert summary.shards_ok == 2 and summary.shards_failed == 0
    assert summary.records_in == summary.records_out == 200
    assert summary.mini_batches > 4
    assert_predictions(read_predictions(tmp_path / "out" / "a.jsonl.out"), records[:100], reference)
    b_out = (tmp_path / "out" / "b.json.out").read_text()
    assert b_out.startswith('{"predictions":[') and b_out.endswith("]}\n")
    assert_predictions(json.loads(b_out)["predictions"], records[100:], reference)


@pytest.mark.slow
@pytest.mark.parametrize(("content_type", "accept"), [(JSONL, JSON), (JSON, JSONL)])
def test_every_pairing_of_content_type_and_accept(
    tmp_path, model_dir, reference, content_type, accept
):
    records = random_records(60, seed=2)
    shard = tmp_path / "in" / "shard.txt"
    (write_json if content_type == JSON else write_jsonl)(shard, records)
    summary, _ = run(
        shard,
        tmp_path / "out",
        model_dir,
        content_type=content_type,
        accept=accept,
        max_payload=0.001,
    )
    assert summary.shards_ok == 1
    text = (tmp_path / "out" / "shard.txt.out").read_text()
    if accept == JSON:
        got = json.loads(text)["predictions"]
    else:
        got = [json.loads(line) for line in text.splitlines()]
        assert len(text.splitlines()) == len(records)
    assert_predictions(got, records, reference)


@pytest.mark.slow
def test_input_order_kept_over_many_small_uneven_batches(tmp_path, model_dir, reference):
    # Long and short records alternate, so mini-batches take very different times.
    records = random_records(400, seed=3, max_len=24)
    for i in range(0, 400, 7):
        records[i] = {"in0": list(range(1, 24))}
    write_jsonl(tmp_path / "in.jsonl", records)
    summary, _ = run(
        tmp_path / "in.jsonl", tmp_path / "out", model_dir, workers=2, max_payload=0.0005
    )
    assert summary.mini_batches >= 50
    assert_predictions(read_predictions(tmp_path / "out" / "in.jsonl.out"), records, reference)


@pytest.mark.slow
def test_nested_layout_mirrors_and_output_inside_input_is_not_read(tmp_path, model_dir, reference):
    records = random_records(30, seed=4)
    root = tmp_path / "in"
    write_jsonl(root / "a.jsonl", records[:10])
    write_json(root / "deep" / "er" / "b.json", records[10:20])
    (root / "deep" / "c.jsonl.gz").write_bytes(
        gzip.compress(b"".join(json.dumps(r).encode() + b"\n" for r in records[20:]))
    )
    summary, _ = run(root, root / "out", model_dir)
    assert summary.shards_ok == 3
    found = sorted(
        str(p.relative_to(root / "out")) for p in (root / "out").rglob("*") if p.is_file()
    )
    assert found == ["_SUCCESS", "a.jsonl.out", "deep/c.jsonl.gz.out", "deep/er/b.json.out"]
    assert_predictions(
        read_predictions(root / "out" / "deep" / "c.jsonl.gz.out"), records[20:], reference
    )
    # A second run must not pick up out/ as input, and must refuse to clobber without a
    # flag, named in the Python API's words.
    with pytest.raises(OutputExistsError) as refused:
        run(root, root / "out", model_dir)
    assert str(refused.value) == (
        f"output already exists: {root / 'out' / 'a.jsonl.out'}, "
        f"{root / 'out' / 'deep' / 'c.jsonl.gz.out'}, {root / 'out' / 'deep' / 'er' / 'b.json.out'} "
        "(use resume=True to skip finished shards or overwrite=True to replace them)"
    )
    again = pickle.loads(pickle.dumps(refused.value))  # it can cross a process boundary
    assert str(again.phrased("--resume", "--overwrite")) == str(refused.value).replace(
        "resume=True", "--resume"
    ).replace("overwrite=True", "--overwrite")
    summary, _ = run(root, root / "out", model_dir, resume=True)
    assert (summary.shards_ok, summary.shards_skipped) == (0, 3)
    summary, _ = run(root, root / "out", model_dir, overwrite=True)
    assert (summary.shards_ok, summary.records_in) == (3, 30)


@pytest.mark.slow
def test_join_and_filters(tmp_path, model_dir, reference):
    records = [{"id": 7, "in0": [1, 2, 3]}, {"id": 8, "in1": [4, 5]}]
    write_jsonl(tmp_path / "in.jsonl", records)
    run(
        tmp_path / "in.jsonl",
        tmp_path / "out",
        model_dir,
        join_source="Input",
        output_filter="$['id','SageMakerOutput']",
    )
    lines = [
        json.loads(line) for line in (tmp_path / "out" / "in.jsonl.out").read_text().splitlines()
    ]
    assert [list(line) for line in lines] == [["id", "SageMakerOutput"]] * 2
    assert [line["id"] for line in lines] == [7, 8]
    assert_predictions(
        [line["SageMakerOutput"] for line in lines],
        [{"in0": [1, 2, 3]}, {"in1": [4, 5]}],
        reference,
    )


@pytest.mark.slow
def test_input_filter_picks_what_the_model_sees(tmp_path, model_dir, reference):
    records = [{"meta": {"x": 1}, "features": {"in0": [3, 4]}}]
    write_jsonl(tmp_path / "in.jsonl", records)
    run(
        tmp_path / "in.jsonl",
        tmp_path / "out",
        model_dir,
        input_filter="$.features",
        join_source="Input",
    )
    [line] = read_predictions(tmp_path / "out" / "in.jsonl.out")
    assert line["meta"] == {"x": 1}
    assert_predictions([line["SageMakerOutput"]], [{"in0": [3, 4]}], reference)


@pytest.mark.slow
def test_a_bad_record_fails_its_shard_alone(tmp_path, model_dir, reference):
    good = random_records(20, seed=5)
    write_jsonl(tmp_path / "in" / "good.jsonl", good)
    write_jsonl(tmp_path / "in" / "bad.jsonl", [*good[:3], {"in0": [1, 999]}, *good[3:]])
    summary, logged = run(tmp_path / "in", tmp_path / "out", model_dir)
    assert (summary.shards_ok, summary.shards_failed) == (1, 1)
    reason = f"{tmp_path / 'in' / 'bad.jsonl'}: line 4: in0 id 999 is out of range: vocab size is 60 (ids must be in 0..59)"
    assert summary.failed == [{"shard": str(tmp_path / "in" / "bad.jsonl"), "reason": reason}]
    assert f"o2v-batch: shard failed: {reason}" in logged
    # No _SUCCESS, no debris: the output and, for --resume, the counts of the shard written.
    assert sorted(os.listdir(tmp_path / "out")) == ["_PROGRESS", "good.jsonl.out"]
    progress = json.loads((tmp_path / "out" / "_PROGRESS").read_text())
    assert progress["records_out_by_shard"] == {str(tmp_path / "in" / "good.jsonl"): 20}
    assert_predictions(read_predictions(tmp_path / "out" / "good.jsonl.out"), good, reference)
    # Every record read is a prediction written, a bad record, or lost with its shard.
    assert (summary.records_in, summary.records_out) == (41, 20)
    assert (summary.bad_records, summary.records_not_written) == (0, 21)
    line = "o2v-batch: records: 41 in, 20 out, 0 bad, 21 not written, "
    assert any(logged_line.startswith(line) for logged_line in logged)


@pytest.mark.slow
def test_embedding_mode_reads_no_comparator_or_mlp_weights(tmp_path, model_dir):
    # A model whose MLP tensors are corrupt: embedding mode must never look at them.
    broken = make_model(tmp_path / "broken", mlp_dim=8)
    hp = json.loads((broken / "hyperparameters.json").read_text())
    hp["mlp_dim"] = 9
    (broken / "hyperparameters.json").write_text(json.dumps(hp))
    write_jsonl(tmp_path / "in.jsonl", [{"in0": [1, 2]}, {"in1": [3]}])
    summary, _ = run(tmp_path / "in.jsonl", tmp_path / "out", broken, mode="embedding")
    assert summary.shards_ok == 1
    with pytest.raises(Exception, match="mlp"):
        run(tmp_path / "in.jsonl", tmp_path / "out2", broken, mode="classification")


@pytest.mark.slow
def test_a_pair_in_embedding_mode_is_a_bad_record(tmp_path, model_dir):
    write_jsonl(tmp_path / "in.jsonl", [{"in0": [1]}, {"in0": [1], "in1": [2]}])
    summary, _ = run(tmp_path / "in.jsonl", tmp_path / "out", model_dir, mode="embedding")
    assert summary.failed[0]["reason"].endswith(
        'line 2: record has both "in0" and "in1", but the mode is embedding (pairs need --mode auto or classification)'
    )


@pytest.mark.slow
def test_stdin_to_stdout_in_a_shell_pipeline(tmp_path, model_dir, reference):
    records = random_records(50, seed=6)
    write_jsonl(tmp_path / "in.jsonl", records)
    command = f"cat {tmp_path / 'in.jsonl'} | {sys.executable} -m o2v_batch transform - - --model {model_dir} | cat > {tmp_path / 'out.jsonl'}"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", command], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "o2v-batch: records: 50 in, 50 out" in done.stderr
    assert_predictions(read_predictions(tmp_path / "out.jsonl"), records, reference)


@pytest.mark.slow
def test_the_documented_requests_give_sixteen_numbers_each(tmp_path):
    """The README's main command, on the shipped example model and requests."""
    examples = Path(__file__).resolve().parents[1] / "examples"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "o2v_batch",
            "transform",
            str(examples / "requests"),
            str(tmp_path / "out"),
            "--model",
            str(examples / "model"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    model = load_model(str(examples / "model"))
    requests = [
        json.loads(line)
        for line in (examples / "requests" / "documented.jsonl").read_text().splitlines()
    ]
    expected = model.embed([r["in0"] for r in requests], encoder=0)
    document = json.loads((tmp_path / "out" / "documented.json.out").read_text())
    assert list(document) == ["predictions"]
    lines = (tmp_path / "out" / "documented.jsonl.out").read_text().splitlines()
    assert len(lines) == 3
    for got in (document["predictions"], [json.loads(line) for line in lines]):
        assert [list(p) for p in got] == [["embeddings"]] * 3
        assert [len(p["embeddings"]) for p in got] == [16, 16, 16]
        np.testing.assert_allclose([p["embeddings"] for p in got], expected, atol=1e-5)


# -- checked before any work ----------------------------------------------------


def invoke(*args: str | Path, input: str | None = None):
    return CliRunner().invoke(main, [str(a) for a in args], input=input)


def test_an_output_that_is_a_file_is_a_usage_error_before_any_work(tmp_path):
    (tmp_path / "out").write_text("keep me")
    result = invoke("transform", tmp_path / "in", tmp_path / "out", "--model", tmp_path / "none")
    assert result.exit_code == 2
    assert result.stderr.endswith(
        f"Error: OUTPUT {tmp_path / 'out'} is a file: it must be a folder, "
        "s3://bucket/prefix/ or - (stdout)\n"
    )
    assert (tmp_path / "out").read_text() == "keep me"


def _break(model: Path, how: str) -> str:
    """Breaks a copy of a good model; the one-line message the job gives for it."""
    weights = model / "model.safetensors"
    if how == "missing":
        return (
            f"model {model / 'gone'} does not exist: a model is a folder with "
            "hyperparameters.json and model.safetensors, or a .tar.gz of one, local or on S3"
        )
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[:-100])
        return f"{weights} is not a readable safetensors file: "
    hp = json.loads((model / "hyperparameters.json").read_text())
    (model / "hyperparameters.json").write_text(json.dumps({**hp, "mlp_dim": 9}))
    return "model.safetensors does not match hyperparameters.json: mlp.layers.0.weight has shape "


@pytest.mark.parametrize("how", ["missing", "truncated", "mismatched"])
def test_a_bad_model_fails_at_once_before_any_input_is_read(tmp_path, model_dir, how):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("hyperparameters.json", "model.safetensors"):
        (model / name).write_bytes((model_dir / name).read_bytes())
    message = _break(model, how)
    uri = model / "gone" if how == "missing" else model
    done = subprocess.run(
        [sys.executable, "-m", "o2v_batch", "transform", "no-input", "out", "--model", uri],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1
    # One line, and the model's: the missing INPUT was never looked at.
    assert done.stderr.startswith(f"Error: {message}") and done.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("extra", [[], ["--allow-empty"]])
def test_an_empty_input_is_an_error_unless_allowed(tmp_path, model_dir, extra):
    # Outputs of an earlier job are not input: this folder holds no shards.
    for rel in ("a.jsonl.out", "old/_SUCCESS", "old/b.jsonl", ".hidden.jsonl"):
        (tmp_path / "in" / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "in" / rel).write_text('{"in0": [1]}\n')
    result = invoke("transform", tmp_path / "in", tmp_path / "out", "--model", model_dir, *extra)
    if extra:
        assert result.exit_code == 0, result.output
        assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["shards_ok"] == 0
    else:
        assert result.exit_code == 1
        assert result.stderr == (
            f"Error: no input shards under {tmp_path / 'in'} "
            "(--allow-empty accepts an empty input)\n"
        )
        assert not (tmp_path / "out").exists()


# -- --resume and the summary ----------------------------------------------------


def _earlier_job(root: Path) -> dict:
    """Three finished shards and the _SUCCESS a job wrote for them."""
    counts = {"a.jsonl": (5, 1), "b.jsonl": (7, 0), "c.jsonl": (2, 2)}
    (root / "out").mkdir(parents=True)
    for name, (good, bad) in counts.items():
        write_jsonl(root / "in" / name, [{"in0": [1]}] * (good + bad))
        (root / "out" / f"{name}.out").write_text("earlier output\n")
    success = {
        "records_out_by_shard": {str(root / "in" / n): good for n, (good, _) in counts.items()},
        "bad_records_by_shard": {
            str(root / "in" / n): bad for n, (_, bad) in counts.items() if bad
        },
    }
    (root / "out" / "_SUCCESS").write_text(json.dumps(success))
    return success


def test_a_resume_with_nothing_left_starts_no_workers_and_counts_the_whole_output(
    tmp_path, monkeypatch, replace_servers
):
    _earlier_job(tmp_path)
    # A worker would import this module first (spawned workers get the parent's sys.path).
    (tmp_path / "spy.py").write_text(
        f"open({str(tmp_path / 'worker-started')!r}, 'w').close()\nServer = None\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    replace_servers("spy:Server")
    summary, logged = run(
        tmp_path / "in", tmp_path / "out", make_model(tmp_path / "model"), resume=True
    )
    assert not (tmp_path / "worker-started").exists()
    assert (summary.shards_ok, summary.shards_skipped, summary.shards_failed) == (0, 3, 0)
    assert (summary.records_in, summary.records_out, summary.bad_records) == (17, 14, 3)
    written = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    assert written["records_out"] == 14 and written["records_out_by_shard"] == {
        str(tmp_path / "in" / n): good
        for n, good in (("a.jsonl", 5), ("b.jsonl", 7), ("c.jsonl", 2))
    }
    for name in ("a.jsonl", "b.jsonl", "c.jsonl"):
        assert (tmp_path / "out" / f"{name}.out").read_text() == "earlier output\n"
    assert f"o2v-batch: skipped: {tmp_path / 'in' / 'a.jsonl'}: output exists (--resume)" in logged


@pytest.mark.parametrize("name, untaken", [("a.jsonl", 2), ("a.jsonl.gz", 0)])
def test_a_small_job_takes_one_worker_and_stops_the_others_at_once(
    tmp_path, model_dir, reference, monkeypatch, name, untaken
):
    """Workers start, one per core, before the inputs are listed; a job of a few records
    takes one of them and stops the others as its pool starts, not at the job's end. A
    compressed shard's records may take many times its size: that job takes them all.
    Its output is the model's own."""
    from o2v_batch.execution.worker import Spares

    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    out = tmp_path / "out"
    closed: list[tuple[int, bool]] = []  # (spares left untaken, output written) per close
    close = Spares.close

    def spy(spares: Spares) -> None:
        closed.append((len(spares._started), (out / f"{name}.out").exists()))
        close(spares)

    monkeypatch.setattr(Spares, "close", spy)
    records = random_records(20, seed=5)
    write_jsonl(tmp_path / "a.jsonl", records)
    data = (tmp_path / "a.jsonl").read_bytes()
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    summary, _ = run(tmp_path / "in", out, model_dir, progress=False)
    assert summary.shards_ok == 1
    assert closed[0] == (untaken, False)
    assert_predictions(read_predictions(out / f"{name}.out"), records, reference)


@pytest.mark.slow
def test_a_resumed_jobs_success_describes_the_whole_output(tmp_path, model_dir):
    records = random_records(30, seed=7)
    for i, name in enumerate(("a", "b", "c")):
        write_jsonl(tmp_path / "in" / f"{name}.jsonl", [*records[i * 10 : i * 10 + 9], {"x": i}])
    options = {"on_bad_record": "emit-error", "summary": str(tmp_path / "summary.json")}
    first, _ = run(tmp_path / "in", tmp_path / "out", model_dir, **options)
    everything = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    # --summary PATH is written as well as _SUCCESS, not instead of it.
    assert json.loads((tmp_path / "summary.json").read_text()) == everything
    (tmp_path / "out" / "b.jsonl.out").unlink()  # as if the job had stopped before b
    second, _ = run(tmp_path / "in", tmp_path / "out", model_dir, resume=True, **options)
    assert (second.shards_ok, second.shards_skipped) == (1, 2)
    resumed = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    for key in ("records_in", "records_out", "bad_records", "records_not_written"):
        assert resumed[key] == everything[key] == first.__dict__[key], key
    assert (resumed["records_in"], resumed["records_out"], resumed["bad_records"]) == (30, 27, 3)
    for key in ("records_out_by_shard", "bad_records_by_shard"):
        assert resumed[key] == everything[key], key
    assert second.mini_batches < first.mini_batches  # only b was served again


@pytest.mark.slow
def test_a_resume_after_a_failed_run_counts_from_its_summary_file(tmp_path, model_dir):
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(8, seed=8))
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"in0": [1, 999]}])
    summary_file = str(tmp_path / "summary.json")
    failed, _ = run(tmp_path / "in", tmp_path / "out", model_dir, summary=summary_file)
    assert failed.shards_failed == 1 and not (tmp_path / "out" / "_SUCCESS").exists()
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"in0": [1, 9]}])  # fixed upstream
    without, logged = run(tmp_path / "in", tmp_path / "out2", model_dir)
    (tmp_path / "out2" / "b.jsonl.out").unlink()
    (tmp_path / "out2" / "_SUCCESS").unlink()
    # Nothing tells a resume what a.jsonl held: it says so rather than count 0 silently.
    uncounted, logged = run(tmp_path / "in", tmp_path / "out2", model_dir, resume=True)
    assert uncounted.records_in == 1
    assert (
        f"o2v-batch: skipped: {tmp_path / 'in' / 'a.jsonl'}: output exists (--resume); "
        "records not counted (no earlier summary)"
    ) in logged
    resumed, _ = run(
        tmp_path / "in", tmp_path / "out", model_dir, resume=True, summary=summary_file
    )
    assert (resumed.shards_ok, resumed.shards_skipped, resumed.shards_failed) == (1, 1, 0)
    assert (resumed.records_in, resumed.records_out) == (9, 9) == (without.records_in, 9)
    assert json.loads((tmp_path / "out" / "_SUCCESS").read_text())["records_in"] == 9


@pytest.mark.slow
def test_a_resume_after_a_failed_run_counts_the_shards_it_finished(tmp_path, model_dir):
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(8, seed=8))
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"in0": [1, 999]}])
    failed, _ = run(tmp_path / "in", tmp_path / "out", model_dir)
    assert failed.shards_failed == 1 and not (tmp_path / "out" / "_SUCCESS").exists()
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"in0": [1, 9]}, {"in0": [2, 3]}])  # fixed
    resumed, logged = run(tmp_path / "in", tmp_path / "out", model_dir, resume=True)
    assert not [line for line in logged if "not counted" in line]
    assert (resumed.shards_ok, resumed.shards_skipped, resumed.shards_failed) == (1, 1, 0)
    success = json.loads((tmp_path / "out" / "_SUCCESS").read_text())
    lines = sum(
        len((tmp_path / "in" / n).read_bytes().splitlines()) for n in ("a.jsonl", "b.jsonl")
    )
    assert success["records_in"] == success["records_out"] == lines == 10
    assert success["records_out_by_shard"] == {
        str(tmp_path / "in" / "a.jsonl"): 8,
        str(tmp_path / "in" / "b.jsonl"): 2,
    }
    # What the failed run left for --resume is gone: `_SUCCESS` holds it now.
    assert sorted(os.listdir(tmp_path / "out")) == ["_SUCCESS", "a.jsonl.out", "b.jsonl.out"]


def test_a_job_that_finishes_no_shard_leaves_no_progress_file(tmp_path, model_dir, replace_servers):
    # Its one shard fails: the worker raises on its record, and is not given a retry.
    write_jsonl(tmp_path / "in" / "b.jsonl", [{"in0": [1], "tag": "boom"}])
    replace_servers("fake_servers:AlwaysRaise")
    failed, _ = run(tmp_path / "in", tmp_path / "out", model_dir, workers=1, max_retries=0)
    assert failed.shards_failed == 1
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []


# -- progress and messages on stderr ----------------------------------------------


def _job_stderr(command: str, tmp_path: Path) -> tuple[int, bytes]:
    """Runs a job in a shell and returns its exit status and stderr as raw bytes."""
    done = subprocess.run(["bash", "-c", command], capture_output=True, timeout=300, cwd=tmp_path)
    return done.returncode, done.stderr


@pytest.mark.slow
def test_the_bar_has_a_total_and_messages_go_above_it(tmp_path, model_dir):
    for i in range(3):
        write_jsonl(tmp_path / "in" / f"p{i}.jsonl", random_records(3000, seed=i))
    write_jsonl(tmp_path / "in" / "p3.jsonl", [*random_records(3000, seed=9), {"in0": [999]}])
    code, err = _job_stderr(
        f"{sys.executable} -m o2v_batch transform in out --model {model_dir} "
        "--progress --max-payload 0.01",
        tmp_path,
    )
    assert code == 1, err
    assert b"0.00" not in err  # no empty bar at the start
    failed = err.index(b"o2v-batch: shard failed: ")
    assert err[:failed].rstrip(b" ").endswith(b"\r")  # the bar's line was blanked first
    bars = re.findall(rb"\ro2v-batch: +(\d+)%\|.*? \[.*?, ([\d,]+) records\]", err)
    assert bars and bars[-1][0] == b"100"
    records_in = re.search(rb"\no2v-batch: records: ([\d,]+) in, ", err).group(1)
    assert bars[-1][1] == records_in == b"12,001"


class _TimedStderr(io.StringIO):
    """stderr that remembers when each piece of text was written (time.time())."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[tuple[float, str]] = []

    def write(self, text: str) -> int:
        self.writes.append((time.time(), text))
        return super().write(text)


BAR = re.compile(r"o2v-batch: +(\d+)%\|.*?\| (\S+)/\S+ \[(\d\d):(\d\d)<.*, ([\d,]+) records\]")


@pytest.mark.slow
def test_the_bar_moves_from_the_first_second_and_is_full_only_once_written(
    tmp_path, monkeypatch, replace_servers
):
    """A worker slow to answer its first mini-batch (as a GPU worker importing torch is),
    then one mini-batch at a time: the bar's time moves before anything comes back, and
    100% comes only once the last mini-batch is written, not once the input is read."""
    from fake_servers import SLOW_START_S

    model = make_model(tmp_path / "model")
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(600, seed=1))
    stderr = _TimedStderr()
    monkeypatch.setattr(sys, "stderr", stderr)
    config = TransformConfig(
        str(tmp_path / "in"),
        str(tmp_path / "out"),
        str(model),
        progress=True,
        workers=1,
        max_concurrent_transforms=1,
        max_payload=0.004,  # 4 KiB: about 8 mini-batches
    )
    replace_servers("fake_servers:SlowStart")
    summary = transform(config)
    monkeypatch.undo()
    served = [float(t) for t in (model / "served").read_text().split()]
    assert summary.mini_batches == len(served) >= 6
    bars = [
        (at, int(m[1]), int(m[3]) * 60 + int(m[4]), int(m[5].replace(",", "")))
        for at, text in stderr.writes
        if (m := BAR.search(text))
    ]
    # Before the first mini-batch came back: the time moved, nothing was done.
    waiting = [(pct, seconds) for at, pct, seconds, _ in bars if at < served[0]]
    assert (0, int(SLOW_START_S) - 1) in waiting or (0, int(SLOW_START_S)) in waiting, waiting
    assert all(pct == 0 for pct, _ in waiting)
    # Then up, mini-batch by mini-batch, to 100% once the last was written, not before.
    percents = [pct for _, pct, _, _ in bars]
    assert percents == sorted(percents)
    assert len({pct for pct in percents if 0 < pct < 100}) >= 3
    full = [(at, records) for at, pct, _, records in bars if pct == 100]
    assert full and full[0][0] >= served[-1]
    assert all(records == 600 for _, records in full)
    assert [pct for at, pct, _, _ in bars if at < served[-1]][-1] < 100


@pytest.mark.slow
def test_stdin_has_no_total_and_json_on_it_gets_a_hint(tmp_path, model_dir):
    write_jsonl(tmp_path / "in.jsonl", random_records(200, seed=3))
    code, err = _job_stderr(
        f"cat in.jsonl | {sys.executable} -m o2v_batch transform - out --model {model_dir} "
        "--progress",
        tmp_path,
    )
    assert code == 0, err
    assert re.search(rb"\ro2v-batch: [\d.]+kB \[.*, 200 records\]", err)
    assert b"%|" not in err
    request = json.dumps({"instances": random_records(3, seed=4)}, indent=2)
    for text in (request, json.dumps({"instances": random_records(3, seed=4)})):
        result = invoke(
            "transform", "-", tmp_path / "out2", "--model", model_dir, "--overwrite", input=text
        )
        assert result.exit_code == 1
        assert result.stderr.startswith("o2v-batch: shard failed: -: line 1")
        assert (
            " (stdin looks like an application/json request: use --content-type application/json)\n"
        ) in result.stderr


@pytest.mark.slow
def test_json_and_jsonlines_in_files_of_the_other_name_get_a_hint(tmp_path, model_dir):
    """A JSON request named .jsonl, and jsonlines named .json: each failure says which
    content type the file looks like and the two ways out, run as a shell runs them."""
    records = random_records(3, seed=4)
    (tmp_path / "doc.jsonl").write_text(json.dumps({"instances": records}))
    write_jsonl(tmp_path / "lines.json", records)
    job = f"{sys.executable} -m o2v_batch transform {{}} out --model {model_dir} --no-progress"
    code, err = _job_stderr(f"{job.format('doc.jsonl')}; {job.format('lines.json')}", tmp_path)
    assert code == 1, err
    failures = [line for line in err.decode().splitlines() if "shard failed" in line]
    assert failures == [
        'o2v-batch: shard failed: doc.jsonl: line 1: record has neither "in0" nor "in1" '
        "(doc.jsonl looks like an application/json request: "
        "name it .json or use --content-type application/json)",
        "o2v-batch: shard failed: lines.json: JSON document continues after the top-level "
        f"object: found '{{' at byte {len(json.dumps(records[0])) + 1} "
        "(lines.json looks like an application/jsonlines request: "
        "name it .jsonl or use --content-type application/jsonlines)",
    ]
    (tmp_path / "doc.jsonl").rename(tmp_path / "doc.json")
    code, err = _job_stderr(
        f"{job.format('doc.json')} && {job.format('lines.json')} "
        "--content-type application/jsonlines",
        tmp_path,
    )
    assert code == 0, err  # each way out works
    assert sorted(p.name for p in (tmp_path / "out").glob("*.out")) == [
        "doc.json.out",
        "lines.json.out",
    ]


@pytest.mark.slow
def test_an_input_filter_that_gives_no_object_is_named_in_the_shell(tmp_path, model_dir):
    write_jsonl(tmp_path / "in.jsonl", random_records(3, seed=4))
    command = (
        f"{sys.executable} -m o2v_batch transform in.jsonl out --model {model_dir} "
        """--no-progress --input-filter '$["in0"]'"""
    )
    code, err = _job_stderr(command, tmp_path)
    assert code == 1
    assert (
        "o2v-batch: shard failed: in.jsonl: line 1: "
        """--input-filter '$["in0"]' gave an array, not a JSON object with "in0"/"in1"\n"""
    ) in err.decode()


def test_a_backslash_in_one_file_name_fails_that_shard_alone(tmp_path, model_dir, replace_servers):
    write_jsonl(tmp_path / "in" / "good.jsonl", random_records(6, seed=3))
    write_jsonl(tmp_path / "in" / "bad\\name.jsonl", random_records(4, seed=4))
    out = tmp_path / "out"
    replace_servers("fake_servers:Echo")  # the output paths are the point, not the answers
    done = invoke("transform", tmp_path / "in", out, "--model", model_dir, "--workers", "1")
    assert done.exit_code == 1, done.output
    reason = f"refusing output path for 'bad\\\\name.jsonl' (backslash): it could escape {out}"
    assert f"o2v-batch: shard failed: {reason}\n" in done.stderr
    assert "o2v-batch: shards: 1 ok, 1 failed, 0 skipped\n" in done.stderr
    assert sorted(os.listdir(out)) == ["_PROGRESS", "good.jsonl.out"]
    assert len(read_predictions(out / "good.jsonl.out")) == 6


def test_a_shard_committed_as_the_job_stops_is_counted_for_resume(tmp_path, model_dir, monkeypatch):
    """The job is interrupted (SIGINT, as SIGTERM unwinds it) just as the writer commits
    a shard, before the job has heard of it: that output exists, so `_PROGRESS` counts
    it, and --resume skips it counted."""
    for i in range(2):
        write_jsonl(tmp_path / "in" / f"part-{i}.jsonl", random_records(30, seed=i))
    commit = ShardOutput.commit

    def commit_then_stop(self):
        commit(self)
        monkeypatch.setattr(ShardOutput, "commit", commit)  # the first commit only
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)  # the job unwinds before this commit is reported

    monkeypatch.setattr(ShardOutput, "commit", commit_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "in", tmp_path / "out", model_dir, workers=1)
    written = sorted(n for n in os.listdir(tmp_path / "out") if n.endswith(".out"))
    assert len(written) == 1
    progress = json.loads((tmp_path / "out" / "_PROGRESS").read_text())
    shard = str(tmp_path / "in" / written[0].removesuffix(".out"))
    assert progress["records_out_by_shard"] == {shard: 30}
    summary, logged = run(tmp_path / "in", tmp_path / "out", model_dir, resume=True)
    assert (summary.shards_ok, summary.shards_skipped, summary.records_out) == (1, 1, 60)
    assert not any("not counted" in line for line in logged)
