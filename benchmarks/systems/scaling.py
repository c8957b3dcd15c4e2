"""o2v-batch's peak memory on light embedding at SCALING_RECORDS and ten times that."""

from __future__ import annotations

from benchmarks.rows import Row
from benchmarks.runner import Bench
from benchmarks.systems import o2v_batch
from benchmarks.workloads import Workload

# At SCALING_RECORDS and ten times that (--quick: at --records). A smaller input would
# not fill the pipeline (a 6 MB mini-batch holds about 60,000 light records).
SCALING_RECORDS = 500_000
SCALING = (
    Workload("light-embedding-1x", "light", "embedding"),
    Workload("light-embedding-10x", "light", "embedding", 10.0),
)


def run(bench: Bench, workload: Workload) -> list[Row]:
    """o2v-batch with its defaults: its row's peak memory is the figure."""
    return [o2v_batch.run(bench, workload, "")]
