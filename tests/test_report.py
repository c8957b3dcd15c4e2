"""Shard reports, the job summary added up from them, messages and the progress bar."""

from __future__ import annotations

import json
import re
import time

import pytest

from o2v_batch.errors import InputError
from o2v_batch.reporting.messages import (
    count,
    oversize_problem,
    plural,
    rate,
    read_failure,
    record_failure,
    recovered,
    size,
)
from o2v_batch.reporting.progress import Progress, stderr_line
from o2v_batch.reporting.report import Faults, JobSummary, ShardReport


def _reports() -> list[ShardReport]:
    ok = ShardReport("in/a.jsonl", "out/a.jsonl.out", status="ok", records_out=5, bad_records=1)
    ok.count_batch(3, 300)
    ok.count_batch(3, 120)
    ok.records_in += 0
    failed = ShardReport("in/b.jsonl", "out/b.jsonl.out", status="failed", reason="in/b.jsonl: x")
    failed.count_batch(2, 500)
    failed.truncated = 4
    skipped = ShardReport("in/c.jsonl", "out/c.jsonl.out", status="skipped", reason="exists")
    running = ShardReport("in/d.jsonl", "out/d.jsonl.out")
    return [ok, failed, skipped, running]


def test_summary_counts_come_from_the_reports():
    summary = JobSummary.of(_reports(), Faults(worker_restarts=2), seconds=2.0)
    assert (summary.shards_ok, summary.shards_failed) == (1, 1)
    assert (summary.shards_skipped, summary.shards_unfinished) == (1, 1)
    assert (summary.records_in, summary.records_out, summary.bad_records) == (8, 5, 1)
    assert (summary.mini_batches, summary.largest_mini_batch_bytes) == (3, 500)
    assert summary.truncated_sequences == 4
    assert summary.records_per_second == 2.5
    assert summary.failed == [{"shard": "in/b.jsonl", "reason": "in/b.jsonl: x"}]
    assert summary.skipped == [{"shard": "in/c.jsonl", "reason": "exists"}]
    assert summary.bad_records_by_shard == {"in/a.jsonl": 1}
    assert json.loads(summary.to_json())["worker_restarts"] == 2


def test_summary_of_nothing():
    summary = JobSummary.of([], Faults(), seconds=0.0)
    assert summary.records_per_second == 0.0
    assert summary.lines()[0] == "shards: 0 ok, 0 failed, 0 skipped"


def test_summary_lines():
    lines = JobSummary.of(_reports(), Faults(), 2.0).lines()
    assert lines[0] == "shards: 1 ok, 1 failed, 1 skipped, 1 unfinished"
    assert lines[1] == "records: 8 in, 5 out, 1 bad, 2 not written, 4 truncated sequences"
    assert lines[2] == "mini-batches: 3 (largest 500 bytes)"
    assert lines[3].startswith("time: ")
    assert lines[4:] == ["failed: in/b.jsonl: x", "skipped: in/c.jsonl: exists"]


def test_restarts_and_retries_appear_in_the_summary_lines():
    faults = Faults(worker_restarts=1, mini_batch_retries=2)
    summary = JobSummary.of(_reports(), faults, 2.0)
    assert summary.lines()[3] == "faults: 1 worker restart, 2 mini-batch retries"
    assert json.loads(summary.to_json())["mini_batch_retries"] == 2


def test_a_big_job_reads_in_one_number_style():
    """Counts and rates alike, with thousands separators; singular where one."""
    ok = ShardReport("a", "a.out", status="ok", records_in=400_002, records_out=400_002)
    ok.count_batch(0, 6_291_000)
    ok.mini_batches, ok.truncated = 1_205, 1
    summary = JobSummary.of([ok], Faults(worker_restarts=1, mini_batch_retries=1), 14.679)
    assert summary.lines() == [
        "shards: 1 ok, 0 failed, 0 skipped",
        "records: 400,002 in, 400,002 out, 0 bad, 0 not written, 1 truncated sequence",
        "mini-batches: 1,205 (largest 6,291,000 bytes)",
        "faults: 1 worker restart, 1 mini-batch retry",
        "time: 14.68 s, 27,250 records/s",
    ]
    assert summary.records_per_second == 27249.9


@pytest.mark.parametrize(
    ("records", "seconds", "shown", "kept"),
    [
        (3, 1.43, "2.1", 2.1),
        (21, 5.0, "4.2", 4.2),
        (1, 70.0, "0.0143", 0.0143),
        (500, 12.0, "41.7", 41.7),
        (0, 3.0, "0", 0.0),
    ],
)
def test_a_small_jobs_rate_keeps_three_significant_figures(records, seconds, shown, kept):
    ok = ShardReport("a", "a.out", status="ok", records_in=records, records_out=records)
    summary = JobSummary.of([ok], Faults(), seconds)
    assert summary.lines()[-1].endswith(f", {shown} records/s")
    assert summary.records_per_second == kept


def test_numbers_are_written_by_one_set_of_helpers():
    assert [count(0), count(999), count(1000), count(400002)] == ["0", "999", "1,000", "400,002"]
    assert [plural(1, "request"), plural(4, "request")] == ["1 request", "4 requests"]
    assert plural(2, "retry", "retries") == "2 retries"
    assert [rate(27249.4), rate(99.96), rate(4.2), rate(0.05), rate(0)] == [
        "27,249",
        "100",
        "4.2",
        "0.05",
        "0",
    ]
    assert [size(6 * 2**20), size(500 * 2**10), size(1048), size(1)] == [
        "6 MB",
        "500 KB",
        "1,048 bytes",
        "1 byte",
    ]


