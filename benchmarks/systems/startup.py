"""o2v-batch's start-up: launch to first output file of a 3-record job."""

from __future__ import annotations

import shlex
import statistics

from benchmarks.measure import measure, tail
from benchmarks.paths import LIGHT_MODEL, TINY_INPUT
from benchmarks.rows import Row
from benchmarks.runner import Bench
from benchmarks.systems.o2v_batch import o2v_command

STARTUP_RUNS = 3
STARTUP_WORKLOAD = f"{TINY_INPUT.name} (3 records)"


def run(bench: Bench) -> Row:
    """Launch to first output file on the documented 3-record request (median of runs)."""
    firsts, runs = [], []
    for i in range(STARTUP_RUNS):
        out = bench.work / "out" / "startup" / str(i)
        cmd = [*o2v_command(), "transform", str(TINY_INPUT), str(out)]
        cmd += ["--model", str(LIGHT_MODEL), "--no-progress"]
        if bench.cuda:
            cmd += ["--devices", "cpu"]
        log = bench.folder("logs") / f"startup-{i}.log"
        watch = out / (TINY_INPUT.name + ".out")
        measured = measure(cmd, log, bench.env, watch=watch, data=TINY_INPUT)
        if measured.returncode != 0 or measured.first_output_s is None:
            error = f"exit status {measured.returncode}: {tail(log)}"
            return Row("o2v-batch start-up", STARTUP_WORKLOAD, error=error)
        firsts.append(measured.first_output_s)
        runs.append(measured)
    row = Row("o2v-batch start-up", STARTUP_WORKLOAD, command=shlex.join(cmd))
    row.records = row.records_out = 3
    row.seconds = statistics.median(firsts)
    row.process_seconds = statistics.median(r.seconds for r in runs)
    row.peak_rss_mb = max(r.peak_rss_mb for r in runs)
    row.others_cores = statistics.mean(r.others_cores for r in runs)
    row.extra["first_output_s"] = [round(s, 3) for s in firsts]
    return row
