"""Prometheus metrics: what `serve` exposes at `/metrics`, and the figures a `transform`
job leaves in a text file for the node exporter's textfile collector.

Built with prometheus_client, each on a registry of its own (never the library's
global default registry), so a program that imports o2v-batch keeps its registry clean.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    write_to_textfile,
)

from o2v_batch import io
from o2v_batch.errors import ConfigError, O2VError
from o2v_batch.reporting.report import JobSummary

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
# The label of every path that is not a route: the raw path would let clients make
# series without end.
OTHER_ROUTE = "other"
# Request latency: 1 ms (a 1-record request on CPU takes about 5) up to a minute.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    """The metrics of one `serve` process: the HTTP side counts requests, the worker
    pool's thread counts what the workers served and recovered from."""

    def __init__(self, routes: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
        self._routes = frozenset(routes)
        self._requests = Counter(
            "o2v_batch_requests",
            "HTTP requests answered, by route (other: any unknown path) and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "o2v_batch_request_duration_seconds",
            "Seconds from a request's headers to the end of its response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for route in (*sorted(self._routes), OTHER_ROUTE):
            self._latency.labels(route)  # every route's series exists, at 0, from the start
        self._records = self._counter("records_served", "Records answered with a prediction.")
        self._mini_batches = self._counter(
            "mini_batches_served",
            "Mini-batches (requests with records) the workers answered, bad records included.",
        )
        self._restarts = self._counter(
            "worker_restarts", "Workers replaced after dying or hanging."
        )
        self._retries = self._counter(
            "mini_batch_retries", "Requests tried again because their worker died or hung."
        )
        self.queue_depth = self._gauge("queue_depth", "Requests waiting for a worker.")
        self.in_flight = self._gauge("requests_in_flight", "Requests the workers hold.")
        self._load_seconds = self._gauge(
            "model_load_seconds",
            "Seconds from start until a worker had loaded the model and served the warm-up "
            "request.",
        )

    def _counter(self, name: str, help: str) -> Counter:
        return Counter(f"o2v_batch_{name}", help, registry=self.registry)

    def _gauge(self, name: str, help: str) -> Gauge:
        return Gauge(f"o2v_batch_{name}", help, registry=self.registry)

    def exposition(self) -> bytes:
        """The body of `GET /metrics` (its type: CONTENT_TYPE)."""
        return generate_latest(self.registry)

    @contextlib.contextmanager
    def request(self, path: str, send: Callable) -> Iterator[Callable]:
        """Counts and times one request: yields the ASGI `send` to answer it through,
        which notes the status it answers with."""
        route = path if path in self._routes else OTHER_ROUTE
        status = [500]  # what uvicorn answers when the app raises before answering

        async def noting(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            yield noting
        finally:
            self._latency.labels(route).observe(time.perf_counter() - start)
            self._requests.labels(route, str(status[0])).inc()

    def served(self, records: int, bad: bool) -> None:
        """A worker answered a request of `records` records; `bad`: one of them was bad,
        so the request fails with none served."""
        self._mini_batches.inc()
        if not bad:
            self._records.inc(records)

    def recovered(self, restarted: bool, retried: bool) -> None:
        self._restarts.inc(restarted)
        self._retries.inc(retried)

    def loaded(self, seconds: float) -> None:
        self._load_seconds.set(seconds)


# -- transform's text file ------------------------------------------------------

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
