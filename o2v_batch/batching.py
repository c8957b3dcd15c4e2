"""Packing records into payload-capped mini-batches (MultiRecord / SingleRecord). Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

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
    positions: list[int] = []
    records: list[bytes] = []
    nbytes = 0
    run = _LineRun()
    for item in items:
        kind = type(item)
        if kind is Block:
            if records:
                yield MiniBatch(positions, records, nbytes)
                positions, records, nbytes = [], [], 0
            yield from run.add(item, cap)
            continue
        if run.count:
            yield run.flush()
        if kind is not Oversize:
            pos, data = item
            size = len(data)
            if size <= cap:
                if nbytes + size > cap or (single and records):
                    yield MiniBatch(positions, records, nbytes)
                    positions, records, nbytes = [], [], 0
                positions.append(pos)
                records.append(data)
                nbytes += size
                continue
            item = Oversize(pos, size)
        if records:
            yield MiniBatch(positions, records, nbytes)
            positions, records, nbytes = [], [], 0
        yield item
    if run.count:
        yield run.flush()
    if records:
        yield MiniBatch(positions, records, nbytes)


class _LineRun:
    """The mini-batch being filled from Blocks: consecutive lines, held as pieces of
    bytes. Its size counts the newlines that join them, so it never holds more record
    bytes than the cap."""

    def __init__(self) -> None:
        self.pieces: list[bytes] = []
        self.first = self.count = self.size = 0

    def add(self, block: Block, cap: float) -> Iterator[MiniBatch]:
        """Takes the block's lines, yielding each mini-batch they fill."""
        if self.count and block.first != self.first + self.count:  # lines between: skipped
            yield self.flush()
        data, first, start = block.data, block.first, 0
        while start < len(data):
            room = cap - self.size - (1 if self.count else 0)  # a newline joins pieces
            if len(data) - start <= room:
                self._take(
                    data[start:] if start else data, first, block.count - (first - block.first)
                )
                return
            # The last whole line that fits; none does: the next mini-batch takes it.
            end = data.rfind(b"\n", start, start + int(room) + 1) if room >= 1 else -1
            if end < 0 and self.count:
                yield self.flush()
                continue
            if end < 0:  # a line over the cap (the splitter keeps them out): alone
                end = data.find(b"\n", start) % (len(data) + 1)
            piece = data[start:end]
            lines = piece.count(b"\n") + 1
            self._take(piece, first, lines)
            yield self.flush()
            start, first = end + 1, first + lines

    def _take(self, piece: bytes, first: int, lines: int) -> None:
        if not self.count:
            self.first = first
        self.size += len(piece) + (1 if self.count else 0)
        self.pieces.append(piece)
        self.count += lines

    def flush(self) -> MiniBatch:
        data = self.pieces[0] if len(self.pieces) == 1 else b"\n".join(self.pieces)
        batch = MiniBatch(
            range(self.first, self.first + self.count),
            Lines(data, self.count),
            len(data) - (self.count - 1),
        )
        self.pieces, self.first, self.count, self.size = [], 0, 0, 0
        return batch
