"""Shard reports, the job summary derived from them, the messages both engines
use, and the progress bar."""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from o2v_batch.errors import O2VError
from o2v_batch.formats import where
from o2v_batch.io import describe_error


@dataclass
class ShardReport:
    """One input shard's fate and its counts: the per-shard tally both engines keep."""

    shard: str  # the input's URI
    output: str  # its output's URI
    status: str = "running"  # running | ok | failed | skipped
    reason: str | None = None  # why it failed or was skipped
    records_in: int = 0
    records_out: int = 0
    bad_records: int = 0
    truncated: int = 0
    mini_batches: int = 0
    largest_mini_batch_bytes: int = 0

    def take(self, other: ShardReport) -> None:
        """Takes over what a worker elsewhere (a Ray actor) reported for this shard."""
        self.__dict__.update(other.__dict__)

    def count_batch(self, records: int, nbytes: int) -> None:
        """A mini-batch of this shard went to a worker."""
        self.mini_batches += 1
        self.records_in += records
        self.largest_mini_batch_bytes = max(self.largest_mini_batch_bytes, nbytes)


@dataclass
class JobSummary:
    """What a job did, added up from its shard reports; `_SUCCESS` holds it as JSON."""

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

    @classmethod
    def of(cls, reports: list[ShardReport], worker_restarts: int, seconds: float) -> JobSummary:
        def with_status(status: str) -> list[ShardReport]:
            return [r for r in reports if r.status == status]

        records_out = sum(r.records_out for r in reports)
        return cls(
            shards_ok=len(with_status("ok")),
            shards_failed=len(with_status("failed")),
            shards_skipped=len(with_status("skipped")),
            shards_unfinished=len(with_status("running")),
            records_in=sum(r.records_in for r in reports),
            records_out=records_out,
            bad_records=sum(r.bad_records for r in reports),
            truncated_sequences=sum(r.truncated for r in reports),
            mini_batches=sum(r.mini_batches for r in reports),
            largest_mini_batch_bytes=max((r.largest_mini_batch_bytes for r in reports), default=0),
            worker_restarts=worker_restarts,
            seconds=round(seconds, 3),
            records_per_second=round(records_out / seconds, 1) if seconds > 0 else 0.0,
            failed=[{"shard": r.shard, "reason": r.reason} for r in with_status("failed")],
            skipped=[{"shard": r.shard, "reason": r.reason} for r in with_status("skipped")],
            bad_records_by_shard={r.shard: r.bad_records for r in reports if r.bad_records},
        )

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


# -- messages, worded alike by both engines -------------------------------------


def read_failure(shard: str, exc: Exception) -> str:
    """Why reading a shard failed, naming the shard once."""
    if isinstance(exc, O2VError):
        message = str(exc)
        return message if shard in message else f"{shard}: {message}"
    return describe_error(exc, shard)


def record_failure(shard: str, pos: int, content_type: str, problem: str) -> str:
    """Why a shard failed at one record: `<shard>: line N: <problem>`."""
    return f"{shard}: {where(pos, content_type)}: {problem}"


def batch_failure(pos: int, content_type: str, reason: str) -> str:
    """Why a mini-batch could not be served (its worker died, hung or raised)."""
    return f"mini-batch from {where(pos, content_type)}: {reason}"


def oversize_problem(size: int, cap: int, capped: bool) -> str:
    """What is wrong with a record too big for a mini-batch."""
    if capped:
        return f"record is {size} bytes, over the --max-payload cap of {cap} bytes"
    return f"record is {size} bytes, over the limit of {cap} bytes for one record"


def shard_failed(reason: str) -> str:
    """The line logged when a shard fails."""
    return f"o2v-batch: shard failed: {reason}"


# -- progress -------------------------------------------------------------------


def progress_bar(enabled: bool | None) -> Any:
    """A tqdm bar on stderr counting records; a silent one when disabled, so callers
    never test for None. None: on when stderr is a terminal."""
    from tqdm import tqdm  # only a job needs it, not --help

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(
        unit=" records", unit_scale=True, desc="o2v-batch", file=sys.stderr, disable=not enabled
    )


def human_bytes(n: float) -> str:
    """`12.3 MiB read`, for the progress bar."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit} read"
        n /= 1024
    raise AssertionError("unreachable")
