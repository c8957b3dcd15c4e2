"""Serializers and deserializers shaped like the SageMaker SDK's: a serializer has
`serialize(data)` and `CONTENT_TYPE`, a deserializer `deserialize(stream,
content_type)` and `ACCEPT`. A Predictor takes these or the SDK's own
(`sagemaker.serializers.JSONSerializer()`...): it only calls those four names."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, BinaryIO

import orjson

from o2v_batch.inputs.formats import JSON, JSONLINES

_NUMPY = orjson.OPT_SERIALIZE_NUMPY  # numpy arrays and numbers become JSON lists and numbers


def _as_is(data: Any) -> bytes | None:
    """Data that is already a request body: bytes, text or a readable file."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, str):
        return data.encode("utf-8")
    if hasattr(data, "read"):
        return _as_is(data.read())
    return None


class JSONSerializer:
    """A request body of application/json, e.g. `{"instances": [{"in0": [...]}]}`."""

    CONTENT_TYPE = JSON

    def serialize(self, data: Any) -> bytes:
        body = _as_is(data)
        return body if body is not None else orjson.dumps(data, option=_NUMPY)


class JSONLinesSerializer:
    """A request body of application/jsonlines: one record per line, from an iterable
    of records."""

    CONTENT_TYPE = JSONLINES

    def serialize(self, data: Iterable[Any] | bytes | str) -> bytes:
        body = _as_is(data)
        if body is not None:
            return body
        return b"".join(orjson.dumps(record, option=_NUMPY) + b"\n" for record in data)


class JSONDeserializer:
    """An application/json response as Python objects: `{"predictions": [...]}`."""

    ACCEPT = (JSON,)

    def deserialize(self, stream: BinaryIO, content_type: str) -> Any:
        try:
            return orjson.loads(stream.read())
        finally:
            stream.close()


class JSONLinesDeserializer:
    """An application/jsonlines response as a list, one object per record."""

    ACCEPT = (JSONLINES,)

    def deserialize(self, stream: BinaryIO, content_type: str) -> list[Any]:
        try:
            return [orjson.loads(line) for line in stream.read().splitlines() if line.strip()]
        finally:
            stream.close()
