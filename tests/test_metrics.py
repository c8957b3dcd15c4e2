"""Prometheus metrics, read back with prometheus_client's own parser: `serve`'s /metrics
against the requests a test sent, and transform's --metrics-file against the job's
--summary file."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import prometheus_client
import psutil
import pytest
from click.testing import CliRunner
from conftest import REPO
from helpers import random_records, write_jsonl
from prometheus_client.parser import text_string_to_metric_families
from test_serve import JSONLINES, MODEL, Served, call, invoke, serve_command
from test_serve_warm_up import _served

from o2v_batch.cli import main
from o2v_batch.reporting.metrics import ServeMetrics
from o2v_batch.serve.app import ROUTES

REQUESTS = REPO / "examples" / "requests"
TRANSFORM = (sys.executable, "-m", "o2v_batch", "transform")
# The summary's figures, each a gauge o2v_batch_job_<field> of the text file.
JOB_FIGURES = (
    *("records_in", "records_out", "bad_records", "records_not_written"),
    *("truncated_sequences", "mini_batches", "largest_mini_batch_bytes"),
    *("worker_restarts", "mini_batch_retries", "records_per_second"),
)


def parsed(text: str) -> dict[tuple[str, frozenset], float]:
    """{(sample name, its labels): value} of an exposition, as Prometheus would read it."""
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[name, frozenset(labels.items())]


def scrape(port: int) -> dict:
    status, content_type, body = call(port, "GET", "/metrics")
    assert (status, content_type) == (200, prometheus_client.CONTENT_TYPE_LATEST)
    return parsed(body.decode())


# -- serve ------------------------------------------------------------------------


def test_every_unknown_path_counts_under_one_label_and_no_global_registry_is_used():
    metrics = ServeMetrics(ROUTES)
    ServeMetrics(ROUTES)  # a second server's metrics in one process: no clash

    async def answer(path: str, status: int) -> None:
        async def send(message: dict) -> None:
            pass

        with metrics.request(path, send) as noting:
            await noting({"type": "http.response.start", "status": status})

    for path in ("/models", "/a/b", "/ping/", "/" + "x" * 300):
        asyncio.run(answer(path, 404))
    asyncio.run(answer("/ping", 200))
    samples = parsed(metrics.exposition().decode())
    routes = {dict(labels)["route"] for (name, labels) in samples if "route" in dict(labels)}
    assert routes == {*ROUTES, "other"}
    assert value(samples, "o2v_batch_requests_total", route="other", status="404") == 4
    assert value(samples, "o2v_batch_requests_total", route="/ping", status="200") == 1
    assert not [m.name for m in prometheus_client.REGISTRY.collect() if "o2v" in m.name]


@pytest.fixture
def server(tmp_path):
    """A server of its own for each test: the counts are exactly the test's requests."""
    log = tmp_path / "serve.log"
    served = Served(serve_command("--model", str(MODEL), "--workers", "1"), log)
    started = time.monotonic()
    served.pings = served.wait_ready()
    served.ready_within = time.monotonic() - started
    yield served
    assert served.terminate() == 0, log.read_text()


def _send_mixed(port: int) -> tuple[collections.Counter, int, int]:
    """Good and refused requests: (their (route, status) tally, records answered with
    predictions, requests a worker answered)."""
    sent: collections.Counter = collections.Counter()
    pairs = (REQUESTS / "pairs.jsonl").read_bytes().splitlines(keepends=True)
    good = [b"".join(pairs[i : i + n]) for i, n in ((0, 1), (1, 7), (8, 20), (28, 23))]
    for body in good:
        assert invoke(port, body, JSONLINES)[0] == 200
    documented = (REQUESTS / "documented.json").read_bytes()
    assert invoke(port, documented, "application/json")[0] == 200
    sent["/invocations", "200"] += len(good) + 1
    records = sum(body.count(b"\n") for body in good) + 3
    for body in (b'{"in0": "x"}\n', b'{"in0": [1]}\n{"in9": [1]}\n'):
        assert invoke(port, body, JSONLINES)[0] == 400  # a bad record: a worker said so
    sent["/invocations", "400"] += 2
    assert invoke(port, b"1,2", "text/csv")[0] == 415
    sent["/invocations", "415"] += 1
    for method, path, status in (
        ("GET", "/invocations", 405),
        ("POST", "/metrics", 405),
        ("GET", "/models/1?x=2", 404),
        ("DELETE", "/anything", 404),
        ("GET", "/execution-parameters", 200),
    ):
        assert call(port, method, path)[0] == status
        sent[path if path in ROUTES else "other", str(status)] += 1
    return sent, records, len(good) + 1 + 2


