"""Response codecs, one per accept type: the only place response bytes are built.

In a worker, a codec encodes one mini-batch's responses (predictions, error
objects, or what --join-source and --output-filter made of them) into one
fragment. In the parent, it frames an output shard's fragments, in input
order, into the shard's atomic writer. JSON text lives here; the columnar
formats for vector stores in o2v_batch/outputs/columnar.py (.npy, and the rows both
share) and o2v_batch/outputs/parquet.py; their common base classes in o2v_batch/outputs/codec.py.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from o2v_batch.inputs.formats import JSON, JSONLINES, bare_type, media_type
from o2v_batch.outputs.codec import (
    COLUMNAR_TYPES,
    NPY,
    PARQUET,
    PARQUET_ALIAS,
    Codec,
    Framer,
)

if TYPE_CHECKING:
    import numpy as np

    from o2v_batch.io import AtomicWriter
    from o2v_batch.model.hyperparameters import Hyperparameters


_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# Responses dumped one at a time are joined every ENCODE_CHUNK: orjson gives each
# its own buffer (4 KiB for a small one), which held for a whole mini-batch
# multiplied memory by 20.
ENCODE_CHUNK = 1024
# Numbers of a column of vectors dumped at a time: a few MB of text (up to 15 bytes a
# float32), so that no buffer but the fragment outgrows the allocator's reused heap
# (allocator.MMAP_THRESHOLD, 32 MB); a 9,500-record mini-batch of 512-number
# embeddings faulted in about 190 MB of fresh pages when dumped whole.
COLUMN_CHUNK = 2**18


class TextCodec(Codec):
    """Responses as JSON text: each response object as the hosted algorithm writes it."""

    @abc.abstractmethod
    def encode(self, responses: Iterable[Any]) -> bytes:
        """One mini-batch's fragment: its responses, one per record, in order."""

    def encode_predictions(self, predictions: Sequence[dict]) -> bytes:
        """encode() of prediction dicts that nest no other object, maybe faster."""
        return self.encode(predictions)

    def encode_column(self, key: str, vectors: np.ndarray) -> bytes:
        """encode_predictions() of one {key: row} per row of an (n, width) array: the
        embeddings or the scores of every record of a mini-batch."""
        return self.encode_predictions([{key: row} for row in vectors])

    def encode_error(self, problem: str, pos: int, key: str) -> bytes:
        return self.encode([error_object(problem, pos, key)])


@dataclass(frozen=True, slots=True)
class Framing:
    """What wraps the fragments of one output shard of JSON text."""

    header: bytes
    separator: bytes  # between two non-empty fragments
    footer: bytes


