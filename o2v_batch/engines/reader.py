"""The local engine's reader thread: shards to mini-batches, and those to the pieces
the workers share, handed to the engine through a bounded queue as messages, at most
a few ahead of the workers."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard import Meter, ShardTask, mini_batches, pieces
from o2v_batch.errors import ShardFailed
from o2v_batch.inputs.batching import MiniBatch
from o2v_batch.inputs.formats import Oversize


@dataclass(frozen=True, slots=True)
class Start:
    """The reader begins shard `idx`."""

    idx: int


@dataclass(frozen=True, slots=True)
class Item:
    """Part number `seq` of shard `idx`: a mini-batch, a piece of one, or an oversize
    record. The first piece of a mini-batch carries the (records, bytes) of the whole,
    which the summary counts as one mini-batch; `stored` is its share of the stored bytes
    read, done on the progress bar once it is written."""

    idx: int
    seq: int
    item: MiniBatch | Oversize
    counted: tuple[int, int] | None = None
    stored: int = 0


@dataclass(frozen=True, slots=True)
class End:
    """Shard `idx` has `total` parts in all; `stored` bytes were read after the last."""

    idx: int
    total: int
    stored: int = 0


@dataclass(frozen=True, slots=True)
class Unreadable:
    idx: int
    reason: str


DONE = None  # the reader has read every shard


class _Shares:
    """A shard's stored bytes, shared between its parts as the reader reads them, for the
    progress bar: a part takes the bytes it holds (its records and their line ends), at
    most those read and not yet taken (reads run ahead by a chunk; compressed bytes hold
    more); the shard's end takes the rest."""

    def __init__(self, meter: Meter) -> None:
        self._meter, self._read, self._left = meter, meter.nbytes, 0

    def take(self, holds: int) -> int:
        self._left += self._meter.nbytes - self._read
        self._read = self._meter.nbytes
        share = min(self._left, holds)
        self._left -= share
        return share

    def rest(self) -> int:
        return self.take(self._left + self._meter.nbytes - self._read)


class Reader:
    """Reads `tasks` on a thread of its own into `messages`: for each shard a Start, its
    parts (Item) and an End, or Unreadable where reading fails it, and DONE after the
    last shard. A shard in `failed` (the engine's, read here) is read no further, and
    nothing more is read once stopped."""

    def __init__(self, config: TransformConfig, tasks: list[ShardTask], failed: set[int]):
        self.config = config
        self.tasks = tasks
        self.failed = failed
        self.messages: queue.Queue = queue.Queue()  # bounded once the pool's size is known
        self.workers = 1  # that share each mini-batch's pieces
        self.meter = Meter()  # stored bytes read
        self._stop = threading.Event()
        # Per shard, the stored bytes of the shards after it; None when a size among them
        # is unknown (< 0, stdin).
        self._after: list[int | None] = []
        after: int | None = 0
        for task in reversed(tasks):
            self._after.append(after)
            size = task.shard.size
            after = None if after is None or size < 0 else after + size
        self._after.reverse()
        self._thread = threading.Thread(target=self._read, daemon=True)

    def start(self, maxsize: int, workers: int) -> None:
        """Reads at most `maxsize` messages ahead, into pieces for `workers`."""
        self.messages = queue.Queue(maxsize=maxsize)
        self.workers = workers
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _read(self) -> None:
        for idx, task in enumerate(self.tasks):
            if self._stop.is_set():
                break
            self._put(Start(idx))
            seq, shares, begun = 0, _Shares(self.meter), self.meter.nbytes
            try:
                for item in mini_batches(task, self.config, self.meter):
                    if idx in self.failed or self._stop.is_set():
                        break
                    if isinstance(item, Oversize):
                        self._put(Item(idx, seq, item, stored=shares.take(item.size)))
                        seq += 1
                        continue
                    counted = (len(item.records), item.nbytes)
                    left = self._left_after(idx, self.meter.nbytes - begun)
                    for piece in pieces(task, item, self.workers, left):
                        stored = shares.take(piece.nbytes + len(piece.records))
                        self._put(Item(idx, seq, piece, counted, stored))
                        seq, counted = seq + 1, None
            except ShardFailed as exc:
                self._put(Unreadable(idx, str(exc)))
                continue
            self._put(End(idx, seq, shares.rest()))
        self._put(DONE)

    def _left_after(self, idx: int, read: int) -> int | None:
        """Stored bytes of input still to read once shard `idx` has had `read` of its
        bytes read; None when a shard's size is unknown (stdin). Compressed shards count
        their stored bytes, fewer than their records': they look nearer the end."""
        size, after = self.tasks[idx].shard.size, self._after[idx]
        if size < 0 or after is None:
            return None
        return max(0, size - read) + after

    def _put(self, message: object) -> None:
        while not self._stop.is_set():
            try:
                self.messages.put(message, timeout=0.1)
                return
            except queue.Full:
                continue
