"""The streaming scanner of application/json requests."""

from __future__ import annotations

import io
import json
import tracemalloc
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from streams import BOM, FUZZ, HUGE, PIECE, Lazy, Trickle, piece_sizes

from o2v_batch.errors import JsonlinesAsJsonError, RequestFormatError
from o2v_batch.inputs import formats
from o2v_batch.inputs.formats import Oversize, Record
from o2v_batch.inputs.jsonstream import iter_json_instances


def instances_of(data: bytes, limit: int = 0) -> list[Record | Oversize]:
    return list(iter_json_instances(io.BytesIO(data), limit))


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b'{"instances": []}', []),
        (b'{"instances":[]}\n', []),
        (b' {\n "instances" : [ ]\n}\n\n', []),
        (
            b'{"instances": [{"in0": [6, 17, 606]}, {"in0": [774, 14, 21, 206]}]}',
            [b'{"in0": [6, 17, 606]}', b'{"in0": [774, 14, 21, 206]}'],
        ),
        (
            BOM
            + b'{"a": {"instances": 1}, "instances": [1, "x]", [[]], {"b": {"c": []}}], "z": 2}',
            [b"1", b'"x]"', b"[[]]", b'{"b": {"c": []}}'],
        ),
        (b'{"instances": [{"s": "a\\"}{[,"}]}', [b'{"s": "a\\"}{[,"}']),
        (b'{"\\u0069nstances": [true, null, -1.5e3]}', [b"true", b"null", b"-1.5e3"]),
        (
            b'{"instances": [[[1], [2]], [3, [4]], [5], {"a": [[6]]}, {"b": [7]}, [8]]}',
            [b"[[1], [2]]", b"[3, [4]]", b"[5]", b'{"a": [[6]]}', b'{"b": [7]}', b"[8]"],
        ),
        (b'{"instance": [1], "instances": [2], "instancesx": [3]}', [b"2"]),
        (
            b'{"instances": [\n  {"in0": [1]},\n  {"in0": [2]}\n]}',
            [b'{"in0": [1]}', b'{"in0": [2]}'],
        ),
        # Element syntax is the workers' business; only strings and brackets are followed.
        (b'{"instances": [{"a" 1 2}, tru, {]]}', [b'{"a" 1 2}', b"tru", b"{]"]),
    ],
)
def test_json_instances(data: bytes, expected: list[bytes]) -> None:
    records = [Record(i, element) for i, element in enumerate(expected)]
    assert instances_of(data) == records
    for size in (1, 2, 5):
        assert list(iter_json_instances(Trickle(data, [size]), 0)) == records


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            b"",
            'not a JSON request: expected {"instances": [...]}, found the end of the document at byte 0',
        ),
        (
            b"  \n",
            'not a JSON request: expected {"instances": [...]}, found the end of the document at byte 3',
        ),
        (
            b'[{"in0": [1]}]',
            "not a JSON request: expected {\"instances\": [...]}, found '[' at byte 0",
        ),
        (BOM + b" [1]", "not a JSON request: expected {\"instances\": [...]}, found '[' at byte 4"),
        (
            b'{"in0": [1]}\n{"in0": [2]}',
            "JSON document continues after the top-level object: found '{' at byte 13",
        ),
        (b"{}", 'not a JSON request: expected {"instances": [...]}, found no "instances" key'),
        (
            b'{"x": [1]}',
            'not a JSON request: expected {"instances": [...]}, found no "instances" key',
        ),
        (
            b'{"instances": {"in0": [1]}}',
            "not a JSON request: expected {\"instances\": [...]}, found '{' at byte 14",
        ),
        (
            b'{"instances": "x"}',
            'not a JSON request: expected {"instances": [...]}, found \'"\' at byte 14',
        ),
        (
            b'{"instances": [], "instances": []}',
            'not a JSON request: a second "instances" key at byte 18',
        ),
        (b'{"instances": [1,2', "JSON document ends inside instances[1]"),
        (b'{"instances": [1,2,', "JSON document ends inside instances[2]"),
        (b'{"instances": [', "JSON document ends inside instances[0]"),
        (b'{"instances": [{"in0": [1, 2', "JSON document ends inside instances[0]"),
        (b'{"instances": [1, "abc', "JSON document ends inside instances[1]"),
        (b'{"instances": [1, "abc\\', "JSON document ends inside instances[1]"),
        (b'{"instances": [{"in0": [1]}', "JSON document ends after instances[0]"),
        (b'{"instances": [1, "abc" \n ', "JSON document ends after instances[1]"),
        (b'{"instances": [1, {"in1": [2]}]', "JSON document ends inside the top-level object"),
        (b'{"instances": []', "JSON document ends inside the top-level object"),
        (b'{"instances"', "JSON document ends inside the top-level object"),
        (b'{"instances": [], "a": [1', "JSON document ends inside the top-level object"),
        (b"{", "JSON document ends inside the top-level object"),
        (
            b'{"instances": [1]} x',
            "JSON document continues after the top-level object: found 'x' at byte 19",
        ),
        (
            b'{"instances": [1]}}',
            "JSON document continues after the top-level object: found '}' at byte 18",
        ),
        (
            b'{"instances": [1 2]}',
            "JSON syntax error: expected ',' or ']' after instances[0], found '2' at byte 17",
        ),
        (
            b'{"instances": [{"a": 1}}]}',
            "JSON syntax error: expected ',' or ']' after instances[0], found '}' at byte 23",
        ),
        (
            b'{"instances": [1,,2]}',
            "JSON syntax error: expected instances[1], found ',' at byte 17",
        ),
        (b'{"instances": [1,]}', "JSON syntax error: expected instances[1], found ']' at byte 17"),
        (b'{"instances": [,]}', "JSON syntax error: expected instances[0], found ',' at byte 15"),
        (
            b'{"instances": [], }',
            "JSON syntax error: expected a key in the top-level object, found '}' at byte 18",
        ),
        (
            b"{instances: []}",
            "JSON syntax error: expected a key in the top-level object, found 'i' at byte 1",
        ),
        (
            b'{"a" 1}',
            "JSON syntax error: expected ':' after a key in the top-level object, found '1' at byte 5",
        ),
        (
            b'{"a": }',
            "JSON syntax error: expected a value in the top-level object, found '}' at byte 6",
        ),
        (
            b'{"a": 1 "b": 2}',
            "JSON syntax error: expected ',' or '}' in the top-level object, found '\"' at byte 8",
        ),
        (
            b'{"a": 1 \xff}',
            "JSON syntax error: expected ',' or '}' in the top-level object, found '\\xff' at byte 8",
        ),
    ],
)
def test_json_structure_errors(data: bytes, message: str) -> None:
    for stream in (io.BytesIO(data), Trickle(data, [1])):
        with pytest.raises(RequestFormatError) as err:
            list(iter_json_instances(stream, 0))
        assert str(err.value) == message


