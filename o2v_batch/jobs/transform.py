"""`transform(config) -> JobSummary`: checks the model, plans this node's shards
(listing, array-job share, --resume/--overwrite), hands them to an engine, and
writes the summary."""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType

import orjson

from o2v_batch import io
from o2v_batch.artifacts import check_model, resolve_model
from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard import ShardTask, shard_task
from o2v_batch.errors import (
    ConfigError,
    InputError,
    O2VError,
    OutputExistsError,
    StdoutClosed,
    UnsafePathError,
)
from o2v_batch.jobs.nodes import assign, summary_name
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.reporting.messages import shard_failed
from o2v_batch.reporting.progress import stderr_line
from o2v_batch.reporting.report import Faults, JobSummary, ShardReport, reader_closed
from o2v_batch.reporting.textfile import check_textfile, job_metrics


def transform(config: TransformConfig, log: Callable[[str], None] | None = None) -> JobSummary:
    """Runs a batch transform job; per-shard failures are reported in the summary, not raised."""
    log = log or stderr_line
    engine = checked_engine(config)
    start = time.monotonic()
    with job_metrics(config.metrics_file, log) as outcome, engine.prestart(config) as spares:
        # Before any input is listed or output written: a bad model fails at once, in one line.
        model_dir, hp = checked_model(config)
        planned = plan(config, hp)
        tasks, unserved = planned.tasks, planned.unserved
        for report in unserved:
            if report.status == "failed":
                log(shard_failed(report.reason or ""))
        # What killed writers of an earlier run left (temp files, open uploads) goes
        # first, for either engine: of the shards to serve, and of those --resume skips
        # as done (a run that died as it committed one can leave its upload open: the
        # server finished the object, not the cleanup), whose parts would stay billed.
        skipped = [r.output for r in unserved if r.status == "skipped"]
        io.discard_partial([t.report.output for t in tasks] + skipped)
        faults, complete, quiet = Faults(), False, False
        try:
            if tasks:  # a resume with nothing left serves nothing: its spares stop
                engine.run(config, tasks, model_dir, log, faults, spares)
            complete = True
        except StdoutClosed:
            # `... | head -3`: no failure to report, as a Unix tool stopped by a closed
            # pipe says nothing; one line says how far it got instead of the summary.
            log(reader_closed([t.report for t in tasks]))
            quiet = True
            raise
        finally:
            reports = [t.report for t in tasks] + unserved
            summary = JobSummary.of(reports, faults, time.monotonic() - start)
            outcome.ended(summary, complete and summary.shards_failed == 0)
            _finish(summary, config, complete, log, quiet)
    return summary


def checked_engine(config: TransformConfig) -> ModuleType:
    """The job's engine, once it and OUTPUT can take the job (a usage error if not)."""
    engine = _engine(config.engine)
    engine.check(config)
    _check_output(config.output)
    check_textfile(config.metrics_file)
    return engine


def checked_model(config: TransformConfig) -> tuple[str, Hyperparameters]:
    """The model's local folder and hyperparameters, fetched and checked without torch."""
    model_dir = resolve_model(config.model)
    return model_dir, check_model(model_dir, encoders_only=config.mode == "embedding")


def _engine(name: str) -> ModuleType:
    # One of config.ENGINES, imported on demand: Ray is an optional extra, and its engine
    # says how to install it.
    return importlib.import_module(f"o2v_batch.engines.{name}")


def _check_output(output: str) -> None:
    """OUTPUT is a folder, a prefix or stdout: an existing file there is a usage error."""
    if output != io.STDIO and not io.transport_for(output).REMOTE and io.size(output) is not None:
        raise ConfigError(
            f"OUTPUT {io.shown(output)} is a file: it must be a folder, s3://bucket/prefix/ "
            "or - (stdout)"
        )


@dataclass
class Plan:
    """This node's shards to serve, and the reports of those it does not serve: skipped
    by --resume, or failed at once because their output path would be unsafe (a
    backslash in a file name), so that the other shards still run."""

    tasks: list[ShardTask]
    unserved: list[ShardReport]
    nodes: list[list[io.Shard]]  # every node's shards (one node unless --num-shards)


