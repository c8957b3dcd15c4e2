"""The transform job end to end on local files, checked against the model called directly."""

from __future__ import annotations

import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_model, random_records, read_predictions, write_json, write_jsonl

from o2v_batch import load_model
from o2v_batch.config import TransformConfig
from o2v_batch.errors import OutputExistsError
from o2v_batch.job import transform

# Whole transform jobs with real worker processes.
pytestmark = pytest.mark.slow

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


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("mode", ["auto", "embedding", "classification"])
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
    # A second run must not pick up out/ as input, and must refuse to clobber without a flag.
    with pytest.raises(
        OutputExistsError, match=r"output already exists: .*a\.jsonl\.out.* \(use --resume"
    ):
        run(root, root / "out", model_dir)
    summary, _ = run(root, root / "out", model_dir, resume=True)
    assert (summary.shards_ok, summary.shards_skipped) == (0, 3)
    summary, _ = run(root, root / "out", model_dir, overwrite=True)
    assert (summary.shards_ok, summary.records_in) == (3, 30)


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


def test_a_bad_record_fails_its_shard_alone(tmp_path, model_dir, reference):
    good = random_records(20, seed=5)
    write_jsonl(tmp_path / "in" / "good.jsonl", good)
    write_jsonl(tmp_path / "in" / "bad.jsonl", [*good[:3], {"in0": [1, 999]}, *good[3:]])
    summary, logged = run(tmp_path / "in", tmp_path / "out", model_dir)
    assert (summary.shards_ok, summary.shards_failed) == (1, 1)
    reason = f"{tmp_path / 'in' / 'bad.jsonl'}: line 4: in0 id 999 is out of range: vocab size is 60 (ids must be in 0..59)"
    assert summary.failed == [{"shard": str(tmp_path / "in" / "bad.jsonl"), "reason": reason}]
    assert f"o2v-batch: shard failed: {reason}" in logged
    assert sorted(os.listdir(tmp_path / "out")) == ["good.jsonl.out"]  # no _SUCCESS, no debris
    assert_predictions(read_predictions(tmp_path / "out" / "good.jsonl.out"), good, reference)


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


def test_a_pair_in_embedding_mode_is_a_bad_record(tmp_path, model_dir):
    write_jsonl(tmp_path / "in.jsonl", [{"in0": [1]}, {"in0": [1], "in1": [2]}])
    summary, _ = run(tmp_path / "in.jsonl", tmp_path / "out", model_dir, mode="embedding")
    assert summary.failed[0]["reason"].endswith(
        'line 2: record has both "in0" and "in1", but the mode is embedding (pairs need --mode auto or classification)'
    )


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
