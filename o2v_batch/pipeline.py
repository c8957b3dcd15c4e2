"""`transform(config) -> JobSummary`: lists shards, reads and packs them on a
reader thread, runs mini-batches on the worker pool and writes each output
shard in order, atomically."""

from __future__ import annotations

import itertools
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

import orjson

from o2v_batch.artifacts import resolve_model
from o2v_batch.batching import MiniBatch, pack, payload_bytes
from o2v_batch.config import TransformConfig
from o2v_batch.errors import InputError, O2VError, OutputExistsError
from o2v_batch.formats import (
    JSON,
    MAX_RECORD_BYTES,
    Oversize,
    content_type_for,
    framing_for,
    iter_jsonlines,
    where,
)
from o2v_batch.io import (
    Shard,
    discard_partial,
    list_shards,
    open_input,
    output_uri,
    write_atomic,
)
from o2v_batch.io import describe_s3_error as describe_error
from o2v_batch.jsonstream import iter_json_instances
from o2v_batch.protocol import Done, ServingOptions, WorkerSpec
from o2v_batch.runtime import (
    WorkerPool,
    parse_devices,
    plan_workers,
)
from o2v_batch.sharding import assign, summary_name
from o2v_batch.writer import ShardOutput


@dataclass
class ShardReport:
    shard: str
    output: str
    status: str = "running"  # ok | failed | skipped
    reason: str | None = None
    records: int = 0
    bad_records: int = 0


@dataclass
class JobSummary:
    shards_ok: int = 0
    shards_failed: int = 0
    shards_skipped: int = 0
    shards_unfinished: int = 0  # interrupted before they were written; --resume does them
    records_in: int = 0
    records_out: int = 0
    bad_records: int = 0
    truncated_sequences: int = 0
    mini_batches: int = 0
    largest_mini_batch_bytes: int = 0
    worker_restarts: int = 0
    seconds: float = 0.0
    records_per_second: float = 0.0
    failed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    bad_records_by_shard: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2) + b"\n"

    def lines(self) -> list[str]:
        unfinished = f", {self.shards_unfinished} unfinished" if self.shards_unfinished else ""
        out = [
            f"shards: {self.shards_ok} ok, {self.shards_failed} failed, {self.shards_skipped} skipped{unfinished}",
            f"records: {self.records_in} in, {self.records_out} out, {self.bad_records} bad, "
            f"{self.truncated_sequences} truncated sequences",
            f"mini-batches: {self.mini_batches} (largest {self.largest_mini_batch_bytes} bytes)",
            f"time: {self.seconds:.2f} s, {self.records_per_second:,.0f} records/s",
        ]
        out += [f"failed: {f['reason']}" for f in self.failed]
        out += [f"skipped: {s['shard']}: {s['reason']}" for s in self.skipped]
        return out


def plan(config: TransformConfig) -> tuple[list[tuple[Shard, ShardReport]], list[dict]]:
    """This node's shards with their output paths, and the shards skipped by --resume.

    Refuses to clobber existing outputs unless --resume or --overwrite says what to do.
    """
    to_stdout = config.output == "-"
    shards = list_shards(
        config.input, None if to_stdout else config.output, manifest=config.manifest
    )
    if config.num_shards > 1:
        shards = assign(shards, config.num_shards)[config.shard_index]
    existing = set() if to_stdout else _existing_outputs(config.output)
    planned, skipped, clobbered = [], [], []
    for shard in shards:
        if shard.uri == "-" and not to_stdout:
            shard = replace(shard, rel="stdin")  # `- out/` writes out/stdin.out
        report = ShardReport(shard.uri, output_uri(config.output, shard.rel))
        if shard.rel + ".out" in existing:
            if config.resume:
                report.status, report.reason = "skipped", "output exists (--resume)"
                skipped.append({"shard": shard.uri, "reason": report.reason})
                continue
            if not config.overwrite:
                clobbered.append(report.output)
        planned.append((shard, report))
    if clobbered:
        more = f" and {len(clobbered) - 3} more" if len(clobbered) > 3 else ""
        raise OutputExistsError(
            f"output already exists: {', '.join(clobbered[:3])}{more} "
            "(use --resume to skip finished shards or --overwrite to replace them)"
        )
    return planned, skipped


