"""Packing records into payload-capped mini-batches (MultiRecord / SingleRecord). Pure."""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate

from o2v_batch.inputs.formats import Block, Lines, Oversize, Record

KB = 2**10
MB = 2**20
STRATEGIES = ("MultiRecord", "SingleRecord")

# A mini-batch goes to the workers in pieces of about this many multiply-adds of the
# forward pass (weights.forward_work), so that one large mini-batch keeps every worker
# busy: about 1 s on one CPU core for scripts/bench.py's heavy model (4.6e10 a second),
# while the light example model's 6 MB mini-batches (about 9e9) stay whole. Smaller
# pieces cost more, as each cuts its device batches from fewer records (measured on the
# heavy model: pieces of 0.25 s took 1.2x the CPU time of the whole, 0.6 s 1.1x, 1.2 s
# 1.0x). Read when a mini-batch is split, so that tests may lower it.
_PIECE_WORK = 5e10
# With few workers, a mini-batch is cut in no more than about this many pieces per
# worker: enough that one mini-batch keeps them all busy, and no smaller. (Measured on
# one core, CPU time, forward passes: the heavy model's 8,000-pair mini-batch ran 0.86x
# the speed of the whole in 14 pieces and 0.96x in 5, as two workers now cut it.)
PIECES_PER_WORKER = 2
# The last mini-batches of a job (see engines/shard.pieces) are cut finer, down to about
# this much work: there a worker left waiting for another's last mini-batch idles, and
# the light example model's mini-batches (about 9e9 each) are shared too. Read when a
# mini-batch is split, as _PIECE_WORK is.
_TAIL_PIECE_WORK = 2e9
MAX_PIECES = 256  # of one mini-batch: the parent's cost per mini-batch stays bounded
MIN_PIECE_RECORDS = 16  # a smaller share of a mini-batch is not worth a request
SAMPLE_BYTES = 2**16  # of a mini-batch, read to estimate its tokens per byte


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
            fit, end = _fitting_lines(data, int(room))
            if not fit and not self.count:  # a line over the cap (the splitter keeps them out)
                fit, end = 1, _line_end(data, 0)
            if fit:
                self._take(data[:end], first, fit)
                data, first, count = data[end + 1 :], first + fit, count - fit
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
            batch = MiniBatch(
                range(self.first, self.first + self.count),
                Lines(self.pieces, self.count),
                self.nbytes,
            )
        else:
            batch = MiniBatch(self.positions, self.records, self.nbytes)
        self._reset()
        return batch


def _fitting_lines(data: bytes, room: int) -> tuple[int, int]:
    """How many of the first lines of `data` hold at most `room` record bytes together
    (a line's bytes without its newline), and where the last of them ends. Lines that
    end within the first `room` bytes surely fit: one count finds them; the few after
    them are tried one by one (the record bytes of k lines: the end of the k-th less
    the k - 1 newlines before it)."""
    end = data.rfind(b"\n", 0, room + 1)
    fit = data.count(b"\n", 0, end) + 1 if end >= 0 else 0
    if not fit:
        end = -1
    while end < len(data):
        after = _line_end(data, end + 1)
        if after - fit > room:
            break
        fit, end = fit + 1, after
    return fit, max(end, 0)


def _line_end(data: bytes, start: int) -> int:
    """Where the line starting at `start` ends: its newline, or the end of `data`."""
    end = data.find(b"\n", start)
    return len(data) if end < 0 else end


def split(
    batch: MiniBatch,
    token_work: float,
    record_work: float = 0.0,
    workers: int | None = None,
    tail: bool = False,
) -> list[MiniBatch]:
    """The pieces, in order, that `batch` goes to the workers in: itself when it holds
    less than _PIECE_WORK (among a job's last mini-batches, `tail`, _TAIL_PIECE_WORK)
    multiply-adds (`token_work` per token, `record_work` per record), else consecutive
    runs of its records of about that much work each, their work told by their bytes at
    the mini-batch's rate. Lines are cut at newlines.

    There are as many pieces as the work has shares (the largest of that floor, the
    mini-batch's over MAX_PIECES, its share among PIECES_PER_WORKER pieces per worker
    when the `workers` sharing it are known, and that of MIN_PIECE_RECORDS records), of
    about equal bytes: each holds at most its share and one record more, or one record.
    So two workers get four pieces, not five, the last of which one would serve alone.
    """
    floor = _TAIL_PIECE_WORK if tail else _PIECE_WORK
    n, nbytes = len(batch.records), batch.nbytes
    if n < 2 * MIN_PIECE_RECORDS or not nbytes:
        return [batch]
    # Ids are written with a comma or bracket after each: 2 bytes a token at least.
    if (nbytes / 2 * token_work + n * record_work) <= floor:
        return [batch]
    work = nbytes * _tokens_per_byte(batch.records) * token_work + n * record_work
    share = max(floor, work / MAX_PIECES, work * MIN_PIECE_RECORDS / n)
    if workers:
        share = max(share, work / (PIECES_PER_WORKER * workers))
    if work <= share:
        return [batch]
    count = math.ceil(work / share - 1e-9)
    if isinstance(batch.records, Lines):
        return _split_lines(batch, count)
    return _split_records(batch, count)


def _tokens_per_byte(records: Sequence[bytes]) -> float:
    """Estimated from the mini-batch's first SAMPLE_BYTES: a record's ids are about its
    commas and one more."""
    if isinstance(records, Lines):
        sample = records.head(SAMPLE_BYTES)
    else:
        taken, size = [], 0
        for record in records:
            taken.append(record)
            size += len(record) + 1
            if size >= SAMPLE_BYTES:
                break
        sample = b"\n".join(taken)
    return (sample.count(b",") + sample.count(b"\n") + 1) / max(1, len(sample))


def _split_lines(batch: MiniBatch, count: int) -> list[MiniBatch]:
    """Lines cut into `count` runs, each ending at the last newline before its even
    share of the bytes ends (a line longer than that is a piece alone)."""
    data, positions = batch.records.data, batch.positions
    pieces, start, first = [], 0, 0
    for k in range(1, count + 1):
        if start >= len(data):
            break
        target = len(data) * k // count
        end = len(data) if k == count else data.rfind(b"\n", start, target + 1)
        if end <= start:  # no newline after `start` before the target: one line alone
            end = _line_end(data, start)
        lines = data.count(b"\n", start, end) + 1
        piece = data[start:end]
        pieces.append(
            MiniBatch(positions[first : first + lines], Lines(piece, lines), len(piece) - lines + 1)
        )
        start, first = end + 1, first + lines
    return pieces


def _split_records(batch: MiniBatch, count: int) -> list[MiniBatch]:
    """Records cut into `count` runs, each ending with the last record that ends within
    its even share of the bytes (at least one record)."""
    ends = list(accumulate(map(len, batch.records)))
    pieces, first, before = [], 0, 0
    for k in range(1, count + 1):
        if first >= len(ends):
            break
        end = len(ends) if k == count else bisect_right(ends, ends[-1] * k / count, first)
        end = max(first + 1, end)
        pieces.append(
            MiniBatch(batch.positions[first:end], batch.records[first:end], ends[end - 1] - before)
        )
        first, before = end, ends[end - 1]
    return pieces
