"""The per-shard reorder buffer, on real local files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_columnar import Row, encode

from o2v_batch.engines.shard_output import ShardOutput
from o2v_batch.inputs.formats import JSON, JSONLINES
from o2v_batch.outputs.responses import codec_for


def files_in(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


@pytest.mark.parametrize(
    ("accept", "expected"),
    [
        (JSONLINES, b'{"a":0}\n{"a":1}\n{"a":2}\n{"a":3}\n'),
        (JSON, b'{"predictions":[{"a":0},{"a":1},{"a":2},{"a":3}]}\n'),
    ],
)
def test_results_in_any_order_are_written_in_order(
    tmp_path: Path, accept: str, expected: bytes
) -> None:
    sep = b"," if accept == JSON else b"\n"
    end = b"" if accept == JSON else b"\n"
    fragments = [b'{"a":0}' + sep + b'{"a":1}' + end, b'{"a":2}' + end, b'{"a":3}' + end]
    target = tmp_path / "part.jsonl.out"
    output = ShardOutput(str(target), accept)
    output.add(2, fragments[2], 1)
    output.add(1, fragments[1], 1)
    assert not output.complete and output.records == 2
    output.total = 3
    assert not output.complete
    output.add(0, fragments[0], 2)
    assert output.complete and output.records == 4
    assert not target.exists()  # nothing appears before the commit
    output.commit()
    assert target.read_bytes() == expected
    assert files_in(tmp_path) == ["part.jsonl.out"]


@pytest.mark.parametrize(
    ("accept", "expected"), [(JSONLINES, b""), (JSON, b'{"predictions":[]}\n')]
)
def test_empty_shard(tmp_path: Path, accept: str, expected: bytes) -> None:
    output = ShardOutput(str(tmp_path / "empty.out"), accept)
    output.total = 0
    output.commit()
    assert (tmp_path / "empty.out").read_bytes() == expected


def test_abort_leaves_nothing(tmp_path: Path) -> None:
    output = ShardOutput(str(tmp_path / "part.out"), JSON)
    output.add(0, b'{"a":0}', 1)
    output.abort()
    output.abort()  # safe twice, as in a `finally`
    assert files_in(tmp_path) == []


def test_commit_needs_every_mini_batch(tmp_path: Path) -> None:
    output = ShardOutput(str(tmp_path / "part.out"), JSONLINES)
    output.add(1, b'{"a":1}\n', 1)
    output.total = 2
    with pytest.raises(AssertionError, match="every mini-batch is written before the commit"):
        output.commit()
    output.abort()
    assert files_in(tmp_path) == []


COLUMNAR = [
    "application/vnd.apache.parquet; embeddings=2; scores=0; dtype=float32",
    "application/x-npy; embeddings=2; scores=0; dtype=float32",
]


def embedding_fragment(accept: str, pos: int) -> bytes:
    row = Row(pos, {"embeddings": np.array([pos, -pos], dtype=np.float32)})
    return encode(codec_for(accept), [row])


def read_columnar(path: Path) -> list:
    if path.suffix == ".npy":
        return np.load(path).tolist()
    return pq.read_table(path)["embeddings"].to_pylist()


@pytest.mark.parametrize("accept", COLUMNAR)
def test_columnar_results_in_any_order_appear_on_commit(tmp_path: Path, accept: str) -> None:
    target = tmp_path / f"part{codec_for(accept).suffix}"
    output = ShardOutput(str(target), accept)
    output.add(1, embedding_fragment(accept, 2), 1)
    output.add(0, embedding_fragment(accept, 1), 1)
    output.total = 2
    assert not target.exists()
    output.commit()
    assert read_columnar(target) == [[1.0, -1.0], [2.0, -2.0]]
    assert files_in(tmp_path) == [target.name]


@pytest.mark.parametrize("accept", COLUMNAR)
def test_columnar_abort_leaves_nothing(tmp_path: Path, accept: str) -> None:
    output = ShardOutput(str(tmp_path / "part.out"), accept)
    output.add(0, embedding_fragment(accept, 1), 1)
    output.abort()
    output.abort()
    assert files_in(tmp_path) == []


def test_a_failed_part_fails_the_shard_once_the_parts_before_it_are_in(tmp_path: Path) -> None:
    output = ShardOutput(str(tmp_path / "part.jsonl.out"), JSONLINES)
    assert output.fail(2, "line 9: bad") is None  # parts 0 and 1 may hold an earlier one
    assert output.fail(1, "line 5: bad") is None
    assert output.add(3, b'{"a":3}\n', 1) is None
    assert output.add(0, b'{"a":0}\n', 1) == "line 5: bad"
    assert not output.complete
    output.abort()
    assert files_in(tmp_path) == []
