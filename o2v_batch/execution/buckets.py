"""Device batches: how a call's sequences are cut into them (on a GPU, in the fixed
shapes of a ladder of padded lengths), and their ids padded, ready to stage (Prepared).
A device loop (device_loop.py) runs them; a GPU's host workers prepare them on their
own cores, with the Planner their device process sends (device_link.py). numpy only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from itertools import pairwise
from typing import NamedTuple

import numpy as np

from o2v_batch.model.tokens import TokenIds

# Padded lengths on a GPU: multiples of SHORT_STEP up to SHORT_LIMIT, then each about 1/8
# above the last (rounded up to a multiple of SHORT_STEP), then max_seq_len: 16 lengths for
# max_seq_len 200. A row's padding is under a step: under 8 columns, or about an eighth
# of its padded length. The last device batch of a length is rounded up to a power of two
# rows, so whatever the input a GPU sees a fixed set of shapes: each padded length with
# its full row count or a power of two below it.
SHORT_STEP, SHORT_LIMIT = 8, 64


def bucket_lengths(max_len: int) -> np.ndarray:
    """The ladder of padded lengths for sequences of up to max_len ids, ascending."""
    ladder = list(range(SHORT_STEP, SHORT_LIMIT + 1, SHORT_STEP))
    while ladder[-1] < max_len:
        ladder.append(-(-ladder[-1] * 9 // (8 * SHORT_STEP)) * SHORT_STEP)
    return np.array([t for t in ladder if t < max_len] + [max_len], dtype=np.int64)


def bucket_rows(length: int, token_budget: int, max_rows: int) -> int:
    """Rows of a full device batch at a padded length: what the budget allows, 1 to max_rows."""
    return max(1, min(max_rows, token_budget // length))


class Batch(NamedTuple):
    """One device batch: the rows it holds, longest first, and its padded (R, T) shape."""

    rows: np.ndarray
    shape: tuple[int, int]


def bucket_batches(
    lengths: np.ndarray, ladder: np.ndarray, token_budget: int, max_rows: int
) -> list[Batch]:
    """Device batches of sequences of these lengths (none above the ladder's last), longest
    first: each sequence in the smallest padded length of the ladder that holds it, full
    batches of bucket_rows rows, and a last one per length rounded up to a power of two
    rows (the rest empty)."""
    if not len(lengths):
        return []
    order = np.argsort(-lengths, kind="stable")
    bucket = np.searchsorted(ladder, lengths[order])  # never increases along order
    bounds = [0, *(np.flatnonzero(np.diff(bucket)) + 1).tolist(), len(order)]
    batches = []
    for lo, hi in pairwise(bounds):
        length = int(ladder[bucket[lo]])
        size = bucket_rows(length, token_budget, max_rows)
        for start in range(lo, hi, size):
            rows = order[start : min(start + size, hi)]
            padded = min(size, 1 << (len(rows) - 1).bit_length())
            batches.append(Batch(rows, (padded, length)))
    return batches


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class Prepared:
    """A call's device batches, padded and ready to stage, in the order they run: every
    batch's (R, T) int32 ids one after another, flat, left-aligned and zero-padded; every
    batch's R lengths (0 for its rows of padding only); the call's rows in batch order;
    each batch's (R, T, rows it holds)."""

    tokens: np.ndarray
    lengths: np.ndarray
    order: np.ndarray
    shapes: np.ndarray

    def __len__(self) -> int:
        return len(self.order)

    def batches(self) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each batch's (R, T) ids, its R lengths and the rows it holds, as views."""
        token, row, done = 0, 0, 0
        for R, T, B in self.shapes.tolist():
            yield (
                self.tokens[token : token + R * T].reshape(R, T),
                self.lengths[row : row + R],
                self.order[done : done + B],
            )
            token, row, done = token + R * T, row + R, done + B
        assert token == self.tokens.size and row == self.lengths.size, "a torn Prepared"


@dataclass(frozen=True)
class Planner:
    """How a device loop cuts a call's sequences into device batches: `token_budget`
    tokens and `max_rows` rows a batch, and on `buckets` the ladder's shapes (otherwise
    each batch is as long as its longest row), for encoders of these `max_lens`. Plain
    values, so that a device process sends its loop's to the host workers that prepare
    its calls."""

    token_budget: int
    max_rows: int
    max_lens: tuple[int, int]
    buckets: bool

    @cached_property
    def ladders(self) -> list[np.ndarray] | None:
        return [bucket_lengths(m) for m in self.max_lens] if self.buckets else None

    @property
    def tokens(self) -> int:
        """The most tokens a batch takes: max_rows rows or the budget, at least one row."""
        longest = max(self.max_lens)
        return max(min(self.token_budget, self.max_rows * longest), longest)

    def plan(self, ids: TokenIds, encoder: int) -> list[Batch]:
        """The device batches of `ids`, longest first."""
        longest, max_len = int(ids.lengths.max(initial=0)), self.max_lens[encoder]
        assert longest <= max_len, f"{longest} ids, over max_seq_len {max_len}: truncate first"
        if self.ladders is not None:
            ladder = self.ladders[encoder]
            return bucket_batches(ids.lengths, ladder, self.token_budget, self.max_rows)
        return [
            Batch(rows, (len(rows), max(int(ids.lengths[rows[0]]), 1)))
            for rows in ids.device_batch_rows(self.token_budget, self.max_rows)
        ]

    def prepare(self, ids: TokenIds, encoder: int) -> Prepared:
        """`ids` cut into device batches and padded: every id written once, straight to
        its place in its batch (its row's first place there, plus its place in the row),
        onto zeros."""
        batches = self.plan(ids, encoder)
        shapes = np.array([(*b.shape, len(b.rows)) for b in batches], np.int64).reshape(-1, 3)
        R, T, B = shapes[:, 0], shapes[:, 1], shapes[:, 2]
        tokens = np.zeros(int((R * T).sum()), np.int32)
        lengths = np.zeros(int(R.sum()), np.int64)
        order = np.concatenate([b.rows for b in batches]) if batches else ids.lengths[:0]
        # Each row held, in batch order: its row in `lengths` (its batch's first row,
        # plus its place in the batch), and the first place of its ids in `tokens`.
        first_row, first_token = np.cumsum(R) - R, np.cumsum(R * T) - R * T
        place = np.arange(len(order)) - np.repeat(np.cumsum(B) - B, B)
        row = np.repeat(first_row, B) + place
        first = np.repeat(first_token, B) + place * np.repeat(T, B)
        lengths[row] = ids.lengths[order]
        shift = np.empty(len(ids), np.int64)  # per row of `ids`: its ids' move
        shift[order] = first - ids.starts[order]
        tokens[np.repeat(shift, ids.lengths) + np.arange(ids.ids.size)] = ids.ids
        return Prepared(tokens, lengths, order, shapes)