@pytest.mark.parametrize(
    ("data", "lines"),
    [
        (b'{"in0": [1]}\n{"in0": [2]}\n', True),  # jsonlines
        (b'{"features": {"in0": [1]}, "id": 7}\n{"features": {"in1": [2]}}', True),  # for a filter
        (b'{"in0": [1], "in1": [2]}\n', True),  # one record
        (b'{"x": [1]}', False),
        (b"{}", False),
        (b'{"instances": [1]}\n{"instances": [2]}', False),  # requests, a line each
        (b'{"in0": [1]} x', False),
    ],
)
def test_jsonlines_read_as_json_is_told_apart(data: bytes, lines: bool) -> None:
    """The document's error says when it holds jsonlines records, so the shard's
    failure can name the other content type."""
    with pytest.raises(RequestFormatError) as err:
        instances_of(data)
    assert isinstance(err.value, JsonlinesAsJsonError) is lines


def test_json_yields_elements_before_a_later_error() -> None:
    got = []
    with pytest.raises(RequestFormatError, match=r"ends inside instances\[2\]"):
        got.extend(iter_json_instances(io.BytesIO(b'{"instances": [1, 2, 3'), 0))
    assert got == [Record(0, b"1"), Record(1, b"2")]


@pytest.mark.parametrize("size", [1, 3, 1 << 30])
def test_json_oversize_elements(size: int) -> None:
    data = b'{"instances": [{"in0": [1,2,3]}, [1], "12345678", {"a": {"b": 1}}, 123456789]}'
    assert list(iter_json_instances(Trickle(data, [size]), 8)) == [
        Oversize(0, 16),
        Record(1, b"[1]"),
        Oversize(2, 10),
        Oversize(3, 15),
        Oversize(4, 9),
    ]


def test_json_hard_limit_applies_without_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 4)
    assert instances_of(b'{"instances": [1234, 12345]}') == [Record(0, b"1234"), Oversize(1, 5)]


def test_json_many_elements_across_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "o2v_batch.inputs.jsonscanner.READ_CHUNK", 2**16
    )  # more chunks, fewer elements
    monkeypatch.setattr(formats, "READ_CHUNK", 2**16)
    elements = [b'{"in0": [%d, 1], "id": "r\\"%d"}' % (i, i) for i in range(8_000)]
    elements[500] = b'{"in0": [1], "meta": {"nested": [[1]]}}'
    data = b'{"instances": [' + b", ".join(elements) + b"]}"
    assert len(data) > 3 * formats.READ_CHUNK
    assert instances_of(data) == [Record(i, e) for i, e in enumerate(elements)]


