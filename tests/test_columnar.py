"""Columnar outputs: the fragment a worker sends, the .npy framer, the layout a job's
model gives, and the options a columnar format refuses (messages and exit codes)."""

from __future__ import annotations

import io
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from click.testing import CliRunner
from helpers import make_model

from o2v_batch.artifacts import read_hyperparameters
from o2v_batch.cli import main
from o2v_batch.config import TransformConfig
from o2v_batch.errors import ConfigError
from o2v_batch.execution.inference import Server
from o2v_batch.execution.protocol import ServingOptions
from o2v_batch.inputs.formats import JSONLINES
from o2v_batch.outputs.columnar import (
    EMBEDDING,
    ERROR,
    NPY_PAIRS,
    SCORES,
    ColumnarCodec,
    Layout,
)
from o2v_batch.outputs.responses import NPY, PARQUET, codec_for, error_fragment, output_type

PARQUET_3_2 = f"{PARQUET}; embeddings=3; scores=2; dtype=float32"
NPY_3 = f"{NPY}; embeddings=3; scores=0; dtype=float32"


class Row(NamedTuple):
    """A record as a worker has it: a prediction or a problem, and its joined fields."""

    position: int
    prediction: dict | None
    problem: str | None = None
    fields: dict | None = None


def encode(codec: ColumnarCodec, rows: list[Row]) -> bytes:
    """The fragment of these records, built as a worker builds it."""
    return codec.encode_rows(
        [r.position for r in rows],
        [r.prediction for r in rows],
        {i: r.problem for i, r in enumerate(rows) if r.problem is not None},
        {i: r.fields for i, r in enumerate(rows) if r.fields},
    )


def vec(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float32)


ROWS = [
    Row(1, {"embeddings": vec(0.5, -1.0, 2.0)}),
    Row(3, None, "malformed JSON"),
    Row(4, {"scores": vec(0.25, 0.75)}),
    Row(7, {"embeddings": vec(1.0, 2.0, 3.0)}),
]


def test_layout_from_the_accept_parameters() -> None:
    accept = f"{PARQUET}; embeddings=64; scores=3; dtype=float16; joined=1"
    assert Layout.parse(accept) == Layout(64, 3, "float16", True)
    assert Layout.parse(PARQUET) == Layout(0, 0, "float32", False)
    assert codec_for(accept).layout == Layout(64, 3, "float16", True)
    assert codec_for(accept).suffix == ".parquet"
    assert codec_for("application/x-parquet").media_type == PARQUET
    assert codec_for(NPY_3).suffix == ".npy"


def test_fragment_round_trip() -> None:
    codec = codec_for(PARQUET_3_2)
    fragment = codec.decode(encode(codec, ROWS))
    assert fragment.positions.tolist() == [1, 3, 4, 7]
    assert fragment.kinds.tolist() == [EMBEDDING, ERROR, SCORES, EMBEDDING]
    assert fragment.embeddings.tolist() == [[0.5, -1.0, 2.0], [1.0, 2.0, 3.0]]
    assert fragment.scores.tolist() == [[0.25, 0.75]]
    assert fragment.errors == ["malformed JSON"]
    assert fragment.fields == {}
    rows = codec.full_rows(fragment, EMBEDDING, np.nan)
    assert np.isnan(rows[[1, 2]]).all() and rows[3].tolist() == [1.0, 2.0, 3.0]


def test_float16_fragment_rounds_to_nearest() -> None:
    codec = codec_for(f"{PARQUET}; embeddings=3; scores=2; dtype=float16")
    values = vec(0.1, 1 / 3, 1000.7)
    fragment = codec.decode(encode(codec, [Row(0, {"embeddings": values})]))
    assert fragment.embeddings.dtype == np.float16
    assert fragment.embeddings[0].tolist() == values.astype(np.float16).tolist()
    np.testing.assert_allclose(fragment.embeddings[0], values, rtol=2**-11)


def test_joined_fields_travel_as_columns_with_their_json_kinds() -> None:
    codec = codec_for(PARQUET_3_2 + "; joined=1")
    rows = [
        Row(1, {"embeddings": vec(1, 2, 3)}, None, {"id": 7, "tag": "a", "x": 1.5}),
        Row(2, None, "bad"),
        Row(3, {"embeddings": vec(1, 2, 3)}, None, {"id": 8, "x": 2, "big": 2**64 - 1, "ok": True}),
    ]
    fragment = codec.decode(encode(codec, rows))
    assert fragment.fields == {
        "id": [7, None, 8],
        "tag": ["a", None, None],
        "x": [1.5, None, 2],
        "big": [None, None, 2**64 - 1],
        "ok": [None, None, True],
    }
    assert fragment.field_kinds == {
        "id": ["int"],
        "tag": ["str"],
        "x": ["float", "int"],
        "big": ["json"],  # beyond int64 (orjson reads up to 2**64 - 1)
        "ok": ["bool"],
    }


