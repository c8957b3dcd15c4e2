"""The inference module's Server, called directly as a worker calls it: each record of
a mini-batch checked (the bad-input table's records, fuzzed ones), the three phases of
a mini-batch, the hosted algorithm's response shape, filters and precision.

The same table through whole jobs is test_job_bad_input.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import orjson
import pytest
from conftest import examples
from helpers import TINY, make_model, random_records
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_job_bad_input import CASES

from o2v_batch import load_model
from o2v_batch.execution.inference import Server
from o2v_batch.execution.protocol import ServingOptions

V = TINY["enc0_vocab_size"]
JSONL, JSON = "application/jsonlines", "application/json"
IN01 = '"in0"/"in1"'


# -- the bad-input table's records -----------------------------------------------------

# The cases whose record is bad in itself: a record over the payload cap is the reader's.
RECORD_CASES = [c for c in CASES if c.bad is not None and "--max-payload" not in str(c.problem)]


@pytest.fixture(scope="module")
def embedding_servers(tmp_path_factory) -> dict[str, Server]:
    """Servers as the table's jobs run them (--mode embedding), under either setting."""
    model_dir = str(make_model(tmp_path_factory.mktemp("table") / "m"))
    return {
        setting: Server(model_dir, "cpu", ServingOptions(mode="embedding", on_bad_record=setting))
        for setting in ("fail", "emit-error")
    }


@pytest.mark.parametrize("case", RECORD_CASES, ids=lambda c: c.id)
def test_a_bad_record_of_the_table_gets_its_message(embedding_servers, case):
    """Between two good records: under emit-error its place holds the table's message
    and the others their predictions; under fail the mini-batch stops at it, with that
    message and its position (the job puts the shard's name before them)."""
    good = [json.dumps(r).encode() for r in random_records(2, seed=1, pairs=False)]
    content_type, key = (JSON, "record") if case.json else (JSONL, "line")
    positions, records = [4, 5, 6], [good[0], case.bad, good[1]]

    emitted = embedding_servers["emit-error"].serve(positions, records, content_type, JSONL)
    first, error, last = map(orjson.loads, emitted.payload.splitlines())
    assert (emitted.records, emitted.bad_records, emitted.error) == (3, 1, None)
    assert error.keys() == {"error"} and error["error"].keys() == {"message", key}
    assert error["error"][key] == 5
    assert error["error"]["message"] == case.problem
    alone = embedding_servers["emit-error"].serve([4, 6], good, content_type, JSONL)
    for got, want in zip((first, last), map(orjson.loads, alone.payload.splitlines()), strict=True):
        assert got.keys() == want.keys() == {"embeddings"}
        np.testing.assert_allclose(got["embeddings"], want["embeddings"], atol=1e-6)

    failed = embedding_servers["fail"].serve(positions, records, content_type, JSONL)
    assert (failed.error_pos, failed.payload) == (5, b"")
    assert failed.error == case.problem


# -- the three phases ------------------------------------------------------------------

# Mini-batches of a shard: inputs of either encoder, pairs, a bad record.
BATCHES = [
    ([1, 2, 3], [b'{"in0": [1, 2]}', b'{"in1": [3]}', b'{"in0": [4], "in1": [5, 6]}']),
    ([4, 5], [b'{"in0": [9, 10, 11]}', b'{"in0": "bad"}']),
    ([6], [b'{"in1": [12, 13]}']),
]


def test_under_fail_a_bad_record_stops_its_mini_batch_when_prepared(tmp_path):
    """Prepared, a mini-batch with a bad record has nothing left to run: its predict()
    does nothing and its finish() gives the bad record, as serve() does."""
    model_dir = str(make_model(tmp_path / "m"))
    server = Server(model_dir, "cpu", ServingOptions(on_bad_record="fail"))
    positions, records = BATCHES[1]
    batch = server.prepare(positions, records, JSONL, JSONL)
    batch.predict()
    result = batch.finish()
    assert (result.payload, result.error_pos) == (b"", 5)
    assert result.error == "in0 must be a list of token ids, got a string"
    assert server.serve(positions, records, JSONL, JSONL) == result


# ---------------------------------------------------------------- fuzzing the server


@pytest.fixture(scope="module")
def server_and_model(tmp_path_factory):
    model_dir = str(make_model(tmp_path_factory.mktemp("fuzz") / "m"))
    server = Server(model_dir, "cpu", ServingOptions(on_bad_record="emit-error"))
    return server, load_model(model_dir)


def reference(model, record: dict) -> dict:
    """The model's own output for a good record, through the public API."""
    if "in0" in record and "in1" in record:
        scores = model.score([record["in0"]], [record["in1"]])[0]
        return {"scores": scores}
    encoder = 0 if "in0" in record else 1
    return {"embeddings": model.embed([record[f"in{encoder}"]], encoder=encoder)[0]}


