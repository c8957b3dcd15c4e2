"""MultiRecord / SingleRecord packing and the --max-payload value."""

from __future__ import annotations

import io
import math

import pytest
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st

from o2v_batch.inputs.batching import MB, MiniBatch, pack, payload_bytes
from o2v_batch.inputs.formats import Lines, Oversize, Record, iter_jsonlines


@pytest.mark.parametrize(
    ("mb", "expected"),
    [
        (6, 6 * 2**20),
        (6.0, 6 * 2**20),
        (0, 0),
        (0.0, 0),
        (0.05, 52428),
        (0.5, 2**19),
        (100, 100 * 2**20),
        (1e-9, 1),
    ],
)
def test_payload_bytes(mb: float, expected: int) -> None:
    assert payload_bytes(mb) == expected
    assert MB == 2**20


@pytest.mark.parametrize("mb", [-1, -0.01, math.nan, math.inf])
def test_payload_bytes_rejects(mb: float) -> None:
    with pytest.raises(ValueError) as err:
        payload_bytes(mb)
    assert str(err.value) == f"max payload must be a number of MB >= 0, got {mb}"


def test_unknown_strategy_fails_at_once() -> None:
    with pytest.raises(ValueError) as err:
        pack([], 10, "multirecord")
    assert str(err.value) == "unknown batch strategy 'multirecord': use MultiRecord or SingleRecord"


def r(pos: int, size: int) -> Record:
    return Record(pos, b"x" * size)


def shape(out: list) -> list:
    """Mini-batches as lists of positions, Oversize items as they are."""
    return [item.positions if isinstance(item, MiniBatch) else item for item in out]


@pytest.mark.parametrize(
    ("items", "cap", "strategy", "expected"),
    [
        ([], 10, "MultiRecord", []),
        ([r(1, 3), r(2, 3), r(3, 3), r(4, 3)], 10, "MultiRecord", [[1, 2, 3], [4]]),
        ([r(1, 5), r(2, 5), r(3, 5)], 10, "MultiRecord", [[1, 2], [3]]),
        ([r(1, 10), r(2, 1)], 10, "MultiRecord", [[1], [2]]),
        ([r(1, 3), r(2, 11), r(3, 3)], 10, "MultiRecord", [[1], Oversize(2, 11), [3]]),
        ([r(1, 11)], 10, "MultiRecord", [Oversize(1, 11)]),
        ([r(1, 3), Oversize(2, 99), r(3, 3)], 10, "MultiRecord", [[1], Oversize(2, 99), [3]]),
        ([Oversize(1, 5), Oversize(2, 6)], 0, "MultiRecord", [Oversize(1, 5), Oversize(2, 6)]),
        ([r(1, 3), r(2, 10**6), r(3, 3)], 0, "MultiRecord", [[1, 2, 3]]),
        ([r(1, 3), r(2, 3), r(3, 3)], 0, "SingleRecord", [[1], [2], [3]]),
        ([r(1, 3), r(2, 11), r(3, 10)], 10, "SingleRecord", [[1], Oversize(2, 11), [3]]),
        ([r(7, 1), r(9, 1)], 2, "MultiRecord", [[7, 9]]),
    ],
)
def test_pack(items: list, cap: int, strategy: str, expected: list) -> None:
    assert shape(list(pack(items, cap, strategy))) == expected


def test_pack_keeps_record_bytes() -> None:
    items = [Record(1, b'{"in0": [1]}'), Record(3, b'{"in0": [2, 3]}'), Record(4, b"{}")]
    assert list(pack(items, 28)) == [
        MiniBatch([1, 3], [b'{"in0": [1]}', b'{"in0": [2, 3]}'], 27),
        MiniBatch([4], [b"{}"], 2),
    ]


def test_pack_is_lazy() -> None:
    def items():
        yield r(1, 6)
        yield r(2, 6)
        raise AssertionError("read past what the first mini-batch needs")

    assert next(pack(items(), 10)).positions == [1]


def test_pack_a_split_shard() -> None:
    data = b'{"in0": [1]}\n\n{"in0": [2, 3]}\r\n' + b"y" * 40 + b'\n{"in0": [4]}'
    out = list(pack(iter_jsonlines(io.BytesIO(data), 30), 30))
    assert out == [
        MiniBatch([1, 3], [b'{"in0": [1]}', b'{"in0": [2, 3]}'], 27),
        Oversize(4, 40),
        MiniBatch([5], [b'{"in0": [4]}'], 12),
    ]


items_strategy = st.lists(
    st.tuples(st.booleans(), st.integers(0, 40)),
    max_size=60,
).map(
    lambda specs: [
        Oversize(pos, size) if oversize else Record(pos, bytes([pos % 256]) * size)
        for pos, (oversize, size) in enumerate(specs, 1)
    ]
)