@pytest.mark.slow
def test_metrics_count_what_was_sent_by_route_and_status(server):
    sent, records, answered = _send_mixed(server.port)
    assert call(server.port, "GET", "/models")[1:] == (
        "text/plain; charset=utf-8",
        b"not found: use /ping, /invocations, /execution-parameters, /metrics\n",
    )
    sent["other", "404"] += 1
    sent.update(("/ping", str(status)) for status in server.pings)
    samples = scrape(server.port)
    counted = {
        (dict(labels)["route"], dict(labels)["status"]): count
        for (name, labels), count in samples.items()
        if name == "o2v_batch_requests_total"
    }
    assert counted == dict(sent)  # the scrape itself is counted once it is answered
    for route in (*ROUTES, "other"):
        requests = sum(n for (r, _), n in sent.items() if r == route)
        duration = "o2v_batch_request_duration_seconds"
        assert value(samples, f"{duration}_count", route=route) == requests, route
        assert value(samples, f"{duration}_bucket", route=route, le="+Inf") == requests
    assert value(samples, "o2v_batch_records_served_total") == records
    assert value(samples, "o2v_batch_mini_batches_served_total") == answered
    assert value(samples, "o2v_batch_queue_depth") == 0
    assert value(samples, "o2v_batch_requests_in_flight") == 0
    assert value(samples, "o2v_batch_worker_restarts_total") == 0
    assert 0 < value(samples, "o2v_batch_model_load_seconds") < server.ready_within
    again = scrape(server.port)
    assert value(again, "o2v_batch_requests_total", route="/metrics", status="200") == 1


@pytest.mark.slow
def test_a_killed_worker_counts_one_restart_and_one_retry(server):
    before = scrape(server.port)
    (worker,) = server.workers()
    worker.kill()
    deadline = time.monotonic() + 10
    while not _dead(worker):  # a zombie until the server notices: psutil cannot wait for it
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert invoke(server.port, b'{"in0": [1, 2]}\n', JSONLINES)[0] == 200
    after = scrape(server.port)
    for name in ("o2v_batch_worker_restarts_total", "o2v_batch_mini_batch_retries_total"):
        assert value(after, name) - value(before, name) == 1, name
    assert (
        value(after, "o2v_batch_records_served_total")
        - value(before, "o2v_batch_records_served_total")
        == 1
    )


