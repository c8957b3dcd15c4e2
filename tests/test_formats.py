"""Splitting request shards, JSONPath filters, join and response framing."""

from __future__ import annotations

import io
import itertools
import json
import tracemalloc
from collections.abc import Iterable

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from o2v_batch import formats
from o2v_batch.errors import BadRecordError, FilterError, O2VError, RequestFormatError
from o2v_batch.formats import (
    JSON,
    JSONLINES,
    Framing,
    Oversize,
    Record,
    content_type_for,
    encode_records,
    frame_document,
    framing_for,
    iter_jsonlines,
    media_type,
    where,
)
from o2v_batch.jsonpath import compile_filter, join_input
from o2v_batch.jsonstream import iter_json_instances

BOM = b"\xef\xbb\xbf"
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Trickle:
    """A binary stream whose read() hands out `data` in pieces of the given sizes, cycled."""

    def __init__(self, data: bytes, sizes: Iterable[int] = (1 << 30,)) -> None:
        self.data = data
        self.pos = 0
        self.sizes = itertools.cycle(sizes)

    def read(self, n: int = -1) -> bytes:
        size = next(self.sizes) if n < 0 else min(next(self.sizes), n)
        piece = self.data[self.pos : self.pos + size]
        self.pos += len(piece)
        return piece


class Lazy:
    """A binary stream made of generated pieces, never held whole."""

    def __init__(self, pieces: Iterable[bytes]) -> None:
        self.pieces = iter(pieces)

    def read(self, n: int = -1) -> bytes:
        return next(self.pieces, b"")


def lines_of(data: bytes, limit: int) -> list[Record | Oversize]:
    return list(iter_jsonlines(io.BytesIO(data), limit))


def instances_of(data: bytes, limit: int = 0) -> list[Record | Oversize]:
    return list(iter_json_instances(io.BytesIO(data), limit))


# ---------------------------------------------------------------- names and types


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("a.json", JSON),
        ("dir/a.JSON", JSON),
        ("s3://b/p/a.json.gz", JSON),
        ("a.json.zst", JSON),
        ("a.json.bz2", JSON),
        ("a.jsonl", JSONLINES),
        ("a.jsonl.gz", JSONLINES),
        ("a.json.out", JSONLINES),
        ("a.json.gz.gz", JSONLINES),
        ("a.txt", JSONLINES),
        ("json", JSONLINES),
        ("-", JSONLINES),
    ],
)
def test_content_type_for(path: str, expected: str) -> None:
    assert content_type_for(path) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("application/json", JSON),
        ("Application/JSONLines", JSONLINES),
        ("application/jsonlines; infer_max_seqlens=10,20", JSONLINES),
        (" application/json ;charset=utf-8", JSON),
    ],
)
def test_media_type(value: str, expected: str) -> None:
    assert media_type(value) == expected


@pytest.mark.parametrize("value", ["text/csv", "", "application/x-recordio-protobuf"])
def test_media_type_rejects(value: str) -> None:
    with pytest.raises(ValueError) as err:
        media_type(value)
    assert str(err.value) == (
        f"unsupported content type {value!r}: use application/jsonlines or application/json"
    )


@pytest.mark.parametrize(
    ("pos", "content_type", "expected"),
    [(12, JSONLINES, "line 12"), (3, JSON, "instances[3]"), (0, JSON, "instances[0]")],
)
def test_where(pos: int, content_type: str, expected: str) -> None:
    assert where(pos, content_type) == expected


def test_new_errors_are_picklable_o2v_errors() -> None:
    import pickle

    for cls in (RequestFormatError, FilterError):
        error = pickle.loads(pickle.dumps(cls("msg")))
        assert type(error) is cls and str(error) == "msg" and isinstance(error, O2VError)
    assert issubclass(RequestFormatError, BadRecordError)


# ---------------------------------------------------------------- jsonlines