class _JsonText(TextCodec):
    """Each response as compact JSON, numpy arrays as lists, joined by `sep`;
    `terminated`: every response, the last one too, is followed by `sep`."""

    def __init__(self, media_type: str, sep: bytes, terminated: bool, framing: Framing) -> None:
        self.media_type = media_type
        self.sep = sep
        self.terminated = terminated
        self.framing = framing

    def encode(self, responses: Iterable[Any]) -> bytes:
        sep, chunks, parts = self.sep, [], []
        for response in responses:
            parts.append(orjson.dumps(response, option=_NUMPY))
            if len(parts) == ENCODE_CHUNK:
                chunks.append(sep.join(parts))
                parts = []
        if parts:
            chunks.append(sep.join(parts))
        if chunks and self.terminated:
            chunks.append(b"")  # the last separator, without copying the whole fragment again
        return sep.join(chunks)

    def encode_predictions(self, predictions: Sequence[dict]) -> bytes:
        if not predictions:
            return b""
        # One dumps call for the whole mini-batch: faster, and no per-response buffers.
        # These objects nest no other object, so "},{" only ever separates two of them.
        body = orjson.dumps(predictions, option=_NUMPY)
        if self.sep != b",":
            body = body.replace(b"},{", b"}" + self.sep + b"{")
        end = self.sep if self.terminated else b""
        return b"".join((memoryview(body)[1:-1], end))  # the brackets dropped, one copy

    def encode_column(self, key: str, vectors: np.ndarray) -> bytes:
        if not len(vectors):
            return b""
        # Rows dumped COLUMN_CHUNK numbers at a time, each chunk's "],[" made the
        # responses' seams: the numbers are written as they would be row by row, and
        # every buffer but the fragment itself stays small enough for the C allocator
        # to reuse (allocator.py), instead of mapping and faulting in fresh pages.
        head = b'{"' + key.encode() + b'":'
        seam = b"]}" + self.sep + head + b"["
        between = b"}" + self.sep + head
        rows = max(1, COLUMN_CHUNK // max(1, vectors.shape[1]))
        parts = [head]
        for start in range(0, len(vectors), rows):
            body = orjson.dumps(vectors[start : start + rows], option=_NUMPY)
            parts += (memoryview(body.replace(b"],[", seam))[1:-1], between)
        parts[-1] = b"}" + self.sep if self.terminated else b"}"
        return b"".join(parts)

    def start(self, writer: AtomicWriter) -> Framer:
        return _JsonTextFramer(writer, self.framing)


class _JsonTextFramer(Framer):
    def __init__(self, writer: AtomicWriter, framing: Framing) -> None:
        self._writer = writer
        self._framing = framing
        self._gap = b""  # what goes before the next fragment: nothing before the first
        if framing.header:
            writer.write(framing.header)

    def add(self, fragment: bytes) -> None:
        if not fragment:
            return
        if self._gap:
            self._writer.write(self._gap)
        self._writer.write(fragment)
        self._gap = self._framing.separator

    def region(self, length: int) -> tuple[str, int] | None:
        if not length or not self._writer.has_regions:
            return None
        if self._gap:
            self._writer.write(self._gap)
        self._gap = self._framing.separator
        return self._writer.region(length)

    def finish(self) -> None:
        if self._framing.footer:
            self._writer.write(self._framing.footer)


_TEXT_CODECS: dict[str, TextCodec] = {
    codec.media_type: codec
    for codec in (
        _JsonText(JSONLINES, b"\n", True, Framing(b"", b"", b"")),
        _JsonText(JSON, b",", False, Framing(b'{"predictions":[', b",", b"]}\n")),
    )
}
TEXT_TYPES = tuple(_TEXT_CODECS)
ACCEPT_TYPES = (*TEXT_TYPES, *COLUMNAR_TYPES)


def codec_for(accept: str) -> Codec:
    """The codec of an accept type; ValueError if unsupported. A text type's parameters
    are ignored; a columnar type's lay its columns out (output_type adds them)."""
    bare = bare_type(accept)
    codec = _TEXT_CODECS.get(bare)
    if codec is not None:
        return codec
    if bare == NPY:
        from o2v_batch.outputs import columnar  # numpy: only a columnar job's

        return columnar.codec_for(accept)
    if bare in (PARQUET, PARQUET_ALIAS):
        from o2v_batch.outputs import parquet  # pyarrow: only a Parquet job's

        return parquet.codec_for(accept)
    raise ValueError(
        f"unsupported accept type {accept!r}: use {', '.join(ACCEPT_TYPES[:-1])} "
        f"or {ACCEPT_TYPES[-1]}"
    )


def output_type(
    accept: str, hp: Hyperparameters, mode: str, embedding_dtype: str, joined: bool
) -> str:
    """The accept type a shard's responses are written in: `accept` itself, or for a
    columnar type the parameters that lay out its columns for the job's model `hp`, its
    --mode and --embedding-dtype, and whether --join-source Input adds the input's."""
    bare = bare_type(accept)
    if bare not in COLUMNAR_TYPES:
        return accept
    classes = 1 if hp.output_layer == "mean_squared_error" else hp.num_classes
    scores = 0 if bare == NPY or mode == "embedding" else classes
    params = [f"embeddings={hp.enc_dim}", f"scores={scores}", f"dtype={embedding_dtype}"]
    if joined:
        params.append("joined=1")
    return "; ".join([NPY if bare == NPY else PARQUET, *params])


def position_key(content_type: str) -> str:
    """The key of a record's place in its error object: `record` (JSON) or `line`."""
    return "record" if media_type(content_type) == JSON else "line"


def error_object(problem: str, pos: int, key: str) -> dict:
    """A bad record's response under --on-bad-record emit-error; `key` from position_key."""
    return {"error": {"message": problem, key: pos}}


def error_fragment(problem: str, pos: int, content_type: str, accept: str) -> bytes:
    """The fragment standing for a record too big for a mini-batch (it reaches no worker)."""
    return codec_for(accept).encode_error(problem, pos, position_key(content_type))
