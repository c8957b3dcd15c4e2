"""Device batches in a fixed set of shapes: the ladder of padded lengths a GPU's
device loop (device_loop.py) pads to, and the batches of a mini-batch's sequences cut
along it. numpy only.
"""

from __future__ import annotations

from itertools import pairwise
from typing import NamedTuple

import numpy as np

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
