"""Request and response formats: splitting shards into records, JSONPath filters,
join, and response framing.

The batch parent only splits (raw bytes, never parsed); workers parse and encode.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from itertools import repeat
from typing import Any, BinaryIO, NamedTuple, NoReturn

import orjson

from o2v_batch.errors import FilterError, RequestFormatError

JSONLINES = "application/jsonlines"
JSON = "application/json"

# One enormous line or element must never exhaust memory, even with no --max-payload.
MAX_RECORD_BYTES = 100 * 2**20

_CHUNK = 2**20
_BOM = b"\xef\xbb\xbf"
_COMPRESSION_EXTENSIONS = (".gz", ".zst", ".bz2")
# JSON whitespace; other control bytes on a line are left to the parser to reject.
_JSON_WS = b" \t\r\n"


class Record(NamedTuple):
    """One request record: its raw bytes and where it is (line number or instances index)."""

    pos: int
    data: bytes


class Oversize(NamedTuple):
    """A record larger than the limit, skipped unread: where it is and its size in bytes."""

    pos: int
    size: int


def media_type(content_type: str) -> str:
    """The bare media type of a content type (parameters dropped); ValueError if unsupported."""
    bare = content_type.split(";", 1)[0].strip().lower()
    if bare not in (JSONLINES, JSON):
        raise ValueError(f"unsupported content type {content_type!r}: use {JSONLINES} or {JSON}")
    return bare


def where(pos: int, content_type: str) -> str:
    """A record's place for messages: `line 12` or `instances[3]`."""
    return f"instances[{pos}]" if media_type(content_type) == JSON else f"line {pos}"


def content_type_for(path: str) -> str:
    """The content type a shard's name implies: `.json` (maybe compressed) is JSON."""
    name = path.lower()
    for extension in _COMPRESSION_EXTENSIONS:
        if name.endswith(extension):
            name = name[: -len(extension)]
            break
    return JSON if name.endswith(".json") else JSONLINES


def _strip_bom(stream: BinaryIO) -> tuple[bytes, int]:
    """The first chunk of a stream without its UTF-8 BOM, and the BOM's length (0 or 3)."""
    head = stream.read(_CHUNK)
    # A stream may hand out the BOM a byte at a time.
    while head and len(head) < len(_BOM) and _BOM.startswith(head):
        more = stream.read(_CHUNK)
        if not more:
            break
        head += more
    if head.startswith(_BOM):
        return head[len(_BOM) :], len(_BOM)
    return head, 0


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    head, _ = _strip_bom(stream)
    if head:
        yield head
    while chunk := stream.read(_CHUNK):
        yield chunk


# ---------------------------------------------------------------- jsonlines


def iter_jsonlines(stream: BinaryIO, max_record_bytes: int) -> Iterator[Record | Oversize]:
    """Split a jsonlines stream into records; `pos` is the 1-based physical line number.

    Blank lines are skipped. A line longer than `max_record_bytes` (0: MAX_RECORD_BYTES),
    not counting its line ending, is skipped without being held and yields Oversize.
    """
    limit = max_record_bytes or MAX_RECORD_BYTES
    lineno = 0  # lines completed so far
    pieces: list[bytes] = []  # the start of the current line, no newline seen yet
    held = 0
    skipped = -1  # while skipping an oversize line: its bytes so far
    ends_cr = False  # the last byte skipped was \r
    for chunk in _chunks(stream):
        if skipped >= 0:
            nl = chunk.find(b"\n")
            if nl < 0:
                skipped += len(chunk)
                ends_cr = chunk[-1] == 13
                continue
            skipped += nl
            if nl:
                ends_cr = chunk[nl - 1] == 13
            lineno += 1
            yield Oversize(lineno, skipped - ends_cr)
            skipped = -1
            chunk = chunk[nl + 1 :]
            if not chunk:
                continue
        if b"\n" not in chunk:
            pieces.append(chunk)
            held += len(chunk)
        else:
            if pieces:
                pieces.append(chunk)
                chunk = b"".join(pieces)
            lines = chunk.split(b"\n")
            tail = lines.pop()
            if _plain_lines(chunk, lines, limit):
                # tuple.__new__ builds the Records in C: the parent's hot path.
                positions = range(lineno + 1, lineno + 1 + len(lines))
                yield from map(tuple.__new__, repeat(Record), zip(positions, lines, strict=True))
            else:
                yield from _checked_lines(lines, lineno, limit)
            lineno += len(lines)
            pieces = [tail] if tail else []
            held = len(tail)
        if held > limit + 1:  # + 1: the line may yet end with \r\n
            skipped, ends_cr = held, pieces[-1][-1] == 13
            pieces, held = [], 0
    if skipped >= 0:
        yield Oversize(lineno + 1, skipped - ends_cr)
    elif pieces:
        yield from _checked_lines([b"".join(pieces)], lineno, limit)


