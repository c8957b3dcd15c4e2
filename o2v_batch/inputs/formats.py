"""Media types and the jsonlines splitter.

The batch parent only splits (raw bytes, never parsed); workers parse and encode.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from itertools import repeat
from typing import BinaryIO, NamedTuple

import numpy as np

JSONLINES = "application/jsonlines"
JSON = "application/json"

# One enormous line or element must never exhaust memory, even with no --max-payload.
MAX_RECORD_BYTES = 100 * 2**20

READ_CHUNK = 2**20  # bytes per read of a request stream
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


class Block(NamedTuple):
    """Consecutive plain lines (none blank, indented, ending in \\r or over the limit),
    `first` to `first + count - 1`, as the bytes between them: `data` joins them by \\n.
    The parent packs these without looking at each line."""

    first: int
    count: int
    data: bytes


class Lines(Sequence[bytes]):
    """Records that are the lines of one run of bytes (none holds a newline): a
    mini-batch built from Blocks. It travels to a worker as that one bytes object and is
    split only where its records are looked at one by one.

    The parent builds it from the Blocks' runs of whole lines (`pieces`) and joins them
    by newlines only where the bytes are asked for: a worker's request segment takes the
    pieces as they are, one gathering write (a join copied every byte once more)."""

    __slots__ = ("_data", "_lines", "count", "pieces")

    def __init__(self, data: bytes | list[bytes], count: int) -> None:
        """`data`: the lines' bytes, or runs of whole lines to be joined by newlines."""
        self.pieces = data if isinstance(data, list) else [data]
        self._data = data if isinstance(data, bytes) else None
        self.count = count
        self._lines: list[bytes] | None = None

    @property
    def data(self) -> bytes:
        if self._data is None:
            pieces = self.pieces
            self._data = pieces[0] if len(pieces) == 1 else b"\n".join(pieces)
            self.pieces = [self._data]
        return self._data

    @property
    def size(self) -> int:
        """len(data), without joining."""
        return sum(map(len, self.pieces)) + len(self.pieces) - 1

    def head(self, nbytes: int) -> bytes:
        """data[:nbytes], joining only the runs it takes."""
        taken, size = [], -1
        for piece in self.pieces:
            taken.append(piece)
            size += len(piece) + 1
            if size >= nbytes:
                break
        return (taken[0] if len(taken) == 1 else b"\n".join(taken))[:nbytes]

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index):  # an int or a slice, as a list takes them
        return self._split()[index]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._split())

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Lines | list | tuple):
            return list(self) == list(other)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Lines({self._split()!r})"

    def __reduce__(self):  # the bytes only: the list is rebuilt where it is needed
        return (Lines, (self.data, self.count))

    def _split(self) -> list[bytes]:
        if self._lines is None:
            self._lines = self.data.split(b"\n")
        return self._lines


def bare_type(content_type: str) -> str:
    """A content type without its parameters, in lower case."""
    return content_type.split(";", 1)[0].strip().lower()


def media_type(content_type: str) -> str:
    """The bare media type of a request content type; ValueError if unsupported."""
    bare = bare_type(content_type)
    if bare not in (JSONLINES, JSON):
        raise ValueError(f"unsupported content type {content_type!r}: use {JSONLINES} or {JSON}")
    return bare


def where(pos: int, content_type: str) -> str:
    """A record's place for messages: `line 12` or `instances[3]`."""
    return f"instances[{pos}]" if media_type(content_type) == JSON else f"line {pos}"


def at_record(pos: int, content_type: str, problem: str) -> str:
    """`line 12: <problem>`; a problem that starts with its place inside the record
    (the workers' `column 5: malformed JSON: ...`) joins the record's, so the message has
    one position: `line 12, column 5: malformed JSON: ...`."""
    joiner = ", " if problem.startswith(("column ", "character ")) else ": "
    return f"{where(pos, content_type)}{joiner}{problem}"


def content_type_for(path: str) -> str:
    """The content type a shard's name implies: `.json` (maybe compressed) is JSON."""
    name = path.lower()
    for extension in _COMPRESSION_EXTENSIONS:
        if name.endswith(extension):
            name = name[: -len(extension)]
            break
    return JSON if name.endswith(".json") else JSONLINES


