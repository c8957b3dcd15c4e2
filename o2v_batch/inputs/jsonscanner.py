"""The cursor under the JSON request splitter: a stream read in chunks, one value at a
time, following strings and bracket nesting only, holding at most the value it scans."""

from __future__ import annotations

import re
from typing import BinaryIO

from o2v_batch.errors import RequestFormatError
from o2v_batch.inputs.formats import READ_CHUNK, strip_bom

_WS_RUN = re.compile(rb"[ \t\r\n]*")
# A whole string (group 1 is None when it runs past the chunk) or a bracket.
_VALUE_TOKEN = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*(")?|[][{}]', re.S)
_STRING_REST = re.compile(rb'[^"\\]*(?:\\.[^"\\]*)*(")?', re.S)
_WORD_END = re.compile(rb'[ \t\r\n,:\[\]{}"]')
QUOTE, COLON, COMMA = ord('"'), ord(":"), ord(",")
OBJECT_OPEN, OBJECT_CLOSE, ARRAY_OPEN, ARRAY_CLOSE = b"{}[]"


class JsonScanner:
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
        if first == QUOTE:
            self.pos += 1
            ended = self._string()
        elif first in (OBJECT_OPEN, ARRAY_OPEN):
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
                if token == QUOTE:
                    if m.group(1):
                        continue
                    self.pos = m.start() + 1
                    if not self._string():
                        return False
                    break  # a new chunk: restart the scan there
                if token in (OBJECT_OPEN, ARRAY_OPEN):
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