def _plain_lines(chunk: bytes, lines: list[bytes], limit: int) -> bool:
    """True when no line needs a closer look: no \\r, no blank or space-led line, none too long."""
    return (
        lines[0][:1] > b" "
        and b"\r" not in chunk
        and b"\n\n" not in chunk
        and b"\n " not in chunk
        and b"\n\t" not in chunk
        and (len(chunk) <= limit or max(map(len, lines)) <= limit)
    )


def _checked_lines(lines: list[bytes], lineno: int, limit: int) -> Iterator[Record | Oversize]:
    for line in lines:
        lineno += 1
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) > limit:
            yield Oversize(lineno, len(line))
        elif line.strip(_JSON_WS):
            yield Record(lineno, line)


# ---------------------------------------------------------------- application/json

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


class _JsonScanner:
    """A cursor over a JSON stream read in chunks, holding at most the value being scanned."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.buf, self.base = _strip_bom(stream)  # base: stream offset of buf[0]
        self.pos = 0
        # The value being scanned: its start in buf, bytes before buf, kept pieces.
        self.start = 0
        self.size = 0
        self.pieces: list[bytes] | None = None
        self.limit = 0

    def _refill(self) -> bool:
        self.base += len(self.buf)
        self.buf = self.stream.read(_CHUNK)
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
    limit = max_record_bytes or MAX_RECORD_BYTES
    scan = _JsonScanner(stream)
    top = "the top-level object"
    byte = scan.peek()
    if byte != _OBJECT_OPEN:
        raise RequestFormatError(f"{_EXPECTED_REQUEST} {scan.found(byte)}")
    scan.pos += 1
    seen = False
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
        is_instances = _is_instances_key(scan.value(_KEY_BYTES, top)[1])
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
        raise RequestFormatError(f"JSON document continues after {top}: found {scan.found(byte)}")
    if not seen:
        raise RequestFormatError(f'{_EXPECTED_REQUEST} no "instances" key')


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
        if byte is None:
            raise RequestFormatError(f"JSON document ends inside {inside}")
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


# ---------------------------------------------------------------- JSONPath filters

_QUOTED = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
_STEP = re.compile(
    rf"""
      \.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    | \.(?P<dot_star>\*)
    | \[\s*(?:
          (?P<star>\*)
        | (?P<keys>(?:{_QUOTED})(?:\s*,\s*(?:{_QUOTED}))*)
        | (?P<start>-?\d+)?\s*:\s*(?P<stop>-?\d+)?
        | (?P<index>-?\d+)
      )\s*\]
    """,
    re.X,
)
_KEY = re.compile(r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)\"""")
_ESCAPE = re.compile(r"\\(.)")
_SUPPORTED = "supported: $, .name, ['a','b'], [i], [i:j], *, [*]"

# A step maps one node to one node, or (a multi step) to a list of nodes.
_Step = Callable[[Any], Any]


def compile_filter(expr: str) -> Callable[[Any], Any]:
    """Compile a SageMaker InputFilter/OutputFilter (a JSONPath subset) into a function.

    A path through a wildcard or slice gives the list of its matches; `['a','b']` gives
    an object with those of the keys that exist. A missing key or index, or a value of
    the wrong type on the path, raises FilterError.
    """
    steps = _parse_filter(expr)
    if not steps:
        return _identity
    if not any(multi for _, multi in steps):
        functions = [step for step, _ in steps]

        def select(obj: Any) -> Any:
            for step in functions:
                obj = step(obj)
            return obj

        return select

    def select_all(obj: Any) -> list:
        nodes = [obj]
        for step, multi in steps:
            if multi:
                nodes = [match for node in nodes for match in step(node)]
            else:
                nodes = [step(node) for node in nodes]
        return nodes

    return select_all


def _identity(obj: Any) -> Any:
    return obj


def _parse_filter(expr: str) -> list[tuple[_Step, bool]]:
    if not expr.startswith("$"):
        raise FilterError(f"bad filter {expr!r}: it must start with '$' ({_SUPPORTED})")
    steps = []
    pos = 1
    while pos < len(expr):
        m = _STEP.match(expr, pos)
        if m is None:
            raise FilterError(
                f"bad filter {expr!r}: cannot read {expr[pos:]!r} at position {pos} ({_SUPPORTED})"
            )
        steps.append(_make_step(m, f"filter {expr!r}", expr[:pos]))
        pos = m.end()
    return steps


