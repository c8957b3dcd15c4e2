"""Columnar outputs for vector stores: Parquet and NumPy `.npy`, one file per shard.

A worker encodes a mini-batch as one binary fragment: a small JSON head (the errors'
messages, the joined input fields) followed by raw little-endian arrays (positions,
row kinds, embeddings, scores), so the parent parses no JSON number. The parent's
framer turns fragments into Parquet row groups (o2v_batch/outputs/parquet.py) or `.npy` rows.

The accept type's parameters lay a shard out (responses.output_type adds them in the
parent, from the model's hyperparameters): the workers and the writer read the same widths
from the one string that already travels with every mini-batch, and a shard that no
worker ever sees (empty, or only oversize records) still gets its full schema.
"""

from __future__ import annotations

import functools
import io
import shutil
import struct
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO, NamedTuple

import numpy as np
import orjson

from o2v_batch.inputs.formats import bare_type
from o2v_batch.outputs.codec import NPY, PARQUET, Codec, Framer

if TYPE_CHECKING:
    from o2v_batch.io import AtomicWriter

# Row kinds, one byte per row in a fragment.
EMBEDDING, SCORES, ERROR = 0, 1, 2
# Columns o2v-batch writes; a joined input field may not take one of these names.
OUR_COLUMNS = ("position", "embeddings", "scores", "error")
NPY_PAIRS = (
    'record has both "in0" and "in1", but application/x-npy holds embeddings only '
    f"(scores need --accept {PARQUET} or JSON)"
)
_HEAD = struct.Struct("<I")  # the length of a fragment's JSON head
_INT64 = (-(2**63), 2**63)
SPOOL_CHUNK = 8 * 2**20  # bytes per copy from a spool to the output


@dataclass(frozen=True)
class Layout:
    """What a columnar shard holds, read from its accept type's parameters."""

    embeddings: int = 0  # the embeddings column's width (the model's enc_dim)
    scores: int = 0  # the scores column's width (num_classes, 1 for regression); 0: none
    dtype: str = "float32"  # of the embeddings (scores stay float32)
    joined: bool = False  # --join-source Input: the input's fields become columns too

    @classmethod
    def parse(cls, accept: str) -> Layout:
        params = dict(
            part.strip().partition("=")[::2] for part in accept.split(";")[1:] if "=" in part
        )
        return cls(
            embeddings=int(params.get("embeddings", 0)),
            scores=int(params.get("scores", 0)),
            dtype=params.get("dtype", "float32"),
            joined=params.get("joined") == "1",
        )

    @property
    def vector_dtype(self) -> np.dtype:
        return np.dtype("<f2" if self.dtype == "float16" else "<f4")

    def check(self) -> None:
        assert self.embeddings > 0, "a columnar accept type carries its widths (output_type)"


class Fragment(NamedTuple):
    """A decoded fragment: `embeddings` holds the EMBEDDING rows, `scores` the SCORES rows."""

    positions: np.ndarray
    kinds: np.ndarray
    embeddings: np.ndarray
    scores: np.ndarray
    errors: list[str]
    fields: dict[str, list]
    field_kinds: dict[str, list[str]]


