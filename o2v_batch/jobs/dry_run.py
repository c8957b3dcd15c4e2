"""`transform --dry-run`: the job's own checks and plan, and a look at the first
records of every shard this node would serve, starting no worker and writing
nothing but the --summary file, when one is asked for.

The plan is the job's (job.plan), the records are read as the engines read them
(engines/shard.mini_batches) and checked with the workers' code (records.py).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace

import orjson

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard import (
    ShardTask,
    mini_batch_cap,
    mini_batches,
    serving_options,
)
from o2v_batch.errors import ShardFailed
from o2v_batch.execution.records import RecordRules, bad_records
from o2v_batch.inputs.batching import pack
from o2v_batch.inputs.formats import Oversize, Record
from o2v_batch.io.compression import is_compressed
from o2v_batch.jobs.transform import checked_engine, checked_model, plan
from o2v_batch.outputs.responses import position_key
from o2v_batch.reporting.messages import oversize_problem, record_failure
from o2v_batch.reporting.report import ShardReport

# Records read and checked at the start of each shard: enough to catch a shard in the
# wrong format or for another model at once, few enough to preview thousands of shards.
PREVIEW_RECORDS = 100
STATUSES = ("process", "skip", "other-node", "fail")


@dataclass
class ShardPreview:
    """One shard as the job would take it; the `shards` entries of the JSON form."""

    input: str  # shown as messages show it
    output: str | None  # None: another node's shard, or no safe output path
    node: int  # the --shard-index that serves it
    status: str  # one of STATUSES
    reason: str | None = None  # why skipped, or why the shard would fail
    content_type: str | None = None
    accept: str | None = None
    bytes: int | None = None  # stored size; None when unknown (stdin)
    mini_batches: int | None = None  # None when it cannot be told (stdin, compressed)
    mini_batches_exact: bool = False  # the whole shard was read: a count, not an estimate
    records_checked: int = 0
    # {"line" (jsonlines) or "record" (JSON): position, "problem": ..., "message": ...}
    bad_records: list[dict] = field(default_factory=list)


@dataclass
class DryRun:
    """What `transform --dry-run` found; `to_json` is its --summary file."""

    model: str
    num_shards: int
    shard_index: int
    shards: list[ShardPreview]
    records_checked_per_shard: int = PREVIEW_RECORDS

    @property
    def exit_status(self) -> int:
        """The real job's: 1 when a shard would fail, else 0."""
        return 1 if any(s.status == "fail" for s in self.shards) else 0

    def totals(self) -> dict:
        """Shards by status, and the mini-batches, records checked and bad records."""
        served = [s for s in self.shards if s.status in ("process", "fail")]
        batches = [s.mini_batches for s in served]
        return {
            **{status: sum(s.status == status for s in self.shards) for status in STATUSES},
            "mini_batches": None if None in batches else sum(batches),
            "records_checked": sum(s.records_checked for s in self.shards),
            "bad_records": sum(len(s.bad_records) for s in self.shards),
        }

    def to_json(self) -> bytes:
        document = {"dry_run": True, "exit_status": self.exit_status, **asdict(self)}
        shards = document.pop("shards")
        document.update(totals=self.totals(), shards=shards)  # the long list last
        return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"

    def lines(self) -> list[str]:
        """One line per shard, then one for the whole."""
        t = self.totals()
        exact = all(s.mini_batches_exact for s in self.shards if s.status in ("process", "fail"))
        batches = _count(t["mini_batches"], exact, estimate="")
        return [_line(s) for s in self.shards] + [
            f"dry run: {t['process']} to process, {t['skip']} skipped, {t['other-node']} for "
            f"other nodes, {t['fail']} would fail; {batches}; "
            f"{t['bad_records']} bad record{'s' * (t['bad_records'] != 1)} in the "
            f"{t['records_checked']} checked; "
            "no worker started, no output written"
        ]

    def messages(self) -> list[str]:
        """The bad records found, one line each, as messages name them."""
        return [
            f"o2v-batch: bad record: {b['message']}" for s in self.shards for b in s.bad_records
        ]


def dry_run(config: TransformConfig) -> DryRun:
    """Checks the model and the options as the job does, plans as the job does, and
    reads the first PREVIEW_RECORDS records of each shard this node would serve.
    Raises what the job would raise before serving a shard; writes config.summary."""
    checked_engine(config)
    _, hp = checked_model(config)
    planned = plan(config, hp)
    rules = RecordRules.of(hp, serving_options(config))
    tasks = {t.shard.uri: t for t in planned.tasks}
    unserved = {r.shard: r for r in planned.unserved}
    previews = []
    for node, shards in enumerate(planned.nodes):
        for shard in shards:
            if node != config.shard_index:
                previews.append(ShardPreview(io.shown(shard.uri), None, node, "other-node"))
            elif shard.uri in tasks:
                previews.append(_preview(tasks[shard.uri], config, rules))
            else:
                previews.append(_unserved(unserved[shard.uri], node))
    result = DryRun(io.shown(config.model), config.num_shards, config.shard_index, previews)
    if config.summary:
        io.write_atomic(config.summary, result.to_json())
    return result


