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
_DIGITS_AND_COMMAS = b"0123456789,"
_SEPARATORS_TO_COMMAS = bytes.maketrans(b"\n|", b",,")


def plain_ids(records: Sequence[bytes], inputs: Sequence[tuple[str, int]]) -> list[TokenIds] | None:
    """Per input, the ids of records that are all `{"<name>":[id,...], ...}` with the
    `inputs`' names in their order and ids in range of their vocab sizes (spaces after
    colons and commas allowed), read straight from the bytes; None when any record is
    anything else, so the JSON parser takes the mini-batch and names the bad record.
    Gives exactly what parsing each record and fast_ids would."""
    body = _plain_body(records, [name for name, _ in inputs])
    if not body:
        return None
    return _read_ids(body, len(records), inputs)


def _plain_body(records: Sequence[bytes], names: list[str]) -> bytes | None:
    """The records' ids, each list's ending with "|" or "\\n" ("1,2|3\\n4,5|6"), when every
    record is plain; None when one is not."""
    n = len(records)
    keys = [b'"' + name.encode() + b'":[' for name in names]
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
    for seam in seams[1:]:
        blob = blob.replace(seam, b"|")
    return blob.replace(seams[0], b"").translate(None, b"]}")


def _read_ids(body: bytes, n: int, inputs: Sequence[tuple[str, int]]) -> list[TokenIds] | None:
    """Per input, the ids of `n` records' lists in `body` (see _plain_body); None when a
    number is not a JSON integer, a list is empty or an id is out of range."""
    k = len(inputs)
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
    JSON numbers have none ("01" is not an id; the parser says so). Looks at the zeros
    only: one pass over the text, the rest on the few zeros that are followed by a digit."""
    zeros = np.flatnonzero(text[:-1] == 48)  # a last 0 has no digit after it
    after = text[zeros + 1]
    zeros = zeros[(after >= 48) & (after <= 57)]
    before = text[zeros - 1]  # text[-1] for a 0 in front: not read then
    return bool(((zeros == 0) | (before < 48) | (before > 57)).any())


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