def _existing_outputs(output: str) -> set[str]:
    """Paths (relative to OUTPUT) of what is already there, from one listing."""
    try:
        return {s.rel for s in list_shards(output)}
    except InputError:  # no output folder yet
        return set()


# -- shared by both engines (here and ray_engine.py), so they word things alike ----


def serving_options(config: TransformConfig) -> ServingOptions:
    """What a worker needs to know of the job."""
    return ServingOptions(
        mode=config.mode,
        join_source=config.join_source,
        input_filter=config.input_filter,
        output_filter=config.output_filter,
        on_bad_record=config.on_bad_record,
        infer_max_seqlens=config.infer_max_seqlens,
    )


def mini_batch_cap(config: TransformConfig) -> int:
    """Record bytes per mini-batch."""
    # With no cap (0), a mini-batch still stops at the one-record limit, so memory stays bounded.
    return payload_bytes(config.max_payload) or MAX_RECORD_BYTES


def read_failure(shard: str, exc: Exception) -> str:
    """Why reading a shard failed, naming the shard once."""
    if isinstance(exc, O2VError):
        message = str(exc)
        return message if shard in message else f"{shard}: {message}"
    return describe_error(exc, shard)


def record_failure(shard: str, pos: int, content_type: str, problem: str) -> str:
    """Why a shard failed at one record: `<shard>: line N: <problem>`."""
    return f"{shard}: {where(pos, content_type)}: {problem}"


def oversize_problem(size: int, config: TransformConfig) -> str:
    """What is wrong with a record too big for a mini-batch."""
    cap = mini_batch_cap(config)
    if config.max_payload:
        return f"record is {size} bytes, over the --max-payload cap of {cap} bytes"
    return f"record is {size} bytes, over the limit of {cap} bytes for one record"


def error_record(problem: str, pos: int, content_type: str, accept: str) -> bytes:
    """An oversize record's place in the output under --on-bad-record emit-error."""
    key = "record" if content_type == JSON else "line"
    payload = orjson.dumps({"error": {"message": problem, key: pos}})
    return payload if accept == JSON else payload + b"\n"


def finish_summary(
    summary: JobSummary,
    config: TransformConfig,
    seconds: float,
    complete: bool,
    log: Callable[[str], None],
) -> None:
    """Times and logs the summary, and writes it: to --summary, or as OUTPUT's
    `_SUCCESS` when the job ran to its end and every shard succeeded."""
    s = summary
    s.seconds = round(seconds, 3)
    s.records_per_second = round(s.records_out / seconds, 1) if seconds > 0 else 0.0
    for line in s.lines():
        log(f"o2v-batch: {line}")
    target = config.summary
    if target is None and complete and config.output != "-" and s.shards_failed == 0:
        name = summary_name(config.num_shards, config.shard_index)
        target = config.output.rstrip("/") + "/" + name
    if target is not None:
        write_atomic(target, s.to_json())


def transform(config: TransformConfig, log: Callable[[str], None] | None = None) -> JobSummary:
    """Runs a batch transform job; per-shard failures are reported in the summary, not raised."""
    log = log or (lambda line: print(line, file=sys.stderr))
    if config.engine == "ray":
        from o2v_batch import ray_engine  # Ray is an optional extra

        return ray_engine.transform(config, log)
    return _Job(config, log).run()


