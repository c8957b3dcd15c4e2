"""`--engine ray`: the transform job on a Ray cluster.

The driver plans the job exactly as the local engine does (same shards, same
skip and clobber rules, same array-job share). A pool of Ray actors, each
holding one model, serves whole shards: read, pack, serve every mini-batch and
write the mirrored output atomically. Ray restarts a lost actor and retries the
shard it held; a shard whose retries run out fails alone.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from o2v_batch.artifacts import resolve_model
from o2v_batch.batching import MiniBatch, pack
from o2v_batch.config import TransformConfig
from o2v_batch.errors import ConfigError, O2VError, WorkerError
from o2v_batch.formats import (
    JSON,
    Oversize,
    content_type_for,
    framing_for,
    iter_jsonlines,
    where,
)
from o2v_batch.io import STDIO, describe_s3_error, discard_partial, is_s3, open_input
from o2v_batch.jsonstream import iter_json_instances
from o2v_batch.pipeline import (
    JobSummary,
    ShardReport,
    error_record,
    finish_summary,
    mini_batch_cap,
    oversize_problem,
    plan,
    progress_bar,
    read_failure,
    record_failure,
    serving_options,
)
from o2v_batch.runtime import describe
from o2v_batch.writer import ShardOutput

MISSING_RAY = "--engine ray needs Ray: pip install 'o2v-batch[ray]'"
# CPUs (and torch threads) of one CPU actor when --workers does not say.
CPUS_PER_ACTOR = 2
# How often the driver looks at the actors while shards are running.
POLL_S = 0.5


def transform(config: TransformConfig, log: Callable[[str], None]) -> JobSummary:
    """Runs the job on Ray; per-shard failures are reported in the summary, not raised."""
    ray = _import_ray()
    if STDIO in (config.input, config.output):
        raise ConfigError(
            "--engine ray reads and writes shards on the cluster: "
            "INPUT and OUTPUT cannot be - (stdin or stdout)"
        )
    start = time.monotonic()
    planned, skipped = plan(config)
    summary = JobSummary(shards_skipped=len(skipped), skipped=skipped)
    reports = [report for _, report in planned]
    complete = False
    try:
        if planned:
            # A local model is resolved (extracted) once here; an S3 one by each actor,
            # since the cluster's nodes may not share a disk.
            model = config.model if is_s3(config.model) else resolve_model(config.model)
            started = _connect(ray, config.ray_address)
            try:
                _Run(ray, config, log, summary, planned).run(model)
            finally:
                if started:
                    ray.shutdown()
        complete = True
    finally:
        summary.shards_unfinished = sum(r.status == "running" for r in reports)
        finish_summary(summary, config, time.monotonic() - start, complete, log)
    return summary


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise O2VError(MISSING_RAY) from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Joins the cluster at `address`, else at $RAY_ADDRESS, else starts a local Ray.

    True when this call connected, so the caller disconnects (and stops a Ray it started).
    """
    if ray.is_initialized():
        return False
    ray.init(
        # "local": a Ray of our own, never a cluster someone started on this machine
        # (`--ray-address auto` joins that one).
        address=address or os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        # Actors report failures as plain data; their logs stay in Ray's log folder.
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.ERROR,
    )
    return True


