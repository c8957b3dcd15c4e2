"""What one `POST /invocations` asks and what it is answered: the request's media
type and its `infer_max_seqlens` parameter, the response type the `Accept` header
picks, the body split into records, and the response bytes.

The records and responses are those of `o2v-batch transform`: the same splitters cut
the body, the same codec frames the worker's fragment, so a response holds exactly the
bytes transform writes for the same records. Imports no torch: the server's parent
process uses it.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from o2v_batch.errors import BadRecordError, RequestError
from o2v_batch.execution.protocol import BatchResult
from o2v_batch.inputs.formats import (
    JSON,
    JSONLINES,
    at_record,
    bare_type,
    iter_jsonlines,
    media_type,
)
from o2v_batch.inputs.jsonstream import iter_json_instances
from o2v_batch.outputs.responses import codec_for

SEQLENS_PARAMETER = "infer_max_seqlens"
MAX_SEQLEN = 5000  # the hosted algorithm's range for infer_max_seqlens
_ANY_TYPES = ("*/*", "application/*")


@dataclass(frozen=True)
class Invocation:
    """One request's records and formats, ready for a worker."""

    content_type: str  # the media type, with infer_max_seqlens when the request has it
    accept: str  # the response's media type
    positions: list[int]
    records: list[bytes]


def parse_content_type(header: str | None) -> str:
    """The request's content type as workers take it: its media type, and
    `;infer_max_seqlens=A,B` when given; RequestError 415 or 400 otherwise."""
    try:
        media = media_type(header or "")
    except ValueError as exc:
        raise RequestError(415, str(exc)) from None
    caps = seqlens_of(header or "")
    return media if caps is None else f"{media};{SEQLENS_PARAMETER}={caps[0]},{caps[1]}"


def seqlens_of(content_type: str) -> tuple[int, int] | None:
    """The `infer_max_seqlens=A,B` parameter of a content type (in0's and in1's caps,
    each 1..5000), or None; RequestError 400 when it is malformed."""
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() != SEQLENS_PARAMETER:
            continue
        parts = [p.strip() for p in value.strip().strip('"').split(",")]
        if len(parts) == 2 and all(p.isdigit() and 1 <= int(p) <= MAX_SEQLEN for p in parts):
            return int(parts[0]), int(parts[1])
        raise RequestError(
            400,
            f"{SEQLENS_PARAMETER} must be two integers A,B (in0, in1), each in "
            f"1..{MAX_SEQLEN}; got {value.strip()!r}",
        )
    return None


def response_type(accept: str | None, content_type: str) -> str:
    """The media type the `Accept` header asks for: the first it names that the hosted
    algorithm answers in; none, or any type, means the request's own (as transform's
    --accept defaults to the content type). RequestError 406 when it names only others."""
    wanted = [bare_type(item) for item in (accept or "").split(",") if item.strip()]
    for media in wanted:
        if media in (JSONLINES, JSON):
            return media
        if media in _ANY_TYPES:
            return bare_type(content_type)
    if not wanted:
        return bare_type(content_type)
    raise RequestError(406, f"unsupported accept type {accept!r}: use {JSONLINES} or {JSON}")


def invocation(body: bytes, content_type: str, accept: str) -> Invocation:
    """The request's records, split as transform splits a shard; RequestError 400 when
    a JSON document is not `{"instances": [...]}`."""
    # The body is within the payload cap, so no record in it can be over the cap: the
    # splitters' limit is the body's own size.
    split = iter_json_instances if bare_type(content_type) == JSON else iter_jsonlines
    try:
        records = list(split(io.BytesIO(body), max(1, len(body))))
    except BadRecordError as exc:
        raise RequestError(400, str(exc)) from None
    return Invocation(
        content_type, accept, [record.pos for record in records], [r.data for r in records]
    )


def response_body(accept: str, fragment: bytes) -> bytes:
    """The whole response: the worker's fragment framed by the accept type's codec, as
    transform frames an output shard of one mini-batch."""
    body = _Collected()
    framer = codec_for(accept).start(body)
    framer.add(fragment)
    framer.finish()
    return b"".join(body.parts)


def bad_record(result: BatchResult, content_type: str) -> str:
    """A request failed by one bad record: `line 3: <problem>`, as transform words it."""
    return at_record(result.error_pos, content_type, result.error)


class _Collected:
    """A writer that keeps what the codec writes."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(bytes(data))
