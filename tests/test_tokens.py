"""Token ids: checks and their messages, truncation, padding, device batches."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import tiny

from o2v_batch.errors import BadRecordError
from o2v_batch.inputs.token_ids import check_ids, check_sequence, fast_ids, plain_ids
from o2v_batch.model.tokens import (
    MAX_ROWS,
    MIN_BATCH_SHARE,
    PADDING_SHARE,
    TokenIds,
    activations,
    device_batch_shape,
    device_kind,
    token_budget,
    truncate_sequence,
)

# ---------------------------------------------------------------- checks


def test_checked_ids_pad_truncate_and_count() -> None:
    ids = check_ids([[1, 2, 3], (4,), np.array([5, 6, 7, 8, 9])], 10, "in0")
    cut, truncated = ids.truncate(4)
    tokens = cut.padded()
    assert tokens.dtype == np.int64
    assert tokens.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]]
    assert truncated == 1
    same, none = ids.truncate(5)
    assert same is ids and none == 0


def test_checked_ids_of_nothing() -> None:
    ids, truncated = check_ids([], 10, "in0").truncate(4)
    assert ids.padded().shape == (0, 1)
    assert truncated == 0
    assert list(ids.device_batches(100, 10)) == []


@pytest.mark.parametrize(
    ("sequences", "index", "message"),
    [
        ([[1], []], 1, "in1 is empty: it needs at least one token id"),
        ([[1, True]], 0, "in1 has a token id that is not an integer: true"),
        ([[1, 2.0]], 0, "in1 has a token id that is not an integer: 2.0"),
        ([[1, "3"]], 0, 'in1 has a token id that is not an integer: "3"'),
        ([[1, None]], 0, "in1 has a token id that is not an integer: null"),
        ([[1, [2]]], 0, "in1 has a token id that is not an integer: [2]"),
        ([np.array([1.5])], 0, "in1 has a token id that is not an integer: 1.5"),
        ([[1, -1]], 0, "in1 id -1 is out of range: vocab size is 10 (ids must be in 0..9)"),
        ([[1], [10]], 1, "in1 id 10 is out of range: vocab size is 10 (ids must be in 0..9)"),
        (
            [[10**30]],
            0,
            f"in1 id {10**30} is out of range: vocab size is 10 (ids must be in 0..9)",
        ),
        ([[1], "abc"], 1, "in1 must be a list of token ids, got a string"),
        ([[1], 5], 1, "in1 must be a list of token ids, got a number"),
        ([{"a": 1}], 0, "in1 must be a list of token ids, got an object"),
        ([[1, "x" * 60]], 0, f'in1 has a token id that is not an integer: "{"x" * 36}...'),
    ],
)
def test_bad_sequences_are_refused_with_what_is_wrong(
    sequences: list, index: int, message: str
) -> None:
    assert fast_ids(sequences, 10) is None
    with pytest.raises(BadRecordError) as caught:
        check_sequence(sequences[index], 10, "in1")
    assert str(caught.value) == message
    with pytest.raises(BadRecordError) as caught:
        check_ids(sequences, 10, "in1")
    assert str(caught.value) == f"sequence {index}: {message}"


def test_a_token_nested_deeper_than_python_recurses() -> None:
    token: list = []
    for _ in range(100_000):
        token = [token]
    with pytest.raises(BadRecordError) as caught:
        check_sequence([1, token], 10, "in0")
    assert str(caught.value) == ("in0 has a token id that is not an integer: " + "[" * 40 + "...")


tokens = st.one_of(
    st.integers(-3, 12),
    st.integers(-(2**70), 2**70),
    st.booleans(),
    st.floats(),
    st.none(),
    st.text(max_size=2),
    st.lists(st.integers(0, 3), max_size=2),
)
sequences = st.one_of(st.lists(tokens, max_size=5), st.integers(), st.text(max_size=3))


@settings(max_examples=examples(300), deadline=None)
@given(batch=st.lists(sequences, max_size=4))
def test_the_batch_check_and_the_exact_check_agree(batch: list) -> None:
    exact_ok = True
    for sequence in batch:
        try:
            check_sequence(sequence, 10, "in0")
        except BadRecordError:
            exact_ok = False
    assert (fast_ids(batch, 10) is not None) == exact_ok


def test_truncate_sequence() -> None:
    assert truncate_sequence([1, 2, 3], 3) == ([1, 2, 3], False)
    assert truncate_sequence([1, 2, 3, 4], 3) == ([1, 2, 3], True)


# ---------------------------------------------------------------- device batches


def test_token_budget_follows_the_widest_layer_and_the_environment(monkeypatch) -> None:
    monkeypatch.delenv("O2V_DEVICE_BATCH_TOKENS", raising=False)
    hp = tiny(enc0_token_embedding_dim=64, enc_dim=32)
    assert token_budget(hp, "cpu") == 2**18 // 64
    assert token_budget(hp, "cuda") == 2**27 // 64
    assert token_budget(tiny(enc_dim=8000), "cpu") == 2048  # the floor
    monkeypatch.setenv("O2V_DEVICE_BATCH_TOKENS", "77")
    assert token_budget(hp, "cpu") == 77
    assert (MAX_ROWS["cpu"], MAX_ROWS["cuda"]) == (8192, 8192)


@pytest.mark.parametrize(
    ("free_bytes", "expected"),
    [
        (None, 2**27),  # free memory unknown: the GPU figure
        (140 * 2**30, 2**27),  # a large GPU: capped
        (2 * 2**30, 2 * 2**30 // 64),  # 2 GiB free: one 64th of it in float32 numbers
        (2**20, 2**18),  # nearly full: never below the CPU's figure
    ],
)
def test_gpu_device_batches_are_sized_by_free_memory(
    monkeypatch, free_bytes: int | None, expected: int
) -> None:
    monkeypatch.delenv("O2V_DEVICE_BATCH_TOKENS", raising=False)
    assert activations("cuda", free_bytes) == expected
    assert activations("cpu", free_bytes) == 2**18  # the CPU's never depends on it
    hp = tiny(enc0_token_embedding_dim=64, enc_dim=32)
    assert token_budget(hp, "cuda", free_bytes) == expected // 64


def test_cpu_device_batch_shape_needs_no_gpu(monkeypatch) -> None:
    monkeypatch.delenv("O2V_DEVICE_BATCH_TOKENS", raising=False)
    hp = tiny(enc0_token_embedding_dim=64, enc_dim=32)
    assert device_batch_shape(hp, torch.device("cpu")) == (2**18 // 64, 8192)


@pytest.mark.parametrize(
    ("device", "kind"),
    [("cpu", "cpu"), (torch.device("cpu"), "cpu"), ("cuda", "cuda"), ("cuda:1", "cuda")],
)
def test_device_kind(device: object, kind: str) -> None:
    assert device_kind(device) == kind


lengths_lists = st.lists(st.integers(1, 40), max_size=60)


@settings(max_examples=examples(200), deadline=None)
@given(lengths=lengths_lists, budget=st.integers(1, 200), max_rows=st.integers(1, 16))
def test_device_batches_longest_first_within_the_budget(
    lengths: list[int], budget: int, max_rows: int
) -> None:
    ids = TokenIds(np.arange(1, sum(lengths) + 1, dtype=np.int64), np.array(lengths, np.int64))
    seen: list[int] = []
    for rows, padded in ids.device_batches(budget, max_rows):
        batch_lengths = [lengths[i] for i in rows]
        longest = batch_lengths[0]
        # Each batch is as big as the budget lets the longest row have, capped, at least
        # one; past 1/MIN_BATCH_SHARE of the budget it ends before the row that would
        # take its padding over PADDING_SHARE of its tokens.
        left = sorted((lengths[i] for i in set(range(len(lengths))) - set(seen)), reverse=True)
        room = max(1, min(max_rows, budget // longest, len(left)))
        size, padding = 0, 0
        for n in left[:room]:
            padding += longest - n
            tokens = longest * (size + 1)
            if size and padding > PADDING_SHARE * tokens and tokens > budget // MIN_BATCH_SHARE:
                break
            size += 1
        assert len(rows) == size
        assert batch_lengths == sorted(batch_lengths, reverse=True)
        assert padded.shape == (len(rows), longest)
        for row, tokens in zip(rows.tolist(), padded.tolist(), strict=True):
            start = sum(lengths[:row])
            expected = list(range(start + 1, start + lengths[row] + 1))
            assert tokens == expected + [0] * (longest - lengths[row])
        seen += rows.tolist()
    # Every row once, longest first, equal lengths in input order.
    assert seen == sorted(range(len(lengths)), key=lambda i: -lengths[i])


def test_fill_writes_rows_left_aligned_into_a_bigger_buffer_in_its_dtype() -> None:
    ids = TokenIds(np.arange(1, 10, dtype=np.int64), np.array([2, 4, 3], np.int64))
    out = np.full((4, 6), 7, np.int32)
    ids.fill(np.array([1, 0]), out)
    expected = [[3, 4, 5, 6, 0, 0], [1, 2, 0, 0, 0, 0], [0] * 6, [0] * 6]
    assert out.dtype == np.int32 and out.tolist() == expected
    with pytest.raises(AssertionError, match=r"^1 rows of up to 4 ids do not fit in \(4, 3\)$"):
        ids.fill(np.array([1]), np.zeros((4, 3), np.int32))


@settings(max_examples=examples(200), deadline=None)
@given(lengths=lengths_lists, data=st.data())
def test_runs_of_reordered_rows_fill_as_their_rows_do(lengths: list[int], data) -> None:
    """A device loop reorders a call's rows once and fills each batch from a run of them."""
    ids = TokenIds(np.arange(1, sum(lengths) + 1, dtype=np.int64), np.array(lengths, np.int64))
    order = np.array(data.draw(st.permutations(range(len(lengths)))), np.int64)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(lengths)), max_size=4)))
    reordered = ids.reordered(order)
    assert reordered.lengths.tolist() == [lengths[i] for i in order]
    for lo, hi in zip([0, *cuts], [*cuts, len(lengths)], strict=True):
        width = max([lengths[i] for i in order[lo:hi]], default=0) + 1
        got, expected = np.full((hi - lo + 1, width), 7), np.zeros((hi - lo + 1, width), int)
        reordered.fill_run(lo, hi, got)
        for r, i in enumerate(order[lo:hi].tolist()):
            start = sum(lengths[:i])
            expected[r, : lengths[i]] = range(start + 1, start + lengths[i] + 1)
        assert got.tolist() == expected.tolist()


