"""Token ids on their way into the network: id checks, truncation to max_seq_len,
zero padding, and length-sorted device batches cut by a token budget.

The one copy used by serving, the Python API, training and the benchmark, so all
of them check, cut and batch alike. Numpy only; torch comes in where tensors do.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import TYPE_CHECKING, Any

import numpy as np

from o2v_batch.errors import BadRecordError
from o2v_batch.formats import Lines
from o2v_batch.jsonpath import json_type

if TYPE_CHECKING:
    import torch

    from o2v_batch.hyperparameters import Hyperparameters

SHOWN_CHARS = 40  # of a bad token id quoted in a message

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


# ---------------------------------------------------------------- id checks


def _out_of_range(token: int, vocab_size: int, input_name: str) -> str:
    return (
        f"{input_name} id {token} is out of range: vocab size is {vocab_size} "
        f"(ids must be in 0..{vocab_size - 1})"
    )


def _is_token(value: Any) -> bool:
    # bool is an int subclass; `true` is never a token id.
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _show_token(token: Any) -> str:
    """A token as it was written in the JSON record, cut short when long."""
    if isinstance(token, np.generic):
        token = token.item()
    try:
        text = json.dumps(token)
    except (RecursionError, TypeError, ValueError):  # nested deeper than Python recurses
        text = ""
        while isinstance(token, list) and token and len(text) < SHOWN_CHARS:
            text, token = text + "[", token[0]
        return (text + "...") if text else json_type(token)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def check_sequence(sequence: Any, vocab_size: int, input_name: str) -> None:
    """Raise BadRecordError saying what is wrong with one sequence of token ids, if anything."""
    # The common case without a Python comparison per id: training checks every line.
    if (
        type(sequence) is list
        and sequence
        and all(type(token) is int for token in sequence)
        and min(sequence) >= 0
        and max(sequence) < vocab_size
    ):
        return
    if not isinstance(sequence, list | tuple | np.ndarray):
        raise BadRecordError(f"{input_name} must be a list of token ids, got {json_type(sequence)}")
    if len(sequence) == 0:
        raise BadRecordError(f"{input_name} is empty: it needs at least one token id")
    for token in sequence:
        if not _is_token(token):
            raise BadRecordError(
                f"{input_name} has a token id that is not an integer: {_show_token(token)}"
            )
        if not 0 <= token < vocab_size:
            raise BadRecordError(_out_of_range(int(token), vocab_size, input_name))


def fast_ids(sequences: Sequence[Any], vocab_size: int) -> TokenIds | None:
    """The sequences as TokenIds, or None when anything is wrong (then check_sequence
    finds what). Vectorised: this runs for every mini-batch."""
    if not all(isinstance(s, list | tuple | np.ndarray) for s in sequences):
        return None
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    flat = list(chain.from_iterable(sequences))
    if not lengths.all() or not all(
        t is int or issubclass(t, np.integer) for t in set(map(type, flat))
    ):
        return None
    try:
        ids = np.array(flat, dtype=np.int64)
    except OverflowError:
        return None
    if ((ids < 0) | (ids >= vocab_size)).any():
        return None
    return TokenIds.unpadded(ids, lengths)


# Records that are exactly {"in0":[ids]}, {"in1":[ids]} or {"in0":[ids],"in1":[ids]}, as
# json.dumps, orjson and most writers give them, are read without a JSON parser: see
# plain_ids.
_DIGITS_AND_COMMAS = b"0123456789,"
_SEPARATORS_TO_COMMAS = bytes.maketrans(b"\n|", b",,")


def plain_ids(records: Sequence[bytes], inputs: Sequence[tuple[str, int]]) -> list[TokenIds] | None:
    """Per input, the ids of records that are all `{"<name>":[id,...], ...}` with the
    `inputs`' names in their order and ids in range of their vocab sizes (spaces after
    colons and commas allowed), read straight from the bytes; None when any record is
    anything else, so the JSON parser takes the mini-batch and names the bad record.
    Gives exactly what parsing each record and fast_ids would."""
    n, k = len(records), len(inputs)
    keys = [b'"' + name.encode() + b'":[' for name, _ in inputs]
    blob = records.data if isinstance(records, Lines) else b"\n".join(records)
    if b" " in blob:
        blob = blob.replace(b", ", b",").replace(b'": [', b'":[')
    # Each record begins with the first key and ends with "]}", has each other key once,
    # in order, and between its brackets digits and commas only.
    seams = [b"{" + keys[0]] + [b"]," + key for key in keys[1:]]
    skeleton = b"{" + b"".join(key.translate(None, _DIGITS_AND_COMMAS) + b"]" for key in keys)
    if not (
        blob.startswith(seams[0])
        and blob.endswith(b"]}")
        and blob.count(b"\n" + seams[0]) == n - 1
        and blob.count(b"]}\n") == n - 1
        and all(blob.count(seam) == n for seam in seams[1:])
        and blob.translate(None, _DIGITS_AND_COMMAS) == b"\n".join([skeleton + b"}"] * n)
    ):
        return None
    # The ids, each list's ending with "|" or "\n": "1,2|3\n4,5|6"
    for seam in seams[1:]:
        blob = blob.replace(seam, b"|")
    body = blob.replace(seams[0], b"").translate(None, b"]}")
    if not body:
        return None
    text = np.frombuffer(body, np.uint8)
    if _leading_zero(text):
        return None
    commas = np.flatnonzero(text == 44)
    ends = np.flatnonzero((text == 10) | (text == 124))  # of every list but the last
    try:
        ids = np.fromstring(body.translate(_SEPARATORS_TO_COMMAS), dtype=np.int64, sep=",")
    except ValueError:  # an empty list or an empty place between commas
        return None
    # An empty place may also end the parse early: then fewer ids than places.
    if ids.size != commas.size + n * k:
        return None
    before = np.searchsorted(commas, ends)  # commas before each list's end
    lengths = np.diff(before, prepend=0, append=commas.size) + 1  # list after list
    which = np.repeat(np.tile(np.arange(k), n), lengths)  # each id's input
    out = []
    for j, (_, vocab_size) in enumerate(inputs):
        mine = ids if k == 1 else ids[which == j]
        if mine.min() < 0 or mine.max() >= vocab_size:
            return None
        out.append(TokenIds.unpadded(mine, lengths[j::k]))
    return out


def _leading_zero(text: np.ndarray) -> bool:
    """Whether a number among digits and separators starts with a 0 followed by a digit:
    JSON numbers have none ("01" is not an id; the parser says so)."""
    digit = np.append((text >= 48) & (text <= 57), False)
    starts = np.append(0, np.flatnonzero(digit[1:-1] & ~digit[:-2]) + 1)
    return bool(((text[starts] == 48) & digit[starts + 1]).any())


def check_ids(sequences: Sequence[Any], vocab_size: int, input_name: str) -> TokenIds:
    """The sequences as TokenIds; BadRecordError names the first bad one by its index."""
    checked = fast_ids(sequences, vocab_size)
    if checked is not None:
        return checked
    for index, sequence in enumerate(sequences):
        try:
            check_sequence(sequence, vocab_size, input_name)
        except BadRecordError as error:
            raise BadRecordError(f"sequence {index}: {error}") from error
    raise AssertionError("fast_ids refused sequences that check_sequence accepts")


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
        starts, lengths = self.starts[rows], self.lengths[rows]
        B, T = len(rows), out.shape[1]
        assert out.shape[0] >= B and lengths.max(initial=0) <= T, (
            f"{B} rows of up to {lengths.max(initial=0)} ids do not fit in {out.shape}"
        )
        out[...] = 0
        before = np.cumsum(lengths) - lengths  # each row's first id among the rows' ids
        where = np.arange(int(lengths.sum())) + np.repeat(starts - before, lengths)
        # A boolean mask fills row after row, left to right: the rows' ids in order.
        out[:B][np.arange(T) < lengths[:, None]] = self.ids[where]

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
