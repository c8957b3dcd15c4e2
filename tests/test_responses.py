"""Response codecs: encoding mini-batch fragments, framing output shards, error objects."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from o2v_batch.inputs.formats import JSON, JSONLINES
from o2v_batch.outputs import responses
from o2v_batch.outputs.responses import (
    ACCEPT_TYPES,
    ENCODE_CHUNK,
    NPY,
    PARQUET,
    Framing,
    codec_for,
    error_fragment,
    error_object,
    position_key,
)


def frame_document(fragments: list[bytes], accept: str) -> bytes:
    """A whole output shard from its fragments, framed the way ShardOutput frames it."""
    out = io.BytesIO()
    framer = codec_for(accept).start(out)
    for fragment in fragments:
        framer.add(fragment)
    framer.finish()
    return out.getvalue()


def test_accept_types() -> None:
    assert ACCEPT_TYPES == (JSONLINES, JSON, PARQUET, "application/x-parquet", NPY)
    assert all(codec_for(accept).media_type == accept for accept in (JSONLINES, JSON))
    assert all(codec_for(accept).suffix == ".out" for accept in (JSONLINES, JSON))


@pytest.mark.parametrize("value", ["text/csv", "", "application/npy"])
def test_codec_for_rejects(value: str) -> None:
    with pytest.raises(ValueError) as err:
        codec_for(value)
    assert str(err.value) == (
        f"unsupported accept type {value!r}: use application/jsonlines, application/json, "
        "application/vnd.apache.parquet, application/x-parquet or application/x-npy"
    )


def test_framing() -> None:
    assert codec_for(JSONLINES).framing == Framing(b"", b"", b"")
    assert codec_for(JSON).framing == Framing(b'{"predictions":[', b",", b"]}\n")
    assert codec_for("application/json; charset=utf-8") is codec_for(JSON)


OBJECTS = [
    {"embeddings": np.array([0.5, 0.0, -1.25], dtype=np.float32)},
    {"scores": [0.25, 0.75]},
    {"SageMakerInput": [1, "é"], "SageMakerOutput": {"scores": np.array([3.5])}},
]
PLAIN = [
    {"embeddings": [0.5, 0.0, -1.25]},
    {"scores": [0.25, 0.75]},
    {"SageMakerInput": [1, "é"], "SageMakerOutput": {"scores": [3.5]}},
]


def test_encode_jsonlines() -> None:
    encoded = codec_for(JSONLINES).encode(OBJECTS)
    assert encoded.endswith(b"\n")
    assert [json.loads(line) for line in encoded.splitlines()] == PLAIN
    assert encoded.count(b"\n") == 3
    assert codec_for(JSONLINES).encode([]) == b""


def test_encode_json_fragment() -> None:
    encoded = codec_for(JSON).encode(OBJECTS)
    assert encoded.startswith(b'{"embeddings":[0.5,0.0,-1.25]},{')
    assert json.loads(b"[" + encoded + b"]") == PLAIN
    assert codec_for(JSON).encode([]) == b""


def predictions(n: int) -> list[dict]:
    rng = np.random.default_rng(n)
    vectors = rng.standard_normal((n, 4)).astype(np.float32)
    return [{"embeddings": vectors[i]} if i % 3 else {"scores": vectors[i, :3]} for i in range(n)]


@pytest.mark.parametrize("accept", [JSON, JSONLINES])
@pytest.mark.parametrize("n", [0, 1, 5, ENCODE_CHUNK, 2 * ENCODE_CHUNK + 1])
def test_encode_predictions_is_encode(accept: str, n: int) -> None:
    codec, batch = codec_for(accept), predictions(n)
    encoded = codec.encode_predictions(batch)
    assert encoded == codec.encode(batch) == codec.encode(iter(batch))
    if accept == JSON:
        assert len(json.loads(b"[" + encoded + b"]")) == n
    else:
        assert encoded.count(b"\n") == n and b"\n\n" not in encoded


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (JSONLINES, b'{"embeddings":[0.5,-1.0]}\n{"scores":[0.25,0.75]}\n'),
        (JSON, b'{"embeddings":[0.5,-1.0]},{"scores":[0.25,0.75]}'),
    ],
)
def test_encode_predictions_bytes(accept: str, expected: bytes) -> None:
    batch = [
        {"embeddings": np.array([0.5, -1.0], dtype=np.float32)},
        {"scores": np.array([0.25, 0.75], dtype=np.float32)},
    ]
    assert codec_for(accept).encode_predictions(batch) == expected


@pytest.mark.parametrize("accept", [JSON, JSONLINES])
@pytest.mark.parametrize("split", [[], [3], [1, 2], [1, 1, 1], [0, 3, 0]])
def test_frame_document(accept: str, split: list[int]) -> None:
    batches, start = [], 0
    for n in split:
        batches.append(OBJECTS[start : start + n])
        start += n
    document = frame_document([codec_for(accept).encode(batch) for batch in batches], accept)
    expected = PLAIN[: sum(split)]
    if accept == JSON:
        assert document.endswith(b"]}\n")
        assert json.loads(document) == {"predictions": expected}
    else:
        assert [json.loads(line) for line in document.splitlines()] == expected
        assert document.count(b"\n") == len(expected)
        assert document.endswith(b"\n") or document == b""


@pytest.mark.parametrize(
    ("accept", "expected"), [(JSON, b'{"predictions":[]}\n'), (JSONLINES, b"")]
)
def test_empty_shard(accept: str, expected: bytes) -> None:
    assert frame_document([], accept) == expected
    assert frame_document([b""], accept) == expected


@pytest.mark.parametrize(
    ("content_type", "key"),
    [(JSONLINES, "line"), (JSON, "record"), ("application/json; charset=utf-8", "record")],
)
def test_position_key(content_type: str, key: str) -> None:
    assert position_key(content_type) == key
    assert error_object("bad", 4, key) == {"error": {"message": "bad", key: 4}}


@pytest.mark.parametrize(
    ("content_type", "accept", "expected"),
    [
        (JSONLINES, JSONLINES, b'{"error":{"message":"too big","line":3}}\n'),
        (JSONLINES, JSON, b'{"error":{"message":"too big","line":3}}'),
        (JSON, JSON, b'{"error":{"message":"too big","record":3}}'),
        (JSON, JSONLINES, b'{"error":{"message":"too big","record":3}}\n'),
    ],
)
def test_error_fragment(content_type: str, accept: str, expected: bytes) -> None:
    assert error_fragment("too big", 3, content_type, accept) == expected


def test_errors_and_predictions_in_one_document() -> None:
    codec = codec_for(JSON)
    fragments = [
        codec.encode([PLAIN[0], error_object("malformed JSON", 1, "record")]),
        error_fragment("too big", 2, JSON, JSON),
    ]
    assert json.loads(frame_document(fragments, JSON)) == {
        "predictions": [
            PLAIN[0],
            {"error": {"message": "malformed JSON", "record": 1}},
            {"error": {"message": "too big", "record": 2}},
        ]
    }


@pytest.mark.parametrize("key", ["embeddings", "scores"])
@pytest.mark.parametrize("accept", [JSONLINES, JSON])
@pytest.mark.parametrize("shape", [(1, 1), (1, 5), (7, 3), (300, 16)])
def test_a_whole_array_encodes_as_row_by_row(accept, shape, key):
    """The one-call encoding of an (n, width) array of embeddings or scores is byte for
    byte the per-row one, special values included."""
    rng = np.random.default_rng(sum(shape))
    vectors = (rng.standard_normal(shape) * 10.0 ** rng.integers(-8, 8, shape)).astype(np.float32)
    specials = [np.nan, np.inf, -0.0][: vectors.size]
    vectors.flat[: len(specials)] = specials
    codec = codec_for(accept)
    expected = codec.encode_predictions([{key: row} for row in vectors])
    assert codec.encode_column(key, vectors) == expected
    assert codec.encode_column(key, vectors[:0]) == b""


@pytest.mark.parametrize("accept", [JSONLINES, JSON])
@pytest.mark.parametrize(("rows", "chunk"), [(7, 3), (7, 1), (6, 12), (5, 2), (1, 1)])
def test_an_array_dumped_in_chunks_encodes_as_row_by_row(accept, rows, chunk, monkeypatch):
    """A column dumped a few rows at a time (responses.COLUMN_CHUNK numbers: `chunk`
    rows of 3) is byte for byte the per-row encoding, across every seam between chunks."""
    monkeypatch.setattr(responses, "COLUMN_CHUNK", 3 * chunk)
    vectors = np.random.default_rng(rows).standard_normal((rows, 3)).astype(np.float32)
    codec = codec_for(accept)
    expected = codec.encode_predictions([{"embeddings": row} for row in vectors])
    assert codec.encode_column("embeddings", vectors) == expected