def _make_step(m: re.Match, name: str, at: str) -> tuple[_Step, bool]:
    """The step a _STEP match describes; `at` is the path before it, for messages."""
    if m["name"] is not None:
        return _key_step(m["name"], name, at), False
    if m["dot_star"] is not None or m["star"] is not None:
        return _star_step(name, at), True
    if m["keys"] is not None:
        keys = [
            _ESCAPE.sub(r"\1", k[1] if k[1] is not None else k[2]) for k in _KEY.finditer(m["keys"])
        ]
        if len(keys) == 1:
            return _key_step(keys[0], name, at), False
        return _keys_step(keys, name, at), False
    if m["index"] is not None:
        return _index_step(int(m["index"]), name, at), False
    start, stop = (None if v is None else int(v) for v in (m["start"], m["stop"]))
    return _slice_step(slice(start, stop), name, at), True


def json_type(value: Any) -> str:
    """What kind of JSON value this is, for messages: `an object`, `a string`..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


def _expect(node: Any, kinds: type | tuple[type, ...], what: str, name: str, at: str) -> None:
    if not isinstance(node, kinds):
        raise FilterError(f"{name}: expected {what} at {at}, found {json_type(node)}")


def _key_step(key: str, name: str, at: str) -> _Step:
    def step(node: Any) -> Any:
        _expect(node, dict, "an object", name, at)
        try:
            return node[key]
        except KeyError:
            raise FilterError(f"{name}: no key {key!r} at {at}") from None

    return step


def _keys_step(keys: list[str], name: str, at: str) -> _Step:
    def step(node: Any) -> dict:
        _expect(node, dict, "an object", name, at)
        return {key: node[key] for key in keys if key in node}

    return step


def _index_step(index: int, name: str, at: str) -> _Step:
    def step(node: Any) -> Any:
        _expect(node, (list, tuple), "an array", name, at)
        try:
            return node[index]
        except IndexError:
            raise FilterError(f"{name}: no index {index} at {at} (length {len(node)})") from None

    return step


def _slice_step(part: slice, name: str, at: str) -> _Step:
    def step(node: Any) -> list:
        _expect(node, (list, tuple), "an array", name, at)
        return list(node[part])

    return step


def _star_step(name: str, at: str) -> _Step:
    def step(node: Any) -> list:
        _expect(node, (dict, list, tuple), "an object or an array", name, at)
        return list(node.values() if isinstance(node, dict) else node)

    return step


# ---------------------------------------------------------------- join and responses


def join_input(record: Any, prediction: dict) -> Any:
    """SageMaker's join: the prediction under "SageMakerOutput", in or around the input."""
    if isinstance(record, dict):
        return {**record, "SageMakerOutput": prediction}
    return {"SageMakerInput": record, "SageMakerOutput": prediction}


@dataclass(frozen=True, slots=True)
class Framing:
    """What wraps the encoded mini-batches of one output shard."""

    header: bytes
    separator: bytes  # between two non-empty mini-batch fragments
    footer: bytes


_FRAMINGS = {
    JSONLINES: Framing(b"", b"", b""),
    JSON: Framing(b'{"predictions":[', b",", b"]}\n"),
}
_DUMPS_OPTIONS = orjson.OPT_SERIALIZE_NUMPY


def framing_for(accept: str) -> Framing:
    """The framing of an output shard of this content type."""
    return _FRAMINGS[media_type(accept)]


def encode_records(objs: list, accept: str) -> bytes:
    """Encode response objects as one mini-batch fragment: lines, or a bare comma list for JSON."""
    if media_type(accept) == JSON:
        # One call, then drop the brackets: orjson writes `[a,b]` without spaces.
        return orjson.dumps(objs, option=_DUMPS_OPTIONS)[1:-1]
    options = _DUMPS_OPTIONS | orjson.OPT_APPEND_NEWLINE
    return b"".join([orjson.dumps(obj, option=options) for obj in objs])


def frame_document(fragments: Iterable[bytes], accept: str) -> bytes:
    """A whole output shard from its fragments (empty fragments are skipped)."""
    framing = framing_for(accept)
    body = framing.separator.join(fragment for fragment in fragments if fragment)
    return framing.header + body + framing.footer
