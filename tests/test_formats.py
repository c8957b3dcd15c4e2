"""Media types and the jsonlines splitter."""

from __future__ import annotations

import io
import tracemalloc
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from streams import BOM, FUZZ, HUGE, PIECE, Lazy, Trickle, piece_sizes

from o2v_batch.errors import (
    BadRecordError,
    FilterError,
    JsonlinesAsJsonError,
    O2VError,
    RequestFormatError,
)
from o2v_batch.inputs import formats
from o2v_batch.inputs.formats import (
    JSON,
    JSONLINES,
    Oversize,
    Record,
    at_record,
    content_type_for,
    iter_jsonlines,
    media_type,
    where,
)


def lines_of(data: bytes, limit: int) -> list[Record | Oversize]:
    return list(iter_jsonlines(io.BytesIO(data), limit))


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


@pytest.mark.parametrize(
    ("pos", "content_type", "problem", "expected"),
    [
        (3, JSONLINES, "in0 is empty", "line 3: in0 is empty"),
        (
            3,
            JSONLINES,
            "column 13: malformed JSON: unexpected end of data",
            "line 3, column 13: malformed JSON: unexpected end of data",
        ),
        (
            2,
            JSON,
            "character 5: malformed JSON: unexpected character",
            "instances[2], character 5: malformed JSON: unexpected character",
        ),
        (0, JSON, "record is not a JSON object", "instances[0]: record is not a JSON object"),
    ],
)
def test_a_problem_inside_a_record_gets_one_position(
    pos: int, content_type: str, problem: str, expected: str
) -> None:
    assert at_record(pos, content_type, problem) == expected


def test_new_errors_are_picklable_o2v_errors() -> None:
    import pickle

    for cls in (RequestFormatError, JsonlinesAsJsonError, FilterError):
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


def test_jsonlines_reads_whole_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "READ_CHUNK", 2**16)  # more chunks for fewer lines
    lines = [b'{"in0": [%d]}' % i for i in range(20_000)]
    data = b"\n".join(lines) + b"\n"
    assert len(data) > 3 * formats.READ_CHUNK
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


plain_line = st.sampled_from(
    [b"{}", b'{"in0":[1]}', b"", b" {}", b"\t{}", b"\x01{}", b"\x0b{}", b"!{}", b"{} ", b"{}\r"]
)


@FUZZ
@given(lines=st.lists(plain_line, min_size=1, max_size=30))
def test_plain_lines_counts_the_lines_that_need_no_closer_look(lines: list[bytes]) -> None:
    """_plain_lines, whole-array passes with a look at each newline only when a byte
    <= 32 follows one: the line count when no line is blank, starts with a space or a
    tab, or holds a carriage return, and the first starts above a space; else 0."""
    body = b"\n".join(lines)
    plain = body[:1] > b" " and all(
        line and line[:1] not in (b" ", b"\t") and b"\r" not in line for line in lines
    )
    assert formats._plain_lines(body) == (len(lines) if plain else 0)


def test_jsonlines_hard_limit_applies_without_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(formats, "MAX_RECORD_BYTES", 4)
    assert lines_of(b"1234\n12345\n", 0) == [Record(1, b"1234"), Oversize(2, 5)]


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