# -- the actors -------------------------------------------------------------


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, the device each sees, its torch threads and its Ray resources."""

    count: int
    device: str
    threads: int
    resources: dict[str, float]


def plan_actors(
    config: TransformConfig, shards: int, cluster_cpus: float, node_cpus: float, gpus: int
) -> ActorPlan:
    """One actor per GPU, or CPU actors of CPUS_PER_ACTOR cores each; never more than shards.

    `node_cpus` is the largest node's: an actor asking for more could never start.
    """
    devices = config.devices.strip().lower()
    if devices not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"--devices {config.devices}: with --engine ray, Ray assigns the GPUs "
            "(use auto, cuda or cpu)"
        )
    if devices == "cuda" or (devices == "auto" and gpus):
        if not gpus:
            raise ConfigError(f"--devices {config.devices}: the Ray cluster has no GPUs")
        count = min(config.workers or gpus, shards)
        # Ray sets CUDA_VISIBLE_DEVICES per actor: its one GPU is cuda:0.
        return ActorPlan(count, "cuda:0", 1, {"num_gpus": 1, "num_cpus": 1})
    node_cpus = max(node_cpus, 1.0)
    if config.workers is None:
        per_actor = min(float(CPUS_PER_ACTOR), node_cpus)
        count = max(1, int(cluster_cpus // per_actor))
    else:
        count = config.workers
        per_actor = min(node_cpus, max(cluster_cpus, 1.0) / count)
    return ActorPlan(min(count, shards), "cpu", max(1, int(per_actor)), {"num_cpus": per_actor})


@dataclass
class ShardResult:
    """What an actor reports for one shard: plain data."""

    pid: int
    status: str = "ok"  # ok | failed
    reason: str | None = None
    records_in: int = 0
    records: int = 0  # written
    bad_records: int = 0
    truncated: int = 0
    mini_batches: int = 0
    largest_mini_batch_bytes: int = 0


class _ShardFailed(Exception):
    """The shard fails for a reason that retrying cannot change (bad input, a write error)."""


class ShardWorker:
    """A Ray actor: one model on one device, serving whole shards one at a time.

    Runs with two threads, so progress() answers while serve_shard() works.
    """

    def __init__(self, config: TransformConfig, model: str, device: str, threads: int):
        import ray

        self.config = config
        self.pid = os.getpid()
        # (shard index, records written so far, first record of the mini-batch at hand,
        # when work on it began)
        self.now = (-1, 0, 0, time.monotonic())
        # A restarted actor first removes what its killed predecessor left half-written.
        self.sweep = ray.get_runtime_context().was_current_actor_reconstructed
        self.fatal: str | None = None
        try:
            import torch

            torch.set_num_threads(threads)
            module, _, name = config.worker_factory.partition(":")
            factory = getattr(importlib.import_module(module), name)
            self.server = factory(resolve_model(model), device, serving_options(config))
        except Exception as exc:  # plain text: the driver makes it the job's error
            self.fatal = f"cannot load the model on {device}: {describe(exc)}"

    def ready(self) -> tuple[int, str | None]:
        return self.pid, self.fatal

    def progress(self) -> tuple[int, int, int, int, float]:
        """(pid, shard index, records written, first record of the mini-batch at hand,
        seconds spent on it): measured here, so the nodes' clocks need not agree."""
        idx, records, pos, started = self.now
        return self.pid, idx, records, pos, time.monotonic() - started

    def serve_shard(self, idx: int, uri: str, output_uri: str) -> ShardResult:
        """Serves one shard into its output, committed only when every record is written.

        A model that raises or a process that dies makes Ray retry the whole shard.
        """
        if self.fatal:
            raise WorkerError(self.fatal)
        if self.sweep:
            self.sweep = False
            discard_partial([output_uri])
        self.now = (idx, 0, 0, time.monotonic())
        result = ShardResult(self.pid)
        content_type = self.config.content_type or content_type_for(uri)
        accept = self.config.accept or content_type
        try:
            output = ShardOutput(output_uri, framing_for(accept))
        except Exception as exc:
            return _failed(result, describe_s3_error(exc, output_uri))
        try:
            self._serve(idx, uri, output, content_type, accept, result)
        except _ShardFailed as exc:
            output.abort()
            return _failed(result, str(exc))
        except BaseException:
            output.abort()
            raise
        try:
            output.commit()
        except Exception as exc:
            output.abort()
            return _failed(result, describe_s3_error(exc, output_uri))
        result.records = output.records
        return result

    def _serve(
        self,
        idx: int,
        uri: str,
        output: ShardOutput,
        content_type: str,
        accept: str,
        result: ShardResult,
    ) -> None:
        count = 0
        with contextlib.closing(_mini_batches(uri, content_type, self.config)) as items:
            for item in items:
                pos = item.pos if type(item) is Oversize else item.positions[0]
                self.now = (idx, output.records, pos, time.monotonic())
                if type(item) is Oversize:
                    payload, records = self._oversize(uri, item, content_type, accept, result)
                else:
                    payload, records = self._batch(uri, item, content_type, accept, result)
                try:
                    output.add(count, payload, records)
                except Exception as exc:
                    raise _ShardFailed(describe_s3_error(exc, output.uri)) from None
                count += 1
        output.total = count

    def _oversize(
        self, uri: str, item: Oversize, content_type: str, accept: str, result: ShardResult
    ) -> tuple[bytes, int]:
        result.records_in += 1
        problem = oversize_problem(item.size, self.config)
        if self.config.on_bad_record == "fail":
            raise _ShardFailed(record_failure(uri, item.pos, content_type, problem))
        result.bad_records += 1
        return error_record(problem, item.pos, content_type, accept), 1

    def _batch(
        self, uri: str, batch: MiniBatch, content_type: str, accept: str, result: ShardResult
    ) -> tuple[bytes, int]:
        result.mini_batches += 1
        result.records_in += len(batch.records)
        result.largest_mini_batch_bytes = max(result.largest_mini_batch_bytes, batch.nbytes)
        try:
            served = self.server.serve(batch.positions, batch.records, content_type, accept)
        except Exception as exc:
            raise WorkerError(
                f"mini-batch from {where(batch.positions[0], content_type)}: "
                f"the worker raised {describe(exc)}"
            ) from None
        result.truncated += served.truncated
        if served.error is not None:
            raise _ShardFailed(record_failure(uri, served.error_pos, content_type, served.error))
        result.bad_records += served.bad_records
        return served.payload, served.records


