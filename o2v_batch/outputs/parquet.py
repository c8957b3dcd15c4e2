"""Parquet output shards, written with pyarrow in row groups of a fixed size.

Columns: `position`, `embeddings` (fixed_size_list<float32|float16>[enc_dim]), `scores`
(fixed_size_list<float32>[width], unless the mode is embedding), `error`, then with
--join-source Input the joined input fields. Row groups hold a fixed number of rows
(from the row width), so a shard's bytes do not depend on how it was cut into
mini-batches, and memory stays flat whatever the shard size.

Without joined fields the schema is known from the layout and row groups stream to the
output as fragments arrive. A joined field's type is decided by all its values in the
shard, so those shards are spooled to a temporary file first, then written: bool,
int64, float64 (ints and floats mixed), string; anything else (mixed kinds, arrays,
objects, or no value at all) is the value's JSON text.
"""

from __future__ import annotations

import functools
import struct
import tempfile
from typing import TYPE_CHECKING

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from o2v_batch.outputs.codec import PARQUET, Framer
from o2v_batch.outputs.columnar import (
    EMBEDDING,
    ERROR,
    SCORES,
    ColumnarCodec,
    Fragment,
    Layout,
    Sink,
)

if TYPE_CHECKING:
    from o2v_batch.io import AtomicWriter

# A row group holds at most this many rows, and about this many bytes of vectors.
ROW_GROUP_ROWS = 2**16
ROW_GROUP_BYTES = 32 * 2**20
_LENGTH = struct.Struct("<Q")  # of each spooled fragment
_TYPES = {
    "bool": pa.bool_(),
    "int": pa.int64(),
    "float": pa.float64(),
    "str": pa.string(),
}


