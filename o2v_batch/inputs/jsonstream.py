"""The streaming scanner of application/json requests: the elements of
`{"instances": [...]}` as raw bytes, one at a time, never the whole document."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from itertools import repeat
from typing import BinaryIO, NoReturn

import orjson

from o2v_batch.errors import JsonlinesAsJsonError, RequestFormatError
from o2v_batch.inputs import formats  # formats.MAX_RECORD_BYTES read at call time: tests lower it
from o2v_batch.inputs.formats import READ_CHUNK, Oversize, Record, strip_bom

_WS_RUN = re.compile(rb"[ \t\r\n]*")
# A whole string (group 1 is None when it runs past the chunk) or a bracket.
_VALUE_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(")?|[][{}]', re.S)
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*(")?', re.S)
_WORD_END = re.compile(rb'[ \t\r\n,:\[\]{}"]')
# The fast path: a run of elements each followed by a comma, in one chunk, taken by two
# regex calls. It covers strings, numbers and literals, and containers nested up to
# _FAST_DEPTH (Object2Vec's `{"in0": [...]}` is 2); deeper ones go the slow way. Like the
# slow scan it follows strings and brackets only, so both find the same extents.
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
_QUOTE, _COLON, _COMMA = ord('"'), ord(":"), ord(",")
_OBJECT_OPEN, _OBJECT_CLOSE, _ARRAY_OPEN, _ARRAY_CLOSE = b"{}[]"
_NOT_A_VALUE = b",:]}"
_EXPECTED_REQUEST = 'not a JSON request: expected {"instances": [...]}, found'
# Longest raw key that can still spell "instances" (every letter as a \u escape).
_KEY_BYTES = 2 + 6 * len("instances")
# A top-level key of these makes the document a record, as a jsonlines line is.
_RECORD_KEYS = (b'"in0"', b'"in1"')


class _JsonScanner:
    """A cursor over a JSON stream read in chunks, holding at most the value being scanned."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buf, self.base = strip_bom(stream)  # base: stream offset of buf[0]
        self.pos = 0
        # The value being scanned: its start in buf, bytes before buf, kept pieces.
        self.start = 0
        self.size = 0
        self.pieces: list[bytes] | None = None
        self.limit = 0

    def _refill(self) -> bool:
        self.base += len(self.buf)
        self.buf = self.stream.read(READ_CHUNK)
        self.pos = 0
        return bool(self.buf)

    def peek(self) -> int | None:
        """The next non-whitespace byte, left unconsumed; None at the end of the stream."""
        while True:
            self.pos = _WS_RUN.match(self.buf, self.pos).end()
            if self.pos < len(self.buf):
                return self.buf[self.pos]
            if not self._refill():
                return None

    def found(self, byte: int | None) -> str:
        """`'x' at byte 12` for messages."""
        what = "the end of the document" if byte is None else repr(bytes([byte]))[1:]
        return f"{what} at byte {self.base + self.pos}"

    def value(self, limit: int, inside: str) -> tuple[int, bytes | None]:
        """Scan the value starting here: its size, and its bytes if they fit in `limit`.

        Only strings and bracket nesting are followed; the workers' parser judges the rest.
        """
        self.start, self.size, self.limit = self.pos, 0, limit
        self.pieces = [] if limit else None
        first = self.buf[self.pos]
        if first == _QUOTE:
            self.pos += 1
            ended = self._string()
        elif first in (_OBJECT_OPEN, _ARRAY_OPEN):
            ended = self._nested()
        else:
            ended = self._word()
        if not ended:
            raise RequestFormatError(f"JSON document ends inside {inside}")
        size = self.size + self.pos - self.start
        if self.pieces is None or size > limit:
            return size, None
        self.pieces.append(self.buf[self.start : self.pos])
        return size, b"".join(self.pieces)

    def _next_chunk(self) -> bool:
        """Keep (or just count) the value's bytes in this chunk, then read the next one."""
        self.size += len(self.buf) - self.start
        if self.pieces is not None:
            if self.size > self.limit:
                self.pieces = None
            else:
                self.pieces.append(self.buf[self.start :])
        self.start = 0
        return self._refill()

    def _string(self) -> bool:
        """Move past the string whose opening quote is just behind the cursor."""
        while True:
            m = _STRING_REST.match(self.buf, self.pos)
            if m.group(1):
                self.pos = m.end()
                return True
            escaped = m.end() < len(self.buf)  # the chunk ends with a lone backslash
            if not self._next_chunk():
                return False
            self.pos = 1 if escaped else 0

    def _nested(self) -> bool:
        depth = 0
        while True:
            for m in _VALUE_TOKEN.finditer(self.buf, self.pos):
                token = self.buf[m.start()]
                if token == _QUOTE:
                    if m.group(1):
                        continue
                    self.pos = m.start() + 1
                    if not self._string():
                        return False
                    break  # a new chunk: restart the scan there
                if token in (_OBJECT_OPEN, _ARRAY_OPEN):
                    depth += 1
                else:
                    depth -= 1
                    if depth == 0:
                        self.pos = m.end()
                        return True
            else:
                self.pos = len(self.buf)
                if not self._next_chunk():
                    return False

    def _word(self) -> bool:
        """Move past a number, true, false, null (or anything else up to a delimiter)."""
        while True:
            m = _WORD_END.search(self.buf, self.pos)
            if m:
                self.pos = m.start()
                return True
            self.pos = len(self.buf)
            if not self._next_chunk():
                return False  # cut short, or nothing follows it: the document is truncated


