"""o2v-batch `transform` as the benchmark runs it: the defaults, on the shards or on one
file, with variants and output formats; and its records/s once started."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from pathlib import Path

from benchmarks.rows import NPY, PARQUET, Row, output_format, slug
from benchmarks.runner import Bench
from benchmarks.workloads import ONE_FILE, SHARDS, Workload, count_lines, shards

# Flags worth comparing with the defaults on a few cores; each becomes a labelled row.
VARIANTS = ("--workers 1", "--max-concurrent-transforms 4", "--max-payload 1")
# The columnar outputs beside jsonlines ("formats"); .npy holds embeddings only.
FORMATS = (f"--accept {PARQUET}", f"--accept {PARQUET} --embedding-dtype float16")
EMBEDDING_FORMATS = (f"--accept {NPY}",)


def o2v_command() -> list[str]:
    found = shutil.which("o2v-batch", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "o2v_batch"]


def run(
    bench: Bench, workload: Workload, flags: str, device: str = "cpu", one_file: bool = False
) -> Row:
    """o2v-batch transform on the workload's shards, or with `one_file` on the same
    records in one file."""
    # With a GPU present the CPU rows say --devices cpu, or the defaults would take the GPU.
    devices = f"--devices {device}" if bench.cuda or bench.gpu_table or device != "cpu" else ""
    shown = devices if device != "cpu" or bench.gpu_table else ""
    label = " ".join(filter(None, ["o2v-batch", flags, shown]))
    label += f" ({ONE_FILE.replace('-', ' ')})" if one_file else ""
    data = bench.data[f"{workload.name}-{ONE_FILE}" if one_file else workload.name]
    out = bench.work / "out" / workload.name / slug(label)
    cmd = [
        *o2v_command(),
        "transform",
        str(data),
        str(out),
        "--model",
        str(bench.models[workload.model]),
        "--mode",
        workload.mode,
        "--no-progress",
        *shlex.split(f"{flags} {devices}"),
    ]
    return bench.run(label, workload, cmd, out, device, output_format(flags), data=data)


def after_startup(
    bench: Bench, w: Workload, row: Row, flags: str = "", device: str = "cpu"
) -> None:
    """o2v-batch's records/s once started: the same command on a quarter of the shards,
    and the records/s of the difference, (N - n) / (t - t_quarter). Start-up (spawning
    workers, importing torch, loading the model) is in both runs and cancels out; what
    is left of the whole run's seconds beside N / that rate is the start-up."""
    if row.error:
        return
    quarter = Workload(f"{w.name}-quarter", w.model, w.mode, w.scale)
    if quarter.name not in bench.data:
        folder = bench.folder("data", quarter.name)
        for shard in shards(bench.data[w.name])[: SHARDS // 4]:
            os.link(shard, folder / shard.name)
        bench.data[quarter.name], bench.counts[quarter.name] = folder, count_lines(folder)
    small = run(bench, quarter, flags, device)
    if small.error or row.seconds <= small.seconds:
        return
    rate = (row.records - small.records) / (row.seconds - small.seconds)
    row.extra["after_startup_records_per_s"] = round(rate)
    row.extra["startup_seconds"] = round(max(0.0, row.seconds - row.records / rate), 2)
    row.extra["quarter_seconds"] = small.seconds
