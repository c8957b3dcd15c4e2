"""This node's share of the inputs in an array job (`--num-shards N --shard-index K`).

Every node lists the same inputs and computes the same assignment, so N nodes
together write exactly the outputs of one run, each output once.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence

from o2v_batch.errors import ConfigError
from o2v_batch.io import Shard

# Array-job schedulers that hand each task its index (Kubernetes Indexed Jobs, AWS Batch).
INDEX_VARIABLES = ("JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX")


def assign(shards: Sequence[Shard], num_shards: int) -> list[list[Shard]]:
    """Splits shards over `num_shards` nodes, balanced by bytes and deterministic.

    Largest first, each to the node holding the fewest bytes so far (ties to the
    lowest index); each node then keeps its shards in listing order.
    """
    order = sorted(range(len(shards)), key=lambda i: (-max(shards[i].size, 0), shards[i].rel))
    loads = [(0, node) for node in range(num_shards)]
    owned: list[list[int]] = [[] for _ in range(num_shards)]
    for i in order:
        load, node = heapq.heappop(loads)
        owned[node].append(i)
        heapq.heappush(loads, (load + max(shards[i].size, 0), node))
    return [[shards[i] for i in sorted(indices)] for indices in owned]


def shard_index_from(environ: Mapping[str, str]) -> int | None:
    """The array-job index the scheduler set, if any."""
    for name in INDEX_VARIABLES:
        value = environ.get(name, "").strip()
        if value:
            if not value.isdigit():
                raise ConfigError(f"{name}={value!r} is not a shard index (a whole number)")
            return int(value)
    return None


def summary_name(num_shards: int, shard_index: int) -> str:
    """`_SUCCESS`, or `_SUCCESS.K-of-N` per node so nodes never overwrite each other's."""
    return "_SUCCESS" if num_shards == 1 else f"_SUCCESS.{shard_index}-of-{num_shards}"