# ---------------------------------------------------------------- plain records


def _parsed(records: list[bytes], name: str, vocab: int) -> TokenIds | None:
    """What the JSON parser and fast_ids make of records that hold `name` only."""
    seqs = []
    for record in records:
        try:
            obj = orjson.loads(record)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is not dict or list(obj) != [name]:
            return None
        seqs.append(obj[name])
    return fast_ids(seqs, vocab)


def _same(a: TokenIds, b: TokenIds) -> bool:
    return np.array_equal(a.ids, b.ids) and np.array_equal(a.lengths, b.lengths)


plain_sequences = st.lists(st.lists(st.integers(0, 999), min_size=1, max_size=8), min_size=1)


@settings(max_examples=examples(200), deadline=None)
@given(
    sequences=plain_sequences,
    name=st.sampled_from(["in0", "in1"]),
    spaced=st.booleans(),
)
def test_plain_records_read_without_the_parser_as_the_parser_reads_them(sequences, name, spaced):
    records = [
        (json.dumps({name: s}) if spaced else json.dumps({name: s}, separators=(",", ":"))).encode()
        for s in sequences
    ]
    got = plain_ids(records, [(name, 1000)])
    assert got is not None
    assert _same(got[0], _parsed(records, name, 1000))


_NOISE = b'0123456789,[]{}": in01-.e\t'
edit_lists = st.lists(
    st.tuples(st.integers(0, 2), st.integers(0, 10**6), st.sampled_from(list(_NOISE))),
    max_size=3,
)