class ColumnarCodec(Codec):
    """Rows of a position and an embedding, scores or an error."""

    def __init__(self, media_type: str, suffix: str, layout: Layout) -> None:
        self.media_type = media_type
        self.suffix = suffix
        self.layout = layout

    def refused(self, predictions: Sequence[dict | None]) -> list[int]:
        """The indexes of the predictions this format has no place for (NPY_PAIRS): scores,
        where it has no scores column."""
        if self.layout.scores:
            return []
        return [i for i, p in enumerate(predictions) if p is not None and "scores" in p]

    def encode_rows(
        self,
        positions: Sequence[int],
        predictions: Sequence[dict | None],
        problems: Mapping[int, str],
        fields: Mapping[int, dict] | None = None,
    ) -> bytes:
        """One mini-batch's fragment: a row per record, in order. `problems` (by record
        index) stand in place of predictions; `fields`: joined input fields by index."""
        self.layout.check()
        kinds, vectors = _kinds_and_vectors(predictions, problems)
        head: dict[str, Any] = {
            "rows": len(positions),
            "errors": [problems[i] for i in sorted(problems)],
        }
        if fields:
            head["fields"], head["kinds"] = _field_columns(fields, len(positions))
        return self._fragment(head, positions, kinds, *vectors)

    def takes(self, key: str) -> bool:
        """Whether this format has a column for `key`'s vectors (`embeddings`, `scores`)."""
        return key == "embeddings" or bool(self.layout.scores)

    def encode_column(self, positions: Sequence[int], key: str, vectors: np.ndarray) -> bytes:
        """encode_rows() of one {key: row} per row of an (n, width) array, no problems and
        no fields: the embeddings or the scores of every record of a mini-batch, taken
        whole (takes(key) must hold)."""
        assert self.takes(key), f"no column for {key}"
        self.layout.check()
        n = len(positions)
        assert len(vectors) == n, f"{len(vectors)} vectors for {n} records"
        if key == "embeddings":
            return self._fragment({"rows": n, "errors": []}, positions, bytes(n), vectors, [])
        kinds = bytes([SCORES]) * n
        return self._fragment({"rows": n, "errors": []}, positions, kinds, [], vectors)

    def _fragment(
        self,
        head: dict[str, Any],
        positions: Sequence[int],
        kinds: bytes | bytearray,
        embeddings: Sequence | np.ndarray,
        scores: Sequence | np.ndarray,
    ) -> bytes:
        """A fragment's bytes: its JSON head, then the positions, the row kinds, the
        EMBEDDING rows' vectors and the SCORES rows' vectors as raw little-endian arrays."""
        blocks = (
            _block(embeddings, self.layout.embeddings, self.layout.vector_dtype),
            _block(scores, self.layout.scores, np.dtype("<f4")),
        )
        data = orjson.dumps(head)
        return b"".join(
            (
                _HEAD.pack(len(data)),
                data,
                np.asarray(positions, dtype="<i8").tobytes(),
                bytes(kinds),
                *(block.tobytes() for block in blocks),
            )
        )

    def encode_error(self, problem: str, pos: int, key: str) -> bytes:
        return self.encode_rows([pos], [None], {0: problem})

    def decode(self, fragment: bytes) -> Fragment:
        (size,) = _HEAD.unpack_from(fragment)
        head = orjson.loads(memoryview(fragment)[_HEAD.size : _HEAD.size + size])
        n, offset = head["rows"], _HEAD.size + size
        positions = np.frombuffer(fragment, "<i8", n, offset)
        kinds = np.frombuffer(fragment, np.uint8, n, offset + 8 * n)
        offset += 9 * n
        blocks = []
        for kind, width, dtype in (
            (EMBEDDING, self.layout.embeddings, self.layout.vector_dtype),
            (SCORES, self.layout.scores, np.dtype("<f4")),
        ):
            rows = int(np.count_nonzero(kinds == kind))
            blocks.append(np.frombuffer(fragment, dtype, rows * width, offset).reshape(rows, width))
            offset += rows * width * dtype.itemsize
        fields, field_kinds = head.get("fields", {}), head.get("kinds", {})
        return Fragment(positions, kinds, *blocks, head["errors"], fields, field_kinds)

    def full_rows(self, fragment: Fragment, kind: int, fill: float) -> np.ndarray:
        """The fragment's embeddings (or scores) as one row per record, `fill` elsewhere."""
        block = fragment.embeddings if kind == EMBEDDING else fragment.scores
        if len(block) == len(fragment.kinds):  # every row has one: the block itself
            return block
        rows = np.full((len(fragment.kinds), block.shape[1]), fill, dtype=block.dtype)
        rows[fragment.kinds == kind] = block
        return rows


def _kinds_and_vectors(
    predictions: Sequence[dict | None], problems: Mapping[int, str]
) -> tuple[bytearray, tuple[list, list]]:
    """Each record's row kind, and the embeddings and the scores, each in row order."""
    embeddings = [None if p is None else p.get("embeddings") for p in predictions]
    if not problems and all(e is not None for e in embeddings):  # the common case
        return bytearray(len(predictions)), (embeddings, [])
    kinds, vectors = bytearray(len(predictions)), ([], [])
    for i, (prediction, embedding) in enumerate(zip(predictions, embeddings, strict=True)):
        if i in problems:
            kinds[i] = ERROR
        elif embedding is not None:
            vectors[0].append(embedding)
        else:
            kinds[i] = SCORES
            vectors[1].append(prediction["scores"])
    return kinds, vectors


