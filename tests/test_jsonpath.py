"""SageMaker's InputFilter/OutputFilter and its join of input and prediction."""

from __future__ import annotations

import json

import pytest

from o2v_batch.errors import FilterError
from o2v_batch.inputs.jsonpath import compile_filter, join_input

# ---------------------------------------------------------------- filters

RECORD = {
    "id": 7,
    "in0": [1, 2, 3],
    "meta": {"a": [10, 20], "b": None},
    "rows": [{"x": 1}, {"x": 2}],
}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("$.id", 7),
        ("$['id']", 7),
        ('$["id"]', 7),
        ("$.in0[0]", 1),
        ("$.in0[-1]", 3),
        ("$.in0[1:]", [2, 3]),
        ("$.in0[:2]", [1, 2]),
        ("$.in0[-2:]", [2, 3]),
        ("$.in0[1:-1]", [2]),
        ("$.in0[:]", [1, 2, 3]),
        ("$.in0[5:9]", []),
        ("$.in0[ 0 : 1 ]", [1]),
        ("$.in0[*]", [1, 2, 3]),
        ("$.meta.a[1]", 20),
        ("$.meta.b", None),
        ("$.meta.*", [[10, 20], None]),
        ("$.meta[*]", [[10, 20], None]),
        ("$['id','in0']", {"id": 7, "in0": [1, 2, 3]}),
        ("$['in0', 'id']", {"in0": [1, 2, 3], "id": 7}),
        ("$[ 'id' , \"missing\" , 'meta' ]", {"id": 7, "meta": {"a": [10, 20], "b": None}}),
        ("$['missing','nothing']", {}),
        ("$.rows[*].x", [1, 2]),
        ("$.rows[1:].x", [2]),
        ("$.rows[*]['x']", [1, 2]),
        ("$.meta['a','b']", {"a": [10, 20], "b": None}),
    ],
)
def test_filters(expr: str, expected: object) -> None:
    assert compile_filter(expr)(RECORD) == expected


@pytest.mark.parametrize("value", [RECORD, [1, 2], "s", 3, None])
def test_root_filter_is_identity(value: object) -> None:
    assert compile_filter("$")(value) is value


@pytest.mark.parametrize(
    ("expr", "key", "expected"),
    [
        ("$['a b']", "a b", 1),
        ("$['it\\'s']", "it's", 1),
        ('$["say \\"hi\\""]', 'say "hi"', 1),
        ("$.my-key", "my-key", 1),
        ("$._x9", "_x9", 1),
    ],
)
def test_filter_key_spelling(expr: str, key: str, expected: int) -> None:
    assert compile_filter(expr)({key: 1}) == expected


SUPPORTED = "(supported: $, .name, ['a','b'], [i], [i:j], *, [*])"


@pytest.mark.parametrize(
    ("expr", "message"),
    [
        ("", f"bad filter '': it must start with '$' {SUPPORTED}"),
        ("id", f"bad filter 'id': it must start with '$' {SUPPORTED}"),
        ("$..id", f"bad filter '$..id': cannot read '..id' at position 1 {SUPPORTED}"),
        ("$.a[", f"bad filter '$.a[': cannot read '[' at position 3 {SUPPORTED}"),
        ("$.a.", f"bad filter '$.a.': cannot read '.' at position 3 {SUPPORTED}"),
        ("$[1:2:3]", f"bad filter '$[1:2:3]': cannot read '[1:2:3]' at position 1 {SUPPORTED}"),
        (
            "$[?(@.a>1)]",
            f"bad filter '$[?(@.a>1)]': cannot read '[?(@.a>1)]' at position 1 {SUPPORTED}",
        ),
        ("$['a',]", f"bad filter \"$['a',]\": cannot read \"['a',]\" at position 1 {SUPPORTED}"),
        ("$[a]", f"bad filter '$[a]': cannot read '[a]' at position 1 {SUPPORTED}"),
        ("$.in0 ", f"bad filter '$.in0 ': cannot read ' ' at position 5 {SUPPORTED}"),
        ("$.1a", f"bad filter '$.1a': cannot read '.1a' at position 1 {SUPPORTED}"),
    ],
)
def test_filter_compile_errors(expr: str, message: str) -> None:
    with pytest.raises(FilterError) as err:
        compile_filter(expr)
    assert str(err.value) == message


