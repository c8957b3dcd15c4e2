"""Shard reports, the job summary added up from them, and the line that says how much
a job had written when its stdout's reader went away."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import orjson

from o2v_batch.io import one_line, shown
from o2v_batch.reporting.messages import count, plural, rate


@dataclass
class ShardReport:
    """One input shard's fate and its counts: the per-shard tally both engines keep.

    Every record read is exactly one of: a prediction written (records_out), a bad
    record, or not written (its shard failed or was interrupted).
    """

    shard: str  # the input's URI
    output: str  # its output's URI
    status: str = "running"  # running | ok | failed | skipped
    reason: str | None = None  # why it failed or was skipped
    records_in: int = 0
    records_out: int = 0  # predictions in the committed output (error objects are bad records)
    bad_records: int = 0
    truncated: int = 0
    mini_batches: int = 0
    largest_mini_batch_bytes: int = 0
    counted: bool = True  # False: skipped, and no earlier summary gave its counts

    def take(self, other: ShardReport) -> None:
        """Takes over what a worker elsewhere (a Ray actor) reported for this shard."""
        self.__dict__.update(other.__dict__)

    def count_batch(self, records: int, nbytes: int) -> None:
        """A mini-batch of this shard went to a worker."""
        self.mini_batches += 1
        self.records_in += records
        self.largest_mini_batch_bytes = max(self.largest_mini_batch_bytes, nbytes)

    @property
    def not_written(self) -> int:
        """Good records lost with the shard: it failed or the job stopped first."""
        if self.status in ("ok", "skipped"):
            return 0
        return self.records_in - self.records_out - self.bad_records


@dataclass
class Faults:
    """What the engine recovered from, counted as it happens (so an interrupted job's
    summary has them too)."""

    worker_restarts: int = 0
    mini_batch_retries: int = 0


@dataclass
class JobSummary:
    """What a job did, added up from its shard reports; `_SUCCESS` holds it as JSON.

    The shard and record counts describe the whole output: shards skipped by --resume
    bring the counts an earlier summary gave them. records_in = records_out +
    bad_records + records_not_written. The rest (mini-batches, faults, time) is this run's.
    """

    shards_ok: int = 0
    shards_failed: int = 0
    shards_skipped: int = 0
    shards_unfinished: int = 0  # interrupted before they were written; --resume does them
    records_in: int = 0
    records_out: int = 0
    bad_records: int = 0
    records_not_written: int = 0  # good records of failed and unfinished shards
    truncated_sequences: int = 0
    mini_batches: int = 0
    largest_mini_batch_bytes: int = 0
    worker_restarts: int = 0
    mini_batch_retries: int = 0
    seconds: float = 0.0
    records_per_second: float = 0.0
    failed: list[dict] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    bad_records_by_shard: dict[str, int] = field(default_factory=dict)
    # Of every shard whose output is complete: what a later --resume counts for it.
    records_out_by_shard: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, reports: list[ShardReport], faults: Faults, seconds: float) -> JobSummary:
        def with_status(status: str) -> list[ShardReport]:
            return [r for r in reports if r.status == status]

        served = sum(r.records_out for r in reports if r.status != "skipped")
        return cls(
            shards_ok=len(with_status("ok")),
            shards_failed=len(with_status("failed")),
            shards_skipped=len(with_status("skipped")),
            shards_unfinished=len(with_status("running")),
            records_in=sum(r.records_in for r in reports),
            records_out=sum(r.records_out for r in reports),
            bad_records=sum(r.bad_records for r in reports),
            records_not_written=sum(r.not_written for r in reports),
            truncated_sequences=sum(r.truncated for r in reports),
            mini_batches=sum(r.mini_batches for r in reports),
            largest_mini_batch_bytes=max((r.largest_mini_batch_bytes for r in reports), default=0),
            worker_restarts=faults.worker_restarts,
            mini_batch_retries=faults.mini_batch_retries,
            seconds=round(seconds, 3),
            records_per_second=_rounded(served / seconds) if seconds > 0 else 0.0,
            failed=[_named(r) for r in with_status("failed")],
            skipped=[_named(r) for r in with_status("skipped")],
            bad_records_by_shard={shown(r.shard): r.bad_records for r in reports if r.bad_records},
            records_out_by_shard={
                shown(r.shard): r.records_out
                for r in reports
                if r.status == "ok" or (r.status == "skipped" and r.counted)
            },
        )

    def to_json(self) -> bytes:
        return orjson.dumps(asdict(self), option=orjson.OPT_INDENT_2) + b"\n"

    def lines(self) -> list[str]:
        unfinished = (
            f", {count(self.shards_unfinished)} unfinished" if self.shards_unfinished else ""
        )
        out = [
            f"shards: {count(self.shards_ok)} ok, {count(self.shards_failed)} failed, "
            f"{count(self.shards_skipped)} skipped{unfinished}",
            f"records: {count(self.records_in)} in, {count(self.records_out)} out, "
            f"{count(self.bad_records)} bad, {count(self.records_not_written)} not written, "
            f"{plural(self.truncated_sequences, 'truncated sequence')}",
            f"mini-batches: {count(self.mini_batches)} "
            f"(largest {plural(self.largest_mini_batch_bytes, 'byte')})",
        ]
        if self.worker_restarts or self.mini_batch_retries:
            out.append(
                f"faults: {plural(self.worker_restarts, 'worker restart')}, "
                f"{plural(self.mini_batch_retries, 'mini-batch retry', 'mini-batch retries')}"
            )
        out.append(f"time: {self.seconds:.2f} s, {rate(self.records_per_second)} records/s")
        out += [f"failed: {f['reason']}" for f in self.failed]
        out += [f"skipped: {s['shard']}: {s['reason']}" for s in self.skipped]
        return out


def _named(report: ShardReport) -> dict:
    """A failed or skipped shard as the summary lists it: its name shown, its reason one line."""
    return {"shard": shown(report.shard), "reason": one_line(report.reason or "")}


def _rounded(per_second: float) -> float:
    """A rate as the JSON summary keeps it: to 0.1 from 100 up, else to three
    significant figures (a slow job's rate is never rounded to 0)."""
    if per_second >= 100 or per_second <= 0:
        return round(per_second, 1)
    return float(f"{per_second:.3g}")


def reader_closed(reports: list[ShardReport]) -> str:
    """The one line of a job whose stdout was closed by its reader (`... | head -3`):
    how much it had written, in whole shards (a shard goes to stdout whole or not at all,
    though its reader may stop partway through one)."""
    done = [r for r in reports if r.status == "ok"]
    records = sum(r.records_out + r.bad_records for r in done)
    return (
        f"o2v-batch: stdout's reader closed the pipe after {plural(len(done), 'whole shard')} "
        f"({plural(records, 'record')}); stopped"
    )
