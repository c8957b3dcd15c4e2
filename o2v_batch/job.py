"""`transform(config) -> JobSummary`: plans this node's shards (listing, array-job
share, --resume/--overwrite), hands them to an engine, and writes the summary."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from types import ModuleType

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard import ShardTask, shard_task
from o2v_batch.errors import InputError, OutputExistsError
from o2v_batch.report import JobSummary, ShardReport
from o2v_batch.sharding import assign, summary_name

ENGINES = {"local": "o2v_batch.engines.local", "ray": "o2v_batch.engines.ray"}


def transform(config: TransformConfig, log: Callable[[str], None] | None = None) -> JobSummary:
    """Runs a batch transform job; per-shard failures are reported in the summary, not raised."""
    log = log or (lambda line: print(line, file=sys.stderr))
    engine = _engine(config.engine)
    engine.check(config)
    start = time.monotonic()
    tasks, skipped = plan(config)
    restarts, complete = 0, False
    try:
        restarts = engine.run(config, tasks, log)
        complete = True
    finally:
        reports = [t.report for t in tasks] + skipped
        summary = JobSummary.of(reports, restarts, time.monotonic() - start)
        _finish(summary, config, complete, log)
    return summary


def _engine(name: str) -> ModuleType:
    # Imported on demand: Ray is an optional extra, and its engine says how to install it.
    return importlib.import_module(ENGINES[name])


def plan(config: TransformConfig) -> tuple[list[ShardTask], list[ShardReport]]:
    """This node's shards to serve, and the reports of those skipped by --resume.

    Refuses to clobber existing outputs unless --resume or --overwrite says what to do.
    """
    to_stdout = config.output == io.STDIO
    shards = io.list_shards(
        config.input, None if to_stdout else config.output, manifest=config.manifest
    )
    if config.num_shards > 1:
        shards = assign(shards, config.num_shards)[config.shard_index]
    existing = set() if to_stdout else _existing_outputs(config.output)
    tasks, skipped, clobbered = [], [], []
    for shard in shards:
        if shard.uri == io.STDIO and not to_stdout:
            shard = replace(shard, rel="stdin")  # `- out/` writes out/stdin.out
        task = shard_task(shard, config)
        if shard.rel + task.suffix in existing:
            if config.resume:
                task.report.status, task.report.reason = "skipped", "output exists (--resume)"
                skipped.append(task.report)
                continue
            if not config.overwrite:
                clobbered.append(task.report.output)
        tasks.append(task)
    if clobbered:
        more = f" and {len(clobbered) - 3} more" if len(clobbered) > 3 else ""
        raise OutputExistsError(
            f"output already exists: {', '.join(clobbered[:3])}{more} "
            "(use --resume to skip finished shards or --overwrite to replace them)"
        )
    return tasks, skipped


def _existing_outputs(output: str) -> set[str]:
    """Paths (relative to OUTPUT) of what is already there, from one listing."""
    try:
        return {s.rel for s in io.list_shards(output)}
    except InputError:  # no output folder yet
        return set()


def _finish(
    summary: JobSummary, config: TransformConfig, complete: bool, log: Callable[[str], None]
) -> None:
    """Logs the summary and writes it: to --summary, or as OUTPUT's `_SUCCESS` when
    the job ran to its end and every shard succeeded."""
    for line in summary.lines():
        log(f"o2v-batch: {line}")
    target = config.summary
    if target is None and complete and config.output != io.STDIO and summary.shards_failed == 0:
        target = (
            config.output.rstrip("/") + "/" + summary_name(config.num_shards, config.shard_index)
        )
    if target is not None:
        io.write_atomic(target, summary.to_json())
