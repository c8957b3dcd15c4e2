"""Decompression on the fly, chosen by the name's extension, for every transport."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import os
from collections.abc import Callable
from typing import BinaryIO

import zstandard

_BUFFER_BYTES = 2**20

_DECOMPRESSORS: dict[str, Callable[[BinaryIO], BinaryIO]] = {
    ".gz": lambda raw: gzip.GzipFile(fileobj=raw, mode="rb"),
    ".bz2": bz2.BZ2File,
    ".xz": lzma.LZMAFile,
    # zstandard rather than the stdlib: compression.zstd arrives only in Python 3.14.
    ".zst": lambda raw: zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True),
}


class _Decompressed(io.BufferedReader):
    """A buffered reader of decompressed bytes (readline() and iteration work) that
    also closes the compressed stream: the decompressors leave it open."""

    def __init__(self, reader: BinaryIO, source: BinaryIO) -> None:
        super().__init__(reader, buffer_size=_BUFFER_BYTES)  # type: ignore[arg-type]
        self._source = source

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._source.close()


def decompressed(stream: BinaryIO, uri: str) -> BinaryIO:
    """`stream` decompressed when `uri` ends with .gz, .bz2, .xz or .zst; else itself."""
    opener = _DECOMPRESSORS.get(os.path.splitext(uri)[1].lower())
    return _Decompressed(opener(stream), stream) if opener else stream