def iter_json_instances(stream: BinaryIO, max_record_bytes: int) -> Iterator[Record | Oversize]:
    """Stream the elements of `instances` of a `{"instances": [...]}` document as raw bytes.

    `pos` is the 0-based index in `instances`. The document's structure is checked
    (RequestFormatError), each element's syntax is left to the workers' parser. An
    element over `max_record_bytes` (0: MAX_RECORD_BYTES) is skipped and yields Oversize.
    """
    limit = max_record_bytes or formats.MAX_RECORD_BYTES
    scan = _JsonScanner(stream)
    top = "the top-level object"
    byte = scan.peek()
    if byte != _OBJECT_OPEN:
        raise RequestFormatError(f"{_EXPECTED_REQUEST} {scan.found(byte)}")
    scan.pos += 1
    seen = a_record = False  # an "instances" key; an "in0" or "in1" key, as a record has
    byte = scan.peek()
    if byte == _OBJECT_CLOSE:
        scan.pos += 1
    while byte != _OBJECT_CLOSE:
        if byte is None:
            raise RequestFormatError(f"JSON document ends inside {top}")
        if byte != _QUOTE:
            raise RequestFormatError(
                f"JSON syntax error: expected a key in {top}, found {scan.found(byte)}"
            )
        key_at = scan.base + scan.pos
        key = scan.value(_KEY_BYTES, top)[1]
        is_instances = _is_instances_key(key)
        a_record = a_record or key in _RECORD_KEYS
        byte = scan.peek()
        if byte != _COLON:
            _fail_in_object(scan, byte, "':' after a key")
        scan.pos += 1
        byte = scan.peek()
        if is_instances:
            if seen:
                raise RequestFormatError(
                    f'not a JSON request: a second "instances" key at byte {key_at}'
                )
            if byte != _ARRAY_OPEN:
                raise RequestFormatError(f"{_EXPECTED_REQUEST} {scan.found(byte)}")
            seen = True
            yield from _instances(scan, limit)
        elif byte is None or byte in _NOT_A_VALUE:
            _fail_in_object(scan, byte, "a value")
        else:
            scan.value(0, top)
        byte = scan.peek()
        if byte == _COMMA:
            scan.pos += 1
            byte = scan.peek()
            if byte == _OBJECT_CLOSE:
                _fail_in_object(scan, byte, "a key")
        elif byte == _OBJECT_CLOSE:
            scan.pos += 1
        else:
            _fail_in_object(scan, byte, "',' or '}'")
    byte = scan.peek()
    if byte is not None:
        # Another object after one that was no request: jsonlines, an object a line.
        lines = not seen and byte == _OBJECT_OPEN
        error = JsonlinesAsJsonError if lines else RequestFormatError
        raise error(f"JSON document continues after {top}: found {scan.found(byte)}")
    if not seen:
        error = JsonlinesAsJsonError if a_record else RequestFormatError
        raise error(f'{_EXPECTED_REQUEST} no "instances" key')


def _fail_in_object(scan: _JsonScanner, byte: int | None, expected: str) -> NoReturn:
    if byte is None:
        raise RequestFormatError("JSON document ends inside the top-level object")
    raise RequestFormatError(
        f"JSON syntax error: expected {expected} in the top-level object, found {scan.found(byte)}"
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


def _instances(scan: _JsonScanner, limit: int) -> Iterator[Record | Oversize]:
    """Yield the elements of the array whose `[` is under the cursor, and consume its `]`."""
    scan.pos += 1
    index = 0
    if scan.peek() == _ARRAY_CLOSE:
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
        if byte == _ARRAY_CLOSE:
            scan.pos += 1
            return
        if byte is None:  # the element is whole: only what follows it is missing
            raise RequestFormatError(f"JSON document ends after {inside}")
        if byte != _COMMA:
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