def plan(config: TransformConfig, hp: Hyperparameters) -> Plan:
    """What this node does: the one plan of a job and of its --dry-run.

    Refuses an empty input unless --allow-empty, and to clobber existing outputs unless
    --resume or --overwrite says what to do.
    """
    to_stdout = config.output == io.STDIO
    shards = io.list_shards(
        config.input, None if to_stdout else config.output, manifest=config.manifest
    )
    if not shards and not config.allow_empty:
        # A nightly job on an empty prefix usually means that something upstream failed.
        raise InputError(
            f"no input shards under {io.shown(config.input)} (--allow-empty accepts an empty input)"
        )
    nodes = assign(shards, config.num_shards) if config.num_shards > 1 else [shards]
    existing = set() if to_stdout else io.list_outputs(config.output)
    tasks, skipped, clobbered, refused = [], [], [], []
    for shard in nodes[config.shard_index]:
        if shard.uri == io.STDIO and not to_stdout:
            shard = replace(shard, rel="stdin")  # `- out/` writes out/stdin.out
        try:
            task = shard_task(shard, config, hp)
        except UnsafePathError as exc:
            refused.append(ShardReport(shard.uri, "", status="failed", reason=str(exc)))
            continue
        if shard.rel + task.suffix in existing:
            if config.resume:
                skipped.append(task.report)
                continue
            if not config.overwrite:
                clobbered.append(task.report.output)
        tasks.append(task)
    if clobbered:
        shown = [io.shown(uri) for uri in clobbered[:3]]
        # In the Python API's words, TransformConfig's; the CLI says its own.
        raise OutputExistsError(shown, len(clobbered), True, "resume=True", "overwrite=True")
    if skipped:
        _count_skipped(skipped, _earlier_counts(config))
    return Plan(tasks, skipped + refused, nodes)


def _count_skipped(reports: list[ShardReport], earlier: dict[str, tuple[int, int]]) -> None:
    """Shards skipped by --resume are done: they count with what an earlier run wrote."""
    for report in reports:
        report.status, report.reason = "skipped", "output exists (--resume)"
        key = io.shown(report.shard)  # summaries key their shards as messages show them
        if key in earlier:
            report.records_out, report.bad_records = earlier[key]
            report.records_in = report.records_out + report.bad_records
        else:
            report.counted = False
            report.reason += "; records not counted (no earlier summary)"


def _earlier_counts(config: TransformConfig) -> dict[str, tuple[int, int]]:
    """(records out, bad records) of each shard done, from the summaries earlier runs
    wrote here: OUTPUT's `_SUCCESS`, the --summary file, and last the progress file of
    a run that stopped or failed (it is newer than `_SUCCESS` whenever both exist)."""
    counts: dict[str, tuple[int, int]] = {}
    for uri in [*_summary_targets(config, complete=True, failed=0), *_progress_target(config)]:
        earlier = _read_summary(uri)
        # One written by an older version has no per-shard counts: its shards go uncounted.
        out = earlier.get("records_out_by_shard") or {}
        bad = earlier.get("bad_records_by_shard") or {}
        counts.update({shard: (n, bad.get(shard, 0)) for shard, n in out.items()})
    return counts


def _read_summary(uri: str) -> dict:
    """A summary written earlier, or {} when there is none to read."""
    try:
        with io.open_read(uri, decompress=False) as stream:
            document = orjson.loads(stream.read())
    except (O2VError, OSError, ValueError):
        return {}
    return document if isinstance(document, dict) else {}


def _summary_targets(config: TransformConfig, complete: bool, failed: int) -> list[str]:
    """Where the summary goes: --summary PATH, and also OUTPUT's `_SUCCESS` when the
    job ran to its end and every shard succeeded."""
    targets = [config.summary] if config.summary else []
    if complete and failed == 0 and config.output != io.STDIO:
        name = summary_name(config.num_shards, config.shard_index)
        targets.append(config.output.rstrip("/") + "/" + name)
    return list(dict.fromkeys(targets))


def _progress_target(config: TransformConfig) -> list[str]:
    """OUTPUT's hidden `_PROGRESS` (`_PROGRESS.K-of-N` per array-job node): the summary
    of a run that stopped or failed, so that --resume counts the shards it finished."""
    if config.output == io.STDIO:
        return []
    name = summary_name(config.num_shards, config.shard_index).replace("_SUCCESS", "_PROGRESS")
    return [config.output.rstrip("/") + "/" + name]


def _finish(
    summary: JobSummary,
    config: TransformConfig,
    complete: bool,
    log: Callable[[str], None],
    quiet: bool = False,
) -> None:
    """Logs the summary (unless `quiet`) and writes it where it goes: a job that stopped
    or failed leaves its progress for --resume; a whole one removes earlier progress,
    which `_SUCCESS` now holds."""
    if not quiet:
        for line in summary.lines():
            log(f"o2v-batch: {line}")
    document = summary.to_json()
    for target in _summary_targets(config, complete, summary.shards_failed):
        io.write_atomic(target, document)
    succeeded = complete and summary.shards_failed == 0
    for target in _progress_target(config):
        _update_progress(target, succeeded, summary, document, log)


def _update_progress(
    target: str, succeeded: bool, summary: JobSummary, document: bytes, log: Callable[[str], None]
) -> None:
    """Removes the progress file once the job succeeded; else writes it when this run
    has shards to add to it, or one left by an earlier run is there to bring up to date.
    Best effort: without it, a --resume still finishes the job and only says which
    shards it could not count."""
    try:
        if succeeded:
            io.delete(target)
        elif summary.records_out_by_shard or io.size(target) is not None:
            io.write_atomic(target, document)
    except (O2VError, OSError) as exc:
        log(f"o2v-batch: {io.describe_error(exc, target)} (a --resume cannot count this run)")
