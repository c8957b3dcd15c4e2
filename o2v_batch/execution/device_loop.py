"""The device loop: an encoder's forward passes over TokenIds on one device.

Token ids go to the network as int32 in a few fixed shapes (on a GPU, those of the bucket
ladder of buckets.py), staged in buffers that are allocated once per loop and reused by
every call. On a GPU the host buffers are pinned
and the copy of the next device batch, the compute of this one and the copy out of the
last one overlap on two streams; only the end of a call waits for the device. On the CPU
the same loop runs with nothing to copy: the network reads the staging buffers.

The few stream, event and pinned-memory operations are a backend's, so that a test can
put a recording backend in and check the schedule on a machine without a GPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from o2v_batch.execution.buckets import Batch, bucket_batches, bucket_lengths
from o2v_batch.model.network import Object2Vec
from o2v_batch.model.tokens import TokenIds, device_batch_shape, device_kind

GPU_SLOTS = 3  # staging slots: one copied in, one computed, one being filled


class CpuBackend:
    """The CPU: the network reads the host buffers themselves, and nothing runs ahead."""

    slots = 2  # the next batch is staged before this one is computed
    separate = False  # host and device memory are one: nothing is copied out

    def buffers(self, size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """A host buffer and the device buffer it is copied to (here the same one)."""
        buffer = self.host(size, dtype)
        return buffer, buffer

    def host(self, size: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(size, dtype=dtype)

    def copy_in(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> Any:
        return None

    def compute_after(self, event: Any) -> None: ...

    def computed(self) -> Any:
        return None

    def wait(self, event: Any) -> None: ...

    def synchronize(self) -> None: ...


class CudaBackend:
    """A GPU: pinned host buffers, copies on their own stream, events between the streams."""

    slots = GPU_SLOTS
    separate = True

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.copies = torch.cuda.Stream(device)

    def buffers(self, size: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        return self.host(size, dtype), torch.empty(size, dtype=dtype, device=self.device)

    def host(self, size: int, dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(size, dtype=dtype, pin_memory=True)

    def copy_in(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.cuda.Event:
        with torch.cuda.stream(self.copies):
            for dst, src in pairs:
                dst.copy_(src, non_blocking=True)
        return self._record(self.copies)

    def compute_after(self, event: torch.cuda.Event) -> None:
        torch.cuda.current_stream(self.device).wait_event(event)

    def computed(self) -> torch.cuda.Event:
        return self._record(torch.cuda.current_stream(self.device))

    def copy_out(self, dst: torch.Tensor, src: torch.Tensor, after: torch.cuda.Event) -> None:
        self.copies.wait_event(after)
        src.record_stream(self.copies)  # its memory is not reused before this copy ends
        with torch.cuda.stream(self.copies):
            dst.copy_(src, non_blocking=True)

    def wait(self, event: torch.cuda.Event | None) -> None:
        if event is not None:
            event.synchronize()

    def synchronize(self) -> None:
        self.copies.synchronize()
        torch.cuda.current_stream(self.device).synchronize()

    @staticmethod
    def _record(stream: torch.cuda.Stream) -> torch.cuda.Event:
        event = torch.cuda.Event()
        event.record(stream)
        return event


class _Slot:
    """One set of staging buffers: a device batch's ids (int32, flat, viewed as any
    shape that fits), its row numbers and lengths; and where its batch is."""

    def __init__(self, backend: Any, tokens: int, rows: int) -> None:
        self.tokens, self.device_tokens = backend.buffers(tokens, torch.int32)
        self.rows, self.device_rows = backend.buffers(rows, torch.int64)
        self.lengths = backend.host(rows, torch.int64)  # encode takes lengths on the host
        self.views = self.tokens.numpy(), self.rows.numpy(), self.lengths.numpy()
        self.copied: Any = None  # event: the ids are on the device
        self.released: Any = None  # event: the last batch staged here is computed
        self.staged = False  # holds a batch not computed yet


class DeviceLoop:
    """Forward passes of one network's encoders on one device, over TokenIds; its staging
    buffers serve every call."""

    def __init__(
        self,
        network: Object2Vec,
        device: torch.device | str,
        token_budget: int | None = None,
        max_rows: int | None = None,
        *,
        buckets: bool | None = None,
        backend: Any = None,
    ) -> None:
        """Device batches of `token_budget` tokens and `max_rows` rows (by default
        tokens.device_batch_shape's); shapes from the bucket ladder when `buckets`
        (by default on a GPU only: on the CPU each batch is as long as its longest row)."""
        self.network = network
        self.device = torch.device(device)
        gpu = device_kind(self.device) == "cuda"
        budget, rows = device_batch_shape(network.hp, self.device)
        self.token_budget = budget if token_budget is None else token_budget
        self.max_rows = rows if max_rows is None else max_rows
        self.backend = (
            backend if backend is not None else CudaBackend(self.device) if gpu else CpuBackend()
        )
        self.max_lens = [network.hp.encoder(i).max_seq_len for i in (0, 1)]
        use_buckets = gpu if buckets is None else buckets
        self.ladders = [bucket_lengths(m) for m in self.max_lens] if use_buckets else None
        # No cut gives a batch more tokens: max_rows rows or the budget, at least one row.
        longest = max(self.max_lens)
        tokens = max(min(self.token_budget, self.max_rows * longest), longest)
        self.slots = [_Slot(self.backend, tokens, self.max_rows) for _ in range(self.backend.slots)]
        self.host_out: torch.Tensor | None = None  # grown to the largest call, then reused
        self.lock = threading.Lock()  # one call at a time uses the buffers

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

    @torch.inference_mode()
    def embeddings(self, ids: TokenIds, encoder: int) -> torch.Tensor:
        """(n, enc_dim) float32 embeddings by `encoder` on the device, in row order."""
        width = self.network.hp.enc_dim
        out = torch.empty((len(ids), width), dtype=torch.float32, device=self.device)
        with self.lock:
            self._run(ids, encoder, self.plan(ids, encoder), out, None)
        return out

    @torch.inference_mode()
    def host_embeddings(self, ids: TokenIds, encoder: int) -> np.ndarray:
        """The same embeddings as a float32 array in host memory."""
        if not self.backend.separate:
            return self.embeddings(ids, encoder).numpy()
        batches = self.plan(ids, encoder)
        out = np.empty((len(ids), self.network.hp.enc_dim), np.float32)
        with self.lock:
            staged = self._host_out(len(ids))  # rows in batch order
            order = self._run(ids, encoder, batches, None, staged)
            out[order] = staged.numpy()
        return out

    def _run(
        self,
        ids: TokenIds,
        encoder: int,
        batches: list[Batch],
        out: torch.Tensor | None,
        staged: torch.Tensor | None,
    ) -> np.ndarray:
        """Batch k computes between the copy in of batch k + 1 and the copy out of batch
        k - 1; rows go to `out` on the device, or, in batch order, to `staged` on the host.
        However it ends, nothing is left in flight and every slot is free again: a call
        that raised (the device out of memory) leaves the loop as usable as before.
        Returns the rows in batch order."""
        # The rows in batch order, their ids gathered once: each batch is a run of them.
        order = np.concatenate([batch.rows for batch in batches]) if batches else ids.lengths[:0]
        try:
            slots = self.slots
            if batches:
                ids = ids.reordered(order)
                self._stage(ids, 0, batches[0], slots[0])
            pending = None  # the batch computed last: its output still to copy out
            done = 0
            for k, batch in enumerate(batches):
                if k + 1 < len(batches):
                    first = done + len(batch.rows)
                    self._stage(ids, first, batches[k + 1], slots[(k + 1) % len(slots)])
                slot = slots[k % len(slots)]
                result = self._compute(slot, batch, encoder, out)
                if staged is not None:
                    if pending is not None:
                        self.backend.copy_out(*pending)
                    pending = staged[done : done + len(batch.rows)], result, slot.released
                done += len(batch.rows)
            if pending is not None:
                self.backend.copy_out(*pending)
        finally:
            self.backend.synchronize()  # a failed call's copies too
            for slot in self.slots:  # nothing in flight: none has anything to wait for
                slot.staged, slot.copied, slot.released = False, None, None
        return order

    def _stage(self, ids: TokenIds, first: int, batch: Batch, slot: _Slot) -> None:
        """Fill a slot with a batch, rows `first`.. of `ids` (the call's rows in batch
        order), and start its copy to the device, once the slot's last batch is computed."""
        assert not slot.staged, "a slot is refilled before its batch was computed"
        self.backend.wait(slot.released)
        (R, T), B = batch.shape, len(batch.rows)
        tokens, rows, lengths = slot.views
        ids.fill_run(first, first + B, tokens[: R * T].reshape(R, T))
        rows[:B] = batch.rows
        lengths[:B] = ids.lengths[first : first + B]
        lengths[B:R] = 0
        slot.copied = self.backend.copy_in(
            [
                (slot.device_tokens[: R * T], slot.tokens[: R * T]),
                (slot.device_rows[:B], slot.rows[:B]),
            ]
        )
        slot.staged = True

    def _compute(
        self, slot: _Slot, batch: Batch, encoder: int, out: torch.Tensor | None
    ) -> torch.Tensor:
        """The batch's (B, enc_dim) float32 embeddings, once its copy is done; into `out`
        at its rows too, when given."""
        (R, T), B = batch.shape, len(batch.rows)
        self.backend.compute_after(slot.copied)
        tokens = slot.device_tokens[: R * T].view(R, T)
        # Rows are left-aligned and no row is longer than T: encode need not look.
        result = self.network.encode(tokens, encoder, slot.lengths[:R])[:B].float()
        if out is not None:
            out.index_copy_(0, slot.device_rows[:B], result)
        slot.released = self.backend.computed()
        slot.staged = False
        return result

    def _host_out(self, n: int) -> torch.Tensor:
        """(n, enc_dim) float32 host memory for copies out, from one buffer that grows to
        a power of two rows."""
        width = self.network.hp.enc_dim
        if self.host_out is None or len(self.host_out) < n:
            rows = 1 << max(n - 1, 0).bit_length()
            self.host_out = self.backend.host(rows * width, torch.float32).view(rows, width)
        return self.host_out[:n]
