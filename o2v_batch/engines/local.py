"""The local engine: a reader thread turns shards into mini-batches, a pool of
worker processes serves them, and a writer thread writes each shard's output in
input order and commits it atomically once complete."""

from __future__ import annotations

import itertools
import queue
from collections.abc import Callable

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.engines.reader import DONE, End, Item, Reader, Start
from o2v_batch.engines.shard import (
    ShardTask,
    oversize,
    record_bytes,
    served,
    serving_options,
    total_bytes,
)
from o2v_batch.engines.writer import CommitGate, Committed, Failed, WriterThread
from o2v_batch.errors import ShardFailed
from o2v_batch.execution.main_module import check_main_module
from o2v_batch.execution.planning import plan_workers
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import Done, WorkerSpec
from o2v_batch.execution.recovery import Recovery
from o2v_batch.execution.worker import Spares, server_factory, splitting
from o2v_batch.inputs.batching import MiniBatch
from o2v_batch.inputs.formats import Oversize, where
from o2v_batch.model.devices import parse_devices
from o2v_batch.reporting.messages import batch_failure, recovered, shard_failed
from o2v_batch.reporting.progress import Progress
from o2v_batch.reporting.report import Faults


def check(config: TransformConfig) -> None:
    """Workers can start from the calling program (TransformConfig checks the options)."""
    check_main_module()


def prestart(config: TransformConfig) -> Spares:
    """The job's worker processes, started before the model is checked and the inputs
    listed: their torch import (most of a second) overlaps both. Once the inputs are
    listed, a small job takes fewer (planning.MIN_BYTES_PER_WORKER)."""
    return Spares([server_factory(role=role) for role, _, _ in _plan(config)])


def _plan(config: TransformConfig, input_bytes: int | None = None) -> list[tuple[str, str, int]]:
    devices = parse_devices(config.devices)
    return plan_workers(devices, config.workers, split=splitting(), input_bytes=input_bytes)


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
    """One job's shards served on this machine: messages from the reader submitted to
    the pool, results handed to the writer, the writer's outcomes in the reports."""

    def __init__(
        self,
        config: TransformConfig,
        tasks: list[ShardTask],
        model_dir: str,
        log: Callable[[str], None],
        faults: Faults,
        gate: CommitGate | None = None,
    ):
        self.config = config
        self.tasks = tasks
        self.gate = gate  # a Ray actor's: its driver may stop the commits
        self.model_dir = model_dir
        self.log = log
        self.faults = faults
        self.in_flight: dict[int, tuple[int, int, MiniBatch]] = {}  # task id -> idx, seq, batch
        self.shards = _Shards(tasks, log, Progress(config.progress, total_bytes(tasks)))
        self.reader = Reader(config, tasks, self.shards.failed)
        self.writer: WriterThread  # sized to the pool, made in run
        self.task_ids = itertools.count()
        self.unwritten: dict[int, int] = {}  # task id -> stored bytes of its part

    def run(self, spares: Spares | None) -> None:
        plan = _plan(self.config, record_bytes(self.tasks))
        specs = _specs(self.config, self.model_dir, plan)
        try:
            with _pool(self.config, specs, self._recovered, spares) as pool:
                if spares is not None:
                    spares.close()  # those a small job does not take stop now
                self.serve(pool)
        finally:
            self.reader.stop()  # once more: the pool may not have started
            self.shards.progress.close()

    def serve(self, pool: WorkerPool) -> None:
        """Serves the shards on `pool`'s workers, started already (by run, or a Node's)."""
        try:
            # Interrupted or broken, the writer aborts whatever is half written, and
            # --resume redoes it; stdout shows shards in input order.
            self.writer = WriterThread(pool.capacity, self.config.output == io.STDIO, self.gate)
            try:
                with self.writer:
                    # Bounded by the workers' capacity: memory stays flat whatever the
                    # input size; the workers share each mini-batch's pieces.
                    self.reader.start(pool.capacity + 2, pool.takers)
                    self._loop(pool)
                    # Workers write responses into outputs: the pool passes on their
                    # answers.
                    self.writer.finish(lambda: pool.poll(0.01))
                    self.shards.outcomes(self.writer.outcomes())
            finally:
                # A shard the writer committed as the job stopped (SIGTERM, Ctrl-C):
                # its output exists, so its report says so, for the progress
                # --resume reads.
                self.shards.outcomes(self.writer.outcomes(errors=False))
        finally:
            self.reader.stop()
            self.shards.progress.close()

    def _loop(self, pool: WorkerPool) -> None:
        reading = True
        while reading or pool.in_flight():
            while reading and pool.has_room():
                try:
                    timeout = 0.05 if pool.in_flight() else 1.0
                    message = self.reader.messages.get(timeout=timeout)
                except queue.Empty:
                    break
                reading = self._take(message, pool)
            for event in pool.poll(0.01 if reading and pool.has_room() else 0.5):
                self._result(event)
            self.shards.outcomes(self.writer.outcomes())

    def _take(self, message: object, pool: WorkerPool) -> bool:
        """Acts on one message of the reader; False once it has read everything."""
        if message is DONE:
            return False
        idx = message.idx
        if idx in self.shards.failed:
            return True
        task = self.tasks[idx]
        if isinstance(message, Start):
            self.writer.open(idx, task.report.output, task.accept)
        elif isinstance(message, Item):
            self._submit(message, pool)
        elif isinstance(message, End):
            self.shards.ends[idx] = message.stored  # done once the shard is committed
            self.writer.end(idx, message.total)
        else:
            self._fail(idx, message.reason)
        return True

    def _submit(self, message: Item, pool: WorkerPool) -> None:
        idx, seq, item = message.idx, message.seq, message.item
        task = self.tasks[idx]
        if isinstance(item, Oversize):
            self.shards.part_done(message.stored, 1)
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

    def _result(self, event) -> None:
        idx, seq, batch = self.in_flight.pop(event.task_id)
        stored = self.unwritten.pop(event.task_id)
        if idx in self.shards.failed:
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
        self.shards.part_done(stored, len(batch.records))

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
        self.log(recovered(event.reason, event.restarted, retry, event.process))

    def _fail(self, idx: int, reason: str) -> None:
        self.shards.fail(idx, reason)
        self.writer.abort(idx)