class _Job:
    def __init__(self, config: TransformConfig, log: Callable[[str], None]):
        self.config = config
        self.log = log
        self.summary = JobSummary()
        self.reports: list[ShardReport] = []
        self.outputs: dict[int, ShardOutput] = {}
        self.tasks: dict[int, tuple[int, int, MiniBatch]] = {}
        self.failed: set[int] = set()
        self.stop = threading.Event()
        self.items: queue.Queue = queue.Queue()  # bounded once the pool's size is known
        self.task_ids = itertools.count()
        self.to_stdout = config.output == "-"
        self.next_commit = 0  # stdout: shards are committed in input order
        self.progress = None
        self.read_bytes = 0
        self.cap = mini_batch_cap(config)

    # -- the run ----------------------------------------------------------

    def run(self) -> JobSummary:
        start = time.monotonic()
        planned, self.summary.skipped = plan(self.config)
        self.summary.shards_skipped = len(self.summary.skipped)
        self.reports = [r for _, r in planned]
        discard_partial([r.output for r in self.reports])
        config = self.config
        devices = parse_devices(config.devices)
        model_dir = resolve_model(config.model)
        specs = [
            WorkerSpec(model_dir, device, threads, serving_options(config), config.worker_factory)
            for device, threads in plan_workers(devices, config.workers)
        ]
        reader = threading.Thread(target=self._read, args=([s for s, _ in planned],), daemon=True)
        self.progress = progress_bar(config.progress)
        complete = False
        try:
            with WorkerPool(
                specs,
                config.max_concurrent_transforms,
                config.max_retries,
                config.invocation_timeout,
            ) as pool:
                # Bounded by the workers' capacity: memory stays flat whatever the input size.
                self.items = queue.Queue(maxsize=pool.capacity + 2)
                reader.start()
                self._loop(pool)
                self.summary.worker_restarts = pool.restarts
            complete = True
        finally:
            # Interrupted or broken: whatever is half written goes, and --resume redoes it.
            self.stop.set()
            for output in self.outputs.values():
                output.abort()
            if self.progress is not None:
                self.progress.close()
            self.summary.shards_unfinished = sum(r.status == "running" for r in self.reports)
            self._finish(time.monotonic() - start, complete)
        return self.summary

    def _loop(self, pool: WorkerPool) -> None:
        reading = True
        while reading or pool.in_flight():
            while reading and pool.has_room():
                try:
                    item = self.items.get(timeout=0.05 if pool.in_flight() else 1.0)
                except queue.Empty:
                    break
                reading = self._take(item, pool)
            for event in pool.poll(0.01 if reading and pool.has_room() else 0.5):
                self._result(event)

    def _read(self, shards: list[Shard]) -> None:
        """Reader thread: shards to mini-batches, at most a few ahead of the workers."""
        config = self.config
        cap = self.cap
        for idx, shard in enumerate(shards):
            if self.stop.is_set():
                break
            self._put(("start", idx))
            content_type = config.content_type or content_type_for(shard.uri)
            split = iter_json_instances if content_type == JSON else iter_jsonlines
            seq = 0
            try:
                with open_input(shard.uri) as stream:
                    for item in pack(split(stream, cap), cap, config.strategy):
                        if idx in self.failed or self.stop.is_set():
                            break
                        self._put(("item", idx, seq, item, content_type))
                        seq += 1
            except Exception as exc:  # I/O failures too: this shard fails, the others go on
                self._put(("error", idx, read_failure(shard.uri, exc)))
                continue
            self._put(("end", idx, seq))
        self._put(("done",))

    def _put(self, item: tuple) -> None:
        while not self.stop.is_set():
            try:
                self.items.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _take(self, item: tuple, pool: WorkerPool) -> bool:
        kind, idx = item[0], item[1] if len(item) > 1 else None
        if kind == "done":
            return False
        if idx in self.failed:
            return True
        report = self.reports[idx]
        if kind == "start":
            self.outputs[idx] = ShardOutput(report.output, framing_for(self._accept(idx)))
        elif kind == "item":
            _, _, seq, batch, content_type = item
            if isinstance(batch, Oversize):
                self._oversize(idx, seq, batch, content_type)
            else:
                task_id = next(self.task_ids)
                self.tasks[task_id] = (idx, seq, batch)
                self.summary.mini_batches += 1
                self.summary.records_in += len(batch.records)
                self.summary.largest_mini_batch_bytes = max(
                    self.summary.largest_mini_batch_bytes, batch.nbytes
                )
                pool.submit(
                    task_id, batch.positions, batch.records, content_type, self._accept(idx)
                )
        elif kind == "end":
            self.outputs[idx].total = item[2]
            self._maybe_commit(idx)
        elif kind == "error":
            self._fail(idx, item[2])
        return True

    def _oversize(self, idx: int, seq: int, item: Oversize, content_type: str) -> None:
        self.summary.records_in += 1
        problem = oversize_problem(item.size, self.config)
        if self.config.on_bad_record == "fail":
            self._fail(
                idx, record_failure(self.reports[idx].shard, item.pos, content_type, problem)
            )
            return
        payload = error_record(problem, item.pos, content_type, self._accept(idx))
        self._count_bad(idx, 1)
        self._add(idx, seq, payload, 1)

    def _result(self, event) -> None:
        idx, seq, batch = self.tasks.pop(event.task_id)
        if idx in self.failed:
            return
        report = self.reports[idx]
        if not isinstance(event, Done):
            self._fail(
                idx,
                f"{report.shard}: mini-batch from {where(batch.positions[0], self._ct(idx))}: {event.reason}",
            )
            return
        result = event.result
        self.summary.truncated_sequences += result.truncated
        if result.error is not None:
            self._fail(
                idx, record_failure(report.shard, result.error_pos, self._ct(idx), result.error)
            )
            return
        self._count_bad(idx, result.bad_records)
        if self.progress is not None:
            self.read_bytes += batch.nbytes
            self.progress.set_postfix_str(_human_bytes(self.read_bytes), refresh=False)
            self.progress.update(result.records)
        self._add(idx, seq, result.payload, result.records)

    # -- shard completion -------------------------------------------------

    def _add(self, idx: int, seq: int, payload: bytes, records: int) -> None:
        try:
            self.outputs[idx].add(seq, payload, records)
        except Exception as exc:  # the output cannot be written (e.g. S3 went away)
            self._fail(idx, describe_error(exc, self.reports[idx].output))
            return
        self._maybe_commit(idx)

    def _maybe_commit(self, idx: int) -> None:
        if self.to_stdout:
            while self.next_commit in self.failed or (
                self.next_commit in self.outputs and self.outputs[self.next_commit].complete
            ):
                if self.next_commit not in self.failed:
                    self._commit(self.next_commit)
                self.next_commit += 1
        elif self.outputs[idx].complete:
            self._commit(idx)

    def _commit(self, idx: int) -> None:
        output = self.outputs.pop(idx)
        report = self.reports[idx]
        try:
            output.commit()
        except Exception as exc:
            output.abort()
            self._mark_failed(idx, describe_error(exc, report.output))
            return
        report.status, report.records = "ok", output.records
        self.summary.shards_ok += 1
        self.summary.records_out += output.records

    def _fail(self, idx: int, reason: str) -> None:
        output = self.outputs.pop(idx, None)
        if output is not None:
            output.abort()
        self._mark_failed(idx, reason)
        if self.to_stdout:
            self._maybe_commit(idx)

    def _mark_failed(self, idx: int, reason: str) -> None:
        if idx in self.failed:
            return
        self.failed.add(idx)
        report = self.reports[idx]
        report.status, report.reason = "failed", reason
        self.summary.shards_failed += 1
        self.summary.failed.append({"shard": report.shard, "reason": reason})
        self.log(f"o2v-batch: shard failed: {reason}")

    def _count_bad(self, idx: int, n: int) -> None:
        if n:
            self.summary.bad_records += n
            shard = self.reports[idx].shard
            self.summary.bad_records_by_shard[shard] = (
                self.summary.bad_records_by_shard.get(shard, 0) + n
            )

    def _finish(self, seconds: float, complete: bool) -> None:
        finish_summary(self.summary, self.config, seconds, complete, self.log)

    # -- helpers ----------------------------------------------------------

    def _ct(self, idx: int) -> str:
        return self.config.content_type or content_type_for(self.reports[idx].shard)

    def _accept(self, idx: int) -> str:
        return self.config.accept or self._ct(idx)


def progress_bar(enabled: bool | None):
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(unit=" records", unit_scale=True, desc="o2v-batch", file=sys.stderr)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit} read"
        n /= 1024
    raise AssertionError("unreachable")