def strip_bom(stream: BinaryIO) -> tuple[bytes, int]:
    """The first chunk of a stream without its UTF-8 BOM, and the BOM's length (0 or 3)."""
    head = stream.read(READ_CHUNK)
    # A stream may hand out the BOM a byte at a time.
    while head and len(head) < len(_BOM) and _BOM.startswith(head):
        more = stream.read(READ_CHUNK)
        if not more:
            break
        head += more
    if head.startswith(_BOM):
        return head[len(_BOM) :], len(_BOM)
    return head, 0


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    head, _ = strip_bom(stream)
    if head:
        yield head
    while chunk := stream.read(READ_CHUNK):
        yield chunk


# ---------------------------------------------------------------- jsonlines


def iter_jsonlines(
    stream: BinaryIO, max_record_bytes: int, blocks: bool = False
) -> Iterator[Record | Oversize | Block]:
    """Split a jsonlines stream into records; `pos` is the 1-based physical line number.

    Blank lines are skipped. A line longer than `max_record_bytes` (0: MAX_RECORD_BYTES),
    not counting its line ending, is skipped without being held and yields Oversize.
    With `blocks`, runs of plain lines come as Blocks instead of one Record per line.
    """
    # One loop, its state in locals rather than passed to and from helpers: this is the
    # parent's hot path, taken for every chunk of every jsonlines shard and request.
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
            end = chunk.rfind(b"\n")
            body, tail = chunk[:end], chunk[end + 1 :]
            count = yield from _split_lines(body, lineno, limit, blocks)
            lineno += count
            pieces = [tail] if tail else []
            held = len(tail)
        if held > limit + 1:  # + 1: the line may yet end with \r\n
            skipped, ends_cr = held, pieces[-1][-1] == 13
            pieces, held = [], 0
    if skipped >= 0:
        yield Oversize(lineno + 1, skipped - ends_cr)
    elif pieces:
        yield from _checked_lines([b"".join(pieces)], lineno, limit)


def _split_lines(
    body: bytes, lineno: int, limit: int, blocks: bool
) -> Generator[Record | Oversize | Block, None, int]:
    """The whole lines after line `lineno` that `body` holds (it ends before a newline),
    as a Block, Records or, where a line needs a closer look, checked one by one;
    returns how many lines it held."""
    count = _plain_lines(body)
    if count and blocks and len(body) <= limit:
        yield Block(lineno + 1, count, body)
        return count
    lines = body.split(b"\n")
    if count and (len(body) <= limit or max(map(len, lines)) <= limit):
        if blocks:
            yield Block(lineno + 1, len(lines), body)
        else:
            # tuple.__new__ builds the Records in C: the parent's hot path.
            positions = range(lineno + 1, lineno + 1 + len(lines))
            yield from map(tuple.__new__, repeat(Record), zip(positions, lines, strict=True))
    else:
        yield from _checked_lines(lines, lineno, limit)
    return len(lines)


def _plain_lines(body: bytes) -> int:
    """How many lines `body` holds when none needs a closer look (none blank or starting
    with a space or tab, no carriage return), else 0. One vectorised pass over the
    newlines, the parent's hot path: a regex search and a count took 3x its time."""
    if not (body[:1] > b" " and body[-1:] != b"\n" and b"\r" not in body):
        return 0
    text = np.frombuffer(body, np.uint8)
    newline = text[:-1] == 10  # the body does not end with one
    # Whole-array passes, no positions: most bodies have no byte <= 32 after a newline,
    # and those are plain. This took 0.55x the time of taking each newline's position.
    if not (newline & (text[1:] <= 32)).any():
        return int(np.count_nonzero(newline)) + 1
    after = text[1:][newline]
    if ((after == 10) | (after == 32) | (after == 9)).any():
        return 0
    return len(after) + 1


def _checked_lines(lines: list[bytes], lineno: int, limit: int) -> Iterator[Record | Oversize]:
    for line in lines:
        lineno += 1
        if line[-1:] == b"\r":
            line = line[:-1]
        if len(line) > limit:
            yield Oversize(lineno, len(line))
        elif line.strip(_JSON_WS):
            yield Record(lineno, line)