def test_records_in_are_out_bad_or_not_written_whatever_became_of_their_shard():
    ok = ShardReport("a", "a.out", status="ok", records_in=10, records_out=7, bad_records=3)
    failed = ShardReport("b", "b.out", status="failed", records_in=9, bad_records=2)
    unfinished = ShardReport("c", "c.out", records_in=6)
    skipped = ShardReport("d", "d.out", status="skipped", records_in=4, records_out=4)
    summary = JobSummary.of([ok, failed, unfinished, skipped], Faults(), 1.0)
    assert [r.not_written for r in (ok, failed, unfinished, skipped)] == [0, 7, 6, 0]
    assert (summary.records_in, summary.records_out, summary.bad_records) == (29, 11, 5)
    assert summary.records_not_written == 13
    assert summary.records_in == (
        summary.records_out + summary.bad_records + summary.records_not_written
    )
    # Only this run's predictions count towards its speed; skipped shards were done before.
    assert summary.records_per_second == 7.0


def test_done_shards_leave_their_counts_for_a_later_resume():
    ok = ShardReport("a", "a.out", status="ok", records_in=3, records_out=3)
    counted = ShardReport("b", "b.out", status="skipped", records_in=5, records_out=4)
    uncounted = ShardReport("c", "c.out", status="skipped", counted=False)
    failed = ShardReport("d", "d.out", status="failed", records_in=2)
    summary = JobSummary.of([ok, counted, uncounted, failed], Faults(), 1.0)
    assert summary.records_out_by_shard == {"a": 3, "b": 4}


def test_recovery_lines():
    assert recovered("worker 7 was killed by SIGKILL", True, None) == (
        "o2v-batch: worker 7 was killed by SIGKILL; started a new worker"
    )
    assert recovered("worker 7 exited with status 3", True, "retrying x (attempt 2 of 4)") == (
        "o2v-batch: worker 7 exited with status 3; started a new worker and retrying x "
        "(attempt 2 of 4)"
    )
    assert recovered("the worker raised E: boom", False, "retrying y") == (
        "o2v-batch: the worker raised E: boom; retrying y"
    )


def test_a_report_takes_over_what_a_remote_worker_counted():
    mine = ShardReport("in/a.jsonl", "out/a.jsonl.out")
    theirs = ShardReport("in/a.jsonl", "out/a.jsonl.out", status="ok", records_out=7)
    theirs.count_batch(7, 70)
    mine.take(theirs)
    assert mine == theirs and mine is not theirs


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (InputError("input not found: in/a.jsonl"), "input not found: in/a.jsonl"),
        (InputError("cannot read it"), "in/a.jsonl: cannot read it"),
    ],
)
def test_read_failure_names_the_shard_once(exc, expected):
    assert read_failure("in/a.jsonl", exc) == expected


def test_record_and_oversize_messages():
    assert record_failure("a.json", 3, "application/json", "bad") == "a.json: instances[3]: bad"
    assert record_failure("a.jsonl", 3, "application/jsonlines", "bad") == "a.jsonl: line 3: bad"
    assert oversize_problem(5000, 1048, True) == (
        "record is 5,000 bytes, over the --max-payload cap of 1,048 bytes"
    )
    assert oversize_problem(5000, 1048, False) == (
        "record is 5,000 bytes, over the limit of 1,048 bytes for one record"
    )


def test_a_disabled_progress_bar_is_still_a_bar(capsys):
    bar = Progress(False, 100)
    bar.show(10, 2)
    bar.close()
    assert capsys.readouterr().err == ""


def test_the_bar_shows_bytes_done_of_the_total_and_records_never_0_00(capsys):
    bar = Progress(True, 4 * 2**20)
    # Drawn at once, before anything is done, with nothing tqdm would write as "0.00".
    assert capsys.readouterr().err == "\ro2v-batch:   0%|          | 0/4.00M [00:00<?, 0 records]"
    bar.show(2**20, 1234)
    bar.show(4 * 2**20, 5000)
    bar.close()
    err = capsys.readouterr().err
    assert "0.00" not in err
    assert "25%" in err and "1.00M/4.00M" in err and "1,234 records]" in err
    assert "100%" in err and "4.00M/4.00M" in err and "5,000 records]" in err


def test_the_bars_time_moves_while_nothing_is_done(capsys):
    """Redrawn on a timer: a job whose workers take seconds to start shows them passing."""
    bar = Progress(True, 100)
    time.sleep(1.3)
    seen = capsys.readouterr().err
    bar.close()
    assert "| 0/100 [00:01<?, 0 records]" in seen


def test_without_a_total_the_bar_counts_bytes(capsys):
    bar = Progress(True, None)
    bar.show(3 * 2**20, 7)
    bar.close()
    err = capsys.readouterr().err
    assert err.startswith("\ro2v-batch: 0B [00:00, 0 records]")
    assert "3.00MB" in err and "7 records]" in err and "%" not in err


def test_lines_go_above_the_bar_never_onto_it(capsys):
    bar = Progress(True, 100)
    bar.show(40, 4)
    stderr_line("o2v-batch: shard failed: in/a.jsonl: line 3: bad")
    bar.show(100, 10)
    bar.close()
    err = capsys.readouterr().err
    before, _, after = err.partition("o2v-batch: shard failed: in/a.jsonl: line 3: bad\n")
    # The bar's line is blanked and the message starts at its beginning.
    assert re.search(r"4 records\]\r +\r$", before)
    assert "100%" in after
