"""One shard's path through either engine: its formats, its payload-capped
mini-batches, and what each mini-batch result or oversize record means for the
shard's tally and output. The engines differ only in where this runs."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.errors import JsonlinesAsJsonError, ShardFailed
from o2v_batch.execution.protocol import BatchResult, ServingOptions
from o2v_batch.inputs.batching import MiniBatch, pack, payload_bytes, split
from o2v_batch.inputs.formats import (
    JSON,
    JSONLINES,
    MAX_RECORD_BYTES,
    Oversize,
    content_type_for,
    iter_jsonlines,
)
from o2v_batch.inputs.jsonstream import iter_json_instances
from o2v_batch.io.compression import decompressed, is_compressed
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.weights import ForwardWork, forward_work
from o2v_batch.outputs.responses import codec_for, error_fragment, output_type
from o2v_batch.reporting.messages import oversize_problem, read_failure, record_failure
from o2v_batch.reporting.report import ShardReport


@dataclass(frozen=True)
class ShardTask:
    """A planned shard as an engine serves it."""

    shard: io.Shard
    report: ShardReport
    content_type: str
    accept: str
    suffix: str  # of its output's name, by the response format: `a.jsonl` -> `a.jsonl.out`
    work: ForwardWork  # the model's: how its mini-batches are shared out (pieces)


def shard_task(shard: io.Shard, config: TransformConfig, hp: Hyperparameters) -> ShardTask:
    """The shard with its formats (from the options, else its name) and its output;
    `hp`, the model's, lays out a columnar output and sizes its mini-batches' pieces."""
    content_type = config.content_type or content_type_for(shard.uri)
    accept = output_type(
        config.accept or content_type,
        hp,
        config.mode,
        config.embedding_dtype,
        config.join_source == "Input",
    )
    suffix = codec_for(accept).suffix
    report = ShardReport(shard.uri, io.output_uri(config.output, shard.rel, suffix))
    work = forward_work(hp, encoders_only=config.mode == "embedding")
    return ShardTask(shard, report, content_type, accept, suffix, work)


def total_bytes(tasks: list[ShardTask]) -> int | None:
    """The stored size of every shard together; None when one is unknown (stdin)."""
    sizes = [t.shard.size for t in tasks]
    return sum(sizes) if all(size >= 0 for size in sizes) else None


def record_bytes(tasks: list[ShardTask]) -> int | None:
    """The bytes of every shard's records together, as far as known before reading:
    None when a shard's size is unknown (stdin) or compressed (its records may take
    many times its stored size)."""
    if any(is_compressed(t.shard.uri) for t in tasks):
        return None
    return total_bytes(tasks)


def serving_options(config: TransformConfig) -> ServingOptions:
    """What a worker needs to know of the job."""
    return ServingOptions(
        mode=config.mode,
        join_source=config.join_source,
        input_filter=config.input_filter,
        output_filter=config.output_filter,
        on_bad_record=config.on_bad_record,
        infer_max_seqlens=config.infer_max_seqlens,
        precision=config.precision,
    )


def mini_batch_cap(config: TransformConfig) -> int:
    """Record bytes per mini-batch."""
    # With no cap (0), a mini-batch still stops at the one-record limit, so memory stays bounded.
    return payload_bytes(config.max_payload) or MAX_RECORD_BYTES


class Meter:
    """Bytes read from storage, before decompression: progress measured in the units
    of the shard sizes a listing gives."""

    def __init__(self) -> None:
        self.nbytes = 0


class _Metered:
    """A stored stream that counts on a Meter what is read through it."""

    def __init__(self, raw: BinaryIO, meter: Meter) -> None:
        self._raw, self._meter = raw, meter

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self._meter.nbytes += len(data)
        return data

    def __getattr__(self, name: str):  # the decompressors look at mode, name, close...
        return getattr(self._raw, name)

    def __enter__(self) -> _Metered:
        return self

    def __exit__(self, *exc: object) -> None:
        self._raw.close()


def mini_batches(
    task: ShardTask, config: TransformConfig, meter: Meter | None = None
) -> Iterator[MiniBatch | Oversize]:
    """The shard's mini-batches and oversize records, in input order, read as a stream;
    `meter` counts the stored bytes read.

    A failure to read raises ShardFailed, naming the shard once.
    """
    cap = mini_batch_cap(config)
    uri = task.shard.uri
    try:
        with decompressed(
            _Metered(io.open_read(uri, decompress=False), meter or Meter()), uri
        ) as stream:
            if task.content_type == JSON:
                items = iter_json_instances(stream, cap)
            else:  # runs of plain lines are packed by their bytes, unless one per request
                items = iter_jsonlines(stream, cap, blocks=config.strategy == "MultiRecord")
            yield from pack(items, cap, config.strategy)
    except Exception as exc:  # I/O failures too: this shard fails, the others go on
        looks_like = JSONLINES if isinstance(exc, JsonlinesAsJsonError) else None
        raise ShardFailed(read_failure(uri, exc) + _content_type_hint(task, looks_like)) from None


def pieces(
    task: ShardTask, batch: MiniBatch, workers: int | None = None, input_left: int | None = None
) -> list[MiniBatch]:
    """The requests a mini-batch goes to the workers as: itself, or, when it holds more
    of the model's work than one worker should do alone, consecutive pieces of it, a
    few per worker of the `workers` that share them.

    With `input_left` (the stored bytes of input still to read after it) of at least a
    mini-batch like it per worker, it goes whole: the other workers have the input after
    it to serve, and a worker sorts a whole mini-batch's sequences by length into device
    batches with less padding than its pieces' (a heavy model's 3,000 pairs: 1.03x the
    real tokens whole, 1.10x in five pieces). The last mini-batches of a job are shared
    in smaller pieces (batching.split's tail), so that no worker waits long for another's
    last one; those of an input whose size is unknown, in the usual pieces."""
    work = task.work
    if input_left is None:
        return split(batch, work.per_token, work.per_record, workers)
    if workers and input_left >= workers * batch.nbytes:
        return [batch]
    return split(batch, work.per_token, work.per_record, workers, tail=True)


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


def served(task: ShardTask, result: BatchResult, batch: MiniBatch) -> tuple[bytes, int]:
    """Counts a served mini-batch's result: its encoded responses and how many of them
    are predictions (the others are error objects), or ShardFailed at the bad record
    that failed it."""
    report = task.report
    report.truncated += result.truncated
    if result.error is not None:
        reason = record_failure(report.shard, result.error_pos, task.content_type, result.error)
        # A JSON request read as jsonlines fails at its first line.
        first = result.error_pos == batch.positions[0]
        request = first and _JSON_REQUEST.match(b"\n".join(batch.records[:2]))
        raise ShardFailed(reason + _content_type_hint(task, JSON if request else None))
    report.bad_records += result.bad_records
    return result.payload, result.records - result.bad_records


# The start of an application/json request: {"instances": [...]}, maybe pretty-printed.
_JSON_REQUEST = re.compile(rb'\s*\{\s*"instances"\s*:')


def _content_type_hint(task: ShardTask, looks_like: str | None) -> str:
    """The way out when a shard's data looks like the other content type: stdin has no
    name to tell its format by, and a file's extension can say the wrong one."""
    if looks_like is None or looks_like == task.content_type:
        return ""
    uri, remedy = task.shard.uri, f"use --content-type {looks_like}"
    if uri == io.STDIO:
        return f" (stdin looks like an {looks_like} request: {remedy})"
    if content_type_for(uri) != looks_like:  # the name said the other type
        remedy = f"name it {'.json' if looks_like == JSON else '.jsonl'} or {remedy}"
    return f" ({posixpath.basename(io.shown(uri))} looks like an {looks_like} request: {remedy})"