class Node:
    """The local engine's pipeline on one node, kept from one call to the next: a GPU's
    Ray actor serves the shards it is handed on its workers, host workers on its cores
    feeding a device process on its GPU, as the local engine does."""

    def __init__(
        self, config: TransformConfig, model_dir: str, plan: list[tuple[str, str, int]]
    ) -> None:
        self.config = config
        self.model_dir = model_dir
        self.current: _Run | None = None
        # Workers restarted between calls (as the node starts, say): the next call's.
        self.pending: list[Recovery] = []
        specs = _specs(config, model_dir, plan)
        self.pool = _pool(config, specs, self._recovered, None).__enter__()

    def serve(
        self,
        tasks: list[ShardTask],
        log: Callable[[str], None],
        faults: Faults,
        gate: CommitGate | None = None,
    ) -> None:
        """Serves `tasks` as the local engine would, their reports and `faults` kept;
        their outputs committed through `gate`, when given."""
        self.current = _Run(self.config, tasks, self.model_dir, log, faults, gate)
        for event in self.pending:
            self.current._recovered(event)
        self.pending.clear()
        try:
            self.current.serve(self.pool)
        finally:
            self.current = None
            # A call that ended early leaves mini-batches in flight: their answers are
            # nobody's now, and must not reach the next call's run (its task ids).
            while self.pool.in_flight():
                self.pool.poll(0.1)

    def close(self, graceful: bool = True) -> None:
        self.pool.close(graceful)

    def _recovered(self, event: Recovery) -> None:
        if self.current is not None:
            self.current._recovered(event)
        elif event.task_id is None:  # a retry between calls is of a call already ended
            self.pending.append(event)


def _pool(
    config: TransformConfig,
    specs: list[WorkerSpec],
    on_recovery: Callable[[Recovery], None],
    spares: Spares | None,
) -> WorkerPool:
    return WorkerPool(
        specs,
        config.max_concurrent_transforms,
        config.max_retries,
        config.invocation_timeout,
        on_recovery=on_recovery,
        spares=spares,
        # Mini-batches and their responses travel through shared memory.
        shared_memory=True,
    )


def _specs(
    config: TransformConfig, model_dir: str, plan: list[tuple[str, str, int]]
) -> list[WorkerSpec]:
    options = serving_options(config)
    return [
        WorkerSpec(
            model_dir,
            device,
            threads,
            options,
            server_factory(role=role),
            role=role,
        )
        for role, device, threads in plan
    ]


class _Shards:
    """What becomes of the job's shards: their reports' status, a line on stderr for
    each that fails, and the parts the progress bar shows done."""

    def __init__(self, tasks: list[ShardTask], log: Callable[[str], None], progress: Progress):
        self.tasks = tasks
        self.log = log
        self.progress = progress
        self.failed: set[int] = set()
        self.ends: dict[int, int] = {}  # shard -> its stored bytes after its last part
        self.done = (0, 0)  # stored bytes and records written (or failed), for the bar

    def part_done(self, stored: int, records: int) -> None:
        """A part is written, or has failed its shard: the bar shows it done."""
        self.done = (self.done[0] + stored, self.done[1] + records)
        self.progress.show(*self.done)

    def outcomes(self, outcomes: list[Committed | Failed]) -> None:
        """Shards the writer committed or failed."""
        for outcome in outcomes:
            if isinstance(outcome, Committed):
                report = self.tasks[outcome.idx].report
                report.status, report.records_out = "ok", outcome.records
                self.part_done(self.ends.pop(outcome.idx, 0), 0)
            else:
                self.fail(outcome.idx, outcome.reason)

    def fail(self, idx: int, reason: str) -> None:
        if idx in self.failed:
            return
        self.failed.add(idx)
        report = self.tasks[idx].report
        report.status, report.reason = "failed", reason
        self.log(shard_failed(reason))
