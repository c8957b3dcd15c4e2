"""Parquet output shards: schema, row groups of a fixed size, joined fields' types."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_columnar import Row, encode

from o2v_batch.outputs import parquet
from o2v_batch.outputs.parquet import field_type, row_group_rows
from o2v_batch.outputs.responses import PARQUET, codec_for

ACCEPT = f"{PARQUET}; embeddings=4; scores=3; dtype=float32"


def rows(n: int, seed: int = 0) -> list[Row]:
    """Embeddings, scores and errors, in turn, at positions 1, 3, 5..."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(Row(2 * i + 1, {"embeddings": rng.standard_normal(4).astype(np.float32)}))
        elif i % 3 == 1:
            out.append(Row(2 * i + 1, {"scores": rng.random(3).astype(np.float32)}))
        else:
            out.append(Row(2 * i + 1, None, f"bad {i}"))
    return out


def document(fragments: list[list[Row]], accept: str = ACCEPT) -> bytes:
    codec, out = codec_for(accept), io.BytesIO()
    framer = codec.start(out)
    for part in fragments:
        framer.add(encode(codec, part))
    framer.finish()
    return out.getvalue()


def read(data: bytes) -> pa.Table:
    return pq.read_table(io.BytesIO(data))


def test_schema_and_values() -> None:
    table = read(document([rows(6)]))
    assert table.schema == pa.schema(
        [
            ("position", pa.int64()),
            ("embeddings", pa.list_(pa.field("element", pa.float32()), 4)),
            ("scores", pa.list_(pa.field("element", pa.float32()), 3)),
            ("error", pa.string()),
        ]
    )
    expected = rows(6)
    assert table["position"].to_pylist() == [1, 3, 5, 7, 9, 11]
    assert table["error"].to_pylist() == [None, None, "bad 2", None, None, "bad 5"]
    embeddings, scores = table["embeddings"].to_pylist(), table["scores"].to_pylist()
    assert embeddings[0] == expected[0].prediction["embeddings"].tolist()
    assert scores[1] == expected[1].prediction["scores"].tolist()
    assert [e is None for e in embeddings] == [False, True, True, False, True, True]
    assert [s is None for s in scores] == [True, False, True, True, False, True]


def test_embedding_mode_has_no_scores_column_and_float16_halves() -> None:
    accept = f"{PARQUET}; embeddings=4; scores=0; dtype=float16"
    table = read(
        document([[r for r in rows(6) if r.problem or "embeddings" in r.prediction]], accept)
    )
    assert table.column_names == ["position", "embeddings", "error"]
    assert table.schema.field("embeddings").type.value_type == pa.float16()
    vector = rows(1)[0].prediction["embeddings"]
    assert table["embeddings"][0].as_py() == vector.astype(np.float16).tolist()


def test_empty_shard_has_the_whole_schema() -> None:
    table = read(document([]))
    assert table.num_rows == 0
    assert table.column_names == ["position", "embeddings", "scores", "error"]
    assert table.schema.field("embeddings").type.list_size == 4


@pytest.mark.parametrize("split", [[10], [1] * 10, [3, 0, 4, 3], [7, 3]])
def test_row_groups_have_a_fixed_size_whatever_the_fragments(monkeypatch, split) -> None:
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 4)
    all_rows, parts, start = rows(10), [], 0
    for n in split:
        parts.append(all_rows[start : start + n])
        start += n
    data = document(parts)
    assert data == document([all_rows])  # the same bytes, however it was cut
    meta = pq.ParquetFile(io.BytesIO(data)).metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [4, 4, 2]


