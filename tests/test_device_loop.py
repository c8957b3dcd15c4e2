"""The device loop: its answers, its shapes, its staging buffers and its schedule."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from itertools import pairwise

import numpy as np
import pytest
import torch
from conftest import examples
from hypothesis import given, settings
from hypothesis import strategies as st
from tiny_models import VOCAB, build, tiny

from o2v_batch.execution.buckets import (
    SHORT_LIMIT,
    SHORT_STEP,
    Planner,
    bucket_batches,
    bucket_lengths,
    bucket_rows,
)
from o2v_batch.execution.device_loop import CpuBackend, DeviceLoop
from o2v_batch.model.tokens import TokenIds

NETWORKS = ("hcnn", "bilstm", "pooled_embedding")
MAX_LENS = (90, 40)  # of encoders 0 and 1


class Event:
    def __init__(self, name: str) -> None:
        self.name, self.done = name, False

    def __repr__(self) -> str:
        return self.name


class Recording:
    """A backend that keeps host and device memory apart on the CPU, as a GPU does, and
    logs every operation; its events complete only when waited for."""

    slots, separate = 3, True

    def __init__(self) -> None:
        self.log: list[tuple[str, Event | None]] = []
        self.allocations = 0
        self.copied: dict[Event, tuple[int, torch.Tensor, torch.Tensor]] = {}  # slot, ids, snapshot
        self.released: dict[Event, Event] = {}  # computed -> copied of its batch
        self.last_release: dict[int, Event] = {}  # of each slot's host ids buffer
        self.computing: Event | None = None

    def buffers(self, size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.host(size, dtype), self.host(size, dtype)

    def host(self, size: int, dtype: torch.dtype) -> torch.Tensor:
        self.allocations += 1
        return torch.zeros(size, dtype=dtype)

    def copy_in(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Event:
        ids = pairs[0][1]
        slot = ids.untyped_storage().data_ptr()
        previous = self.last_release.get(slot)
        assert previous is None or previous.done, "a slot refilled before its batch was computed"
        for dst, src in pairs:
            dst.copy_(src)
        event = Event(f"copied{len(self.copied)}")
        self.copied[event] = slot, ids, ids.clone()
        self.log.append(("copy_in", event))
        return event

    def compute_after(self, event: Event) -> None:
        self.computing = event
        self.log.append(("compute", event))

    def computed(self) -> Event:
        event = Event(f"computed{len(self.released)}")
        self.released[event] = self.computing
        self.last_release[self.copied[self.computing][0]] = event
        self.log.append(("computed", event))
        return event

    def copy_out(self, dst: torch.Tensor, src: torch.Tensor, after: Event) -> None:
        dst.copy_(src)
        self.log.append(("copy_out", after))

    def wait(self, event: Event | None) -> None:
        if event is not None:
            _, ids, snapshot = self.copied[self.released[event]]
            # Nothing wrote to the slot between its copy in and now.
            assert torch.equal(ids, snapshot), "a slot refilled before its event was waited for"
            event.done = True
        self.log.append(("wait", event))

    def synchronize(self) -> None:
        for event in self.released:
            event.done = True
        self.log.append(("synchronize", None))


def network_for(name: str) -> torch.nn.Module:
    return build(
        tiny(
            enc0_network=name,
            enc0_max_seq_len=MAX_LENS[0],
            enc1_network=name,
            enc1_max_seq_len=MAX_LENS[1],
            enc1_vocab_size=VOCAB,
            enc1_token_embedding_dim=8,
        ),
        encoders_only=True,
    )


def token_ids(n: int, max_len: int, seed: int) -> TokenIds:
    """Lengths from 1 to max_len, mostly short with a long tail, ids with 0s of their own
    in the middle and at the end, and a sequence of padding only."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(rng.lognormal(np.log(6), 1.0, n).astype(np.int64), 1, max_len)
    lengths[:3] = 1, max_len, max_len
    ids = rng.integers(1, VOCAB, int(lengths.sum()))
    ids[rng.random(ids.size) < 0.1] = 0
    ids[: lengths[0]] = 0
    return TokenIds.unpadded(ids, lengths)


def one_by_one(network: torch.nn.Module, ids: TokenIds, encoder: int) -> torch.Tensor:
    """Each sequence alone, as plain int64 padded ids, straight through the network."""
    with torch.inference_mode():
        return torch.cat(
            [
                network.encode(torch.from_numpy(ids.padded(np.array([i]))), encoder)
                for i in range(len(ids))
            ]
        )


