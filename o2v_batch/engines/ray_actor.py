"""The Ray engine's actor: one model on one device, serving whole shards one at a
time: read, pack, serve every mini-batch, write the mirrored output atomically."""

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
from o2v_batch.engines.writer import Committed, WriterThread
from o2v_batch.errors import ShardFailed, WorkerError, describe
from o2v_batch.execution.protocol import WorkerSpec
from o2v_batch.execution.worker import server_factory, start_server
from o2v_batch.inputs.batching import MiniBatch
from o2v_batch.inputs.formats import Oversize
from o2v_batch.reporting.messages import batch_failure
from o2v_batch.reporting.report import Faults, ShardReport


class ShardWorker:
    """A Ray actor. Runs with two threads, so progress() answers while serve_shard() works.

    A GPU's actor runs a node of the local engine (engines/local.Node): host workers on
    its cores, a device process on its GPU, kept from one shard to the next. Others
    serve in their own process, one mini-batch after another.
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
        self.serving: ShardTask | None = None  # the shard its node serves
        try:
            if node is not None:
                # Its workers show no bar: the driver draws the job's.
                self.node = Node(replace(config, progress=False), resolve_model(model), [*node])
                self.node.pool.wait_ready()
            else:
                options = serving_options(config)
                spec = WorkerSpec(resolve_model(model), device, threads, options, server_factory())
                self.server = start_server(spec)
        except Exception as exc:  # plain text: the driver makes it the job's error
            self.fatal = f"cannot load the model on {device}: {describe(exc)}"
            if self.node is not None:
                self.node.close()

    def ready(self) -> tuple[int, str | None]:
        return self.pid, self.fatal

    def progress(self) -> tuple[int, int, int, int, float]:
        """(pid, shard index, records read, first record of the mini-batch at hand,
        seconds spent on it): measured here, so the nodes' clocks need not agree. A
        node's pool times its own mini-batches out (--invocation-timeout): it says 0 s."""
        idx, records, pos, started = self.now
        serving = self.serving  # once: the serving thread may end the shard meanwhile
        if serving is not None:
            return self.pid, idx, serving.report.records_in, pos, 0.0
        return self.pid, idx, records, pos, time.monotonic() - started

    def serve_shard(self, idx: int, task: ShardTask) -> tuple[int, ShardReport, Faults, list]:
        """Serves one shard into its output, committed only when every record is written:
        (pid, its report, the workers restarted and mini-batches retried, lines to log).
        The output's lifecycle is the local engine's: a writer thread (writer.py) writes
        parts while the next mini-batch is served.

        A model that raises or a process that dies makes Ray retry the whole shard; on a
        node, its pool first restarts a lost worker and retries the mini-batch.
        """
        if self.fatal:
            raise WorkerError(self.fatal)
        report = task.report
        if self.sweep:
            self.sweep = False
            io.discard_partial([report.output])
        self.now = (idx, 0, 0, time.monotonic())
        if self.node is not None:
            return self._serve_on_node(task)
        return (*self._serve_here(idx, task), Faults(), [])

    def _serve_on_node(self, task: ShardTask) -> tuple[int, ShardReport, Faults, list]:
        faults, lines = Faults(), []
        self.serving = task
        try:
            self.node.serve([task], lines.append, faults)
        except WorkerError:
            # Its pool cannot go on (a worker that took a lost one's place failed to
            # start): Ray restarts this actor, with a node of its own, and retries.
            self.node.close(graceful=False)
            os._exit(1)
        except Exception as exc:  # the output could not be opened or written
            if task.report.status != "failed":
                self._failed(task.report, io.describe_error(exc, task.report.output))
        finally:
            self.serving = None
        return self.pid, task.report, faults, lines

    def _serve_here(self, idx: int, task: ShardTask) -> tuple[int, ShardReport]:
        report = task.report
        # Holds two parts: a slow write (an S3 part) overlaps serving, memory stays flat.
        with WriterThread(2, in_order=False) as writer:
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
            return self.pid, report
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

    def _failed(self, report: ShardReport, reason: str) -> tuple[int, ShardReport]:
        report.status, report.reason = "failed", reason
        return self.pid, report
