"""Checked token ids on their way into the network (TokenIds): truncation to
max_seq_len, zero padding, and length-sorted device batches cut by a token budget
sized for the device.

The one copy used by serving, the Python API, training and the benchmark, so all
of them cut and batch alike. Numpy only; torch comes in where tensors do. The ids
are read and checked from requests in token_ids.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

    from o2v_batch.model.hyperparameters import Hyperparameters

# Device batches are cut by a token budget (rows x padded length), so one long
# record never forces a huge padded tensor, and sorted by length to cut padding.
# The budget is set so that one layer's activations (tokens x widest layer) stay
# near a size the device handles best: a core's L2 cache on CPU, plenty on a GPU;
# never below MIN_BUDGET tokens, under which each batch's fixed cost dominates.
# Measured on CPU (forward passes of 6 MB mini-batches of the benchmark's records,
# one thread, CPU time): the light model (widest layer 32) ran 208,600 records/s at
# 8,192 tokens with no row cap against 173,500 at 32,768 tokens and 512 rows
# (classification 96,500 against 86,100); the heavy one (widest 512) ran
# 1,830-1,870 from 1,024 to 4,096 tokens, 1,750 at 512 (and 578 at 16,384).
ACTIVATIONS = {"cpu": 2**18, "cuda": 2**27}
MIN_BUDGET = 2048
MAX_ROWS = {"cpu": 8192, "cuda": 8192}
# A device batch ends before the row that would make padding more than this share of
# its tokens, once it holds 1/MIN_BATCH_SHARE of the budget (below that, one batch more
# costs more than padding). Measured: a heavy mini-batch of 375 records was 23% padding
# by the budget alone; the Python API's light batches of 256 records ran 2-3x faster.
PADDING_SHARE = 0.1
MIN_BATCH_SHARE = 8
BUDGET_VARIABLE = "O2V_DEVICE_BATCH_TOKENS"  # overrides token_budget when set
# On a GPU, one layer's activations take at most this share of the memory free when a
# worker starts: several layers' outputs (an LSTM's four gates), the padded ids and the
# caching allocator's slack are alive at once, and other processes may share the GPU.
GPU_MEMORY_SHARE = 64  # bytes of free memory per float32 activation


def device_kind(device: torch.device | str) -> str:
    """The key of ACTIVATIONS and MAX_ROWS for a device: `cpu`, or `cuda` for a GPU."""
    return "cpu" if str(device).partition(":")[0] == "cpu" else "cuda"


def activations(kind: str, free_bytes: int | None = None) -> int:
    """Activation numbers (tokens x widest layer) per device batch: ACTIVATIONS[kind],
    on a GPU with `free_bytes` free no more than its share of them, and never below the
    CPU's figure."""
    if kind == "cpu" or free_bytes is None:
        return ACTIVATIONS[kind]
    return max(ACTIVATIONS["cpu"], min(ACTIVATIONS["cuda"], free_bytes // GPU_MEMORY_SHARE))


def token_budget(hp: Hyperparameters, kind: str, free_bytes: int | None = None) -> int:
    """Tokens per device batch for this model on a `cpu` or `cuda` device (on a GPU,
    `free_bytes` of memory free)."""
    widest = max(hp.enc_dim, *(hp.encoder(i).token_embedding_dim for i in (0, 1)))
    budget = max(MIN_BUDGET, activations(kind, free_bytes) // widest)
    return int(os.environ.get(BUDGET_VARIABLE, budget))


def device_batch_shape(hp: Hyperparameters, device: torch.device) -> tuple[int, int]:
    """(token budget, max rows) of device batches for this model on `device`, sized by
    the GPU's free memory there."""
    import torch

    kind = device_kind(device)
    free_bytes = torch.cuda.mem_get_info(device)[0] if kind == "cuda" else None
    return token_budget(hp, kind, free_bytes), MAX_ROWS[kind]


# ---------------------------------------------------------------- truncation, padding, batches


def truncate_sequence(sequence: list[int], max_len: int) -> tuple[list[int], bool]:
    """One sequence cut to max_len ids, and whether anything was cut."""
    return (sequence[:max_len], True) if len(sequence) > max_len else (sequence, False)


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class TokenIds:
    """Checked sequences of one input: every id in one int64 array, one sequence after
    another, and each sequence's length. No id is 0: padding is left out where the ids
    are read (see `unpadded`), so a sequence of padding only has length 0."""

    ids: np.ndarray
    lengths: np.ndarray

    @classmethod
    def unpadded(cls, ids: np.ndarray, lengths: np.ndarray) -> TokenIds:
        """The sequences without their padding ids (0), wherever they stand: so that
        `[0, 5, 0, 7, 0]` is `[5, 7]`, and padding cannot change an embedding. One
        vectorised pass when there is no 0, as in most inputs."""
        zero = ids == 0
        if not zero.any():
            return cls(ids, lengths)
        row = np.repeat(np.arange(len(lengths)), lengths)  # each id's sequence
        dropped = np.bincount(row[zero], minlength=len(lengths))
        return cls(ids[~zero], lengths - dropped)

    def __len__(self) -> int:
        return len(self.lengths)

    @cached_property
    def starts(self) -> np.ndarray:
        """Where each sequence's ids begin in `ids`."""
        return np.cumsum(self.lengths) - self.lengths

    def truncate(self, max_len: int) -> tuple[TokenIds, int]:
        """Every sequence cut to max_len ids, and how many sequences were cut."""
        if not len(self) or self.lengths.max() <= max_len:
            return self, 0
        position = np.arange(self.ids.size) - np.repeat(self.starts, self.lengths)
        cut = TokenIds(self.ids[position < max_len], np.minimum(self.lengths, max_len))
        return cut, int((self.lengths > max_len).sum())

    def padded(self, rows: np.ndarray | None = None) -> np.ndarray:
        """(B, T) int64 ids of `rows` (default: all), zero-padded to the longest; T >= 1."""
        if rows is None:
            rows = np.arange(len(self))
        out = np.empty((len(rows), max(int(self.lengths[rows].max(initial=0)), 1)), np.int64)
        self.fill(rows, out)
        return out

    def fill(self, rows: np.ndarray, out: np.ndarray) -> None:
        """Write the ids of `rows` into the first rows of `out` (R, T), left-aligned and
        zero-padded, in place and in out's dtype; the rows after them become padding only."""
        self.reordered(rows).fill_run(0, len(rows), out)

    def reordered(self, rows: np.ndarray) -> TokenIds:
        """The sequences of `rows`, in that order: one gather of their ids."""
        lengths = self.lengths[rows]
        before = np.cumsum(lengths) - lengths  # each row's first id among the rows' ids
        where = np.arange(int(lengths.sum())) + np.repeat(self.starts[rows] - before, lengths)
        return TokenIds(self.ids[where], lengths)

    def fill_run(self, lo: int, hi: int, out: np.ndarray) -> None:
        """fill() for the consecutive rows lo..hi-1: their ids are one slice of `ids`,
        written in a few vectorised steps."""
        lengths, T = self.lengths[lo:hi], out.shape[1]
        assert out.shape[0] >= hi - lo and lengths.max(initial=0) <= T, (
            f"{hi - lo} rows of up to {lengths.max(initial=0)} ids do not fit in {out.shape}"
        )
        first = int(self.starts[lo]) if lo < len(self) else self.ids.size
        end = int(self.starts[hi]) if hi < len(self) else self.ids.size
        out[...] = 0
        # A boolean mask fills row after row, left to right: the rows' ids in order.
        out[: hi - lo][np.arange(T) < lengths[:, None]] = self.ids[first:end]

    def device_batch_rows(self, token_budget: int, max_rows: int) -> Iterator[np.ndarray]:
        """The rows of each device batch, longest sequences first: as many rows as the
        token budget allows at the batch's longest length, at least 1, at most max_rows;
        and, once the batch holds 1/MIN_BATCH_SHARE of the budget, none that would take
        its padding over PADDING_SHARE of its tokens (a few hundred records of scattered
        lengths would otherwise be mostly padding)."""
        order = np.argsort(-self.lengths, kind="stable")
        lengths = self.lengths[order]
        floor = token_budget // MIN_BATCH_SHARE
        done = 0
        while done < len(order):
            longest = max(int(lengths[done]), 1)  # a row of padding only still takes a column
            size = max(1, min(max_rows, token_budget // longest, len(order) - done))
            padding = np.cumsum(longest - lengths[done : done + size])
            tokens = longest * np.arange(1, size + 1)
            fits = (padding <= PADDING_SHARE * tokens) | (tokens <= floor)
            if not fits.all():
                size = max(1, int(np.argmin(fits)))  # up to the first row that does not
            yield order[done : done + size]
            done += size

    def device_batches(
        self, token_budget: int, max_rows: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, padded int64 ids) per device batch, cut as `device_batch_rows` cuts."""
        for rows in self.device_batch_rows(token_budget, max_rows):
            yield rows, self.padded(rows)
