"""Shard reports, the job summary derived from them, the messages both engines
use, and the progress bar."""

from __future__ import annotations

import math
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson

from o2v_batch.errors import O2VError
from o2v_batch.inputs.batching import KB, MB
from o2v_batch.inputs.formats import at_record, where
from o2v_batch.io import describe_error, one_line, shown


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


# -- numbers, written alike in every message -------------------------------------


def count(n: int) -> str:
    """A count with thousands separators: 400,002."""
    return f"{n:,}"


def plural(n: int, one: str, many: str | None = None) -> str:
    """`n` and the word that goes with it: 1 request, 2 requests, 1 mini-batch retry."""
    return f"{count(n)} {one if n == 1 else many or one + 's'}"


def size(nbytes: int) -> str:
    """A size as --max-payload is given: 6 MB, 500 KB, else in bytes (1,048 bytes)."""
    for unit, scale in (("MB", MB), ("KB", KB)):
        if nbytes >= scale and nbytes % scale == 0:
            return f"{count(nbytes // scale)} {unit}"
    return plural(nbytes, "byte")


def rate(per_second: float) -> str:
    """A rate: whole numbers with thousands separators from 100 up (27,249), three
    significant figures below (42.2, 4.2, 0.0513), so that no work done reads as 0."""
    if per_second >= 100 or per_second <= 0:
        return f"{per_second:,.0f}"
    decimals = 2 - math.floor(math.log10(per_second))
    return f"{per_second:.{decimals}f}".rstrip("0").rstrip(".")


def _rounded(per_second: float) -> float:
    """A rate as the JSON summary keeps it: to 0.1 from 100 up, else to three
    significant figures (a slow job's rate is never rounded to 0)."""
    if per_second >= 100 or per_second <= 0:
        return round(per_second, 1)
    return float(f"{per_second:.3g}")


# -- messages, worded alike by both engines -------------------------------------


def read_failure(shard: str, exc: Exception) -> str:
    """Why reading a shard failed, naming the shard once."""
    if isinstance(exc, O2VError):
        message = str(exc)
        return message if shown(shard) in message else f"{shown(shard)}: {message}"
    return describe_error(exc, shard)


def record_failure(shard: str, pos: int, content_type: str, problem: str) -> str:
    """Why a shard failed at one record: `<shard>: line N: <problem>`."""
    return f"{shown(shard)}: {at_record(pos, content_type, problem)}"


def batch_failure(pos: int, content_type: str, reason: str) -> str:
    """Why a mini-batch could not be served (its worker died, hung or raised)."""
    return f"mini-batch from {where(pos, content_type)}: {reason}"


def oversize_problem(size: int, cap: int, capped: bool) -> str:
    """What is wrong with a record too big for a mini-batch."""
    record, limit = plural(size, "byte"), plural(cap, "byte")
    if capped:
        return f"record is {record}, over the --max-payload cap of {limit}"
    return f"record is {record}, over the limit of {limit} for one record"


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


def shard_failed(reason: str) -> str:
    """The line logged when a shard fails."""
    return f"o2v-batch: shard failed: {one_line(reason)}"


def recovered(reason: str, restarted: bool, retry: str | None) -> str:
    """The one line logged when a worker is replaced or a mini-batch is tried again;
    `retry` says which mini-batch and which attempt."""
    actions = (["started a new worker"] if restarted else []) + ([retry] if retry else [])
    return one_line(f"o2v-batch: {reason}; {' and '.join(actions)}")


# -- stderr and progress ----------------------------------------------------------


def stderr_line(line: str) -> None:
    """Prints a line on stderr above the progress bar, never onto it."""
    from tqdm import tqdm  # only a job needs it, not --help

    tqdm.write(line, file=sys.stderr)


# Seconds between redraws of the bar while nothing changes: its time keeps moving.
REDRAW_S = 0.5
# The bar before any bytes are done: tqdm would write 0 bytes as "0.00".
_NOTHING_DONE = {
    True: "{l_bar}{bar}| 0/{total_fmt} [{elapsed}<?{postfix}]",  # a total is known
    False: "{desc}: 0B [{elapsed}{postfix}]",
}


class Progress:
    """The input bytes done (a total and an ETA when every shard's size is known) and
    the records done, on stderr. Bytes are done once the records read from them are
    written (or their shard has failed), so 100% means written. Drawn from the start
    and redrawn every REDRAW_S on a thread, so its time and rate move while workers
    start. Silent when disabled, so callers never test for None; None: on when stderr
    is a terminal."""

    def __init__(self, enabled: bool | None, total_bytes: int | None) -> None:
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.total_bytes = total_bytes
        self._bar: Any = None
        self._closing = threading.Event()
        self._redraws: threading.Thread | None = None
        if self.enabled:
            self._start()

    def _start(self) -> None:
        from tqdm import tqdm  # only a job needs it, not --help

        self._bar = tqdm(
            total=self.total_bytes,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc="o2v-batch",
            file=sys.stderr,
            postfix="0 records",
            bar_format=_NOTHING_DONE[bool(self.total_bytes)],
        )
        self._redraws = threading.Thread(
            target=self._redraw, name="o2v-batch progress", daemon=True
        )
        self._redraws.start()

    def _redraw(self) -> None:
        while not self._closing.wait(REDRAW_S):
            self._bar.refresh()

    def show(self, nbytes: int, records: int) -> None:
        """Moves the bar to `nbytes` done and `records` records (both so far, in all)."""
        if self._bar is None:
            return
        self._bar.set_postfix_str(f"{count(records)} records", refresh=False)
        first = nbytes > 0 and self._bar.bar_format is not None
        if first:
            self._bar.bar_format = None  # tqdm's own from now on, with the rate and the ETA
        self._bar.update(nbytes - self._bar.n)
        if first:
            self._bar.refresh()  # at once, not after tqdm's minimum interval

    def close(self) -> None:
        if self._bar is not None:
            self._closing.set()
            self._redraws.join()
            self._bar.close()