@pytest.mark.parametrize("split", [[3, 3, 1, 2, 1], [1] * 10, [6, 4]])
def test_fragments_with_every_row_of_a_kind_give_the_same_bytes(monkeypatch, split) -> None:
    """A fragment whose rows all have embeddings (or all scores) lends its own array to
    the column; a mixed one is masked row by row: the shard's bytes are the same."""
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 4)
    rng = np.random.default_rng(3)
    width = {"embeddings": 4, "scores": 3}
    kinds = ["embeddings"] * 3 + ["scores"] * 3 + ["error"] + ["embeddings"] * 3
    all_rows = [
        Row(i, None, "bad")
        if kind == "error"
        else Row(i, {kind: rng.standard_normal(width[kind]).astype(np.float32)})
        for i, kind in enumerate(kinds)
    ]
    parts, start = [], 0
    for n in split:
        parts.append(all_rows[start : start + n])
        start += n
    data = document(parts)
    assert data == document([all_rows])  # one mixed fragment, masked row by row
    table = read(data)
    for row, embedding, scores in zip(
        all_rows, table["embeddings"].to_pylist(), table["scores"].to_pylist(), strict=True
    ):
        prediction = row.prediction or {}
        assert embedding == (
            prediction["embeddings"].tolist() if "embeddings" in prediction else None
        )
        assert scores == (prediction["scores"].tolist() if "scores" in prediction else None)


def test_row_group_rows_bounded_by_bytes() -> None:
    assert row_group_rows(codec_for(ACCEPT)) == parquet.ROW_GROUP_ROWS
    wide = codec_for(f"{PARQUET}; embeddings=8192; scores=0; dtype=float32")
    assert row_group_rows(wide) == parquet.ROW_GROUP_BYTES // (8192 * 4 + 16)


@pytest.mark.parametrize(
    ("kinds", "expected"),
    [
        ({"int"}, "int"),
        ({"float"}, "float"),
        ({"int", "float"}, "float"),
        ({"str"}, "str"),
        ({"bool"}, "bool"),
        ({"int", "str"}, "json"),
        ({"bool", "int"}, "json"),
        ({"json"}, "json"),
        (set(), "json"),
    ],
)
def test_field_type(kinds: set[str], expected: str) -> None:
    assert field_type(kinds) == expected


def test_joined_fields_typed_by_every_value_in_the_shard(monkeypatch) -> None:
    monkeypatch.setattr(parquet, "ROW_GROUP_ROWS", 2)
    vector = {"embeddings": np.ones(4, dtype=np.float32)}
    first = [
        Row(1, vector, None, {"id": 1, "tag": "a", "mixed": 1, "nested": {"k": [1]}}),
        Row(2, vector, None, {"id": 2, "score": 1}),
    ]
    # Fields met only in a later fragment, a kind that changes, a bad record in between.
    later = [
        Row(3, None, "bad"),
        Row(4, vector, None, {"id": 3, "mixed": "x", "score": 0.5, "late": True}),
    ]
    table = read(document([first, later], ACCEPT + "; joined=1"))
    assert table.column_names[4:] == ["id", "tag", "mixed", "nested", "score", "late"]
    types = {name: table.schema.field(name).type for name in table.column_names[4:]}
    assert types == {
        "id": pa.int64(),
        "tag": pa.string(),
        "mixed": pa.string(),
        "nested": pa.string(),
        "score": pa.float64(),
        "late": pa.bool_(),
    }
    assert table["id"].to_pylist() == [1, 2, None, 3]
    assert table["mixed"].to_pylist() == ["1", None, None, '"x"']  # as JSON text
    assert [json.loads(v) if v else v for v in table["nested"].to_pylist()] == [
        {"k": [1]},
        None,
        None,
        None,
    ]
    assert table["score"].to_pylist() == [None, 1.0, None, 0.5]
    assert table["late"].to_pylist() == [None, None, None, True]
    assert table["error"].to_pylist() == [None, None, "bad", None]


def test_discard_writes_nothing_more() -> None:
    out = io.BytesIO()
    codec = codec_for(ACCEPT + "; joined=1")
    framer = codec.start(out)
    framer.add(encode(codec, rows(3)))
    framer.discard()
    assert out.getvalue() == b""
    out = io.BytesIO()
    framer = codec_for(ACCEPT).start(out)
    framer.add(encode(codec_for(ACCEPT), rows(3)))
    written = out.getvalue()
    framer.discard()
    assert out.getvalue() == written  # no footer: never a readable file