ids = st.lists(st.integers(1, V - 1), min_size=1, max_size=30)
good_records = st.one_of(
    st.builds(lambda a: {"in0": a}, ids),
    st.builds(lambda b: {"in1": b}, ids),
    st.builds(lambda a, b: {"in0": a, "in1": b}, ids, ids),
).map(lambda r: (json.dumps(r).encode(), True))
junk_token = st.one_of(
    st.integers(-(2**70), 2**70), st.floats(), st.booleans(), st.none(), st.text(max_size=3)
)
junk_records = st.one_of(
    st.binary(max_size=80),
    st.dictionaries(st.sampled_from(["in0", "in1", "x"]), st.lists(junk_token, max_size=4)).map(
        lambda r: json.dumps(r).encode()
    ),
    st.tuples(good_records, st.integers(0, 200), st.binary(min_size=1, max_size=3)).map(
        lambda t: t[0][0][: t[1]] + t[2] + t[0][0][t[1] :]
    ),
).map(lambda data: (data.replace(b"\n", b" "), False))


@settings(max_examples=examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(records=st.lists(st.one_of(good_records, junk_records), min_size=1, max_size=12))
def test_fuzz_server_never_raises_and_keeps_one_output_per_record(server_and_model, records):
    server, model = server_and_model
    positions = list(range(7, 7 + len(records)))
    result = server.serve(positions, [data for data, _ in records], JSONL, JSONL)
    lines = result.payload.split(b"\n")
    assert lines.pop() == b""
    assert len(lines) == len(records) == result.records
    errors = 0
    for line, pos, (data, good) in zip(lines, positions, records, strict=True):
        out = orjson.loads(line)
        if "error" in out:
            assert not good, f"a good record was rejected: {data!r} -> {out}"
            assert out["error"]["line"] == pos and isinstance(out["error"]["message"], str)
            errors += 1
            continue
        expected = reference(model, orjson.loads(data))
        assert out.keys() == expected.keys()
        for key, value in expected.items():
            np.testing.assert_allclose(out[key], value, atol=1e-5)
    assert result.bad_records == errors


@settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sequences=st.lists(
        st.tuples(*[st.lists(st.integers(0, V + 2), min_size=1, max_size=30)] * 2), min_size=1
    ),
    names=st.sampled_from([("in0",), ("in1",), ("in0", "in1")]),
)
def test_plain_records_skip_the_parser_and_answer_as_it_would(server_and_model, sequences, names):
    """A mini-batch of plain {"in0": [...]} records (or in1, or in0-in1 pairs) is read
    straight from its bytes; the same records with a leading space go through the JSON
    parser: the same answer, byte for byte (out-of-range ids included, which send the
    batch to the parser)."""
    server, model = server_and_model
    records = [json.dumps(dict(zip(names, pair, strict=False))).encode() for pair in sequences]
    positions = list(range(1, len(records) + 1))
    plain = server.serve(positions, records, JSONL, JSONL)
    parsed = server.serve(positions, [b" " + r for r in records], JSONL, JSONL)
    assert plain == parsed
    for line, record in zip(plain.payload.splitlines(), records, strict=True):
        if all(max(seq) < V for seq in orjson.loads(record).values()):
            expected = reference(model, orjson.loads(record))
            for key, value in expected.items():
                np.testing.assert_allclose(orjson.loads(line)[key], value, atol=1e-5)


@pytest.mark.parametrize(
    ("content_type", "record", "message"),
    [
        (JSONL, b'{"in0": [1, 2', "column 14: malformed JSON: unexpected end of data"),
        (
            JSONL,
            '{"tag": "é", x}'.encode(),  # columns count characters, not bytes
            "column 14: malformed JSON: unexpected character, expected a string key",
        ),
        (JSONL, b'{"in0": [1], "t": "\xe9"}', "column 20: malformed JSON: not valid UTF-8"),
        (
            JSON,
            b'{\n "in0": [1,\n x]}',  # an instance over three lines: counted in characters
            "character 16: malformed JSON: unexpected character, expected a JSON value",
        ),
    ],
)
def test_malformed_json_names_one_position(server_and_model, content_type, record, message):
    server, _ = server_and_model
    result = server.serve([3], [record], content_type, JSONL)
    key = "line" if content_type == JSONL else "record"
    assert orjson.loads(result.payload) == {"error": {"message": message, key: 3}}


# -- the hosted algorithm's response shape --------------------------------------