@pytest.mark.parametrize(
    ("data", "limit", "expected"),
    [
        (b"", 0, []),
        (b"\n\n", 0, []),
        (b'{"a":1}\n{"b":2}\n', 0, [Record(1, b'{"a":1}'), Record(2, b'{"b":2}')]),
        (b'{"a":1}\n{"b":2}', 0, [Record(1, b'{"a":1}'), Record(2, b'{"b":2}')]),
        (b'{"a":1}\r\n{"b":2}\r\n', 0, [Record(1, b'{"a":1}'), Record(2, b'{"b":2}')]),
        (b'{"a":1}\r\n{"b":2}\r', 0, [Record(1, b'{"a":1}'), Record(2, b'{"b":2}')]),
        (BOM + b'{"a":1}\n', 0, [Record(1, b'{"a":1}')]),
        (BOM, 0, []),
        (b"x\n" + BOM + b"y", 0, [Record(1, b"x"), Record(2, BOM + b"y")]),
        (b'\n  \n\t\r\n{"a":1}\n \n', 0, [Record(4, b'{"a":1}')]),
        (b' {"a":1} \n', 0, [Record(1, b' {"a":1} ')]),
        (
            b"1\n\t\n2\n \n3\n\n4\n",
            0,
            [Record(1, b"1"), Record(3, b"2"), Record(5, b"3"), Record(7, b"4")],
        ),
        (b"1\n\t2\n 3\n", 0, [Record(1, b"1"), Record(2, b"\t2"), Record(3, b" 3")]),
        (b"1\n\t\n2\n", 0, [Record(1, b"1"), Record(3, b"2")]),
        (b"a\r\r\n", 0, [Record(1, b"a\r")]),
        (b"\x0c\n", 0, [Record(1, b"\x0c")]),
        (b"12345\n123456\n1234\n", 5, [Record(1, b"12345"), Oversize(2, 6), Record(3, b"1234")]),
        (b"12345\r\n123456\r\n", 5, [Record(1, b"12345"), Oversize(2, 6)]),
        (b"1\n1234567890", 5, [Record(1, b"1"), Oversize(2, 10)]),
        (b"1234567890\r", 5, [Oversize(1, 10)]),
        (b"      \n", 5, [Oversize(1, 6)]),
    ],
)
def test_jsonlines(data: bytes, limit: int, expected: list) -> None:
    assert lines_of(data, limit) == expected
    # The same whatever the chunk boundaries.
    for size in (1, 2, 3, 7):
        assert list(iter_jsonlines(Trickle(data, [size]), limit)) == expected


def test_jsonlines_reads_whole_chunks() -> None:
    lines = [b'{"in0": [%d]}' % i for i in range(300_000)]
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 3 * formats._CHUNK
    got = lines_of(data, 0)
    assert got == [Record(i + 1, line) for i, line in enumerate(lines)]
    assert all(type(r) is Record for r in got)


def expected_lines(data: bytes, limit: int) -> tuple[list, int]:
    """An independent model of the splitter: the items, and how many blank lines it skips."""
    data = data.removeprefix(BOM)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # after the final newline: no line
    items, blank = [], 0
    for number, line in enumerate(lines, 1):
        line = line.removesuffix(b"\r")
        if len(line) > limit:
            items.append(Oversize(number, len(line)))
        elif line.strip(b" \t\r\n"):
            items.append(Record(number, line))
        else:
            blank += 1
    return items, len(lines)


line_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b" ", b"\t", b"{}", b"a", b"\xef", BOM, b"12345"]),
    max_size=60,
).map(b"".join)
piece_sizes = st.lists(st.integers(1, 9), min_size=1, max_size=8)


@FUZZ
@given(
    data=st.one_of(line_bytes, st.binary(max_size=200)),
    limit=st.sampled_from([0, 1, 2, 5, 13]),
    sizes=piece_sizes,
)
def test_jsonlines_fuzz(data: bytes, limit: int, sizes: list[int]) -> None:
    expected, nlines = expected_lines(data, limit or formats.MAX_RECORD_BYTES)
    got = list(iter_jsonlines(Trickle(data, sizes), limit))
    assert got == expected
    # Every line is accounted for exactly once: record, oversize marker or blank.
    positions = [item.pos for item in got]
    assert positions == sorted(set(positions))
    blank = nlines - len(got)
    assert blank >= 0 and len(got) + blank == nlines