def row_group_rows(codec: ColumnarCodec) -> int:
    """Rows per row group: fixed by the layout, so the bytes are too."""
    layout = codec.layout
    row_bytes = layout.embeddings * layout.vector_dtype.itemsize + layout.scores * 4 + 16
    return max(1, min(ROW_GROUP_ROWS, ROW_GROUP_BYTES // row_bytes))


def field_type(kinds: set[str]) -> str:
    """A joined field's column type, from the JSON kinds of its values in the shard."""
    if len(kinds) == 1 and next(iter(kinds)) in _TYPES:
        return next(iter(kinds))
    if kinds == {"int", "float"}:
        return "float"
    return "json"


class ParquetFramer(Framer):
    """Fragments in; row groups of row_group_rows rows out."""

    def __init__(self, sink: Sink, codec: ColumnarCodec) -> None:
        self._sink = sink
        self._codec = codec
        self._kinds: dict[str, set[str]] = {}  # joined field -> JSON kinds seen
        self._spool = tempfile.TemporaryFile() if codec.layout.joined else None  # noqa: SIM115
        self._groups: _RowGroups | None = None
        if self._spool is None:
            self._groups = _RowGroups(sink, _schema(codec, {}), row_group_rows(codec))

    def add(self, fragment: bytes) -> None:
        if not fragment:
            return
        if self._spool is None:
            self._groups.add(_table(self._codec.decode(fragment), self._groups.schema, {}))
            return
        for name, kinds in self._codec.decode(fragment).field_kinds.items():
            self._kinds.setdefault(name, set()).update(kinds)
        self._spool.write(_LENGTH.pack(len(fragment)))
        self._spool.write(fragment)

    def finish(self) -> None:
        if self._spool is not None:
            types = {name: field_type(kinds) for name, kinds in self._kinds.items()}
            self._groups = _RowGroups(
                self._sink, _schema(self._codec, types), row_group_rows(self._codec)
            )
            self._spool.seek(0)
            while header := self._spool.read(_LENGTH.size):
                fragment = self._spool.read(_LENGTH.unpack(header)[0])
                self._groups.add(_table(self._codec.decode(fragment), self._groups.schema, types))
            self._spool.close()
        self._groups.close()

    def discard(self) -> None:
        self._sink.discard()
        if self._spool is not None:
            self._spool.close()
        if self._groups is not None:
            self._groups.drop()


def _schema(codec: ColumnarCodec, types: dict[str, str]) -> pa.Schema:
    layout = codec.layout
    vector = pa.float16() if layout.dtype == "float16" else pa.float32()
    columns = [
        ("position", pa.int64()),
        ("embeddings", pa.list_(vector, layout.embeddings)),
    ]
    if layout.scores:
        columns.append(("scores", pa.list_(pa.float32(), layout.scores)))
    columns.append(("error", pa.string()))
    columns += [(name, _TYPES.get(kind, pa.string())) for name, kind in types.items()]
    return pa.schema(columns)


def _table(fragment: Fragment, schema: pa.Schema, types: dict[str, str]) -> pa.Table:
    n = len(fragment.kinds)
    columns = [pa.array(fragment.positions), _vectors(fragment, EMBEDDING)]
    if "scores" in schema.names:
        columns.append(_vectors(fragment, SCORES))
    errors: list[str | None] = [None] * n
    for i, problem in zip(
        np.flatnonzero(fragment.kinds == ERROR).tolist(), fragment.errors, strict=True
    ):
        errors[i] = problem
    columns.append(pa.array(errors, pa.string()))
    for name, kind in types.items():
        values = fragment.fields.get(name) or [None] * n
        if kind == "json":
            values = [None if v is None else orjson.dumps(v).decode() for v in values]
        columns.append(pa.array(values, _TYPES.get(kind, pa.string())))
    return pa.Table.from_arrays(columns, schema=schema)


def _vectors(fragment: Fragment, kind: int) -> pa.FixedSizeListArray:
    block = fragment.embeddings if kind == EMBEDDING else fragment.scores
    if len(block) == len(fragment.kinds):  # every row has one: the fragment's own array
        return pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
    rows = np.zeros((len(fragment.kinds), block.shape[1]), dtype=block.dtype)
    present = fragment.kinds == kind
    rows[present] = block
    return pa.FixedSizeListArray.from_arrays(
        pa.array(rows.reshape(-1)), block.shape[1], mask=pa.array(~present)
    )


class _RowGroups:
    """Tables in, row groups of exactly `rows` rows out (the last one may be smaller)."""

    def __init__(self, sink: Sink, schema: pa.Schema, rows: int) -> None:
        self.schema = schema
        self._rows = rows
        self._tables: list[pa.Table] = []
        self._buffered = 0
        vectors = {"embeddings", "scores"}
        # Float vectors do not repeat: a dictionary would be tried, then dropped, per page.
        self._writer = pq.ParquetWriter(
            sink,
            schema,
            use_dictionary=[name for name in schema.names if name not in vectors],
            write_statistics=[name for name in schema.names if name not in vectors],
        )

    def add(self, table: pa.Table) -> None:
        self._tables.append(table)
        self._buffered += table.num_rows
        if self._buffered >= self._rows:
            self._write(self._buffered - self._buffered % self._rows)

    def close(self) -> None:
        if self._buffered:
            self._write(self._buffered)
        self._writer.close()

    def drop(self) -> None:
        """Closes without writing what is buffered: the shard is aborted."""
        self._tables, self._buffered = [], 0
        self._writer.close()

    def _write(self, rows: int) -> None:
        # One contiguous table: pages are then cut the same however fragments were sized.
        whole = pa.concat_tables(self._tables).combine_chunks()
        self._writer.write_table(whole.slice(0, rows), row_group_size=self._rows)
        rest = whole.slice(rows)
        self._tables, self._buffered = ([rest] if rest.num_rows else []), rest.num_rows


class _Parquet(ColumnarCodec):
    def start(self, writer: AtomicWriter) -> Framer:
        self.layout.check()
        return ParquetFramer(Sink(writer), self)


@functools.lru_cache(maxsize=64)
def codec_for(accept: str) -> ColumnarCodec:
    """The Parquet codec of an accept type with its layout parameters."""
    return _Parquet(PARQUET, ".parquet", Layout.parse(accept))
