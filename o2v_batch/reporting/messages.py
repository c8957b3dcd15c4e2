"""The words jobs and the server share: numbers written alike in every message (counts,
plurals, sizes, rates) and the messages both engines word alike."""

from __future__ import annotations

import math

from o2v_batch.errors import O2VError
from o2v_batch.inputs.batching import KB, MB
from o2v_batch.inputs.formats import at_record, where
from o2v_batch.io import describe_error, one_line, shown

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


def shard_failed(reason: str) -> str:
    """The line logged when a shard fails."""
    return f"o2v-batch: shard failed: {one_line(reason)}"


def recovered(reason: str, restarted: bool, retry: str | None, process: str = "worker") -> str:
    """The one line logged when a worker (or another `process`) is replaced or a
    mini-batch is tried again; `retry` says which mini-batch and which attempt."""
    actions = ([f"started a new {process}"] if restarted else []) + ([retry] if retry else [])
    return one_line(f"o2v-batch: {reason}; {' and '.join(actions)}")