def test_jsonlines_hard_limit_applies_without_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 4)
    assert lines_of(b"1234\n12345\n", 0) == [Record(1, b"1234"), Oversize(2, 5)]


HUGE = 50 * 2**20
PIECE = 64 * 2**10


def huge_line(end: bytes) -> Iterable[bytes]:
    yield b'{"in0": [1]}\n{"in0": ['
    for _ in range(HUGE // PIECE):
        yield b"7," * (PIECE // 2)
    yield end


@pytest.mark.parametrize("max_record_bytes", [2**20, 0])
def test_jsonlines_oversize_line_is_not_held(
    monkeypatch: pytest.MonkeyPatch, max_record_bytes: int
) -> None:
    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 2**20)
    stream = Lazy(huge_line(b'1]}\r\n{"in0": [2]}'))
    tracemalloc.start()
    try:
        got = list(iter_jsonlines(stream, max_record_bytes))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    size = len(b'{"in0": [') + HUGE + len(b"1]}")
    assert got == [Record(1, b'{"in0": [1]}'), Oversize(2, size), Record(3, b'{"in0": [2]}')]
    assert peak < 4 * 2**20


# ---------------------------------------------------------------- application/json


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


def test_json_many_elements_across_chunks() -> None:
    elements = [b'{"in0": [%d, 1], "id": "r\\"%d"}' % (i, i) for i in range(100_000)]
    elements[500] = b'{"in0": [1], "meta": {"nested": [[1]]}}'
    data = b'{"instances": [' + b", ".join(elements) + b"]}"
    assert len(data) > 3 * formats._CHUNK
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


# ---------------------------------------------------------------- responses


def test_framing() -> None:
    assert framing_for(JSONLINES) == Framing(b"", b"", b"")
    assert framing_for(JSON) == Framing(b'{"predictions":[', b",", b"]}\n")
    assert framing_for("application/json; charset=utf-8") == framing_for(JSON)


OBJECTS = [
    {"embeddings": np.array([0.5, 0.0, -1.25], dtype=np.float32)},
    {"scores": [0.25, 0.75], "predicted_label": 1},
    {"SageMakerInput": [1, "é"], "SageMakerOutput": {"scores": np.array([3.5])}},
]
PLAIN = [
    {"embeddings": [0.5, 0.0, -1.25]},
    {"scores": [0.25, 0.75], "predicted_label": 1},
    {"SageMakerInput": [1, "é"], "SageMakerOutput": {"scores": [3.5]}},
]


def test_encode_jsonlines() -> None:
    encoded = encode_records(OBJECTS, JSONLINES)
    assert encoded.endswith(b"\n")
    assert [json.loads(line) for line in encoded.splitlines()] == PLAIN
    assert encoded.count(b"\n") == 3
    assert encode_records([], JSONLINES) == b""


def test_encode_json_fragment() -> None:
    encoded = encode_records(OBJECTS, JSON)
    assert encoded.startswith(b'{"embeddings":[0.5,0.0,-1.25]},{')
    assert json.loads(b"[" + encoded + b"]") == PLAIN
    assert encode_records([], JSON) == b""


@pytest.mark.parametrize("accept", [JSON, JSONLINES])
@pytest.mark.parametrize("split", [[], [3], [1, 2], [1, 1, 1], [0, 3, 0]])
def test_frame_document(accept: str, split: list[int]) -> None:
    batches, start = [], 0
    for n in split:
        batches.append(OBJECTS[start : start + n])
        start += n
    document = frame_document([encode_records(batch, accept) for batch in batches], accept)
    expected = PLAIN[: sum(split)]
    if accept == JSON:
        assert document.endswith(b"]}\n")
        assert json.loads(document) == {"predictions": expected}
    else:
        assert [json.loads(line) for line in document.splitlines()] == expected
        assert document.count(b"\n") == len(expected)
        assert document.endswith(b"\n") or document == b""


@pytest.mark.parametrize(
    ("accept", "expected"), [(JSON, b'{"predictions":[]}\n'), (JSONLINES, b"")]
)
def test_empty_shard(accept: str, expected: bytes) -> None:
    assert frame_document([], accept) == expected
    assert frame_document([b""], accept) == expected
