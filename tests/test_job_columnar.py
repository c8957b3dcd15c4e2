"""Parquet and .npy outputs end to end on local files, read back with pyarrow, DuckDB,
pandas and Polars and checked against the model called directly through the API."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from helpers import make_model, random_records, write_jsonl

from o2v_batch import load_model
from o2v_batch.config import TransformConfig
from o2v_batch.errors import BadRecordError
from o2v_batch.jobs.transform import transform
from o2v_batch.outputs.columnar import NPY_PAIRS
from o2v_batch.outputs.responses import NPY, PARQUET

BAD_ID = {"in0": [1, 999]}  # out of the vocabulary: a bad record
FLOAT32 = {"rtol": 0, "atol": 1e-6}
FLOAT16 = {"rtol": 2**-11, "atol": 1e-6}  # float16 keeps 11 significant bits


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(scope="module")
def tree(tmp_path_factory) -> dict[str, list]:
    """A nested input tree; for each shard, its records by position (None: no record
    there, a blank line; a str: a line that is not JSON)."""
    root = tmp_path_factory.mktemp("in")
    records = random_records(150, seed=7)
    a: list = []
    for i, record in enumerate(records[:70]):
        a += [record, None] if i % 9 == 4 else [record]  # blank lines
    a[10:10] = [BAD_ID, "{not json"]
    b = [*records[70:75], BAD_ID, *records[75:110]]
    c = records[110:]
    (root / "sub" / "deeper").mkdir(parents=True)
    lines = ["" if r is None else r if isinstance(r, str) else json.dumps(r) for r in a]
    (root / "a.jsonl").write_text("\n".join(lines) + "\n")
    (root / "sub" / "b.json").write_text(json.dumps({"instances": b}))
    write_jsonl(root / "sub" / "deeper" / "c.jsonl", c)
    # Positions: 1-based lines for jsonlines, instance indexes for JSON.
    return {
        "root": root,
        "a.jsonl": list(enumerate(a, 1)),
        "sub/b.json": list(enumerate(b)),
        "sub/deeper/c.jsonl": list(enumerate(c, 1)),
    }


@pytest.fixture(scope="module")
def expected(model_dir):
    """Each record's row as the API computes it: ("embeddings"|"scores", vector) or
    ("error", None), for a mode."""
    model = load_model(str(model_dir))

    def rows(records: list, mode: str) -> list[tuple[str, np.ndarray | None]]:
        out = []
        for record in records:
            try:
                out.append(row(record, mode))
            except BadRecordError:  # ids out of the vocabulary
                out.append(("error", None))
        return out

    def row(record, mode: str) -> tuple[str, np.ndarray | None]:
        pair = isinstance(record, dict) and "in0" in record and "in1" in record
        if not isinstance(record, dict) or (pair and mode == "embedding"):
            return "error", None  # not JSON, or a pair in embedding mode
        if pair:
            return "scores", model.score([record["in0"]], [record["in1"]])[0]
        enc = 0 if "in0" in record else 1
        return "embeddings", model.embed([record[f"in{enc}"]], encoder=enc)[0]

    return rows


def run(input_path, output_path, model_dir, **options):
    config = TransformConfig(str(input_path), str(output_path), str(model_dir), **options)
    return transform(config, log=lambda line: None)


def served(tree: dict, rel: str) -> tuple[list[int], list]:
    """The positions that hold a record, and those records."""
    pairs = [(pos, r) for pos, r in tree[rel] if r is not None]
    return [pos for pos, _ in pairs], [r for _, r in pairs]


def check_rows(got: dict[str, list], rows: list, tolerance: dict) -> None:
    """`got`: column -> values, one per row, as a reader gave them."""
    for i, (kind, vector) in enumerate(rows):
        for column in ("embeddings", "scores"):
            value = got[column][i] if column in got else None
            if column == kind:
                np.testing.assert_allclose(value, vector, **tolerance, err_msg=f"row {i}")
            else:
                assert value is None, f"row {i}: {column}"
        assert (got["error"][i] is not None) == (kind == "error"), f"row {i}"


def parquet_shards(out: Path) -> list[str]:
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


# Whole jobs: the first stays in the quick run (-m "not slow"), the others are slow.
@pytest.mark.parametrize(
    ("mode", "workers", "dtype"),
    [
        ("auto", 1, "float32"),
        pytest.param("auto", 2, "float32", marks=pytest.mark.slow),
        pytest.param("embedding", 1, "float32", marks=pytest.mark.slow),
        pytest.param("embedding", 2, "float32", marks=pytest.mark.slow),
        pytest.param("auto", 2, "float16", marks=pytest.mark.slow),
    ],
)
def test_parquet_values_equal_the_api(tmp_path, model_dir, tree, expected, mode, workers, dtype):
    out = tmp_path / "out"
    summary = run(
        tree["root"],
        out,
        model_dir,
        accept=PARQUET,
        mode=mode,
        workers=workers,
        embedding_dtype=dtype,
        on_bad_record="emit-error",
        max_payload=0.002,  # many mini-batches per shard
    )
    assert summary.shards_ok == 3 and summary.mini_batches > 6
    assert parquet_shards(out) == [
        "_SUCCESS",
        "a.jsonl.parquet",
        "sub/b.json.parquet",
        "sub/deeper/c.jsonl.parquet",
    ]
    tolerance = FLOAT16 if dtype == "float16" else FLOAT32
    for rel in ("a.jsonl", "sub/b.json", "sub/deeper/c.jsonl"):
        positions, records = served(tree, rel)
        rows = expected(records, mode)
        path = out / f"{rel}.parquet"
        table = pq.read_table(path)
        assert table["position"].to_pylist() == positions
        check_rows(table.to_pydict(), rows, tolerance)
        columns = ", ".join(table.column_names)
        found = duckdb.sql(f"SELECT {columns} FROM read_parquet('{path}') ORDER BY position")
        got = dict(zip(found.columns, zip(*found.fetchall(), strict=True), strict=True))
        assert list(got["position"]) == positions
        check_rows(got, rows, tolerance)
    vector = pa.float16() if dtype == "float16" else pa.float32()
    assert table.schema.field("embeddings").type.value_type == vector
    assert ("scores" in table.column_names) == (mode == "auto")
    if mode == "auto":
        errors = pq.read_table(out / "a.jsonl.parquet")["error"].to_pylist()
        first, second = [e for e in errors if e is not None]
        assert first == "in0 id 999 is out of range: vocab size is 60 (ids must be in 0..59)"
        assert "malformed JSON" in second


@pytest.mark.slow  # a whole job
def test_the_output_folder_reads_as_one_dataset(tmp_path, model_dir, tree):
    out = tmp_path / "out"
    run(tree["root"], out, model_dir, accept=PARQUET, on_bad_record="emit-error")
    every = sum(
        len(served(tree, rel)[0]) for rel in ("a.jsonl", "sub/b.json", "sub/deeper/c.jsonl")
    )
    dataset = ds.dataset(out, format="parquet")
    assert dataset.count_rows() == every
    table = dataset.to_table()
    assert table.num_rows == every and table.column_names == [
        "position",
        "embeddings",
        "scores",
        "error",
    ]
    counted = duckdb.sql(
        f"SELECT count(*), count(DISTINCT (filename, position)) "
        f"FROM read_parquet('{out}/**/*.parquet', filename = true)"
    ).fetchall()
    assert counted == [(every, every)]
    pandas = pytest.importorskip("pandas")
    assert len(pandas.read_parquet(out)) == every
    polars = pytest.importorskip("polars")
    frame = polars.read_parquet(f"{out}/**/*.parquet")
    assert frame.height == every and frame.schema["embeddings"] == polars.Array(polars.Float32, 8)


@pytest.mark.slow  # a whole job
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_npy_rows_in_input_order_with_nan_for_bad_records(
    tmp_path, model_dir, tree, expected, dtype
):
    out = tmp_path / "out"
    summary = run(
        tree["root"],
        out,
        model_dir,
        accept=NPY,
        workers=2,
        embedding_dtype=dtype,
        on_bad_record="emit-error",
        max_payload=0.002,
    )
    assert parquet_shards(out) == [
        "_SUCCESS",
        "a.jsonl.npy",
        "sub/b.json.npy",
        "sub/deeper/c.jsonl.npy",
    ]
    tolerance = FLOAT16 if dtype == "float16" else FLOAT32
    bad = 0
    for rel in ("a.jsonl", "sub/b.json", "sub/deeper/c.jsonl"):
        array = np.load(out / f"{rel}.npy")
        rows = expected(served(tree, rel)[1], "embedding")  # pairs have no place in npy
        assert array.shape == (len(rows), 8) and array.dtype == np.dtype(dtype)
        for i, (kind, vector) in enumerate(rows):
            if kind == "error":
                assert np.isnan(array[i]).all(), f"{rel} row {i}"
            else:
                np.testing.assert_allclose(array[i], vector, **tolerance, err_msg=f"{rel} {i}")
        bad += sum(kind == "error" for kind, _ in rows)
    assert summary.bad_records == bad
    assert summary.bad_records_by_shard[str(tree["root"] / "a.jsonl")] > 0


@pytest.mark.slow  # a whole job
def test_npy_fails_a_shard_at_a_pair(tmp_path, model_dir):
    write_jsonl(tmp_path / "in" / "pairs.jsonl", [{"in0": [1]}, {"in0": [1], "in1": [2]}])
    summary = run(tmp_path / "in", tmp_path / "out", model_dir, accept=NPY)
    assert summary.shards_failed == 1
    assert summary.failed[0]["reason"].endswith(f"pairs.jsonl: line 2: {NPY_PAIRS}")
    assert not (tmp_path / "out").exists() or parquet_shards(tmp_path / "out") == []


@pytest.mark.slow  # a whole job
def test_joined_input_fields_become_typed_columns(tmp_path, model_dir, expected):
    records = [
        {"id": 1, "text": "a", "mixed": 1, "in0": [1, 2]},
        {"id": 2, "text": "b", "mixed": "two", "in1": [3], "extra": {"k": 1}},
        {"id": 3, "in0": [1, 999]},
        {"id": 4, "text": "d", "mixed": 2.5, "in0": [4], "in1": [5]},
    ]
    write_jsonl(tmp_path / "in.jsonl", records)
    run(
        tmp_path / "in.jsonl",
        tmp_path / "out",
        model_dir,
        accept=PARQUET,
        join_source="Input",
        output_filter="$['id','text','mixed','extra','SageMakerOutput']",
        on_bad_record="emit-error",
        max_payload=0.0001,  # one record per mini-batch: types met in separate fragments
    )
    table = pq.read_table(tmp_path / "out" / "in.jsonl.parquet")
    assert table.column_names == [
        "position", "embeddings", "scores", "error", "id", "text", "mixed", "extra",
    ]  # fmt: skip
    assert table["id"].type == pa.int64() and table["id"].to_pylist() == [1, 2, None, 4]
    assert table["text"].to_pylist() == ["a", "b", None, "d"]
    assert table["mixed"].to_pylist() == ["1", '"two"', None, "2.5"]  # JSON text
    assert table["extra"].to_pylist() == [None, '{"k":1}', None, None]
    check_rows(table.to_pydict(), expected(records, "auto"), FLOAT32)


@pytest.mark.slow  # a whole job
def test_array_job_shares_write_one_dataset(tmp_path, model_dir, tree):
    for index in (0, 1):
        run(tree["root"], tmp_path / "out", model_dir, accept=PARQUET, num_shards=2,
            shard_index=index, on_bad_record="emit-error")  # fmt: skip
    files = [f for f in parquet_shards(tmp_path / "out") if f.endswith(".parquet")]
    assert files == ["a.jsonl.parquet", "sub/b.json.parquet", "sub/deeper/c.jsonl.parquet"]
    summary = run(tree["root"], tmp_path / "out", model_dir, accept=PARQUET, resume=True)
    assert summary.shards_skipped == 3


@pytest.mark.slow  # a whole job
def test_sigterm_leaves_nothing_and_resume_equals_an_uninterrupted_run(tmp_path, model_dir):
    for i in range(8):
        write_jsonl(tmp_path / "in" / f"part-{i}.jsonl", random_records(3000, seed=i))
    options = {"accept": PARQUET, "max_payload": 0.01, "workers": 1}
    run(tmp_path / "in", tmp_path / "reference", model_dir, **options)
    command = [
        sys.executable, "-m", "o2v_batch", "transform", str(tmp_path / "in"),
        str(tmp_path / "out"), "--model", str(model_dir), "--accept", PARQUET,
        "--max-payload", "0.01", "--workers", "1",
    ]  # fmt: skip
    job = subprocess.Popen(command, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "out").glob("*.parquet")):
        assert time.monotonic() < deadline and job.poll() is None, "no output appeared"
        time.sleep(0.05)
    job.send_signal(signal.SIGTERM)
    _, stderr = job.communicate(timeout=60)
    assert job.returncode == 143, stderr
    left = sorted(os.listdir(tmp_path / "out"))
    # The finished shards' outputs, and the hidden summary of what they hold for --resume.
    assert "_PROGRESS" in left, left
    outputs = [name for name in left if name != "_PROGRESS"]
    assert 0 < len(outputs) < 8 and all(name.endswith(".parquet") for name in outputs), left
    progress = orjson.loads((tmp_path / "out" / "_PROGRESS").read_bytes())
    counted = {
        Path(shard).name + ".parquet": n for shard, n in progress["records_out_by_shard"].items()
    }
    rows = {name: pq.read_metadata(tmp_path / "out" / name).num_rows for name in outputs}
    assert counted == rows
    done = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for name in sorted(os.listdir(tmp_path / "reference")):
        if name != "_SUCCESS":
            assert (tmp_path / "out" / name).read_bytes() == (
                tmp_path / "reference" / name
            ).read_bytes(), name
