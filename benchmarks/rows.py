"""One measured run as the table and bench.json show it, and the output formats rows
are labelled and compared by."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

PARQUET, NPY = "application/vnd.apache.parquet", "application/x-npy"
# The output formats the I/O floor writes; each o2v-batch row is held against its own.
OUTPUTS = ("jsonlines", "npy", "parquet", "parquet-float16")


@dataclass
class Row:
    """One measured run; ratios are filled in once the workload's references are known."""

    system: str  # what the table shows, with the flags of an o2v-batch variant
    workload: str
    device: str = "cpu"
    output: str = "jsonlines"  # one of OUTPUTS
    command: str = ""
    records: int = 0
    records_out: int | None = None
    seconds: float | None = None  # the timed part (see README: whole process or section)
    process_seconds: float | None = None
    records_per_s: float | None = None
    peak_rss_mb: float | None = None
    others_cores: float | None = None  # CPU used outside the run, in cores: the noise
    parent_cpu_share: float | None = None  # the top process's CPU over its whole tree's
    gpu_busy_percent: float | None = None  # nvidia-smi's utilization.gpu, mean over the run
    # On a GPU: the CPU of the job's device processes, in cores over the run (measure.Run)
    device_process_cores: float | None = None
    bound: float | None = None  # records/s, for o2v-batch rows (README, Performance)
    ratio_to_bound: float | None = None
    ratio_to_o2v: float | None = None
    ratio_to_ceiling: float | None = None
    o2v_reference: str | None = None
    ceiling_reference: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def output_format(flags: str) -> str:
    """The OUTPUTS entry an o2v-batch flag set writes."""
    if NPY in flags:
        return "npy"
    if PARQUET in flags:
        return "parquet-float16" if "float16" in flags else "parquet"
    return "jsonlines"


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").replace("--", "-")
