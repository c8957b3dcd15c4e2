"""Which systems run on which workloads, in which order: the data written first, then
each workload's rows, then start-up and serve."""

from __future__ import annotations

import argparse
import os
import sys

from benchmarks.paths import LIGHT_MODEL
from benchmarks.rows import NPY, Row, output_format
from benchmarks.runner import Bench
from benchmarks.systems import o2v_batch, scaling, serve, startup
from benchmarks.systems.o2v_batch import EMBEDDING_FORMATS, FORMATS, after_startup
from benchmarks.workloads import (
    ONE_FILE,
    WORKLOADS,
    Workload,
    make_heavy_model,
    write_one_file,
    write_workload,
)


def run_all(bench: Bench, args: argparse.Namespace) -> list[Row]:
    """Every row of the run, in the table's order."""
    workloads = prepare(bench, args)
    rows: list[Row] = []
    for w in workloads:
        if args.gpu:
            rows += run_gpu_workload(bench, w, args.gpu_device)
        else:
            rows += run_workload(bench, w, args)
    if "startup" in args.systems and not args.gpu:
        rows.append(startup.run(bench))
    if "serve" in args.systems and not args.gpu:
        rows += serve.run(bench, args.quick)
    return rows


def prepare(bench: Bench, args: argparse.Namespace) -> list[Workload]:
    """Writes the data and the heavy model; returns the workloads to run."""
    workloads = list(args.workloads)
    if "scaling" in args.systems and not args.gpu:
        workloads += scaling.SCALING
    bench.models["light"] = LIGHT_MODEL
    if any(w.model == "heavy" for w in workloads):
        bench.models["heavy"] = bench.folder("heavy-model")
        make_heavy_model(bench.models["heavy"])
    one_file = "o2v-batch" in args.systems and not args.gpu
    for w in workloads:
        seed = [*WORKLOADS, *scaling.SCALING].index(w)  # the same data whichever workloads run
        n = args.counts[w.name]
        bench.data[w.name], bench.counts[w.name] = bench.work / "data" / w.name, n
        print(f"writing {w.name}: {n:,} records", file=sys.stderr)
        write_workload(bench.data[w.name], n, w.pairs, seed)
        if one_file and w in WORKLOADS:
            folder = bench.work / "data" / f"{w.name}-{ONE_FILE}"
            write_one_file(bench.data[w.name], folder)
            bench.data[f"{w.name}-{ONE_FILE}"] = folder / "all.jsonl"
    # The freshly written data goes to disk now, not during the first timed run.
    os.sync()
    return workloads


def run_workload(bench: Bench, w: Workload, args: argparse.Namespace) -> list[Row]:
    if w in scaling.SCALING:
        return scaling.run(bench, w)
    rows = []
    if "o2v-batch" in args.systems:
        rows += [o2v_batch.run(bench, w, ""), o2v_batch.run(bench, w, "", one_file=True)]
        after_startup(bench, w, rows[0])
        rows += [o2v_batch.run(bench, w, flags) for flags in args.variants]
    formats = FORMATS + (EMBEDDING_FORMATS if w.mode == "embedding" else ())
    if "formats" in args.systems:
        rows += [o2v_batch.run(bench, w, flags) for flags in formats]
    for system in ("baseline", "ray-data", "ceiling", "io-floor"):
        if system in args.systems:
            rows.append(bench.child(system, w))
    if "io-floor" in args.systems and "formats" in args.systems:
        rows += [bench.child("io-floor", w, output=output_format(flags)) for flags in formats]
    if bench.cuda:
        if "ceiling" in args.systems:
            rows.append(bench.child("ceiling", w, "cuda"))
        if "o2v-batch" in args.systems:
            rows.append(o2v_batch.run(bench, w, "", "cuda"))
            after_startup(bench, w, rows[-1], device="cuda")
    return rows


def run_gpu_workload(bench: Bench, w: Workload, device: str) -> list[Row]:
    """--gpu: o2v-batch on `device` and on the CPU (jsonlines; heavy embedding also .npy),
    each also after start-up; the ceiling on `device`; the all-cores I/O floor."""
    flag_sets = ["", f"--accept {NPY}"] if w.name == "heavy-embedding" else [""]
    devices = list(dict.fromkeys([device, "cpu"]))  # --gpu-device cpu: its rows once
    rows = []
    for flags in flag_sets:
        for on in devices:
            rows.append(o2v_batch.run(bench, w, flags, on))
            after_startup(bench, w, rows[-1], flags, on)
    rows.append(bench.child("ceiling", w, device))
    rows += [bench.child("io-floor", w, output=output_format(flags)) for flags in flag_sets]
    return rows
