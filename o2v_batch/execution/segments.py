"""Shared memory between the parent and its workers. The parent writes a
mini-batch's lines into one of the chosen worker's request segments (one per
mini-batch it may hold, free again once answered); the worker writes the encoded
responses into one of its response segments and sends only where they are; the
parent writes them to the output straight from there, then hands the segment back.
Only small descriptors go through the pipes.

Segments are anonymous memory files (memfd_create), created by the parent and
passed to the worker over its socket: no name exists anywhere, so none outlives the
processes that map it, whatever kills them (SIGKILL included). Where the system has
no memory files, responses travel through the pipes as before.

A worker holds few segments (credits): with none free it sends a response through
its pipe, so a slow writer never stops it for good. Nothing here imports torch.
"""

from __future__ import annotations

import mmap
import os
import queue
from collections.abc import Callable
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle

from o2v_batch.execution.protocol import (
    Placed,
    Release,
    ServeRequest,
    SharedLines,
    WriteAt,
    Wrote,
)
from o2v_batch.inputs.formats import Lines
from o2v_batch.io.local import write_at

# Responses smaller than this go through the pipe: a descriptor would save little.
MIN_SHARED_BYTES = 64 * 1024
_PAGE = mmap.PAGESIZE

SUPPORTED = hasattr(os, "memfd_create")
# The most buffers one gathering write takes.
_IOV_MAX = os.sysconf("SC_IOV_MAX") if SUPPORTED else 0


def create(count: int, kind: str = "response") -> list[int]:
    """`count` empty memory files (their descriptors); writing sizes them."""
    return [os.memfd_create(f"o2v-batch-{kind}-{i}") for i in range(count)]


def read_lines(fds: list[int], lines: SharedLines) -> Lines:
    """The worker's side of a request's records."""
    return Lines(os.pread(fds[lines.slot], lines.length, 0), lines.count)


def send(conn: Connection, fds: list[int], pid: int) -> None:
    """Passes the descriptors to the worker at the other end (after its WorkerSpec)."""
    for fd in fds:
        send_handle(conn, fd, pid)


def receive(conn: Connection, count: int) -> list[int]:
    return [recv_handle(conn) for _ in range(count)]


def close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


