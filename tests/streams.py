"""Stream doubles for the request splitters: reads in pieces, and streams never held whole."""

from __future__ import annotations

import itertools
from collections.abc import Iterable

from conftest import examples
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

BOM = b"\xef\xbb\xbf"
FUZZ = settings(
    max_examples=examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
piece_sizes = st.lists(st.integers(1, 9), min_size=1, max_size=8)
# A record far over the limit (the tests' 1 MB) and over what the tests let a reader
# hold (4 MB), generated PIECE bytes at a time.
HUGE = 16 * 2**20
PIECE = 64 * 2**10


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