def _edited(record: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """The record with bytes deleted (0), inserted (1) or replaced (2) at the places given."""
    out = bytearray(record)
    for op, at, byte in edits:
        at %= len(out) + 1
        if op == 0 and out:
            del out[min(at, len(out) - 1)]
        elif op == 1:
            out.insert(at, byte)
        elif out:
            out[min(at, len(out) - 1)] = byte
    return bytes(out)


@settings(max_examples=examples(400), deadline=None)
@given(
    sequences=plain_sequences,
    edits=edit_lists.filter(bool),
    which=st.integers(0, 10**6),
)
def test_a_record_that_is_not_plain_leaves_the_batch_to_the_parser(sequences, edits, which):
    """Never a different answer: after any edit, plain_ids agrees with the parser or
    declines (None), and declines whenever the parser refuses the batch."""
    records = [json.dumps({"in0": s}, separators=(",", ":")).encode() for s in sequences]
    records[which % len(records)] = _edited(records[which % len(records)], edits)
    got, parsed = plain_ids(records, [("in0", 500)]), _parsed(records, "in0", 500)
    if parsed is None:
        assert got is None
    elif got is not None:
        assert _same(got[0], parsed)


@pytest.mark.parametrize(
    "record",
    [
        b'{"in0":[01]}',  # JSON has no leading zeros
        b'{"in0":[]}',
        b'{"in0":[1,,2]}',
        b'{"in0":[1,]}',
        b'{"in0":[1]}7',
        b'{"in0":[-1]}',
        b'{"in0":[1.0]}',
        b'{"in0":[1e2]}',
        b'{"in0":[99999999999999999999999]}',
        b'{"in0":[1000]}',  # out of range
        b'{"in0":[1],"in1":[2]}',
        b'{ "in0":[1]}',  # fine JSON, but not this form: the parser reads it
    ],
)
def test_plain_ids_decline(record):
    assert plain_ids([b'{"in0":[3,4]}', record, b'{"in0":[0]}'], [("in0", 1000)]) is None


@pytest.mark.parametrize(
    ("records", "declined"),
    [
        ([b'{"in0":[01,2]}', b'{"in0":[3]}'], True),  # the very first id
        ([b'{"in0":[3]}', b'{"in0":[2,007]}'], True),  # the last one
        ([b'{"in0":[3,0]}', b'{"in0":[0,10,100,0]}'], False),  # zeros that are ids
        ([b'{"in0":[3,0]}', b'{"in0":[0,10,100,0]}', b'{"in0":[0]}'], False),
    ],
)
def test_plain_ids_and_leading_zeros(records: list[bytes], declined: bool) -> None:
    got = plain_ids(records, [("in0", 1000)])
    assert (got is None) == declined
    if not declined:
        assert _same(got[0], _parsed(records, "in0", 1000))


def _parsed_pairs(records: list[bytes], vocabs: tuple[int, int]) -> list[TokenIds] | None:
    """What the JSON parser and fast_ids make of records that are in0-in1 pairs."""
    seqs: tuple[list, list] = ([], [])
    for record in records:
        try:
            obj = orjson.loads(record)
        except orjson.JSONDecodeError:
            return None
        if type(obj) is not dict or list(obj) != ["in0", "in1"]:
            return None
        seqs[0].append(obj["in0"])
        seqs[1].append(obj["in1"])
    checked = [fast_ids(s, v) for s, v in zip(seqs, vocabs, strict=True)]
    return None if None in checked else checked


@settings(max_examples=examples(400), deadline=None)
@given(
    pairs=st.lists(
        st.tuples(plain_sequences.map(lambda s: s[0]), plain_sequences.map(lambda s: s[0])),
        min_size=1,
    ),
    spaced=st.booleans(),
    edits=edit_lists,
    which=st.integers(0, 10**6),
)
def test_plain_pairs_read_as_the_parser_reads_them_or_not_at_all(pairs, spaced, edits, which):
    """Pairs: unedited, read as the parser reads them (each input's vocab size apart);
    after any edit, the parser's answer or None."""
    separators = None if spaced else (",", ":")
    records = [json.dumps({"in0": a, "in1": b}, separators=separators).encode() for a, b in pairs]
    records[which % len(records)] = _edited(records[which % len(records)], edits)
    vocabs = (1000, 700)
    got, parsed = (
        plain_ids(records, [("in0", vocabs[0]), ("in1", vocabs[1])]),
        _parsed_pairs(records, vocabs),
    )
    if not edits and parsed is not None:
        assert got is not None
    if parsed is None:
        assert got is None
    elif got is not None:
        assert all(_same(g, p) for g, p in zip(got, parsed, strict=True))