def _dead(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


@pytest.mark.slow
def test_metrics_answer_at_once_while_the_workers_are_busy(tmp_path):
    """One slow worker holding 2 requests (1 s each) and 2 more queued: /metrics says so
    without waiting, and its own latency stays out of /invocations'."""
    served = _served(tmp_path, "slow_servers:Slow")
    try:
        served.wait_ready()
        answers = []
        threads = [
            threading.Thread(
                target=lambda: answers.append(invoke(served.port, b'{"in0": [1]}\n', JSONLINES))
            )
            for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        seen, deadline = [], time.monotonic() + 30
        while (2, 2) not in seen and time.monotonic() < deadline:
            samples = scrape(served.port)
            seen.append(
                (
                    value(samples, "o2v_batch_requests_in_flight"),
                    value(samples, "o2v_batch_queue_depth"),
                )
            )
        # Answered while all four requests waited: a scrape does not queue behind them.
        assert (2, 2) in seen, seen
        for thread in threads:
            thread.join(60)
        assert [status for status, _, _ in answers] == [200] * 4
        samples = scrape(served.port)
    finally:
        assert served.terminate() == 0, served.log.read_text()
    duration = "o2v_batch_request_duration_seconds"
    # Each request waited for the slow worker (1 s): none in the 0.5 s bucket. The
    # scrapes are counted under /metrics alone.
    assert value(samples, f"{duration}_count", route="/invocations") == 4
    assert value(samples, f"{duration}_bucket", route="/invocations", le="0.5") == 0
    assert value(samples, f"{duration}_count", route="/metrics") == len(seen)


# -- transform --------------------------------------------------------------------


def _transform(tmp_path: Path, *options: str, records: bytes | None = None) -> tuple:
    """Runs a real job over the example requests plus `records`: (exit status, stderr,
    the metrics file's samples or None, the --summary file's document or None)."""
    shard = tmp_path / "in" / "requests.jsonl"
    shard.parent.mkdir(exist_ok=True)
    shard.write_bytes((REQUESTS / "documented.jsonl").read_bytes() + (records or b""))
    metrics, summary = tmp_path / "job.prom", tmp_path / "summary.json"
    done = subprocess.run(
        [
            *TRANSFORM,
            *(str(shard.parent), str(tmp_path / "out"), "--workers", "1", "--no-progress"),
            *("--metrics-file", str(metrics), "--summary", str(summary), *options),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    read = parsed(metrics.read_text()) if metrics.exists() else None
    document = json.loads(summary.read_text()) if summary.exists() else None
    return done.returncode, done.stderr, read, document


def _assert_as_summary(samples: dict, summary: dict) -> None:
    """Every figure of the text file equals the summary's."""
    for field in JOB_FIGURES:
        assert value(samples, f"o2v_batch_job_{field}") == summary[field], field
    for status in ("ok", "failed", "skipped", "unfinished"):
        assert value(samples, "o2v_batch_job_shards", status=status) == summary[f"shards_{status}"]
    assert value(samples, "o2v_batch_job_duration_seconds") == summary["seconds"]


@pytest.mark.slow  # a whole job
def test_the_metrics_file_holds_the_summary_of_a_job_with_a_bad_record(tmp_path):
    began = time.time()
    status, err, samples, summary = _transform(
        tmp_path, "--model", str(MODEL), "--on-bad-record", "emit-error", records=b'{"in0": "x"}\n'
    )
    assert status == 0, err
    assert (summary["records_in"], summary["records_out"], summary["bad_records"]) == (4, 3, 1)
    _assert_as_summary(samples, summary)
    assert value(samples, "o2v_batch_job_success") == 1
    assert began <= value(samples, "o2v_batch_job_last_run_timestamp_seconds") <= time.time()
    assert sorted(os.listdir(tmp_path)) == ["in", "job.prom", "out", "summary.json"]  # no temp file


@pytest.mark.slow  # a whole job
def test_a_job_with_a_failed_shard_writes_success_0(tmp_path):
    status, err, samples, summary = _transform(
        tmp_path, "--model", str(MODEL), records=b'{"in0": "x"}\n'
    )
    assert status == 1, err
    assert summary["shards_failed"] == 1
    _assert_as_summary(samples, summary)
    assert value(samples, "o2v_batch_job_success") == 0


def test_a_job_that_cannot_start_writes_success_0_and_no_figures(tmp_path):
    status, err, samples, summary = _transform(tmp_path, "--model", str(tmp_path / "missing"))
    assert status == 1 and "missing" in err
    assert summary is None
    assert {name for name, _ in samples} == {
        "o2v_batch_job_success",
        "o2v_batch_job_last_run_timestamp_seconds",
    }
    assert value(samples, "o2v_batch_job_success") == 0


@pytest.mark.slow
def test_a_job_stopped_by_sigterm_writes_success_0_and_its_summary_figures(tmp_path):
    """One record per mini-batch (about 500 records/s): the small shard is written while
    the big one is still being served, and SIGTERM stops the job then."""
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(300, seed=1))
    write_jsonl(tmp_path / "in" / "b.jsonl", random_records(3000, seed=2))
    metrics, summary, out = tmp_path / "job.prom", tmp_path / "summary.json", tmp_path / "out"
    job = subprocess.Popen(
        [
            *TRANSFORM,
            *(str(tmp_path / "in"), str(out), "--model", str(MODEL), "--workers", "1"),
            *("--strategy", "SingleRecord", "--no-progress"),
            *("--metrics-file", str(metrics), "--summary", str(summary)),
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (out / "a.jsonl.out").exists():
            assert time.monotonic() < deadline and job.poll() is None, "a.jsonl was not written"
            time.sleep(0.05)
        job.send_signal(signal.SIGTERM)
        _, err = job.communicate(timeout=60)
    finally:
        job.kill()
    assert job.returncode == 143, err
    samples, document = parsed(metrics.read_text()), json.loads(summary.read_text())
    assert (document["shards_ok"], document["shards_unfinished"]) == (1, 1)
    assert document["records_out"] == 300
    _assert_as_summary(samples, document)
    assert value(samples, "o2v_batch_job_success") == 0


@pytest.mark.parametrize(
    ("path", "message"),
    [
        ("s3://bucket/job.prom", "--metrics-file must be a local path"),
        ("-", "--metrics-file must be a local path"),
        ("no/such/folder/job.prom", "not a file in an existing folder"),
        (".", "not a file in an existing folder"),
    ],
)
def test_a_metrics_file_that_cannot_be_written_locally_is_a_usage_error(tmp_path, path, message):
    job = ("transform", str(REQUESTS), str(tmp_path / "out"), "--model", str(MODEL))
    result = CliRunner().invoke(main, [*job, "--metrics-file", path])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert not (tmp_path / "out").exists()


def test_a_metrics_file_in_a_folder_this_user_cannot_write_is_a_usage_error(tmp_path, monkeypatch):
    """As root every folder is writable, so the folder's answer is made up here."""
    real = os.access

    def access(path, mode, **options) -> bool:
        if mode == os.W_OK and str(path) == str(tmp_path):
            return False
        return real(path, mode, **options)

    monkeypatch.setattr(os, "access", access)
    job = ("transform", str(REQUESTS), str(tmp_path / "out"), "--model", str(MODEL))
    result = CliRunner().invoke(main, [*job, "--metrics-file", str(tmp_path / "job.prom")])
    assert result.exit_code == 2, result.output
    assert "its folder is not writable" in result.output
