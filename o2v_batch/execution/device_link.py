"""A GPU's host workers and its device process. On a GPU host the pool's workers are
host workers: they read, check and encode mini-batches on every core and never import
torch; one device process per GPU (a pool worker that takes no mini-batches) runs the
forward passes of them all, in the order they come, two calls side by side (each
thread with a device loop of its own: one stages while the other computes).

A link is a socket pair between a host worker and its device process, made by the
parent (crew.py) when it starts the host worker, one end passed to each. Arrays travel
through two memory files of the host worker's (memfd, passed over the link once, so
none outlives the processes that map them): the host writes a call's device batches
into one, the device process its scores and embeddings into the other; the link
carries only where they are. The host worker cuts each call into the device's batches
and pads them (buckets.Planner: the device process sends its own over the link first),
so that the device process only stages and computes them. A host worker whose device
process is lost exits (DEVICE_LOST): the pool retries what it held on the host worker
that takes its place, linked to the device process that took the lost one's. Numpy
only: the device process's forward (forward.py) brings torch.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import queue
import threading
from collections.abc import Sequence
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

import numpy as np

from o2v_batch.artifacts import read_hyperparameters
from o2v_batch.errors import WorkerError, describe
from o2v_batch.execution import segments
from o2v_batch.execution.buckets import Planner, Prepared
from o2v_batch.execution.forward_work import Forward, Forwarded
from o2v_batch.execution.inference import Server
from o2v_batch.execution.protocol import (
    DEVICE_LOST,
    ForwardCall,
    ForwardDone,
    ForwardFailed,
    ServingOptions,
)

_PAGE = mmap.PAGESIZE
_ALIGN = 64  # each array starts on a cache line
# Threads of a device process running calls side by side (not measured on a GPU yet).
DEVICE_THREADS = 2


class ArrayFile:
    """Arrays in one memory file: one side puts them, the other gets them where the
    layout says. The file grows (doubling) to the largest call and is mapped again only
    then; a view already handed out keeps the old mapping alive."""

    def __init__(self, fd: int):
        self.fd = fd
        self._mapping: mmap.mmap | None = None

    def put(
        self, arrays: Sequence[np.ndarray | None], dtypes: Sequence[Any] | None = None
    ) -> list[tuple | None]:
        """Copies `arrays` in, each as its dtype in `dtypes` (default: its own); their
        layout: (offset, dtype, shape), None for None."""
        layout: list[tuple | None] = []
        end = 0
        for array, dtype in zip(arrays, dtypes or [None] * len(arrays), strict=True):
            if array is None:
                layout.append(None)
                continue
            dtype = np.dtype(dtype or array.dtype)
            layout.append((end, dtype.str, array.shape))
            end += -(-array.size * dtype.itemsize // _ALIGN) * _ALIGN
        size = os.fstat(self.fd).st_size
        if size < end:
            os.ftruncate(self.fd, -(-max(end, 2 * size) // _PAGE) * _PAGE)
        mapping = self._map(end)
        for array, where in zip(arrays, layout, strict=True):
            if where is not None and array.size:
                target = np.frombuffer(mapping, where[1], array.size, where[0])
                target[:] = array.reshape(-1)  # converted on the way where asked
        return layout

    def get(self, layout: Sequence[tuple | None]) -> list[np.ndarray | None]:
        """Views of the arrays `layout` names (valid until the file is put into again)."""
        ends = [w[0] + np.dtype(w[1]).itemsize * int(np.prod(w[2])) for w in layout if w]
        mapping = self._map(max(ends, default=0))
        out: list[np.ndarray | None] = []
        for where in layout:
            if where is None:
                out.append(None)
                continue
            offset, dtype, shape = where
            count = int(np.prod(shape))
            out.append(np.frombuffer(mapping, dtype, count, offset).reshape(shape))
        return out

    def close(self) -> None:
        """Closes the descriptor; the mapping goes once no view holds it."""
        os.close(self.fd)
        self._mapping = None

    def _map(self, needed: int) -> mmap.mmap | bytes:
        if needed == 0:
            return b""
        if self._mapping is None or len(self._mapping) < needed:
            self._mapping = mmap.mmap(self.fd, os.fstat(self.fd).st_size)
        return self._mapping


def _arrays(work: Forward) -> list[np.ndarray | None]:
    arrays: list[np.ndarray | None] = []
    for ids in work.ids:
        assert ids is None or isinstance(ids, Prepared), "a host worker prepares its calls"
        arrays += [None] * 4 if ids is None else [ids.tokens, ids.lengths, ids.order, ids.shapes]
    arrays += [None, None] if work.pairs is None else list(work.pairs)
    return arrays


def _work(arrays: list[np.ndarray | None], singles: tuple[bool, bool]) -> Forward:
    ids = [None if arrays[i] is None else Prepared(*arrays[i : i + 4]) for i in (0, 4)]
    pairs = None if arrays[8] is None else (arrays[8], arrays[9])
    return Forward(ids, pairs, singles)


class RemoteForward:
    """A host worker's forward: its device process's, over their link. The host cuts
    each call into the device's batches and pads them (the device process's planner,
    sent over the link), so that the device process only stages and computes them."""

    def __init__(self, model_dir: str, link: int):
        self.hp = read_hyperparameters(model_dir)
        self.link = Connection(link)
        self.fds = segments.create(2, "forward")
        self.ids, self.out = ArrayFile(self.fds[0]), ArrayFile(self.fds[1])
        self.planner: Planner | None = None  # the device's: it comes with the first call

    def __call__(self, work: Forward) -> Forwarded:
        try:
            if self.planner is None:
                for fd in self.fds:
                    send_handle(self.link, fd, 0)
                self.planner = self.link.recv()
            prepared = [
                None if ids is None else self.planner.prepare(ids, encoder)
                for encoder, ids in enumerate(work.ids)
            ]
            layout = self.ids.put(_arrays(Forward(prepared, work.pairs, work.singles)))
            self.link.send(ForwardCall(layout, work.singles))
            answer = self.link.recv()
        except (EOFError, OSError):
            os._exit(DEVICE_LOST)  # the pool retries this mini-batch elsewhere
        if isinstance(answer, ForwardFailed):
            raise WorkerError(answer.reason)
        scores, *embeddings = (None if a is None else a.copy() for a in self.out.get(answer.layout))
        return Forwarded(scores, embeddings)


def create_host_server(
    model_dir: str, device: str, options: ServingOptions, threads: int, link: int
) -> Server:
    """A host worker's factory (protocol.HOST_FACTORY): no torch; its forward passes run
    in the device process at the other end of `link`."""
    return Server(model_dir, device, options, RemoteForward(model_dir, link))


class DeviceServer:
    """The device process's side: every linked host worker's calls, in the order they
    came, each run by one of `forwards` (forward.LocalForward and its siblings, a thread
    each: while one thread stages a call's device batches, another's are computed)."""

    def __init__(self, forwards: list[Any]):
        self.hp = forwards[0].hp
        self.planner = forwards[0].planner  # the same for every forward (LocalForward.sibling)
        self.calls: queue.SimpleQueue = queue.SimpleQueue()
        for forward in forwards:
            threading.Thread(
                target=self._run, args=(forward,), name="o2v-device", daemon=True
            ).start()

    def attach(self, link: int) -> None:
        """A host worker's end of a new link (worker.py passes it on): the planner goes
        first, for the host worker to take with its first call."""
        connection = Connection(link)
        with contextlib.suppress(OSError):  # the host worker is gone: so is the link
            connection.send(self.planner)
        threading.Thread(target=self._receive, args=(connection,), daemon=True).start()

    def serve(self, positions, records, content_type, accept):
        raise WorkerError("a device process serves its host workers' forward passes only")

    def _receive(self, connection: Connection) -> None:
        link = _Link(connection)
        try:
            link.files += [ArrayFile(recv_handle(connection)), ArrayFile(recv_handle(connection))]
            while True:
                self.calls.put((link, connection.recv()))
        except (EOFError, OSError):  # the host worker is gone: so is the link
            pass
        link.close()

    def _run(self, forward: Any) -> None:
        while True:
            link, call = self.calls.get()
            with link.lock:
                if link.closed:  # its host worker is gone: nobody waits for the answer
                    continue
                ids, out = link.files
                try:
                    done = forward(_work(ids.get(call.layout), call.singles))
                    answer: ForwardDone | ForwardFailed = ForwardDone(
                        out.put([done.scores, *done.embeddings])
                    )
                except Exception as exc:  # this call's alone: its host fails its mini-batch
                    answer = ForwardFailed(describe(exc))
                with contextlib.suppress(OSError):  # the host worker is gone
                    link.connection.send(answer)


class _Link:
    """A device process's end of one host worker's link and its memory files. Closed
    (files and socket) once the host worker is gone, never while a call uses them: a
    descriptor number closed could be another link's soon."""

    def __init__(self, connection: Connection):
        self.connection = connection
        self.files: list[ArrayFile] = []
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        with self.lock:
            self.closed = True
            for file in self.files:
                file.close()
            self.connection.close()
