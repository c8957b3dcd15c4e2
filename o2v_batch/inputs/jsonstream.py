"""The streaming splitter of application/json requests: the elements of
`{"instances": [...]}` as raw bytes, one at a time, never the whole document. The
document's structure is checked here; jsonscanner.py moves through its values."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from itertools import repeat
from typing import BinaryIO, NoReturn

import orjson

from o2v_batch.errors import JsonlinesAsJsonError, RequestFormatError
from o2v_batch.inputs import formats  # formats.MAX_RECORD_BYTES read at call time: tests lower it
from o2v_batch.inputs.formats import Oversize, Record
from o2v_batch.inputs.jsonscanner import (
    ARRAY_CLOSE,
    ARRAY_OPEN,
    COLON,
    COMMA,
    OBJECT_CLOSE,
    OBJECT_OPEN,
    QUOTE,
    JsonScanner,
)

# The fast path: a run of elements each followed by a comma, in one chunk, taken by two
# regex calls. It covers strings, numbers and literals, and containers nested up to
# _FAST_DEPTH (Object2Vec's `{"in0": [...]}` is 2); deeper ones go the slow way. Like the
# scanner's slow scan it follows strings and brackets only, so both find the same extents.
# Written without nested quantifiers, so a failing match cannot backtrack badly.
_FAST_DEPTH = 3
_STRING = rb'"[^"\\]*(?:\\.[^"\\]*)*"'
_WORD = rb'[^ \t\r\n,:\[\]{}"]+'


def _container_pattern(depth: int) -> bytes:
    plain = rb'[^\[\]{}"]*'
    inside = _STRING
    for _ in range(depth):
        container = rb"[\[{]%s(?:(?:%s)%s)*[\]}]" % (plain, inside, plain)
        inside = b"%s|%s" % (_STRING, container)
    return container


_ELEMENT = b"(?:%s|%s|%s)" % (_container_pattern(_FAST_DEPTH), _STRING, _WORD)
_SIMPLE_ELEMENT = re.compile(_ELEMENT, re.S)
# A possessive run (Python 3.11+) is twice as fast: the engine keeps no backtracking state.
_RUN_REPEAT = b"*+" if sys.version_info >= (3, 11) else b"*"
_SIMPLE_RUN = re.compile(rb"(?:[ \t\r\n]*%s[ \t\r\n]*,)%s" % (_ELEMENT, _RUN_REPEAT), re.S)
_NOT_A_VALUE = b",:]}"
_TOP = "the top-level object"
_EXPECTED_REQUEST = 'not a JSON request: expected {"instances": [...]}, found'
# Longest raw key that can still spell "instances" (every letter as a \u escape).
_KEY_BYTES = 2 + 6 * len("instances")
# A top-level key of these makes the document a record, as a jsonlines line is.
_RECORD_KEYS = (b'"in0"', b'"in1"')


def iter_json_instances(stream: BinaryIO, max_record_bytes: int) -> Iterator[Record | Oversize]:
    """Stream the elements of `instances` of a `{"instances": [...]}` document as raw bytes.

    `pos` is the 0-based index in `instances`. The document's structure is checked
    (RequestFormatError), each element's syntax is left to the workers' parser. An
    element over `max_record_bytes` (0: MAX_RECORD_BYTES) is skipped and yields Oversize.
    """
    limit = max_record_bytes or formats.MAX_RECORD_BYTES
    scan = JsonScanner(stream)
    byte = scan.peek()
    if byte != OBJECT_OPEN:
        raise RequestFormatError(f"{_EXPECTED_REQUEST} {scan.found(byte)}")
    scan.pos += 1
    seen = a_record = False  # an "instances" key; an "in0" or "in1" key, as a record has
    byte = scan.peek()
    if byte == OBJECT_CLOSE:
        scan.pos += 1
    while byte != OBJECT_CLOSE:
        key_at = scan.base + scan.pos
        key = _key(scan, byte)
        a_record = a_record or key in _RECORD_KEYS
        byte = scan.peek()
        if _is_instances_key(key):
            if seen:
                raise RequestFormatError(
                    f'not a JSON request: a second "instances" key at byte {key_at}'
                )
            if byte != ARRAY_OPEN:
                raise RequestFormatError(f"{_EXPECTED_REQUEST} {scan.found(byte)}")
            seen = True
            yield from _instances(scan, limit)
        elif byte is None or byte in _NOT_A_VALUE:
            _fail_in_object(scan, byte, "a value")
        else:
            scan.value(0, _TOP)
        byte = _after_member(scan)
    _check_end(scan, seen, a_record)


def _key(scan: JsonScanner, byte: int | None) -> bytes | None:
    """Read a key of the top-level object and the ':' after it: the key's raw bytes,
    None when it is too long to be "instances"."""
    if byte is None:
        raise RequestFormatError(f"JSON document ends inside {_TOP}")
    if byte != QUOTE:
        raise RequestFormatError(
            f"JSON syntax error: expected a key in {_TOP}, found {scan.found(byte)}"
        )
    key = scan.value(_KEY_BYTES, _TOP)[1]
    byte = scan.peek()
    if byte != COLON:
        _fail_in_object(scan, byte, "':' after a key")
    scan.pos += 1
    return key


def _after_member(scan: JsonScanner) -> int | None:
    """Consume the ',' or '}' after a member of the top-level object: the next byte."""
    byte = scan.peek()
    if byte == COMMA:
        scan.pos += 1
        byte = scan.peek()
        if byte == OBJECT_CLOSE:
            _fail_in_object(scan, byte, "a key")
        return byte
    if byte == OBJECT_CLOSE:
        scan.pos += 1
        return byte
    _fail_in_object(scan, byte, "',' or '}'")


def _check_end(scan: JsonScanner, seen: bool, a_record: bool) -> None:
    """Nothing may follow the top-level object, which must have held "instances"."""
    byte = scan.peek()
    if byte is not None:
        # Another object after one that was no request: jsonlines, an object a line.
        lines = not seen and byte == OBJECT_OPEN
        error = JsonlinesAsJsonError if lines else RequestFormatError
        raise error(f"JSON document continues after {_TOP}: found {scan.found(byte)}")
    if not seen:
        error = JsonlinesAsJsonError if a_record else RequestFormatError
        raise error(f'{_EXPECTED_REQUEST} no "instances" key')


def _fail_in_object(scan: JsonScanner, byte: int | None, expected: str) -> NoReturn:
    if byte is None:
        raise RequestFormatError(f"JSON document ends inside {_TOP}")
    raise RequestFormatError(
        f"JSON syntax error: expected {expected} in {_TOP}, found {scan.found(byte)}"
    )


def _is_instances_key(raw: bytes | None) -> bool:
    if raw is None:
        return False
    if b"\\" not in raw:
        return raw == b'"instances"'
    try:
        return orjson.loads(raw) == "instances"
    except orjson.JSONDecodeError:  # a malformed key is not "instances"; nothing else reads it
        return False


def _instances(scan: JsonScanner, limit: int) -> Iterator[Record | Oversize]:
    """Yield the elements of the array whose `[` is under the cursor, and consume its `]`."""
    scan.pos += 1
    index = 0
    if scan.peek() == ARRAY_CLOSE:
        scan.pos += 1
        return
    while True:
        run_end = _SIMPLE_RUN.match(scan.buf, scan.pos).end()
        if run_end > scan.pos:
            elements = _SIMPLE_ELEMENT.findall(scan.buf, scan.pos, run_end)
            yield from _elements(elements, index, limit, run_end - scan.pos)
            index += len(elements)
            scan.pos = run_end
        byte = scan.peek()
        inside = f"instances[{index}]"
        if byte is None:
            raise RequestFormatError(f"JSON document ends inside {inside}")
        if byte in _NOT_A_VALUE:
            raise RequestFormatError(
                f"JSON syntax error: expected {inside}, found {scan.found(byte)}"
            )
        size, data = scan.value(limit, inside)
        yield Oversize(index, size) if data is None else Record(index, data)
        byte = scan.peek()
        if byte == ARRAY_CLOSE:
            scan.pos += 1
            return
        if byte is None:  # the element is whole: only what follows it is missing
            raise RequestFormatError(f"JSON document ends after {inside}")
        if byte != COMMA:
            raise RequestFormatError(
                f"JSON syntax error: expected ',' or ']' after {inside}, found {scan.found(byte)}"
            )
        scan.pos += 1
        index += 1


def _elements(
    elements: list[bytes], index: int, limit: int, nbytes: int
) -> Iterator[Record | Oversize]:
    if nbytes <= limit:
        # tuple.__new__ builds the Records in C: the parent's hot path.
        positions = range(index, index + len(elements))
        return map(tuple.__new__, repeat(Record), zip(positions, elements, strict=True))
    return (
        Record(pos, data) if len(data) <= limit else Oversize(pos, len(data))
        for pos, data in enumerate(elements, index)
    )
