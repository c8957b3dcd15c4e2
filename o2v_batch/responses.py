"""Response codecs, one per accept type: the only place response bytes are built.

In a worker, a codec encodes one mini-batch's responses (predictions, error
objects, or what --join-source and --output-filter made of them) into one
fragment. In the parent, it frames an output shard's fragments, in input
order, into the shard's atomic writer.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from o2v_batch.formats import JSON, JSONLINES, bare_type, media_type

if TYPE_CHECKING:
    from o2v_batch.io import AtomicWriter

_NUMPY = orjson.OPT_SERIALIZE_NUMPY
# Responses dumped one at a time are joined every ENCODE_CHUNK: orjson gives each
# its own buffer (4 KiB for a small one), which held for a whole mini-batch
# multiplied memory by 20.
ENCODE_CHUNK = 1024


class Framer(abc.ABC):
    """Writes the fragments of one output shard, in order, into its writer."""

    @abc.abstractmethod
    def add(self, fragment: bytes) -> None:
        """Writes the next mini-batch's fragment."""

    @abc.abstractmethod
    def finish(self) -> None:
        """Writes what ends the shard; the writer is then ready to commit."""


class Codec(abc.ABC):
    """The responses of one accept type."""

    media_type: str
    suffix = ".out"  # output shards are named <input path><suffix>

    @abc.abstractmethod
    def encode(self, responses: Iterable[Any]) -> bytes:
        """One mini-batch's fragment: its responses, one per record, in order."""

    def encode_predictions(self, predictions: Sequence[dict]) -> bytes:
        """encode() of prediction dicts that nest no other object, maybe faster."""
        return self.encode(predictions)

    @abc.abstractmethod
    def start(self, writer: AtomicWriter) -> Framer:
        """Begins an output shard in `writer`; the Framer takes its fragments."""


@dataclass(frozen=True, slots=True)
class Framing:
    """What wraps the fragments of one output shard of JSON text."""

    header: bytes
    separator: bytes  # between two non-empty fragments
    footer: bytes


class _JsonText(Codec):
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

    def finish(self) -> None:
        if self._framing.footer:
            self._writer.write(self._framing.footer)


_CODECS: dict[str, Codec] = {
    codec.media_type: codec
    for codec in (
        _JsonText(JSONLINES, b"\n", True, Framing(b"", b"", b"")),
        _JsonText(JSON, b",", False, Framing(b'{"predictions":[', b",", b"]}\n")),
    )
}
ACCEPT_TYPES = tuple(_CODECS)


def codec_for(accept: str) -> Codec:
    """The codec of an accept type (parameters ignored); ValueError if unsupported."""
    codec = _CODECS.get(bare_type(accept))
    if codec is None:
        raise ValueError(f"unsupported accept type {accept!r}: use {' or '.join(ACCEPT_TYPES)}")
    return codec


def position_key(content_type: str) -> str:
    """The key of a record's place in its error object: `record` (JSON) or `line`."""
    return "record" if media_type(content_type) == JSON else "line"


def error_object(problem: str, pos: int, key: str) -> dict:
    """A bad record's response under --on-bad-record emit-error; `key` from position_key."""
    return {"error": {"message": problem, key: pos}}


def error_fragment(problem: str, pos: int, content_type: str, accept: str) -> bytes:
    """The fragment standing for a record too big for a mini-batch (it reaches no worker)."""
    return codec_for(accept).encode([error_object(problem, pos, position_key(content_type))])
