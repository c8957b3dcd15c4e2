"""The local engine: a reader thread turns shards into mini-batches, a pool of
worker processes serves them, and a writer thread writes each shard's output in
input order and commits it atomically once complete."""

from __future__ import annotations

import itertools
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard import (
    Meter,
    ShardTask,
    mini_batches,
    oversize,
    pieces,
    served,
    serving_options,
    total_bytes,
)
from o2v_batch.engines.writer import Committed, WriterThread
from o2v_batch.errors import ShardFailed
from o2v_batch.execution.main_module import check_main_module
from o2v_batch.execution.planning import plan_workers
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import Done, WorkerSpec
from o2v_batch.execution.recovery import Recovery
from o2v_batch.execution.worker import Spares, server_factory
from o2v_batch.inputs.batching import MiniBatch
from o2v_batch.inputs.formats import Oversize, where
from o2v_batch.model.devices import parse_devices
from o2v_batch.reporting.report import Faults, Progress, batch_failure, recovered, shard_failed


@dataclass(frozen=True, slots=True)
class _Start:
    """The reader begins shard `idx`."""

    idx: int


@dataclass(frozen=True, slots=True)
class _Item:
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
class _End:
    """Shard `idx` has `total` parts in all; `stored` bytes were read after the last."""

    idx: int
    total: int
    stored: int = 0


@dataclass(frozen=True, slots=True)
class _Unreadable:
    idx: int
    reason: str


_DONE = None  # the reader has read every shard


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


def check(config: TransformConfig) -> None:
    """Workers can start from the calling program (TransformConfig checks the options)."""
    check_main_module()


def prestart(config: TransformConfig) -> Spares:
    """The job's worker processes, started before the model is checked and the inputs
    listed: their torch import (most of a second) overlaps both."""
    return Spares(server_factory(), len(_plan(config)))


def _plan(config: TransformConfig) -> list[tuple[str, int]]:
    return plan_workers(parse_devices(config.devices), config.workers)


def run(
    config: TransformConfig,
    tasks: list[ShardTask],
    model_dir: str,
    log: Callable[[str], None],
    faults: Faults,
    spares: Spares | None = None,
) -> None:
    """Serves every shard with the model in `model_dir`, counting restarts and retries;
    the pool's workers come from `spares` first."""
    _Run(config, tasks, model_dir, log, faults).run(spares)


