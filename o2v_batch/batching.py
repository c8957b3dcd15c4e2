"""Packing records into payload-capped mini-batches (MultiRecord / SingleRecord). Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from o2v_batch.formats import Block, Lines, Oversize, Record

MB = 2**20
STRATEGIES = ("MultiRecord", "SingleRecord")


@dataclass(slots=True)
class MiniBatch:
    """Consecutive records of one shard, sent to a worker together."""

    positions: Sequence[int]  # a range when built from Blocks
    records: Sequence[bytes]  # Lines when built from Blocks
    nbytes: int  # sum of len(record): what --max-payload caps


def payload_bytes(max_payload_mb: float) -> int:
    """The --max-payload value (MB, fractions allowed, 0 = no cap) in bytes."""
    if not math.isfinite(max_payload_mb) or max_payload_mb < 0:
        raise ValueError(f"max payload must be a number of MB >= 0, got {max_payload_mb}")
    if max_payload_mb == 0:
        return 0
    # A tiny positive cap must not round down to 0, which would mean "no cap".
    return max(1, int(max_payload_mb * MB))


def pack(
    items: Iterable[Record | Oversize | Block], max_bytes: int, strategy: str = "MultiRecord"
) -> Iterator[MiniBatch | Oversize]:
    """Pack records into mini-batches of at most `max_bytes` record bytes (0 = no cap).

    A record larger than the cap becomes Oversize; Oversize items come out in their
    place, after the mini-batch before them, so input order is kept. Blocks of lines
    (MultiRecord only) are cut into mini-batches by their bytes, line by line only at
    the cuts.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown batch strategy {strategy!r}: use MultiRecord or SingleRecord")
    return _pack(items, max_bytes or math.inf, strategy == "SingleRecord")


def _pack(
    items: Iterable[Record | Oversize | Block], cap: float, single: bool
) -> Iterator[MiniBatch | Oversize]:
    batch = _Filling()
    for item in items:
        kind = type(item)
        if kind is Block:
            yield from batch.add_block(item, cap)
            continue
        if kind is not Oversize:
            pos, data = item
            size = len(data)
            if size <= cap:
                if batch.nbytes + size > cap or (single and batch.count):
                    yield batch.flush()
                batch.add(pos, data)
                continue
            item = Oversize(pos, size)
        if batch.count:
            yield batch.flush()
        yield item
    if batch.count:
        yield batch.flush()


class _Filling:
    """The mini-batch being filled: lists of positions and records, or, while only
    consecutive Blocks have come, their lines as pieces of bytes (a range and Lines
    when flushed). Either way it ends where one Record per line would end it: before
    the first record that would take its record bytes over the cap."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        self.positions: list[int] = []
        self.records: list[bytes] = []
        self.pieces: list[bytes] = []  # lines from Blocks, while no Record came
        self.first = self.count = self.nbytes = 0

    def add(self, pos: int, data: bytes) -> None:
        self._to_lists()
        self.positions.append(pos)
        self.records.append(data)
        self.count += 1
        self.nbytes += len(data)

    def add_block(self, block: Block, cap: float) -> Iterator[MiniBatch]:
        """Takes the block's lines, yielding each mini-batch they fill."""
        if self.records or (self.count and block.first != self.first + self.count):
            # Already lists (or lines were skipped between): line by line, as Records.
            lines = block.data.split(b"\n")
            for pos, data in zip(range(block.first, block.first + block.count), lines, strict=True):
                if self.nbytes + len(data) > cap:
                    yield self.flush()
                self.add(pos, data)
            return
        data, first, count = block.data, block.first, block.count
        while count:
            room = cap - self.nbytes
            if len(data) - (count - 1) <= room:  # every line fits
                self._take(data, first, count)
                return
            # Record bytes of the first 1, 2, ... lines: each line's end less the
            # newlines before it.
            ends = np.append(np.flatnonzero(np.frombuffer(data, np.uint8) == 10), len(data))
            fit = int(np.searchsorted(ends - np.arange(len(ends)), room, side="right"))
            if not fit and not self.count:  # a line over the cap (the splitter keeps them out)
                fit = 1
            if fit:
                self._take(data[: ends[fit - 1]], first, fit)
                data, first, count = data[ends[fit - 1] + 1 :], first + fit, count - fit
            yield self.flush()

    def _take(self, piece: bytes, first: int, lines: int) -> None:
        if not self.count:
            self.first = first
        self.pieces.append(piece)
        self.count += lines
        self.nbytes += len(piece) - (lines - 1)

    def _to_lists(self) -> None:
        if self.pieces:
            self.positions = list(range(self.first, self.first + self.count))
            self.records = [line for piece in self.pieces for line in piece.split(b"\n")]
            self.pieces = []

    def flush(self) -> MiniBatch:
        if self.pieces:
            data = self.pieces[0] if len(self.pieces) == 1 else b"\n".join(self.pieces)
            batch = MiniBatch(
                range(self.first, self.first + self.count), Lines(data, self.count), self.nbytes
            )
        else:
            batch = MiniBatch(self.positions, self.records, self.nbytes)
        self._reset()
        return batch