@pytest.mark.parametrize(
    ("accept", "key", "width"),
    [
        (PARQUET_3_2, "embeddings", 3),
        (PARQUET_3_2, "scores", 2),
        (f"{PARQUET}; embeddings=3; scores=1; dtype=float16", "embeddings", 3),
        (f"{PARQUET}; embeddings=3; scores=1; dtype=float16", "scores", 1),
        (NPY_3, "embeddings", 3),
    ],
)
@pytest.mark.parametrize("n", [0, 1, 5])
def test_a_column_of_vectors_is_the_fragment_of_its_rows(accept, key, width, n) -> None:
    codec = codec_for(accept)
    vectors = np.random.default_rng(n).standard_normal((n, width)).astype(np.float32)
    positions = [2 * i + 1 for i in range(n)]
    assert codec.takes(key)
    expected = encode(codec, [Row(p, {key: v}) for p, v in zip(positions, vectors, strict=True)])
    assert codec.encode_column(positions, key, vectors) == expected


def test_npy_takes_no_column_of_scores() -> None:
    assert codec_for(NPY_3).takes("embeddings") and not codec_for(NPY_3).takes("scores")
    with pytest.raises(AssertionError, match="no column for scores"):
        codec_for(NPY_3).encode_column([1], "scores", np.ones((1, 2), np.float32))


def test_a_vector_of_another_width_is_refused() -> None:
    with pytest.raises(AssertionError, match="a 2-wide vector in a 3-wide column"):
        encode(codec_for(PARQUET_3_2), [Row(0, {"embeddings": vec(1, 2)})])


def test_npy_refuses_scores_only() -> None:
    assert NPY_PAIRS.endswith(f"(scores need --accept {PARQUET} or JSON)")
    codec = codec_for(NPY_3)
    predictions = [{"scores": vec(0.5, 0.5)}, None, {"embeddings": vec(1, 2, 3)}]
    assert codec.refused([*predictions, {"scores": vec(1, 0)}]) == [0, 3]
    assert codec_for(PARQUET_3_2).refused(predictions) == []


def npy_document(fragments: list[bytes], accept: str = NPY_3) -> np.ndarray:
    out = io.BytesIO()
    framer = codec_for(accept).start(out)
    for fragment in fragments:
        framer.add(fragment)
    framer.finish()
    return np.load(io.BytesIO(out.getvalue()))


def test_npy_rows_in_order_with_nan_for_errors() -> None:
    codec = codec_for(NPY_3)
    rows = [r for r in ROWS if r.position != 4]
    fragments = [encode(codec, rows[:2]), b"", error_fragment("too big", 5, JSONLINES, NPY_3)]
    fragments.append(encode(codec, rows[2:]))
    array = npy_document(fragments)
    assert array.dtype == np.float32 and array.shape == (4, 3)
    assert array[0].tolist() == [0.5, -1.0, 2.0] and array[3].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(array[1:3]).all()


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_npy_fragments_of_embeddings_only_give_the_same_bytes(dtype: str) -> None:
    """A fragment without error rows is written as it came; one with them row by row,
    NaN in the errors' rows: the document is the same whichever way its rows came."""
    accept = f"{NPY}; embeddings=3; dtype={dtype}"
    codec = codec_for(accept)
    vectors = np.random.default_rng(1).standard_normal((6, 3)).astype(np.float32)
    rows = [Row(i, {"embeddings": v}) for i, v in enumerate(vectors)]
    rows[4] = Row(4, None, "bad")

    def document(split: list[int]) -> bytes:
        out, start = io.BytesIO(), 0
        framer = codec.start(out)
        for n in split:
            framer.add(encode(codec, rows[start : start + n]))
            start += n
        framer.finish()
        return out.getvalue()

    whole = document([6])  # one fragment with an error row
    assert document([2, 2, 1, 1]) == whole  # three fragments without one
    array = np.load(io.BytesIO(whole))
    assert array.dtype == np.dtype(dtype) and np.isnan(array[4]).all()
    expected = np.delete(vectors, 4, axis=0).astype(dtype)
    assert np.array_equal(np.delete(array, 4, axis=0), expected)


def test_npy_float16_and_empty_shard() -> None:
    empty = npy_document([], f"{NPY}; embeddings=5; dtype=float16")
    assert empty.shape == (0, 5) and empty.dtype == np.float16


def test_npy_discard_lets_go_of_the_spool() -> None:
    out = io.BytesIO()
    framer = codec_for(NPY_3).start(out)
    framer.add(encode(codec_for(NPY_3), ROWS[:1]))
    framer.discard()
    assert out.getvalue() == b""


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    return {
        "classes": make_model(root / "classes", enc_dim=6, num_classes=4),
        "regression": make_model(root / "regression", output_layer="mean_squared_error"),
    }


@pytest.mark.parametrize(
    ("model", "accept", "options", "expected"),
    [
        ("classes", PARQUET, {}, f"{PARQUET}; embeddings=6; scores=4; dtype=float32"),
        ("classes", "application/x-parquet", {"mode": "embedding"}, f"{PARQUET}; embeddings=6; scores=0; dtype=float32"),
        ("regression", PARQUET, {"join_source": "Input"}, f"{PARQUET}; embeddings=8; scores=1; dtype=float32; joined=1"),
        ("classes", NPY, {"embedding_dtype": "float16"}, f"{NPY}; embeddings=6; scores=0; dtype=float16"),
    ],
)  # fmt: skip
def test_output_type_lays_out_the_model(models, model, accept, options, expected) -> None:
    config = TransformConfig("in/", "out/", str(models[model]), accept=accept, **options)
    hp = read_hyperparameters(models[model])
    joined = config.join_source == "Input"
    assert output_type(accept, hp, config.mode, config.embedding_dtype, joined) == expected


