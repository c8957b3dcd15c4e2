"""Decompression on the fly, chosen by the name's extension, for every transport.

Damaged compressed data is an InputError in words (`<uri>: corrupt gzip data`,
`<uri>: gzip stream ends early`); an error of the compressed stream itself (a
local or S3 read) passes through as it is.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Callable
from typing import BinaryIO

import zstandard

from o2v_batch.errors import InputError
from o2v_batch.io.base import shown

_BUFFER_BYTES = 2**20
# Compressed bytes per zstd step: output comes in bounded pieces whatever the ratio.
_ZSTD_INPUT_BYTES = 2**16


class _ZstdFrames(io.RawIOBase):
    """zstd frames one after another (as pzstd writes them), as a stream. zstandard's
    own stream_reader ends quietly where the input stops inside a frame: this one raises
    EOFError there, as gzip, bz2 and lzma do."""

    def __init__(self, source: BinaryIO) -> None:
        super().__init__()
        self._source = source
        self._frame: zstandard.ZstdDecompressionObj | None = None  # None between frames
        self._output = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        while not self._output:
            data = self._source.read(_ZSTD_INPUT_BYTES)
            if not data:
                if self._frame is not None:
                    raise EOFError("the input ends inside a zstd frame")
                return 0
            self._output = memoryview(self._decompress(data))
        n = min(len(buffer), len(self._output))
        buffer[:n] = self._output[:n]
        self._output = self._output[n:]
        return n

    def _decompress(self, data: bytes) -> bytes:
        pieces = []
        while data:
            if self._frame is None:
                self._frame = zstandard.ZstdDecompressor().decompressobj()
            pieces.append(self._frame.decompress(data))
            if not self._frame.eof:
                break
            data, self._frame = self._frame.unused_data, None
        return b"".join(pieces)


_DECOMPRESSORS: dict[str, tuple[str, Callable[[BinaryIO], BinaryIO]]] = {
    ".gz": ("gzip", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    ".bz2": ("bz2", bz2.BZ2File),
    ".xz": ("xz", lzma.LZMAFile),
    # zstandard rather than the stdlib: compression.zstd arrives only in Python 3.14.
    ".zst": ("zstd", _ZstdFrames),
}


class _Watched:
    """The compressed stream, noting whether a read of it failed: then the failure is
    the storage's, not damaged data."""

    def __init__(self, stream: BinaryIO) -> None:
        self.stream = stream
        self.failed = False

    def read(self, size: int = -1) -> bytes:
        try:
            return self.stream.read(size)
        except BaseException:
            self.failed = True
            raise


class _Decompressed(io.RawIOBase):
    """Decompressed bytes, closing the compressed stream too (the decompressors leave it
    open) and naming damaged data in words rather than in the decompressor's terms."""

    def __init__(self, stream: BinaryIO, uri: str, kind: str, opener: Callable) -> None:
        super().__init__()
        self._source = _Watched(stream)
        self._uri, self._kind = uri, kind
        self._reader = opener(self._source)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        try:
            return self._reader.readinto(buffer)
        except Exception as exc:
            if self._source.failed:
                raise
            kind = self._kind
            problem = (
                f"{kind} stream ends early" if isinstance(exc, EOFError) else f"corrupt {kind} data"
            )
            raise InputError(f"{shown(self._uri)}: {problem}") from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            self._reader.close()
        finally:
            self._source.stream.close()
            super().close()


def is_compressed(uri: str) -> bool:
    """Whether `uri` is read through a decompressor: it ends with .gz, .bz2, .xz or .zst."""
    return os.path.splitext(uri)[1].lower() in _DECOMPRESSORS


def decompressed(stream: BinaryIO, uri: str) -> BinaryIO:
    """`stream` decompressed when `uri` ends with .gz, .bz2, .xz or .zst; else itself.
    The result is buffered: readline() and iteration work."""
    found = _DECOMPRESSORS.get(os.path.splitext(uri)[1].lower())
    if found is None:
        return stream
    kind, opener = found
    return io.BufferedReader(_Decompressed(stream, uri, kind, opener), buffer_size=_BUFFER_BYTES)