@pytest.mark.parametrize(
    ("overrides", "width"), [({}, TINY["num_classes"]), ({"output_layer": "mean_squared_error"}, 1)]
)
@pytest.mark.parametrize("accept", ["application/jsonlines", "application/json"])
def test_a_pair_gets_scores_and_nothing_else(tmp_path, overrides, width, accept):
    """As the Object2Vec documentation shows: {"scores": [...]} with num_classes
    probabilities, or one value for regression; no predicted_label."""
    model_dir = str(make_model(tmp_path / "m", **overrides))
    server = Server(model_dir, "cpu", ServingOptions(mode="classification"))
    pair = {"in0": [1, 2, 3], "in1": [4, 5]}
    result = server.serve([1], [json.dumps(pair).encode()], "application/jsonlines", accept)
    payload = result.payload.decode()
    [prediction] = (
        json.loads(f"[{payload}]") if accept == "application/json" else [json.loads(payload)]
    )
    assert list(prediction) == ["scores"]
    expected = load_model(model_dir).score([pair["in0"]], [pair["in1"]])[0]
    assert len(prediction["scores"]) == width
    np.testing.assert_allclose(prediction["scores"], expected, atol=1e-6)


@pytest.mark.parametrize(
    ("record", "join", "expr", "expected"),
    [
        ({"in0": [1, 2, 3]}, "None", "$.embeddings[0:3]", lambda m: m.embed([[1, 2, 3]])[0][:3]),
        (
            {"in0": [1, 2], "in1": [3]},
            "None",
            "$.scores[1]",
            lambda m: m.score([[1, 2]], [[3]])[0][1],
        ),
        (
            {"in1": [4, 5]},
            "Input",
            "$.SageMakerOutput.embeddings[*]",
            lambda m: m.embed([[4, 5]], encoder=1)[0],
        ),
    ],
)
def test_output_filters_reach_into_predictions(tmp_path, record, join, expr, expected):
    model_dir = str(make_model(tmp_path / "m"))
    options = ServingOptions(join_source=join, output_filter=expr)
    result = Server(model_dir, "cpu", options).serve(
        [1], [json.dumps(record).encode()], "application/jsonlines", "application/jsonlines"
    )
    assert result.error is None and result.bad_records == 0
    np.testing.assert_allclose(
        json.loads(result.payload), expected(load_model(model_dir)), atol=1e-6
    )


@pytest.mark.parametrize(
    ("expr", "problem"),
    [
        ("$", "record is not a JSON object (got an array)"),
        ("$.in0", "--input-filter '$.in0' gave an array, not a JSON object with " + IN01),
        ('$["in0"]', "--input-filter '$[\"in0\"]' gave an array, not a JSON object with " + IN01),
    ],
)
def test_a_record_that_is_no_object_names_the_input_filter_that_made_it(tmp_path, expr, problem):
    """A filter's result that is not an object says what the filter gave: the record
    itself was an object."""
    record = b"[1, 2]" if expr == "$" else b'{"in0": [1, 2], "id": 7}'
    options = ServingOptions(input_filter=expr, on_bad_record="emit-error")
    server = Server(str(make_model(tmp_path / "m")), "cpu", options)
    result = server.serve([3], [record], JSONL, JSONL)
    assert result.bad_records == 1
    assert orjson.loads(result.payload) == {"error": {"message": problem, "line": 3}}


def test_a_worker_serves_in_the_precision_it_is_given(tmp_path: Path) -> None:
    """bf16 in a worker answers exactly as load_model(precision="bf16"): the same
    network dtype and device batches; float32 numbers in the response."""
    model_dir = make_model(tmp_path / "model")
    pair, single = {"in0": [1, 2, 3], "in1": [4, 5]}, {"in1": [7, 8, 9, 10]}
    records = [json.dumps(r).encode() for r in (pair, single)]
    options = ServingOptions(mode="classification", precision="bf16")
    result = Server(str(model_dir), "cpu", options).serve([0, 1], records, JSONL, JSONL)
    got = [orjson.loads(line) for line in result.payload.splitlines()]
    model = load_model(str(model_dir), precision="bf16")
    scores = model.score([pair["in0"]], [pair["in1"]])[0]
    # The worker embeds both in1 sequences in one device batch: so does this call.
    embedding = model.embed([pair["in1"], single["in1"]], encoder=1)[1]
    assert [list(r) for r in got] == [["scores"], ["embeddings"]]
    # Written as float32 numbers: they read back as exactly the API's float32 arrays.
    np.testing.assert_array_equal(np.array(got[0]["scores"], dtype=np.float32), scores)
    np.testing.assert_array_equal(np.array(got[1]["embeddings"], dtype=np.float32), embedding)
    exact = load_model(str(model_dir)).embed([pair["in1"], single["in1"]], encoder=1)[1]
    assert not np.array_equal(embedding, exact)