BAD_USE = [
    (
        {"accept": NPY, "mode": "classification"},
        f"--accept {NPY} holds embeddings only, so --mode classification has no place in it "
        f"(use --accept {PARQUET} or JSON)",
    ),
    (
        {"accept": NPY, "join_source": "Input"},
        f"--accept {NPY} holds embeddings only, so --join-source Input has no place in it "
        f"(use --accept {PARQUET} or JSON)",
    ),
    (
        {"accept": NPY, "output_filter": "$.embeddings"},
        f"--accept {NPY} holds embeddings only, so --output-filter has no place in it "
        f"(use --accept {PARQUET} or JSON)",
    ),
    (
        {"accept": NPY, "output": "-"},
        f"--accept {NPY} writes one binary file per shard: OUTPUT must be a folder or "
        "s3://bucket/prefix/, not - (stdout)",
    ),
    (
        {"accept": "application/x-parquet", "output": "-"},
        "--accept application/x-parquet writes one binary file per shard: OUTPUT must be a "
        "folder or s3://bucket/prefix/, not - (stdout)",
    ),
    (
        {"accept": PARQUET, "output_filter": "$.id"},
        f"--output-filter with --accept {PARQUET} picks the input fields that become "
        "columns: use it with --join-source Input",
    ),
    (
        {"embedding_dtype": "float16"},
        f"--embedding-dtype float16 needs --accept {PARQUET} or {NPY} "
        "(JSON responses carry float32 numbers)",
    ),
    ({"embedding_dtype": "int8"}, "--embedding-dtype must be one of float32, float16; got 'int8'"),
]


@pytest.mark.parametrize(("options", "message"), BAD_USE)
def test_options_a_format_cannot_hold(options: dict, message: str) -> None:
    options = {"input": "in/", "output": "out/", "model": "m/", **options}
    with pytest.raises(ConfigError) as caught:
        TransformConfig(**options)
    assert str(caught.value) == message


def transform_args(tmp_path: Path) -> list[str]:
    (tmp_path / "in.jsonl").write_text('{"in0": [1]}\n')
    return ["transform", str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "--model", "m"]


@pytest.mark.parametrize(("options", "message"), BAD_USE[:-1])
def test_bad_use_is_a_usage_error(tmp_path: Path, options: dict, message: str) -> None:
    args = transform_args(tmp_path)
    if options.get("output") == "-":
        args[2] = "-"
    for name, value in options.items():
        if name != "output":
            args += [f"--{name.replace('_', '-')}", value]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert f"Error: {message}\n" in result.output
    assert not (tmp_path / "out").exists()


def test_unknown_accept_type_is_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, [*transform_args(tmp_path), "--accept", "application/npy"])
    assert result.exit_code == 2
    assert "Invalid value for '--accept': 'application/npy' is not one of" in result.output
    assert "'application/x-npy'" in result.output


def test_missing_pyarrow_is_a_one_line_install_hint(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # what an import without it meets
    args = [*transform_args(tmp_path), "--accept", PARQUET]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert result.output.endswith(
        f"Error: --accept {PARQUET} needs pyarrow: pip install -e '.[parquet]' in a checkout, "
        'or pip install "$(ls dist/o2v_batch-*.whl)[parquet]" for a built wheel\n'
    )
    # .npy needs numpy only.
    config = TransformConfig(str(tmp_path / "in.jsonl"), str(tmp_path / "out"), "m", accept=NPY)
    assert config.accept == NPY


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("$", 'input field "error" has the name of an output column: leave it out with --output-filter'),
        ("$.id", "--output-filter gave a number: columns need a JSON object"),
    ],
)  # fmt: skip
def test_a_worker_refuses_fields_that_cannot_be_columns(models, expr, problem) -> None:
    options = ServingOptions(join_source="Input", output_filter=expr, on_bad_record="emit-error")
    server = Server(str(models["classes"]), "cpu", options)
    records = [b'{"id": 1, "in0": [1, 2]}', b'{"id": 2, "error": "x", "in1": [3]}']
    accept = f"{PARQUET}; embeddings=6; scores=4; dtype=float32; joined=1"
    result = server.serve([1, 2], records, JSONLINES, accept)
    fragment = codec_for(accept).decode(result.payload)
    if expr == "$":
        assert fragment.kinds.tolist() == [EMBEDDING, ERROR]
        assert fragment.errors == [problem]
        assert fragment.fields == {"id": [1, None], "in0": [[1, 2], None]}
    else:
        assert fragment.kinds.tolist() == [ERROR, ERROR]
        assert fragment.errors == [problem, problem]
    assert result.bad_records == len(fragment.errors)