def _unserved(report: ShardReport, node: int) -> ShardPreview:
    """A shard skipped by --resume, or one the job would fail at once (an unsafe path)."""
    status = "skip" if report.status == "skipped" else "fail"
    output = io.shown(report.output) if report.output else None
    return ShardPreview(io.shown(report.shard), output, node, status, report.reason)


def _preview(task: ShardTask, config: TransformConfig, rules: RecordRules) -> ShardPreview:
    """A shard this node serves, from its first records."""
    items, whole, read_failure = _first_records(task, config)
    found, batches = _bad_records(task, items, config, rules)
    uri, content_type = task.shard.uri, task.content_type
    preview = ShardPreview(
        io.shown(uri),
        io.shown(task.report.output),
        config.shard_index,
        "process",
        content_type=content_type,
        accept=task.accept,
        bytes=task.shard.size if task.shard.size >= 0 else None,
        records_checked=len(items),
        bad_records=[
            {
                position_key(content_type): pos,
                "problem": problem,
                "message": record_failure(uri, pos, content_type, problem),
            }
            for pos, problem in sorted(found)
        ],
    )
    if found and config.on_bad_record == "fail":
        # The first bad record a worker meets fails the shard, as in the job.
        pos, problem = found[0]
        preview.status, preview.reason = "fail", record_failure(uri, pos, content_type, problem)
    elif read_failure:
        preview.status, preview.reason = "fail", read_failure
    if whole and not read_failure:
        preview.mini_batches, preview.mini_batches_exact = batches, True
    else:
        preview.mini_batches = _estimate(task, items, config)
    return preview


def _first_records(
    task: ShardTask, config: TransformConfig
) -> tuple[list[Record | Oversize], bool, str | None]:
    """The shard's first PREVIEW_RECORDS records (and oversize ones), read as the job
    reads them; whether that was the whole shard; and why reading failed, if it did."""
    items: list[Record | Oversize] = []
    # One record per item: the job's reader and splitter, without its packing.
    reader = mini_batches(task, replace(config, strategy="SingleRecord"))
    try:
        for item in reader:
            if len(items) == PREVIEW_RECORDS:
                return items, False, None
            if isinstance(item, Oversize):
                items.append(item)
            else:
                items.append(Record(item.positions[0], item.records[0]))
    except ShardFailed as exc:
        return items, True, str(exc)
    finally:
        reader.close()
    return items, True, None


def _bad_records(
    task: ShardTask, items: list[Record | Oversize], config: TransformConfig, rules: RecordRules
) -> tuple[list[tuple[int, str]], int]:
    """The bad records among `items` as (position, problem), in the order the job meets
    them, and the mini-batches they make, packed as the job packs them."""
    cap, key = mini_batch_cap(config), position_key(task.content_type)
    found: list[tuple[int, str]] = []
    batches = 0
    for item in pack(items, cap, config.strategy):
        if isinstance(item, Oversize):
            found.append((item.pos, oversize_problem(item.size, cap, bool(config.max_payload))))
        else:
            batches += 1
            found += bad_records(rules, item.positions, item.records, key)
    return found, batches


def _estimate(
    task: ShardTask, items: list[Record | Oversize], config: TransformConfig
) -> int | None:
    """Mini-batches in the shard, told from its size and its first records' sizes
    (one separator each); None for stdin and compressed shards, whose sizes say
    nothing of their records'."""
    size = task.shard.size
    if size < 0 or is_compressed(task.shard.uri) or not items:
        return None
    record_bytes = [item.size if isinstance(item, Oversize) else len(item.data) for item in items]
    records = size * len(items) / (sum(record_bytes) + len(items))
    if config.strategy == "SingleRecord":
        return math.ceil(records)
    per_batch = max(1, mini_batch_cap(config) * len(items) // max(1, sum(record_bytes)))
    return math.ceil(records / per_batch)


def _line(shard: ShardPreview) -> str:
    """`<status> <input> -> <output>  <content type> -> <accept>  <size>  <mini-batches>
    <records checked>`, and why a shard is skipped or would fail."""
    if shard.status == "other-node":
        return f"node {shard.node:<3} {shard.input}  (--shard-index {shard.node})"
    head = f"{shard.status:<8} {shard.input} -> {shard.output or '?'}"
    if shard.content_type is None:  # not read: skipped, or refused at once
        return f"{head}  {shard.reason}"
    size = "size unknown" if shard.bytes is None else f"{shard.bytes:,} bytes"
    batches = _count(shard.mini_batches, shard.mini_batches_exact, estimate=" (estimate)")
    checked = f"{shard.records_checked} records checked, {len(shard.bad_records)} bad"
    fields = [head, f"{shard.content_type} -> {shard.accept}", size, batches, checked]
    if shard.reason:
        fields.append(f"would fail: {shard.reason}")
    return "  ".join(fields)


def _count(mini_batches: int | None, exact: bool, estimate: str) -> str:
    """`1 mini-batch`, `~12 mini-batches<estimate>` or `? mini-batches`."""
    if mini_batches is None:
        return "? mini-batches"
    noun = "mini-batch" if mini_batches == 1 else "mini-batches"
    return f"{mini_batches} {noun}" if exact else f"~{mini_batches} {noun}{estimate}"