def _block(vectors: Sequence | np.ndarray, width: int, dtype: np.dtype) -> np.ndarray:
    """Vectors (rows, or an (n, width) array) as one (n, width) array of `dtype`; float16
    rounds to nearest."""
    if not len(vectors):
        return np.empty((0, width), dtype)
    block = (vectors if isinstance(vectors, np.ndarray) else np.stack(vectors)).astype(
        dtype, copy=False
    )
    assert block.shape[1] == width, f"a {block.shape[1]}-wide vector in a {width}-wide column"
    return block


def _field_columns(joined: Mapping[int, dict], n: int) -> tuple[dict, dict]:
    """The joined fields as columns of n values (None where absent), and the JSON kinds
    each column holds, so the parent picks a type without looking at every value."""
    columns: dict[str, list] = {}
    kinds: dict[str, set[str]] = {}
    for i, fields in joined.items():
        for name, value in fields.items():
            if name not in columns:
                columns[name], kinds[name] = [None] * n, set()
            columns[name][i] = value
            if value is not None:
                kinds[name].add(_json_kind(value))
    return columns, {name: sorted(found) for name, found in kinds.items()}


def _json_kind(value: Any) -> str:
    kind = type(value)
    if kind is int:
        return "int" if _INT64[0] <= value < _INT64[1] else "json"
    return {bool: "bool", float: "float", str: "str"}.get(kind, "json")


# ---------------------------------------------------------------- the parent side


class Sink(io.RawIOBase):
    """A shard's atomic writer as the file object pyarrow and numpy write to; once
    discarded, writes go nowhere (a writer dropped with an aborted shard may still flush)."""

    def __init__(self, writer: AtomicWriter | BinaryIO) -> None:
        super().__init__()
        self._writer: AtomicWriter | BinaryIO | None = writer

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        if self._writer is not None:
            self._writer.write(bytes(data))
        return len(data)

    def discard(self) -> None:
        self._writer = None


class _NpyFramer(Framer):
    """Rows spooled to a temporary file, then the header (it holds the row count, known
    only at the end) and the rows copied to the output: memory stays flat."""

    def __init__(self, writer: AtomicWriter, codec: ColumnarCodec) -> None:
        self._sink = Sink(writer)
        self._codec = codec
        self._spool = tempfile.TemporaryFile()  # noqa: SIM115 (closed by finish or discard)
        self._rows = 0

    def add(self, fragment: bytes) -> None:
        if not fragment:
            return
        decoded = self._codec.decode(fragment)
        assert not (decoded.kinds == SCORES).any(), "npy rows hold embeddings only"
        self._spool.write(self._codec.full_rows(decoded, EMBEDDING, np.nan).data)
        self._rows += len(decoded.kinds)

    def finish(self) -> None:
        layout = self._codec.layout
        header = {
            "descr": np.lib.format.dtype_to_descr(layout.vector_dtype),
            "fortran_order": False,
            "shape": (self._rows, layout.embeddings),
        }
        np.lib.format.write_array_header_1_0(self._sink, header)
        self._spool.seek(0)
        shutil.copyfileobj(self._spool, self._sink, SPOOL_CHUNK)
        self._spool.close()

    def discard(self) -> None:
        self._sink.discard()
        self._spool.close()


class _Npy(ColumnarCodec):
    def start(self, writer: AtomicWriter) -> Framer:
        self.layout.check()
        return _NpyFramer(writer, self)


@functools.lru_cache(maxsize=64)
def codec_for(accept: str) -> ColumnarCodec:
    """The .npy codec of an accept type with its layout parameters."""
    assert bare_type(accept) == NPY, f"not {NPY}: {accept}"
    return _Npy(NPY, ".npy", Layout.parse(accept))
