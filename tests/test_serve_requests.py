"""What a /invocations request asks and the bytes it is answered with, without a server."""

from __future__ import annotations

import io
import json

import pytest

from o2v_batch.errors import RequestError, RequestFormatError
from o2v_batch.execution.protocol import BatchResult
from o2v_batch.inputs.jsonstream import iter_json_instances
from o2v_batch.outputs.responses import codec_for
from o2v_batch.serve.invocations import (
    bad_record,
    invocation,
    parse_content_type,
    response_body,
    response_type,
    seqlens_of,
)

JSON, JSONLINES = "application/json", "application/jsonlines"


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (JSON, JSON),
        ("Application/JSONLines; charset=utf-8", JSONLINES),
        (f"{JSON};infer_max_seqlens=10,20", f"{JSON};infer_max_seqlens=10,20"),
        (f"{JSONLINES}; infer_max_seqlens = 5000,1", f"{JSONLINES};infer_max_seqlens=5000,1"),
        (f'{JSON}; infer_max_seqlens="3,4"', f"{JSON};infer_max_seqlens=3,4"),
    ],
)
def test_content_type_keeps_the_media_type_and_the_seqlens_parameter(header, expected):
    assert parse_content_type(header) == expected


@pytest.mark.parametrize("header", ["text/csv", "application/x-recordio-protobuf", "", None])
def test_an_unsupported_content_type_is_a_415_worded_as_transform_words_it(header):
    with pytest.raises(RequestError) as caught:
        parse_content_type(header)
    assert caught.value.status == 415
    assert str(caught.value) == (
        f"unsupported content type {header or ''!r}: use application/jsonlines or application/json"
    )


@pytest.mark.parametrize("value", ["0,5", "5001,5", "5", "a,b", "1,2,3", "-1,4", ""])
def test_a_malformed_infer_max_seqlens_is_a_400_naming_the_value(value):
    with pytest.raises(RequestError) as caught:
        seqlens_of(f"{JSON};infer_max_seqlens={value}")
    assert caught.value.status == 400
    assert str(caught.value) == (
        f"infer_max_seqlens must be two integers A,B (in0, in1), each in 1..5000; got {value!r}"
    )


def test_no_seqlens_parameter_means_the_models_lengths():
    assert seqlens_of(f"{JSON}; charset=utf-8") is None


@pytest.mark.parametrize(
    ("accept", "content_type", "expected"),
    [
        (None, JSON, JSON),
        ("", f"{JSONLINES};infer_max_seqlens=1,1", JSONLINES),
        ("*/*", JSON, JSON),
        ("application/*", JSONLINES, JSONLINES),
        (JSONLINES, JSON, JSONLINES),
        (f"text/csv, {JSON};q=0.9", JSONLINES, JSON),
    ],
)
def test_accept_picks_the_first_supported_type_else_the_requests_own(
    accept, content_type, expected
):
    assert response_type(accept, content_type) == expected


def test_an_accept_naming_only_other_types_is_a_406():
    with pytest.raises(RequestError) as caught:
        response_type("text/csv, application/x-npy", JSON)
    assert caught.value.status == 406
    assert "application/jsonlines or application/json" in str(caught.value)


def test_jsonlines_records_are_numbered_by_line_as_in_transform():
    body = b'{"in0": [1]}\n\n{"in1": [2]}\r\n  \n{"in0": [3]}'
    request = invocation(body, JSONLINES, JSON)
    assert request.positions == [1, 3, 5]
    assert request.records == [b'{"in0": [1]}', b'{"in1": [2]}', b'{"in0": [3]}']
    assert (request.content_type, request.accept) == (JSONLINES, JSON)


def test_json_instances_are_numbered_from_zero_as_in_transform():
    body = json.dumps({"instances": [{"in0": [1]}, {"in1": [2, 3]}]}, indent=2).encode()
    request = invocation(body, f"{JSON};infer_max_seqlens=2,2", JSON)
    assert request.positions == [0, 1]
    assert [json.loads(r) for r in request.records] == [{"in0": [1]}, {"in1": [2, 3]}]


@pytest.mark.parametrize("body", [b"", b"[1, 2]", b'{"instances": [{"in0": [1]}', b'{"x": 1}'])
def test_a_json_body_that_is_not_a_request_is_a_400_with_transforms_message(body):
    with pytest.raises(RequestFormatError) as expected:
        list(iter_json_instances(io.BytesIO(body), 100))
    with pytest.raises(RequestError) as caught:
        invocation(body, JSON, JSON)
    assert (caught.value.status, str(caught.value)) == (400, str(expected.value))


@pytest.mark.parametrize("accept", [JSON, JSONLINES])
def test_the_response_is_the_fragment_framed_as_transform_frames_a_shard(accept):
    fragment = codec_for(accept).encode([{"scores": [0.25, 0.75]}, {"embeddings": [1.5]}])
    expected = {
        JSON: b'{"predictions":[{"scores":[0.25,0.75]},{"embeddings":[1.5]}]}\n',
        JSONLINES: b'{"scores":[0.25,0.75]}\n{"embeddings":[1.5]}\n',
    }
    assert response_body(accept, fragment) == expected[accept]


def test_an_empty_request_has_an_empty_response():
    assert response_body(JSON, b"") == b'{"predictions":[]}\n'
    assert response_body(JSONLINES, b"") == b""


def test_a_bad_record_is_named_by_its_place_with_one_position():
    result = BatchResult(error_pos=3, error="column 7: malformed JSON: unexpected character")
    assert bad_record(result, JSONLINES) == "line 3, column 7: malformed JSON: unexpected character"
    result = BatchResult(error_pos=2, error="in0 must be a list of token ids, got a string")
    assert bad_record(result, f"{JSON};infer_max_seqlens=1,1") == (
        "instances[2]: in0 must be a list of token ids, got a string"
    )