@pytest.mark.parametrize("max_record_bytes", [2**20, 0])
def test_json_oversize_element_is_not_held(
    monkeypatch: pytest.MonkeyPatch, max_record_bytes: int
) -> None:
    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 2**20)

    # One string, 50 MB of `[\"`: the reads end after the `[`, the `\` or the `"` in turn.
    text = b'[\\"' * PIECE
    reads = 3 * (HUGE // PIECE // 3 + 1)

    def pieces() -> Iterable[bytes]:
        yield b'{"instances": [{"in0": [1]}, {"s": ["'
        for i in range(reads):
            yield text[i % 3 * PIECE : (i % 3 + 1) * PIECE]
        yield b'"]}, {"in0": [2]}]}'

    tracemalloc.start()
    try:
        got = list(iter_json_instances(Lazy(pieces()), max_record_bytes))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = len(b'{"s": ["') + reads * PIECE + len(b'"]}')
    assert got == [Record(0, b'{"in0": [1]}'), Oversize(1, size), Record(2, b'{"in0": [2]}')]
    assert peak < 4 * 2**20


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=5), children, max_size=4)
    ),
    max_leaves=12,
)
object2vec_records = st.fixed_dictionaries(
    {"in0": st.lists(st.integers(0, 10**6), min_size=1, max_size=6)},
    optional={"in1": st.lists(st.integers(0, 10**6), max_size=6), "id": st.text(max_size=6)},
)


@FUZZ
@given(
    instances=st.lists(st.one_of(json_values, object2vec_records), max_size=12),
    before=st.dictionaries(st.sampled_from(["a", "instancesx", "b"]), json_values, max_size=2),
    after=st.dictionaries(st.sampled_from(["c", "Instances"]), json_values, max_size=2),
    indent=st.sampled_from([None, 0, 2, "\t"]),
    separators=st.sampled_from([None, (",", ":"), (" , ", " : ")]),
    ensure_ascii=st.booleans(),
    bom=st.booleans(),
    trailing=st.sampled_from(["", "\n", " \r\n\t"]),
    sizes=piece_sizes,
)
def test_json_round_trip(
    instances: list,
    before: dict,
    after: dict,
    indent: int | str | None,
    separators: tuple[str, str] | None,
    ensure_ascii: bool,
    bom: bool,
    trailing: str,
    sizes: list[int],
) -> None:
    document = {**before, "instances": instances, **after}
    text = json.dumps(document, indent=indent, separators=separators, ensure_ascii=ensure_ascii)
    data = (BOM if bom else b"") + (text + trailing).encode()
    got = list(iter_json_instances(Trickle(data, sizes), 0))
    assert [item.pos for item in got] == list(range(len(instances)))
    assert [json.loads(item.data) for item in got] == instances


json_bytes = st.lists(
    st.sampled_from([b"{", b"}", b"[", b"]", b'"', b"\\", b",", b":", b" ", b"1", b'"instances"']),
    max_size=40,
).map(b"".join)


def outcome(stream: object, limit: int) -> tuple[list, str | None]:
    """The items yielded and the error message, if any; any other exception fails the test."""
    got: list = []
    try:
        got.extend(iter_json_instances(stream, limit))
    except RequestFormatError as err:
        return got, str(err)
    return got, None


@FUZZ
@given(
    data=st.one_of(json_bytes, st.binary(max_size=120)).map(lambda b: b'{"instances": [' + b),
    limit=st.sampled_from([0, 2, 7]),
    sizes=piece_sizes,
)
def test_json_fuzz_chunking_never_matters(data: bytes, limit: int, sizes: list[int]) -> None:
    assert outcome(Trickle(data, sizes), limit) == outcome(io.BytesIO(data), limit)


@FUZZ
@given(data=st.binary(max_size=200), sizes=piece_sizes)
def test_json_fuzz_arbitrary_bytes(data: bytes, sizes: list[int]) -> None:
    assert outcome(Trickle(data, sizes), 0) == outcome(io.BytesIO(data), 0)


@FUZZ
@given(instances=st.lists(json_values, max_size=6), cut=st.integers(0, 10**6), sizes=piece_sizes)
def test_json_truncated_documents_raise(instances: list, cut: int, sizes: list[int]) -> None:
    data = json.dumps({"instances": instances}, indent=1).encode()
    cut %= len(data)
    got, error = outcome(Trickle(data[:cut], sizes), 0)
    assert error is not None
    assert len(got) <= len(instances)
    assert [json.loads(item.data) for item in got] == instances[: len(got)]