def _mini_batches(
    uri: str, content_type: str, config: TransformConfig
) -> Iterator[MiniBatch | Oversize]:
    """The shard's mini-batches, packed as the local engine packs them; a read failure
    raises _ShardFailed, worded as the local engine words it."""
    cap = mini_batch_cap(config)
    split = iter_json_instances if content_type == JSON else iter_jsonlines
    try:
        with open_input(uri) as stream:
            yield from pack(split(stream, cap), cap, config.strategy)
    except Exception as exc:
        raise _ShardFailed(read_failure(uri, exc)) from None


def _failed(result: ShardResult, reason: str) -> ShardResult:
    result.status, result.reason = "failed", reason
    return result


# -- the driver -------------------------------------------------------------


@dataclass(eq=False)  # compared and hashed by identity
class _Slot:
    """One actor as the driver sees it."""

    actor: Any
    device: str
    pids: set[int] = field(default_factory=set)
    shard: int | None = None  # the shard it is serving
    hung: str | None = None  # why the driver last restarted it, while that shard runs


class _Run:
    """Hands shards to actors as they free up, largest first, and keeps the summary."""

    def __init__(
        self,
        ray: Any,
        config: TransformConfig,
        log: Callable[[str], None],
        summary: JobSummary,
        planned: list,
    ):
        self.ray = ray
        self.config = config
        self.log = log
        self.summary = summary
        self.shards = [shard for shard, _ in planned]
        self.reports: list[ShardReport] = [report for _, report in planned]
        self.shown = [0] * len(planned)  # records on the progress bar, per shard
        self.progress = None

    def run(self, model: str) -> None:
        ray = self.ray
        slots = self._start(model)
        starting = {slot.actor.ready.remote(): slot for slot in slots}
        running: dict[Any, _Slot] = {}
        pings: dict[Any, _Slot] = {}
        idle: list[_Slot] = []
        todo = deque(sorted(range(len(self.shards)), key=lambda i: -self.shards[i].size))
        self.progress = progress_bar(self.config.progress)
        try:
            while todo or running:
                while todo and idle:
                    slot = idle.pop()
                    slot.shard = todo.popleft()
                    running[self._submit(slot)] = slot
                done, _ = ray.wait([*starting, *running], num_returns=1, timeout=POLL_S)
                for ref in done:
                    if ref in starting:
                        idle.append(self._ready(ref, starting.pop(ref)))
                    else:
                        slot = running.pop(ref)
                        self._finished(ref, slot)
                        slot.shard, slot.hung = None, None
                        idle.append(slot)
                self._poll(running.values(), pings)
        finally:
            for slot in slots:
                ray.kill(slot.actor, no_restart=True)
            for slot in running.values():
                # Interrupted: the killed actor's half-written output goes, --resume redoes it.
                discard_partial([self.reports[slot.shard].output])
            if self.progress is not None:
                self.progress.close()
            self.summary.worker_restarts = sum(max(0, len(slot.pids) - 1) for slot in slots)

    def _start(self, model: str) -> list[_Slot]:
        ray = self.ray
        resources = ray.cluster_resources()
        node_cpus = max(
            (node["Resources"].get("CPU", 0.0) for node in ray.nodes() if node["Alive"]),
            default=0.0,
        )
        actors = plan_actors(
            self.config,
            len(self.shards),
            resources.get("CPU", 0.0),
            node_cpus,
            int(resources.get("GPU", 0)),
        )
        remote = ray.remote(ShardWorker).options(
            **actors.resources,
            # Two threads: one serves a shard while the other answers progress().
            max_concurrency=2,
            # Enough restarts for every shard to use all its retries.
            max_restarts=(self.config.max_retries + 1) * len(self.shards),
            max_task_retries=self.config.max_retries,
        )
        return [
            _Slot(remote.remote(self.config, model, actors.device, actors.threads), actors.device)
            for _ in range(actors.count)
        ]

    def _ready(self, ref: Any, slot: _Slot) -> _Slot:
        try:
            pid, fatal = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:
            raise WorkerError(
                f"worker could not start on {slot.device}: {_describe_ray_error(exc)}"
            ) from None
        if fatal:
            raise WorkerError(fatal)
        slot.pids.add(pid)
        return slot

    def _submit(self, slot: _Slot) -> Any:
        report = self.reports[slot.shard]
        # retry_exceptions: a model that raises is retried like a process that died,
        # as the local engine does.
        method = slot.actor.serve_shard.options(retry_exceptions=True)
        return method.remote(slot.shard, self.shards[slot.shard].uri, report.output)

    def _finished(self, ref: Any, slot: _Slot) -> None:
        idx, report = slot.shard, self.reports[slot.shard]
        attempts = self.config.max_retries + 1
        try:
            result: ShardResult = self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as exc:
            cause = describe(exc.cause) if exc.cause is not None else _describe_ray_error(exc)
            self._fail(report, f"{report.shard}: {cause}; gave up after {attempts} attempts")
            return
        except self.ray.exceptions.RayActorError as exc:
            # The actor died each time: whatever it had written is still there.
            discard_partial([report.output])
            reason = slot.hung or f"its Ray actor died ({type(exc).__name__}; Ray's logs say why)"
            self._fail(report, f"{report.shard}: {reason}; gave up after {attempts} attempts")
            return
        except self.ray.exceptions.RayError as exc:
            self._fail(report, f"{report.shard}: {_describe_ray_error(exc)}")
            return
        slot.pids.add(result.pid)
        s = self.summary
        s.records_in += result.records_in
        s.mini_batches += result.mini_batches
        s.largest_mini_batch_bytes = max(
            s.largest_mini_batch_bytes, result.largest_mini_batch_bytes
        )
        s.truncated_sequences += result.truncated
        if result.bad_records:
            s.bad_records += result.bad_records
            s.bad_records_by_shard[report.shard] = result.bad_records
        if result.status != "ok":
            self._fail(report, result.reason)
            return
        report.status, report.records = "ok", result.records
        s.shards_ok += 1
        s.records_out += result.records
        self._show(idx, result.records)

    def _fail(self, report: ShardReport, reason: str) -> None:
        report.status, report.reason = "failed", reason
        self.summary.shards_failed += 1
        self.summary.failed.append({"shard": report.shard, "reason": reason})
        self.log(f"o2v-batch: shard failed: {reason}")

    def _poll(self, busy, pings: dict[Any, _Slot]) -> None:
        """Asks the busy actors how far they are: moves the bar, and restarts an actor stuck
        on one mini-batch past --invocation-timeout (Ray then retries its shard)."""
        ray = self.ray
        if pings:
            answered, _ = ray.wait(list(pings), num_returns=len(pings), timeout=0)
            for ref in answered:
                slot = pings.pop(ref)
                try:
                    pid, idx, records, pos, seconds = ray.get(ref)
                except ray.exceptions.RayError:  # asked just before it died: Ray restarts it
                    continue
                slot.pids.add(pid)
                if idx != slot.shard:
                    continue
                self._show(idx, records)
                if seconds > self.config.invocation_timeout:
                    self._restart_hung(slot, pid, pos)
        asked = set(pings.values())
        for slot in busy:
            if slot not in asked:
                pings[slot.actor.progress.remote()] = slot

    def _restart_hung(self, slot: _Slot, pid: int, pos: int) -> None:
        """Worded as the local engine words a hung worker, for when the retries run out."""
        shard = self.reports[slot.shard].shard
        content_type = self.config.content_type or content_type_for(shard)
        timeout = f"{self.config.invocation_timeout:g} s (--invocation-timeout)"
        slot.hung = (
            f"mini-batch from {where(pos, content_type)}: worker {pid} timed out after {timeout}"
        )
        self.ray.kill(slot.actor, no_restart=False)

    def _show(self, idx: int, records: int) -> None:
        # A retried shard starts again from 0: the bar only ever moves forward.
        if self.progress is not None and records > self.shown[idx]:
            self.progress.update(records - self.shown[idx])
            self.shown[idx] = records


def _describe_ray_error(exc: Exception) -> str:
    """A Ray error's class and the first line of its message (Ray's run to many lines)."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__