@pytest.mark.parametrize("backend", [CpuBackend, Recording])
@pytest.mark.parametrize("buckets", [False, True])
@pytest.mark.parametrize("name", NETWORKS)
def test_embeddings_are_each_sequence_alone_in_row_order(
    name: str, buckets: bool, backend: type
) -> None:
    network = network_for(name)
    loop = DeviceLoop(network, "cpu", 256, 16, buckets=buckets, backend=backend())
    for encoder, seed in ((0, 1), (1, 2), (0, 3)):  # the same buffers, call after call
        ids = token_ids(150, MAX_LENS[encoder], seed)
        expected = one_by_one(network, ids, encoder)
        got = loop.embeddings(ids, encoder)
        assert got.dtype == torch.float32
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
        host = loop.host_embeddings(ids, encoder)
        assert isinstance(host, np.ndarray) and host.dtype == np.float32
        np.testing.assert_allclose(host, expected.numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("buckets", [False, True])
def test_the_network_gets_int32_ids(buckets: bool) -> None:
    network = network_for("hcnn")
    seen = []
    network.enc0.register_forward_pre_hook(lambda _, args: seen.append(args[0].dtype))
    DeviceLoop(network, "cpu", 64, 8, buckets=buckets).embeddings(token_ids(40, 90, 4), 0)
    assert len(seen) > 1 and set(seen) == {torch.int32}


@pytest.mark.parametrize("backend", [CpuBackend, Recording])
@pytest.mark.parametrize("buckets", [False, True])
def test_no_sequences_no_embeddings(buckets: bool, backend: type) -> None:
    loop = DeviceLoop(network_for("bilstm"), "cpu", buckets=buckets, backend=backend())
    nothing = TokenIds(np.zeros(0, np.int64), np.zeros(0, np.int64))
    assert loop.embeddings(nothing, 1).shape == (0, 8)
    assert loop.host_embeddings(nothing, 0).shape == (0, 8)


@settings(max_examples=examples(100), deadline=None)
@given(max_len=st.integers(1, 600))
def test_the_ladder_grows_by_steps_of_8_then_by_about_an_eighth(max_len: int) -> None:
    ladder = bucket_lengths(max_len).tolist()
    assert ladder[-1] == max_len and ladder == sorted(set(ladder))
    for low, high in pairwise(ladder[:-1]):
        assert high - low == SHORT_STEP if high <= SHORT_LIMIT else high <= low * 9 / 8 + SHORT_STEP
    assert len(ladder) <= 8 + 2 + 20


@settings(max_examples=examples(100), deadline=None)
@given(
    lengths=st.lists(st.integers(0, 200), max_size=80),
    budget=st.integers(1, 3000),
    max_rows=st.integers(1, 64),
)
def test_every_length_in_the_smallest_bucket_that_holds_it(
    lengths: list[int], budget: int, max_rows: int
) -> None:
    ladder = bucket_lengths(200)
    batches = bucket_batches(np.array(lengths, np.int64), ladder, budget, max_rows)
    seen = []
    for rows, (height, width) in batches:
        full = bucket_rows(width, budget, max_rows)
        assert 1 <= len(rows) <= height <= full and height * width <= max(budget, width)
        assert height == full or height & (height - 1) == 0  # full, or a power of two rows
        for length in (lengths[i] for i in rows):
            assert width == ladder[ladder >= length].min()
        seen += rows.tolist()
    # Every row once, longest first, equal lengths in input order.
    assert seen == sorted(range(len(lengths)), key=lambda i: -lengths[i])
    # Only the last batch of a bucket is short.
    for (rows, shape), (_, following) in pairwise(batches):
        assert len(rows) == bucket_rows(shape[1], budget, max_rows) or following[1] != shape[1]


def test_a_call_computes_each_batch_between_the_next_copy_in_and_its_own_copy_out() -> None:
    backend = Recording()
    loop = DeviceLoop(network_for("hcnn"), "cpu", 128, 8, buckets=True, backend=backend)
    loop.host_embeddings(token_ids(120, 90, 5), 0)
    log = backend.log
    where = {(op, event): i for i, (op, event) in enumerate(log)}
    copied = [event for op, event in log if op == "copy_in"]
    computed = [event for op, event in log if op == "computed"]
    assert len(copied) == len(computed) > 2 * backend.slots
    for k, (mine, done) in enumerate(zip(copied, computed, strict=True)):
        # Batch k computes after its copy, and the copy of batch k + 1 is on its way
        # before batch k's output is waited for; batch k's output goes out after batch
        # k + 1 computes, and nothing waits for the device until the call ends.
        assert where["copy_in", mine] < where["compute", mine] < where["computed", done]
        if k + 1 < len(copied):
            assert where["copy_in", copied[k + 1]] < where["compute", mine]
            assert where["computed", computed[k + 1]] < where["copy_out", done]
    assert [op for op, _ in log].count("synchronize") == 1 and log[-1][0] == "synchronize"
    # Each slot waits for its last batch before it is filled again.
    waits = [event for op, event in log if op == "wait" and event is not None]
    assert waits == computed[: len(computed) - backend.slots]


def test_staging_is_allocated_once_whatever_the_calls() -> None:
    backend = Recording()
    network = network_for("pooled_embedding")
    loop = DeviceLoop(network, "cpu", 128, 8, buckets=True, backend=backend)
    assert backend.allocations == 5 * backend.slots  # ids, rows: host and device; lengths
    loop.host_embeddings(token_ids(300, 90, 6), 0)  # the host output buffer
    settled = backend.allocations
    for seed in range(20):
        ids = token_ids(int(np.random.default_rng(seed).integers(0, 300)), MAX_LENS[seed % 2], seed)
        loop.host_embeddings(ids, seed % 2)
        loop.embeddings(ids, seed % 2)
    assert backend.allocations == settled == 5 * backend.slots + 1


def test_calls_from_threads_take_turns_with_the_buffers() -> None:
    network = network_for("hcnn")
    loop = DeviceLoop(network, "cpu", 128, 8, buckets=True)
    inputs = [token_ids(60, MAX_LENS[0], seed) for seed in range(8)]
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda ids: loop.host_embeddings(ids, 0), inputs))
    for ids, embeddings in zip(inputs, got, strict=True):
        np.testing.assert_allclose(embeddings, one_by_one(network, ids, 0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", [CpuBackend, Recording])
def test_a_call_that_raises_leaves_the_loop_usable(backend: type) -> None:
    """A forward pass that fails midway (the device out of memory) fails its call alone:
    the device is waited for, every slot is free again, and the next call is right."""
    network = network_for("hcnn")
    recording = backend()
    loop = DeviceLoop(network, "cpu", 128, 8, buckets=True, backend=recording)
    ids = token_ids(90, MAX_LENS[0], 7)
    encode, calls = network.encode, []

    def fails_third(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("out of memory")
        return encode(*args, **kwargs)

    network.encode = fails_third
    with pytest.raises(RuntimeError, match="out of memory"):
        loop.host_embeddings(ids, 0)
    if isinstance(recording, Recording):
        assert recording.log[-1][0] == "synchronize"  # nothing left in flight
    network.encode = encode
    np.testing.assert_allclose(
        loop.host_embeddings(ids, 0), one_by_one(network, ids, 0), rtol=1e-5, atol=1e-6
    )


@settings(max_examples=examples(60), deadline=None)
@given(
    n=st.integers(3, 200) | st.just(0),
    seed=st.integers(0, 2**16),
    budget=st.integers(1, 600),
    max_rows=st.integers(1, 40),
    buckets=st.booleans(),
)
def test_a_prepared_call_holds_each_batch_padded_as_its_rows_alone(
    n: int, seed: int, budget: int, max_rows: int, buckets: bool
) -> None:
    """What a host worker sends its device process: every row once, each batch's ids
    left-aligned and zero-padded to its shape, its lengths (0 past its rows), int32."""
    planner = Planner(budget, max_rows, MAX_LENS, buckets)
    ids = (
        token_ids(n, MAX_LENS[1], seed)
        if n
        else TokenIds(np.zeros(0, np.int64), np.zeros(0, np.int64))
    )
    prepared = planner.prepare(ids, 1)
    assert prepared.tokens.dtype == np.int32 and len(prepared) == n
    plan = planner.plan(ids, 1)
    assert [tuple(shape) for shape in prepared.shapes.tolist()] == [
        (*batch.shape, len(batch.rows)) for batch in plan
    ]
    seen = []
    for (block, lengths, rows), batch in zip(prepared.batches(), plan, strict=True):
        R, T = block.shape
        assert np.array_equal(rows, batch.rows) and planner.tokens >= R * T
        alone = ids.padded(rows)  # each row's ids, zero-padded to the longest of them
        assert np.array_equal(block[: len(rows), : alone.shape[1]], alone)
        assert not block[: len(rows), alone.shape[1] :].any() and not block[len(rows) :].any()
        assert np.array_equal(lengths[: len(rows)], ids.lengths[rows])
        assert not lengths[len(rows) :].any()
        seen += rows.tolist()
    assert sorted(seen) == list(range(n)) and seen == prepared.order.tolist()


@pytest.mark.parametrize("backend", [CpuBackend, Recording])
def test_a_call_prepared_elsewhere_gives_the_same_embeddings(backend: type) -> None:
    """A host worker prepares with its device loop's planner; a sibling loop cuts alike."""
    network = network_for("bilstm")
    loop = DeviceLoop(network, "cpu", 256, 16, buckets=True, backend=backend())
    assert loop.sibling().planner == loop.planner
    ids = token_ids(130, MAX_LENS[0], 8)
    prepared = Planner(256, 16, MAX_LENS, True).prepare(ids, 0)
    np.testing.assert_array_equal(loop.host_embeddings(prepared, 0), loop.host_embeddings(ids, 0))
    expected = one_by_one(network, ids, 0)
    torch.testing.assert_close(loop.embeddings(prepared, 0), expected, rtol=1e-5, atol=1e-6)


def test_on_the_cpu_the_network_reads_the_prepared_ids_in_place() -> None:
    """Nothing is staged on the CPU: each device batch the network gets is a view of the
    call's prepared ids, and the loop holds no staging buffers."""
    network = network_for("hcnn")
    loop = DeviceLoop(network, "cpu", 64, 8)
    prepared = loop.prepare(token_ids(40, MAX_LENS[0], 9), 0)
    start = prepared.tokens.ctypes.data
    end = start + prepared.tokens.nbytes
    seen = []
    network.enc0.register_forward_pre_hook(lambda _, args: seen.append(args[0].data_ptr()))
    loop.embeddings(prepared, 0)
    assert loop.slots == [] and len(seen) == len(prepared.shapes) > 1
    assert all(start <= pointer < end for pointer in seen)
