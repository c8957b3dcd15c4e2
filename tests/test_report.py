"""Shard reports, the job summary added up from them, messages and the progress bar."""

from __future__ import annotations

import json

import pytest

from o2v_batch.errors import InputError
from o2v_batch.report import (
    JobSummary,
    ShardReport,
    oversize_problem,
    progress_bar,
    read_failure,
    record_failure,
)


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
    summary = JobSummary.of(_reports(), worker_restarts=2, seconds=2.0)
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
    summary = JobSummary.of([], worker_restarts=0, seconds=0.0)
    assert summary.records_per_second == 0.0
    assert summary.lines()[0] == "shards: 0 ok, 0 failed, 0 skipped"


def test_summary_lines():
    lines = JobSummary.of(_reports(), 0, 2.0).lines()
    assert lines[0] == "shards: 1 ok, 1 failed, 1 skipped, 1 unfinished"
    assert lines[1] == "records: 8 in, 5 out, 1 bad, 4 truncated sequences"
    assert lines[2] == "mini-batches: 3 (largest 500 bytes)"
    assert lines[4:] == ["failed: in/b.jsonl: x", "skipped: in/c.jsonl: exists"]


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
        "record is 5000 bytes, over the --max-payload cap of 1048 bytes"
    )
    assert oversize_problem(5000, 1048, False) == (
        "record is 5000 bytes, over the limit of 1048 bytes for one record"
    )


def test_a_disabled_progress_bar_is_still_a_bar(capsys):
    bar = progress_bar(False)
    bar.update(10)
    bar.set_postfix_str("1.0 KiB read")
    bar.close()
    assert capsys.readouterr().err == ""
