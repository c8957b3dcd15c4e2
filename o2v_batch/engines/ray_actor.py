"""The Ray engine's actor: serves the whole shards the driver hands it (read, pack,
serve every mini-batch, write the mirrored output atomically), a GPU's on a node of the
local engine, a CPU actor in its own process with one model."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Sequence
from dataclasses import replace

from o2v_batch import io
from o2v_batch.artifacts import resolve_model
from o2v_batch.config import TransformConfig
from o2v_batch.engines.local import Node
from o2v_batch.engines.shard import (
    ShardTask,
    mini_batches,
    oversize,
    served,
    serving_options,
)
from o2v_batch.engines.writer import CommitGate, Committed, WriterThread
from o2v_batch.errors import ShardFailed, WorkerError, describe
from o2v_batch.execution.protocol import WorkerSpec
from o2v_batch.execution.worker import server_factory, start_server
from o2v_batch.inputs.batching import MiniBatch
from o2v_batch.inputs.formats import Oversize
from o2v_batch.reporting.messages import batch_failure
from o2v_batch.reporting.report import Faults, ShardReport

# A shard's report is final once it says one of these.
FINISHED = ("ok", "failed")


class ShardWorker:
    """A Ray actor. Runs with two threads, so progress() answers while serve_shards() works.

    A GPU's actor runs a node of the local engine (engines/local.Node): host workers on
    its cores, a device process on its GPU, kept from one call to the next, serving the
    shards of a call together. Others serve in their own process, one shard and one
    mini-batch after another.
    """

    def __init__(
        self,
        config: TransformConfig,
        model: str,
        device: str,
        threads: int,
        node: Sequence[tuple[str, str, int]] | None = None,
    ):
        import ray

        self.config = config
        self.pid = os.getpid()
        # (shard index, records read so far, first record of the mini-batch at hand,
        # when work on it began)
        self.now = (-1, 0, 0, time.monotonic())
        # A restarted actor first removes what its killed predecessor left half-written.
        self.sweep = ray.get_runtime_context().was_current_actor_reconstructed
        self.fatal: str | None = None
        self.node: Node | None = None
        self.serving: list[tuple[int, ShardTask]] | None = None  # the shards its node serves
        # Every output it commits goes through the gate, which stop() closes.
        self.gate = CommitGate()
        self.called: list[tuple[int, ShardTask]] = []  # the shards of its latest call
        try:
            if node is not None:
                # Its workers show no bar: the driver draws the job's.
                self.node = Node(replace(config, progress=False), resolve_model(model), [*node])
                self.node.pool.wait_ready()
            else:
                options = serving_options(config)
                spec = WorkerSpec(resolve_model(model), device, threads, options, server_factory())
                self.server = start_server(spec)
        except WorkerError as exc:  # a node's pool says which worker, and why
            self.fatal = describe(exc)
            if self.node is not None:
                self.node.close(graceful=False)
        except Exception as exc:  # plain text: the driver makes it the job's error
            self.fatal = f"cannot load the model on {device}: {describe(exc)}"

    def ready(self) -> tuple[int, str | None]:
        return self.pid, self.fatal

    def progress(self) -> tuple[int, dict[int, int], int, float, dict[int, ShardReport]]:
        """(pid, records read of each shard it serves, first record of the mini-batch at
        hand, seconds spent on it, the reports of the shards it has finished while the
        call goes on): measured here, so the nodes' clocks need not agree. A node's pool
        times its own mini-batches out (--invocation-timeout): it says 0 s.

        A node serves a group of shards in one call, which returns once all are done;
        the driver keeps the reports of those finished, so that a job stopped meanwhile
        still counts the outputs they committed. Elsewhere a call serves one shard and
        returns as it ends."""
        serving = self.serving  # once: the serving thread may end its shards meanwhile
        if serving is not None:
            records = {idx: task.report.records_in for idx, task in serving}
            finished = {idx: task.report for idx, task in serving if task.report.status in FINISHED}
            return self.pid, records, 0, 0.0, finished
        idx, records, pos, started = self.now
        read = {idx: records} if idx >= 0 else {}
        return self.pid, read, pos, time.monotonic() - started, {}

    def stop(self) -> dict[int, ShardReport]:
        """The driver stops the job: this actor commits no output from now on (a shard
        complete later is dropped, as a failed one is). The reports of the shards of its
        latest call whose outputs it has committed, so that the driver counts each one
        committed, however late in the job: the driver kills the actor once answered."""
        committed = self.gate.close()
        finished = {}
        for idx, task in self.called:
            report = task.report
            if report.output in committed:
                report.status, report.records_out = "ok", committed[report.output]
                finished[idx] = report
        return finished

    def serve_shards(
        self, shards: list[tuple[int, ShardTask]]
    ) -> tuple[int, list[ShardReport], Faults, list[str]]:
        """Serves shards (index, task) into their outputs, each committed only when every
        record is written: (pid, their reports, the workers restarted and mini-batches
        retried, lines to log). The output's lifecycle is the local engine's: a writer
        thread (writer.py) writes parts while the next mini-batch is served.

        A model that raises or a process that dies makes Ray retry the call; on a node,
        its pool first restarts a lost worker and retries the mini-batch.
        """
        if self.fatal:
            raise WorkerError(self.fatal)
        self.called = shards
        if self.sweep:
            self.sweep = False
            io.discard_partial([task.report.output for _, task in shards])
        if self.node is not None:
            return self._serve_on_node(shards)
        reports = [self._serve_here(idx, task) for idx, task in shards]
        return self.pid, reports, Faults(), []

    def _serve_on_node(
        self, shards: list[tuple[int, ShardTask]]
    ) -> tuple[int, list[ShardReport], Faults, list[str]]:
        faults, lines = Faults(), []
        tasks = [task for _, task in shards]
        self.serving = shards
        try:
            self.node.serve(tasks, lines.append, faults, self.gate)
        except WorkerError:
            # Its pool cannot go on (a worker that took a lost one's place failed to
            # start): Ray restarts this actor, with a node of its own, and retries.
            self.node.close(graceful=False)
            os._exit(1)
        except Exception as exc:  # an output could not be opened or written
            for task in tasks:
                if task.report.status not in ("ok", "failed"):
                    self._failed(task.report, io.describe_error(exc, task.report.output))
        finally:
            self.serving = None
        return self.pid, [task.report for task in tasks], faults, lines

    def _serve_here(self, idx: int, task: ShardTask) -> ShardReport:
        report = task.report
        self.now = (idx, 0, 0, time.monotonic())
        # Holds two parts: a slow write (an S3 part) overlaps serving, memory stays flat.
        with WriterThread(2, in_order=False, gate=self.gate) as writer:
            try:
                writer.open(idx, report.output, task.accept)
                outcomes = self._serve(idx, task, writer)
                writer.finish()
                outcomes += writer.outcomes()
            except WorkerError:
                raise
            except Exception as exc:  # the output could not be opened or written
                return self._failed(report, io.describe_error(exc, report.output))
        outcome = outcomes[0]
        if isinstance(outcome, Committed):
            report.status, report.records_out = "ok", outcome.records
            return report
        return self._failed(report, outcome.reason)

    def _serve(self, idx: int, task: ShardTask, writer: WriterThread) -> list:
        """Hands the shard's parts to the writer, and their count once read whole. A bad
        record or an unreadable input is the last part: it fails the shard. Stops early
        once the writer has failed the shard (its outcomes, returned)."""
        count = 0
        with contextlib.closing(mini_batches(task, self.config)) as items:
            try:
                for item in items:
                    pos = item.pos if isinstance(item, Oversize) else item.positions[0]
                    self.now = (idx, task.report.records_in, pos, time.monotonic())
                    if isinstance(item, Oversize):
                        payload, predictions = oversize(task, item, self.config), 0
                    else:
                        payload, predictions = self._batch(task, item)
                    writer.add(idx, count, payload, predictions)
                    count += 1
                    if outcomes := writer.outcomes():
                        return outcomes
            except ShardFailed as exc:
                writer.fail(idx, count, str(exc))
                count += 1
        writer.end(idx, count)
        return []

    def _batch(self, task: ShardTask, batch: MiniBatch) -> tuple[bytes, int]:
        task.report.count_batch(len(batch.records), batch.nbytes)
        try:
            result = self.server.serve(
                batch.positions, batch.records, task.content_type, task.accept
            )
        except Exception as exc:
            reason = f"the worker raised {describe(exc)}"
            raise WorkerError(
                batch_failure(batch.positions[0], task.content_type, reason)
            ) from None
        return served(task, result, batch)

    def _failed(self, report: ShardReport, reason: str) -> ShardReport:
        report.status, report.reason = "failed", reason
        return report