@pytest.mark.parametrize(
    ("expr", "value", "message"),
    [
        ("$.features", {"in0": [1]}, "filter '$.features': no key 'features' at $"),
        ("$.meta.c", RECORD, "filter '$.meta.c': no key 'c' at $.meta"),
        ("$['x']", {}, "filter \"$['x']\": no key 'x' at $"),
        ("$.in0[3]", RECORD, "filter '$.in0[3]': no index 3 at $.in0 (length 3)"),
        ("$[-3]", [1, 2], "filter '$[-3]': no index -3 at $ (length 2)"),
        ("$.id.x", RECORD, "filter '$.id.x': expected an object at $.id, found a number"),
        ("$.in0.x", RECORD, "filter '$.in0.x': expected an object at $.in0, found an array"),
        ("$.a", "text", "filter '$.a': expected an object at $, found a string"),
        ("$.a", None, "filter '$.a': expected an object at $, found null"),
        ("$[0]", True, "filter '$[0]': expected an array at $, found a boolean"),
        ("$.meta[0]", RECORD, "filter '$.meta[0]': expected an array at $.meta, found an object"),
        ("$.meta[1:]", RECORD, "filter '$.meta[1:]': expected an array at $.meta, found an object"),
        (
            "$.id[*]",
            RECORD,
            "filter '$.id[*]': expected an object or an array at $.id, found a number",
        ),
        ("$['id','x'].y", RECORD, "filter \"$['id','x'].y\": no key 'y' at $['id','x']"),
        ("$.rows[*].y", RECORD, "filter '$.rows[*].y': no key 'y' at $.rows[*]"),
    ],
)
def test_filter_mismatch_errors(expr: str, value: object, message: str) -> None:
    select = compile_filter(expr)
    with pytest.raises(FilterError) as err:
        select(value)
    assert str(err.value) == message


# ---------------------------------------------------------------- join


PREDICTION = {"embeddings": [0.5, 0.0]}


@pytest.mark.parametrize(
    ("record", "expected"),
    [
        ({"in0": [1]}, {"in0": [1], "SageMakerOutput": PREDICTION}),
        ({}, {"SageMakerOutput": PREDICTION}),
        ([1, 2], {"SageMakerInput": [1, 2], "SageMakerOutput": PREDICTION}),
        ("text", {"SageMakerInput": "text", "SageMakerOutput": PREDICTION}),
        (3.5, {"SageMakerInput": 3.5, "SageMakerOutput": PREDICTION}),
        (None, {"SageMakerInput": None, "SageMakerOutput": PREDICTION}),
    ],
)
def test_join_input(record: object, expected: dict) -> None:
    before = json.dumps(record)
    joined = join_input(record, PREDICTION)
    assert joined == expected
    assert json.dumps(record) == before  # the input is not mutated


def test_join_keeps_key_order() -> None:
    joined = join_input({"b": 1, "a": 2}, PREDICTION)
    assert list(joined) == ["b", "a", "SageMakerOutput"]


def test_sagemaker_join_then_output_filter() -> None:
    record = {"id": 7, "in0": [1, 2]}
    prediction = {"embeddings": [0.0573, 0.0307]}
    joined = join_input(record, prediction)
    assert compile_filter("$['id','SageMakerOutput']")(joined) == {
        "id": 7,
        "SageMakerOutput": {"embeddings": [0.0573, 0.0307]},
    }
    assert record == {"id": 7, "in0": [1, 2]}


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("$.embeddings[0:3]", [0.0, 1.0, 2.0]),
        ("$.embeddings[1]", 1.0),
        ("$.embeddings[-1]", 4.0),
        ("$.embeddings[*]", [0.0, 1.0, 2.0, 3.0, 4.0]),
        ("$.SageMakerOutput.embeddings[3:]", [3.0, 4.0]),
    ],
)
def test_filters_reach_into_prediction_vectors(expr: str, expected: object) -> None:
    """Predictions carry numpy vectors; an output filter indexes them like JSON arrays."""
    import numpy as np

    prediction = {"embeddings": np.arange(5, dtype=np.float32)}
    joined = join_input({"in0": [1, 2]}, prediction)
    got = compile_filter(expr)(joined if "SageMakerOutput" in expr else prediction)
    assert np.asarray(got).tolist() == expected