@settings(max_examples=examples(400), deadline=None)
@given(
    items=items_strategy,
    cap=st.sampled_from([0, 1, 5, 17, 40, 100]),
    strategy=st.sampled_from(["MultiRecord", "SingleRecord"]),
)
def test_pack_invariants(items: list, cap: int, strategy: str) -> None:
    out = list(pack(items, cap, strategy))

    # Nothing lost, repeated or reordered: flattening gives back the input positions.
    flat = []
    for item in out:
        flat.extend(item.positions if isinstance(item, MiniBatch) else [item.pos])
    assert flat == [item.pos for item in items]

    by_pos = {item.pos: item for item in items}
    for i, item in enumerate(out):
        if isinstance(item, Oversize):
            source = by_pos[item.pos]
            # Reported where it was: an input Oversize as is, a record only if over the cap.
            if isinstance(source, Record):
                assert cap and len(source.data) > cap
                assert item.size == len(source.data)
            else:
                assert item == source
            continue
        assert item.records, "no empty mini-batch"
        assert item.records == [by_pos[p].data for p in item.positions]
        assert item.nbytes == sum(map(len, item.records))
        if cap:
            assert item.nbytes <= cap
        if strategy == "SingleRecord":
            assert len(item.records) == 1
        elif i + 1 < len(out) and isinstance(out[i + 1], MiniBatch):
            # Greedy: the next record did not fit into this mini-batch.
            assert cap and item.nbytes + len(out[i + 1].records[0]) > cap

    # Every record within the cap is sent.
    sent = {p for item in out if isinstance(item, MiniBatch) for p in item.positions}
    fitting = {
        it.pos for it in items if isinstance(it, Record) and (not cap or len(it.data) <= cap)
    }
    assert sent == fitting


line_kinds = st.one_of(
    st.binary(min_size=1, max_size=30).map(
        lambda b: b"{" + b.replace(b"\n", b"").replace(b"\r", b"") + b"}"
    ),
    st.sampled_from([b"", b"  ", b" {}", b"\t{}", b"{}\r", b'{"in0":[1,2,3]}']),
)


@settings(max_examples=examples(300), deadline=None)
@given(
    lines=st.lists(line_kinds, max_size=40),
    plain_share=st.integers(0, 3),
    cap=st.integers(1, 120),
    sizes=st.lists(st.integers(1, 64), min_size=1, max_size=5),
    final_newline=st.booleans(),
)
def test_blocks_pack_into_the_mini_batches_that_lines_do(
    lines, plain_share, cap, sizes, final_newline
):
    """Packed from Blocks or from one Record per line, a shard gives the same
    mini-batches (same records, same lines, same cuts), the same oversize lines, all
    within the cap: whatever its line endings, a shard's records meet the same
    neighbours."""
    from streams import Trickle

    if plain_share:  # mostly plain lines: long runs of them become Blocks
        lines = [
            b'{"in0":[%d]}' % i if i % 4 < plain_share else line for i, line in enumerate(lines)
        ]
    data = b"\n".join(lines) + (b"\n" if final_newline else b"")

    def batches(blocks: bool) -> list:
        out = []
        for item in pack(iter_jsonlines(Trickle(data, sizes), cap, blocks=blocks), cap):
            if isinstance(item, Oversize):
                out.append(item)
                continue
            assert 0 < item.nbytes <= cap
            assert item.nbytes == sum(map(len, item.records))
            out.append(list(zip(item.positions, item.records, strict=True)))
        return out

    # The same mini-batches, cut at the same records: outputs cannot tell them apart.
    assert batches(blocks=True) == batches(blocks=False)


def test_a_block_built_mini_batch_travels_as_one_bytes_object() -> None:
    import pickle

    data = b"".join(b'{"in0":[%d]}\n' % i for i in range(1, 2001))
    (batch,) = pack(iter_jsonlines(io.BytesIO(data), 2**20, blocks=True), 2**20)
    assert batch.positions == range(1, 2001)
    assert isinstance(batch.records, Lines) and batch.records.data == data[:-1]
    assert list(batch.records) == data.split(b"\n")[:-1]
    again = pickle.loads(pickle.dumps(batch))
    assert again == batch and again.records.data == data[:-1]


@given(
    runs=st.lists(st.binary(max_size=12).map(lambda b: b.replace(b"\n", b"")), min_size=1),
    nbytes=st.integers(0, 80),
)
def test_lines_in_runs_are_the_runs_joined_by_newlines(runs, nbytes) -> None:
    """A mini-batch built from Blocks holds its runs of lines unjoined: its size, its
    first bytes, its lines and its pickle are those of the runs joined by newlines."""
    import pickle

    joined = b"\n".join(runs)
    lines = Lines(list(runs), len(runs))
    assert lines.size == len(joined)
    assert lines.head(nbytes) == joined[:nbytes]
    assert lines.pieces == runs  # neither asked for the join
    assert pickle.loads(pickle.dumps(lines)).data == joined
    assert lines.data == joined and list(lines) == joined.split(b"\n")
