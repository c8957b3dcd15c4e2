"""Token ids read from requests: each input's JSON value checked (lists of integer ids
in the vocabulary, the first bad one named) and turned into TokenIds; records that
are plain `{"in0":[...]}` lines read straight from their bytes.

The one copy used by serving, the Python API, training and the benchmark, so all of
them check alike. Numpy only.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from o2v_batch.errors import BadRecordError
from o2v_batch.inputs.formats import Lines
from o2v_batch.inputs.jsonpath import json_type
from o2v_batch.model.tokens import TokenIds

SHOWN_CHARS = 40  # of a bad token id quoted in a message


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
_DIGITS = b"0123456789"
_DIGITS_AND_COMMAS = _DIGITS + b","
# What is left of a plain mini-batch's bytes once its keys' letters, quotes, colons and
# braces are gone: every list's opening bracket and every record's end a comma, so
# that one numpy parse reads each key's number and each list's ids, in order.
_TO_COMMAS = bytes.maketrans(b"[\n", b",,")


def plain_ids(records: Sequence[bytes], inputs: Sequence[tuple[str, int]]) -> list[TokenIds] | None:
    """Per input, the ids of records that are all `{"<name>":[id,...], ...}` with the
    `inputs`' names in their order and ids in range of their vocab sizes (spaces after
    colons and commas allowed), read straight from the bytes; None when any record is
    anything else, so the JSON parser takes the mini-batch and names the bad record.
    Gives exactly what parsing each record and fast_ids would."""
    keys = [name.encode() for name, _ in inputs]
    n, k = len(records), len(keys)
    # Each key gives the parse one number of its own ("in0": 0), read and left out.
    if not n or not all(map(_one_number, keys)):
        return None
    blob = records.data if isinstance(records, Lines) else b"\n".join(records)
    if b" " in blob:
        blob = blob.replace(b", ", b",").replace(b'": [', b'":[')
    text = np.frombuffer(blob, np.uint8)
    skeleton = b'{"' + b'":[],"'.join(keys) + b'":[]}'  # a record with empty lists
    opens = _plain_lists(blob, text, n, keys, skeleton)  # where each list's "[" is
    if opens is None:
        return None
    # From here on the bytes are records of this form: between the brackets of each
    # list, digits and commas only.
    dropped = bytes(set(skeleton) - set(_DIGITS_AND_COMMAS + b"["))
    numbers_text = blob.translate(_TO_COMMAS, dropped)
    if _leading_zero(np.frombuffer(numbers_text, np.uint8)):
        return None
    try:  # per record, each key's number then its list's ids
        numbers = np.fromstring(numbers_text, dtype=np.int64, sep=",")
    except ValueError:  # an empty list or an empty place between commas
        return None
    commas = np.flatnonzero(text == 44)
    # Commas from each list's "[" to the next one's: its own, and the one after it when
    # another list follows in the record.
    lengths = np.diff(np.searchsorted(commas, opens), append=commas.size) + 1
    lengths.reshape(n, k)[:, :-1] -= 1
    # An empty place may also end the parse early: then fewer numbers than places.
    if numbers.size != int(lengths.sum()) + n * k:
        return None
    counts = np.ones(2 * n * k, np.int64)
    counts[1::2] = lengths
    # Each number's input, -1 for a key's number.
    which = np.repeat(np.tile(np.array([(-1, j) for j in range(k)], np.int8).ravel(), n), counts)
    out = []
    for j, (_, vocab_size) in enumerate(inputs):
        mine = numbers[which == j]
        if mine.min() < 0 or mine.max() >= vocab_size:
            return None
        out.append(TokenIds.unpadded(mine, lengths[j::k]))
    return out


def _one_number(key: bytes) -> bool:
    """Whether a key's digits are one run ("in0"): the parse reads one number for it."""
    return len(bytes(c if c in _DIGITS else 32 for c in key).split()) == 1


def _plain_lists(
    blob: bytes, text: np.ndarray, n: int, keys: list[bytes], skeleton: bytes
) -> np.ndarray | None:
    """Where each record's lists open ("[" positions, record after record), when all `n`
    records in `blob` are `skeleton` (`{"<key>":[],...}`, `keys` in order) with nothing
    but digits and commas added between each list's brackets; None when one is not."""
    k = len(keys)
    # Without their digits and commas, the records are the skeleton's, one per line...
    if not (
        blob.startswith(b'{"' + keys[0] + b'":[')
        and blob.endswith(b"]}")
        and blob.translate(None, _DIGITS_AND_COMMAS)
        == b"\n".join([skeleton.translate(None, _DIGITS_AND_COMMAS)] * n)
    ):
        return None
    opens = np.flatnonzero(text == 91)  # k a record, by the skeleton
    # ... and each list's key, with whatever comes between it and the list before, is
    # exactly as written: so no digit or comma stands outside a list.
    for j, key in enumerate(keys):
        seam = (b"]}\n{" if j == 0 else b"],") + b'"' + key + b'":'
        at = opens[k::k] if j == 0 else opens[j::k]  # the first record's start is checked
        if (
            len(at)
            and not (
                text[at[:, None] + np.arange(-len(seam), 0)] == np.frombuffer(seam, np.uint8)
            ).all()
        ):
            return None
    return opens


def _leading_zero(text: np.ndarray) -> bool:
    """Whether a number in digits and commas starts with a 0 followed by a digit: JSON
    numbers have none ("01" is not an id; the parser says so)."""
    zero = text[:-1] == 48
    zero &= text[1:] != 44  # followed by a digit
    zero[1:] &= text[:-2] == 44  # at the start of its number
    return bool(zero.any())


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
