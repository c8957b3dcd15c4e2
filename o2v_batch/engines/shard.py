"""One shard's path through either engine: its formats, its payload-capped
mini-batches, and what each mini-batch result or oversize record means for the
shard's tally and output. The engines differ only in where this runs."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from o2v_batch import io
from o2v_batch.batching import MiniBatch, pack, payload_bytes
from o2v_batch.config import TransformConfig
from o2v_batch.formats import JSON, MAX_RECORD_BYTES, Oversize, content_type_for, iter_jsonlines
from o2v_batch.jsonstream import iter_json_instances
from o2v_batch.protocol import BatchResult, ServingOptions
from o2v_batch.report import ShardReport, oversize_problem, read_failure, record_failure
from o2v_batch.responses import codec_for, error_fragment


class ShardFailed(Exception):
    """The shard fails for a reason retrying cannot change (bad input, a write error);
    the message is the reason reported."""


@dataclass(frozen=True)
class ShardTask:
    """A planned shard as an engine serves it."""

    shard: io.Shard
    report: ShardReport
    content_type: str
    accept: str
    suffix: str  # of its output's name, by the response format: `a.jsonl` -> `a.jsonl.out`


def shard_task(shard: io.Shard, config: TransformConfig) -> ShardTask:
    """The shard with its formats (from the options, else its name) and its output."""
    content_type = config.content_type or content_type_for(shard.uri)
    accept = config.accept or content_type
    suffix = codec_for(accept).suffix
    report = ShardReport(shard.uri, io.output_uri(config.output, shard.rel, suffix))
    return ShardTask(shard, report, content_type, accept, suffix)


def serving_options(config: TransformConfig) -> ServingOptions:
    """What a worker needs to know of the job."""
    return ServingOptions(
        mode=config.mode,
        join_source=config.join_source,
        input_filter=config.input_filter,
        output_filter=config.output_filter,
        on_bad_record=config.on_bad_record,
        infer_max_seqlens=config.infer_max_seqlens,
    )


def mini_batch_cap(config: TransformConfig) -> int:
    """Record bytes per mini-batch."""
    # With no cap (0), a mini-batch still stops at the one-record limit, so memory stays bounded.
    return payload_bytes(config.max_payload) or MAX_RECORD_BYTES


def mini_batches(task: ShardTask, config: TransformConfig) -> Iterator[MiniBatch | Oversize]:
    """The shard's mini-batches and oversize records, in input order, read as a stream.

    A failure to read raises ShardFailed, naming the shard once.
    """
    cap = mini_batch_cap(config)
    split = iter_json_instances if task.content_type == JSON else iter_jsonlines
    try:
        with io.open_read(task.shard.uri) as stream:
            yield from pack(split(stream, cap), cap, config.strategy)
    except Exception as exc:  # I/O failures too: this shard fails, the others go on
        raise ShardFailed(read_failure(task.shard.uri, exc)) from None


def oversize(task: ShardTask, item: Oversize, config: TransformConfig) -> bytes:
    """Counts a record too big for a mini-batch; its place in the output under
    emit-error, else ShardFailed."""
    report = task.report
    report.records_in += 1
    problem = oversize_problem(item.size, mini_batch_cap(config), bool(config.max_payload))
    if config.on_bad_record == "fail":
        raise ShardFailed(record_failure(report.shard, item.pos, task.content_type, problem))
    report.bad_records += 1
    return error_fragment(problem, item.pos, task.content_type, task.accept)


def served(task: ShardTask, result: BatchResult) -> bytes:
    """Counts a served mini-batch's result; its encoded responses, or ShardFailed at
    the bad record that failed it."""
    report = task.report
    report.truncated += result.truncated
    if result.error is not None:
        raise ShardFailed(
            record_failure(report.shard, result.error_pos, task.content_type, result.error)
        )
    report.bad_records += result.bad_records
    return result.payload
