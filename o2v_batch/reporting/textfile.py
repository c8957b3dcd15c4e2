"""The figures a `transform` job leaves in a Prometheus text file (--metrics-file) for
the node exporter's textfile collector, on a registry of its own. prometheus_client is
imported only to write one: it took 25 ms of every job parent's start-up."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator

from o2v_batch import io
from o2v_batch.errors import ConfigError, O2VError
from o2v_batch.reporting.report import JobSummary

# Figures of the job summary, each a gauge o2v_batch_job_<field>: the last run's value.
JOB_FIGURES = (
    ("records_in", "Records read (with --resume, those of skipped shards too)."),
    ("records_out", "Predictions written."),
    ("bad_records", "Bad records, written as error objects (--on-bad-record emit-error)."),
    ("records_not_written", "Good records of shards that failed or were left unfinished."),
    ("truncated_sequences", "Sequences cut to the model's or --infer-max-seqlens' length."),
    ("mini_batches", "Mini-batches sent to the workers."),
    ("largest_mini_batch_bytes", "Record bytes of the largest mini-batch."),
    ("worker_restarts", "Workers replaced after dying or hanging."),
    ("mini_batch_retries", "Mini-batches tried again because their worker died or hung."),
    ("records_per_second", "Predictions written per second of the run."),
)
SHARD_STATUSES = ("ok", "failed", "skipped", "unfinished")


def check_textfile(path: str | None) -> None:
    """--metrics-file is a local file in a folder that exists: a ConfigError before the
    job starts, not a failure once it has run."""
    if path is None:
        return
    if path == io.STDIO or io.transport_for(path).REMOTE:
        raise ConfigError(
            f"--metrics-file must be a local path (the node exporter's textfile collector "
            f"reads a local folder), got {io.shown(path)}"
        )
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) or not os.path.isdir(folder):
        raise ConfigError(f"--metrics-file {io.shown(path)}: not a file in an existing folder")
    if not os.access(folder, os.W_OK):
        raise ConfigError(f"--metrics-file {io.shown(path)}: its folder is not writable")


class JobOutcome:
    """How a job ended, noted by the job as it finishes: its summary, once there is one,
    and whether it succeeded (every shard ok, and nothing raised)."""

    def __init__(self) -> None:
        self.summary: JobSummary | None = None
        self.succeeded = False

    def ended(self, summary: JobSummary, succeeded: bool) -> None:
        self.summary, self.succeeded = summary, succeeded


@contextlib.contextmanager
def job_metrics(path: str | None, log: Callable[[str], None]) -> Iterator[JobOutcome]:
    """Writes the job's metrics to `path` (None: nowhere) when the job ends, however it
    ends: one that raised, was interrupted or stopped by SIGTERM has success 0, and its
    figures when it got as far as a summary."""
    outcome = JobOutcome()
    try:
        yield outcome
    except BaseException:
        outcome.succeeded = False
        if path is not None:
            try:
                write_job_metrics(path, outcome)
            except O2VError as exc:  # the job's own error is the one to report
                log(f"o2v-batch: {exc}")
        raise
    if path is not None:
        write_job_metrics(path, outcome)


def write_job_metrics(path: str, outcome: JobOutcome) -> None:
    """The job's figures as a Prometheus text file, written atomically (a temp file
    beside it, renamed into place); O2VError when it cannot be written."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    registry = CollectorRegistry()

    def gauge(name: str, help: str, value: float) -> None:
        Gauge(f"o2v_batch_job_{name}", help, registry=registry).set(value)

    gauge("success", "1 when the job succeeded (exit status 0), else 0.", outcome.succeeded)
    gauge("last_run_timestamp_seconds", "When the job ended, in Unix time.", time.time())
    summary = outcome.summary
    if summary is not None:
        gauge("duration_seconds", "Seconds the job ran.", summary.seconds)
        shards = Gauge(
            "o2v_batch_job_shards", "Input shards by status.", ["status"], registry=registry
        )
        for status in SHARD_STATUSES:
            shards.labels(status).set(getattr(summary, f"shards_{status}"))
        for field, help in JOB_FIGURES:
            gauge(field, help, getattr(summary, field))
    try:
        write_to_textfile(path, registry)
    except OSError as exc:
        raise O2VError(
            f"cannot write --metrics-file {io.shown(path)}: {exc.strerror or exc}"
        ) from None