class Responses:
    """A worker's side: puts responses in its free segments."""

    def __init__(self, fds: list[int]):
        self._fds = fds
        self._maps: list[mmap.mmap | None] = [None] * len(fds)
        # The segment freed last is used first: a worker then maps and faults in only as
        # many segments as its responses need at once, where taking them in turn grew
        # every one to the largest response, each page faulted in once per segment.
        self._free: queue.LifoQueue[int] = queue.LifoQueue()
        for slot in reversed(range(len(fds))):
            self._free.put(slot)

    def release(self, slot: int) -> None:
        """The parent's Release: any thread may call it."""
        self._free.put(slot)

    def place(self, payload: bytes) -> Placed | None:
        """Copies `payload` into a free segment; None when it is small or none is free
        (the payload then goes through the pipe)."""
        if len(payload) < MIN_SHARED_BYTES:
            return None
        try:
            slot = self._free.get_nowait()
        except queue.Empty:
            return None
        fd, mapping = self._fds[slot], self._maps[slot]
        size = os.fstat(fd).st_size
        if size < len(payload):
            # Doubling: a segment is resized a few times in a job, not per mini-batch.
            size = -(-max(len(payload), 2 * size) // _PAGE) * _PAGE
            os.ftruncate(fd, size)
        if mapping is None or len(mapping) < len(payload):
            mapping = self._maps[slot] = mmap.mmap(fd, size)
        mapping[: len(payload)] = payload
        return Placed(slot, len(payload))

    def write(self, request: WriteAt) -> Wrote:
        """Writes a placed response into an output, freeing its segment."""
        with memoryview(self._maps[request.slot]) as view:
            error = write_at(request.path, request.offset, view[: request.length])
        self._free.put(request.slot)
        return Wrote(request.slot, error)


class SharedPayload:
    """The parent's view of a response in a worker's segment. `release()` (or the
    object's end, whatever path drops it) hands the segment back; the view must not
    be kept past it. `write_elsewhere` has the worker write it into an output instead,
    which frees the segment there."""

    __slots__ = ("_mapping", "_notify", "slot", "view")

    def __init__(self, mapping: mmap.mmap, length: int, slot: int, notify: Callable):
        self._mapping = mapping
        self.view = memoryview(mapping)[:length]
        self.slot = slot
        self._notify = notify  # takes a Release or a RemoteWrite, from any thread

    def __len__(self) -> int:
        return len(self.view)

    def release(self) -> None:
        """Hands the segment back, unless a view of it is still held elsewhere (a
        zero-copy array of it): then the segment stays out of use, never overwritten."""
        notify, self._notify = self._notify, None
        if notify is not None and self.close():
            notify(Release(self.slot))

    def write_elsewhere(self, path: str, offset: int, done: Callable[[str | None], None]) -> None:
        """The worker writes the response at `offset` of the local file `path` (an
        output's region), then `done` gets None or the reason it could not."""
        notify, self._notify = self._notify, None
        notify(RemoteWrite(self, path, offset, done))

    def close(self) -> bool:
        """Lets go of the mapping; False while something else still views it."""
        self.view.release()
        try:
            self._mapping.close()
        except BufferError:
            return False  # the worker goes on with its other segments or its pipe
        return True

    def __del__(self) -> None:
        self.release()


@dataclass(slots=True)
class RemoteWrite:
    """A response the worker holding it writes into an output region itself."""

    payload: SharedPayload
    path: str
    offset: int
    done: Callable[[str | None], None]

    def request(self) -> WriteAt:
        return WriteAt(self.payload.slot, self.path, self.offset, len(self.payload))

    def here(self) -> None:
        """The parent writes it (its worker was lost): the mapping outlives the worker."""
        error = write_at(self.path, self.offset, self.payload.view)
        self.finished(error)

    def finished(self, error: str | None) -> None:
        self.payload.close()
        self.done(error)


class Views:
    """The parent's side of one worker's segments: each response is mapped on its own,
    so that its release can tell whether anything still views it."""

    def __init__(self, fds: list[int]):
        self.fds = fds

    def payload(self, placed: Placed, notify: Callable) -> SharedPayload:
        mapping = mmap.mmap(self.fds[placed.slot], placed.length, prot=mmap.PROT_READ)
        return SharedPayload(mapping, placed.length, placed.slot, notify)

    def close(self) -> None:
        """Closes the descriptors; responses still held stay readable until released."""
        close(self.fds)
        self.fds = []


class WorkerSegments:
    """The parent's side of all one worker's segments: a request segment per
    mini-batch it may hold (those no mini-batch is in are free), its response
    segments, and the responses it was asked to write itself, by slot."""

    def __init__(self, requests: int, responses: int):
        self.requests: list[int] = []
        self.free: list[int] = []
        self.views: Views | None = None
        self.writing: dict[int, RemoteWrite] = {}
        if requests:
            self.requests, self.free = create(requests, "request"), list(range(requests))
            self.views = Views(create(responses))

    @property
    def fds(self) -> list[int]:
        """Every descriptor, in the order the worker receives them: requests first."""
        return [*self.requests, *(self.views.fds if self.views else [])]

    def request(self, request: ServeRequest) -> tuple[ServeRequest, int | None]:
        """The request as the worker gets it, and the request segment its lines are in:
        large lines go in a free one."""
        records = request.records
        if not (self.free and isinstance(records, Lines)):
            return request, None
        size = records.size
        if size < MIN_SHARED_BYTES:
            return request, None
        slot = self.free.pop()
        try:
            # The lines' runs as they are, newlines between them: one gathering write.
            pieces = records.pieces if len(records.pieces) < _IOV_MAX // 2 else [records.data]
            buffers = [b"\n"] * (2 * len(pieces) - 1)
            buffers[::2] = pieces
            wrote = os.pwritev(self.requests[slot], buffers, 0)
        except OSError:  # short of memory: the pipe it is (the worker is fine)
            wrote = -1
        if wrote != size:  # failed, or wrote part: the segment holds no whole request
            self.free.append(slot)
            return request, None
        shared = SharedLines(slot, size, records.count)
        return replace(request, records=shared), slot

    def pass_on(self, message: Release | RemoteWrite) -> Release | WriteAt:
        """What to tell the worker of what a caller did with one of its responses."""
        if isinstance(message, RemoteWrite):
            self.writing[message.payload.slot] = message
            return message.request()
        return message

    def wrote(self, message: Wrote) -> None:
        """The worker wrote a response it was asked to."""
        self.writing.pop(message.slot).finished(message.error)

    def write_here(self) -> None:
        """What a lost worker was asked to write, the parent writes."""
        for write in self.writing.values():
            write.here()
        self.writing.clear()

    def close(self) -> None:
        close(self.requests)
        self.requests, self.free = [], []
        if self.views is not None:
            self.views.close()
