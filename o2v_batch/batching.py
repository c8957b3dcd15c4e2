"""Packing records into payload-capped mini-batches (MultiRecord / SingleRecord). Pure."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from o2v_batch.formats import Oversize, Record

MB = 2**20
STRATEGIES = ("MultiRecord", "SingleRecord")


@dataclass(slots=True)
class MiniBatch:
    """Consecutive records of one shard, sent to a worker together."""

    positions: list[int]
    records: list[bytes]
    nbytes: int  # sum of len(record): what --max-payload caps


def payload_bytes(max_payload_mb: float) -> int:
    """The --max-payload value (MB, fractions allowed, 0 = no cap) in bytes."""
    if not math.isfinite(max_payload_mb) or max_payload_mb < 0:
        raise ValueError(f"max payload must be a number of MB >= 0, got {max_payload_mb}")
    if max_payload_mb == 0:
        return 0
    # A tiny positive cap must not round down to 0, which would mean "no cap".
    return max(1, int(max_payload_mb * MB))


def pack(
    items: Iterable[Record | Oversize], max_bytes: int, strategy: str = "MultiRecord"
) -> Iterator[MiniBatch | Oversize]:
    """Pack records into mini-batches of at most `max_bytes` record bytes (0 = no cap).

    A record larger than the cap becomes Oversize; Oversize items come out in their
    place, after the mini-batch before them, so input order is kept.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown batch strategy {strategy!r}: use MultiRecord or SingleRecord")
    return _pack(items, max_bytes or math.inf, strategy == "SingleRecord")


def _pack(
    items: Iterable[Record | Oversize], cap: float, single: bool
) -> Iterator[MiniBatch | Oversize]:
    positions: list[int] = []
    records: list[bytes] = []
    nbytes = 0
    for item in items:
        if type(item) is not Oversize:
            pos, data = item
            size = len(data)
            if size <= cap:
                if nbytes + size > cap or (single and records):
                    yield MiniBatch(positions, records, nbytes)
                    positions, records, nbytes = [], [], 0
                positions.append(pos)
                records.append(data)
                nbytes += size
                continue
            item = Oversize(pos, size)
        if records:
            yield MiniBatch(positions, records, nbytes)
            positions, records, nbytes = [], [], 0
        yield item
    if records:
        yield MiniBatch(positions, records, nbytes)
