"""The device loop: an encoder's forward passes over TokenIds on one device.

A call's ids are cut into device batches and padded first (buckets.Planner: by the
loop itself, or on a GPU by the host worker that sends the call, on its own core). They
go to the network as int32 in a few fixed shapes (on a GPU, those of the bucket ladder),
staged in buffers that are allocated once per loop and reused by every call. On a GPU
the host buffers are pinned and the copy of the next device batch, the compute of this
one and the copy out of the last one overlap on two streams; only the end of a call
waits for the device. On the CPU the same loop runs with nothing to copy: the network
reads the prepared ids themselves.

The few stream, event and pinned-memory operations are a backend's, so that a test can
put a recording backend in and check the schedule on a machine without a GPU.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from o2v_batch.execution.buckets import Planner, Prepared
from o2v_batch.model.network import Object2Vec
from o2v_batch.model.tokens import TokenIds, device_batch_shape, device_kind

GPU_SLOTS = 3  # staging slots: one copied in, one computed, one being filled


class CpuBackend:
    """The CPU: the network reads a call's prepared ids themselves; nothing is staged,
    copied or run ahead."""

    separate = False  # host and device memory are one

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


# A device batch as the network takes it: (R, T) int32 ids and the rows they are, on
# the device, and R lengths on the host.
Staged = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class DeviceLoop:
    """Forward passes of one network's encoders on one device, over TokenIds (or calls
    already cut and padded as its planner does: Prepared); its staging buffers serve
    every call."""

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
        self.planner = Planner(
            budget if token_budget is None else token_budget,
            rows if max_rows is None else max_rows,
            (network.hp.encoder(0).max_seq_len, network.hp.encoder(1).max_seq_len),
            gpu if buckets is None else buckets,
        )
        self.backend = (
            backend if backend is not None else CudaBackend(self.device) if gpu else CpuBackend()
        )
        # On the CPU the network reads each call's prepared ids: there is nothing to stage.
        slots = self.backend.slots if self.backend.separate else 0
        self.slots = [
            _Slot(self.backend, self.planner.tokens, self.planner.max_rows) for _ in range(slots)
        ]
        self.host_out: torch.Tensor | None = None  # grown to the largest call, then reused
        self.lock = threading.Lock()  # one call at a time uses the buffers

    def sibling(self) -> DeviceLoop:
        """Another loop on the same network and device, cutting calls as this one does,
        with staging buffers of its own."""
        planner = self.planner
        return DeviceLoop(
            self.network,
            self.device,
            planner.token_budget,
            planner.max_rows,
            buckets=planner.buckets,
        )

    def prepare(self, ids: TokenIds | Prepared, encoder: int) -> Prepared:
        """`ids` cut into this loop's device batches and padded (as they are, if so)."""
        return ids if isinstance(ids, Prepared) else self.planner.prepare(ids, encoder)

    @torch.inference_mode()
    def embeddings(self, ids: TokenIds | Prepared, encoder: int) -> torch.Tensor:
        """(n, enc_dim) float32 embeddings by `encoder` on the device, in row order."""
        prepared = self.prepare(ids, encoder)
        width = self.network.hp.enc_dim
        out = torch.empty((len(prepared), width), dtype=torch.float32, device=self.device)
        with self.lock:
            self._run(prepared, encoder, out, None)
        return out

    @torch.inference_mode()
    def host_embeddings(self, ids: TokenIds | Prepared, encoder: int) -> np.ndarray:
        """The same embeddings as a float32 array in host memory."""
        if not self.backend.separate:
            return self.embeddings(ids, encoder).numpy()
        prepared = self.prepare(ids, encoder)
        out = np.empty((len(prepared), self.network.hp.enc_dim), np.float32)
        with self.lock:
            staged = self._host_out(len(prepared))  # rows in batch order
            self._run(prepared, encoder, None, staged)
            out[prepared.order] = staged.numpy()
        return out

    def _run(
        self,
        prepared: Prepared,
        encoder: int,
        out: torch.Tensor | None,
        staged: torch.Tensor | None,
    ) -> None:
        """Batch k computes between the copy in of batch k + 1 and the copy out of batch
        k - 1; rows go to `out` on the device, or, in batch order, to `staged` on the host.
        However it ends, nothing is left in flight and every slot is free again: a call
        that raised (the device out of memory) leaves the loop as usable as before."""
        batches = list(prepared.batches())
        slots = self.slots

        def slot(k: int) -> _Slot | None:
            return slots[k % len(slots)] if slots else None

        try:
            following = self._stage(batches[0], slot(0)) if batches else None
            pending = None  # the batch computed last: its output still to copy out
            done = 0
            for k in range(len(batches)):
                ready = following
                if k + 1 < len(batches):
                    following = self._stage(batches[k + 1], slot(k + 1))
                result = self._compute(slot(k), ready, encoder, out)
                if staged is not None:
                    if pending is not None:
                        self.backend.copy_out(*pending)
                    pending = staged[done : done + len(result)], result, slot(k).released
                done += len(result)
            if pending is not None:
                self.backend.copy_out(*pending)
        finally:
            self.backend.synchronize()  # a failed call's copies too
            for slot in self.slots:  # nothing in flight: none has anything to wait for
                slot.staged, slot.copied, slot.released = False, None, None

    def _stage(self, batch: tuple[np.ndarray, ...], slot: _Slot | None) -> Staged:
        """A batch as the network takes it. With separate device memory: its slot
        filled, once the slot's last batch is computed, and its copy to the device
        started. On the CPU: the prepared arrays themselves."""
        tokens, lengths, rows = batch
        if slot is None:
            return torch.from_numpy(tokens), torch.from_numpy(rows), torch.from_numpy(lengths)
        assert not slot.staged, "a slot is refilled before its batch was computed"
        self.backend.wait(slot.released)
        (R, T), B = tokens.shape, len(rows)
        host_tokens, host_rows, host_lengths = slot.views
        host_tokens[: R * T] = tokens.reshape(-1)
        host_rows[:B] = rows
        host_lengths[:R] = lengths
        slot.copied = self.backend.copy_in(
            [
                (slot.device_tokens[: R * T], slot.tokens[: R * T]),
                (slot.device_rows[:B], slot.rows[:B]),
            ]
        )
        slot.staged = True
        return slot.device_tokens[: R * T].view(R, T), slot.device_rows[:B], slot.lengths[:R]

    def _compute(
        self, slot: _Slot | None, staged: Staged, encoder: int, out: torch.Tensor | None
    ) -> torch.Tensor:
        """The batch's (B, enc_dim) float32 embeddings, once its copy is done; into `out`
        at its rows too, when given."""
        tokens, rows, lengths = staged
        if slot is not None:
            self.backend.compute_after(slot.copied)
        # Rows are left-aligned and no row is longer than T: encode need not look.
        result = self.network.encode(tokens, encoder, lengths)[: len(rows)].float()
        if out is not None:
            out.index_copy_(0, rows, result)
        if slot is not None:
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