class _Run:
    def __init__(
        self,
        config: TransformConfig,
        tasks: list[ShardTask],
        model_dir: str,
        log: Callable[[str], None],
        faults: Faults,
    ):
        self.config = config
        self.tasks = tasks
        self.model_dir = model_dir
        self.log = log
        self.faults = faults
        self.in_flight: dict[int, tuple[int, int, MiniBatch]] = {}  # task id -> idx, seq, batch
        self.failed: set[int] = set()
        self.stop = threading.Event()
        self.items: queue.Queue = queue.Queue()  # bounded once the pool's size is known
        self.writer: WriterThread  # sized to the pool too
        self.task_ids = itertools.count()
        self.workers = 1
        self.progress = Progress(config.progress, total_bytes(tasks))
        self.meter = Meter()  # stored bytes the reader has read
        self.unwritten: dict[int, int] = {}  # task id -> stored bytes of its part
        self.ends: dict[int, int] = {}  # shard -> its stored bytes after its last part
        self.done = (0, 0)  # stored bytes and records written (or failed), for the bar

    def run(self, spares: Spares | None) -> None:
        reader = threading.Thread(target=self._read, daemon=True)
        try:
            io.discard_partial([t.report.output for t in self.tasks])
            specs = self._specs()
            self.workers = len(specs)  # that share each mini-batch's pieces
            with WorkerPool(
                specs,
                self.config.max_concurrent_transforms,
                self.config.max_retries,
                self.config.invocation_timeout,
                on_recovery=self._recovered,
                spares=spares,
                # Mini-batches and their responses travel through shared memory.
                shared_memory=True,
            ) as pool:
                # Bounded by the workers' capacity: memory stays flat whatever the input size.
                self.items = queue.Queue(maxsize=pool.capacity + 2)
                # Interrupted or broken, the writer aborts whatever is half written, and
                # --resume redoes it; stdout shows shards in input order.
                with WriterThread(pool.capacity, self.config.output == io.STDIO) as self.writer:
                    reader.start()
                    self._loop(pool)
                    # Workers write responses into outputs: the pool passes on their answers.
                    self.writer.finish(lambda: pool.poll(0.01))
                    self._outcomes()
        finally:
            self.stop.set()
            self.progress.close()

    def _specs(self) -> list[WorkerSpec]:
        config = self.config
        options = serving_options(config)
        return [
            WorkerSpec(
                self.model_dir,
                device,
                threads,
                options,
                server_factory(),
                pipelined=config.pipelined,
            )
            for device, threads in _plan(config)
        ]

    def _loop(self, pool: WorkerPool) -> None:
        reading = True
        while reading or pool.in_flight():
            while reading and pool.has_room():
                try:
                    message = self.items.get(timeout=0.05 if pool.in_flight() else 1.0)
                except queue.Empty:
                    break
                reading = self._take(message, pool)
            for event in pool.poll(0.01 if reading and pool.has_room() else 0.5):
                self._result(event)
            self._outcomes()

    # -- the reader thread ------------------------------------------------

    def _read(self) -> None:
        """Shards to mini-batches, and those to the pieces the workers share, at most a
        few ahead of the workers."""
        for idx, task in enumerate(self.tasks):
            if self.stop.is_set():
                break
            self._put(_Start(idx))
            seq, shares = 0, _Shares(self.meter)
            try:
                for item in mini_batches(task, self.config, self.meter):
                    if idx in self.failed or self.stop.is_set():
                        break
                    if isinstance(item, Oversize):
                        self._put(_Item(idx, seq, item, stored=shares.take(item.size)))
                        seq += 1
                        continue
                    counted = (len(item.records), item.nbytes)
                    for piece in pieces(task, item, self.workers):
                        stored = shares.take(piece.nbytes + len(piece.records))
                        self._put(_Item(idx, seq, piece, counted, stored))
                        seq, counted = seq + 1, None
            except ShardFailed as exc:
                self._put(_Unreadable(idx, str(exc)))
                continue
            self._put(_End(idx, seq, shares.rest()))
        self._put(_DONE)

    def _put(self, message: object) -> None:
        while not self.stop.is_set():
            try:
                self.items.put(message, timeout=0.1)
                return
            except queue.Full:
                continue

    # -- the parent's loop ------------------------------------------------

    def _take(self, message: object, pool: WorkerPool) -> bool:
        """Acts on one message of the reader; False once it has read everything."""
        if message is _DONE:
            return False
        idx = message.idx
        if idx in self.failed:
            return True
        task = self.tasks[idx]
        if isinstance(message, _Start):
            self.writer.open(idx, task.report.output, task.accept)
        elif isinstance(message, _Item):
            self._submit(message, pool)
        elif isinstance(message, _End):
            self.ends[idx] = message.stored  # done once the shard is committed
            self.writer.end(idx, message.total)
        else:
            self._fail(idx, message.reason)
        return True

    def _submit(self, message: _Item, pool: WorkerPool) -> None:
        idx, seq, item = message.idx, message.seq, message.item
        task = self.tasks[idx]
        if isinstance(item, Oversize):
            self._done(message.stored, 1)
            try:
                self.writer.add(idx, seq, oversize(task, item, self.config), 0)
            except ShardFailed as exc:
                self.writer.fail(idx, seq, str(exc))
            return
        task_id = next(self.task_ids)
        self.in_flight[task_id] = (idx, seq, item)
        self.unwritten[task_id] = message.stored
        if message.counted is not None:
            task.report.count_batch(*message.counted)
        pool.submit(task_id, item.positions, item.records, task.content_type, task.accept)

    def _done(self, stored: int, records: int) -> None:
        """A part is written, or has failed its shard: the bar shows it done."""
        self.done = (self.done[0] + stored, self.done[1] + records)
        self.progress.show(*self.done)

    def _result(self, event) -> None:
        idx, seq, batch = self.in_flight.pop(event.task_id)
        stored = self.unwritten.pop(event.task_id)
        if idx in self.failed:
            return
        task = self.tasks[idx]
        if not isinstance(event, Done):
            reason = batch_failure(batch.positions[0], task.content_type, event.reason)
            self._fail(idx, f"{io.shown(task.report.shard)}: {reason}")
            return
        try:
            payload, predictions = served(task, event.result, batch)
        except ShardFailed as exc:
            self.writer.fail(idx, seq, str(exc))
        else:
            self.writer.add(idx, seq, payload, predictions)
        self._done(stored, len(batch.records))

    def _recovered(self, event: Recovery) -> None:
        """One line on stderr per worker restarted or mini-batch tried again."""
        self.faults.worker_restarts += event.restarted
        retry = None
        if event.task_id is not None:
            self.faults.mini_batch_retries += 1
            idx, _, batch = self.in_flight[event.task_id]
            task = self.tasks[idx]
            retry = (
                f"retrying the mini-batch from {io.shown(task.report.shard)}: "
                f"{where(batch.positions[0], task.content_type)} "
                f"(attempt {event.attempt} of {self.config.max_retries + 1})"
            )
        self.log(recovered(event.reason, event.restarted, retry))

    # -- shard completion -------------------------------------------------

    def _outcomes(self) -> None:
        """Shards the writer committed or failed."""
        for outcome in self.writer.outcomes():
            if isinstance(outcome, Committed):
                report = self.tasks[outcome.idx].report
                report.status, report.records_out = "ok", outcome.records
                self._done(self.ends.pop(outcome.idx, 0), 0)
            else:
                self._mark_failed(outcome.idx, outcome.reason)

    def _fail(self, idx: int, reason: str) -> None:
        self._mark_failed(idx, reason)
        self.writer.abort(idx)

    def _mark_failed(self, idx: int, reason: str) -> None:
        if idx in self.failed:
            return
        self.failed.add(idx)
        report = self.tasks[idx].report
        report.status, report.reason = "failed", reason
        self.log(shard_failed(reason))
