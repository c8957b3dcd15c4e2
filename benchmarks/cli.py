"""The benchmark (its protocol and latest figures: the README's Performance section).

Generates its workloads (seeded), then runs, side by side on the same data and model,
each as its own process: o2v-batch `transform` (defaults, the same records in one file,
then variants), a hand-written json loop, Ray Data, the model-only ceiling and the I/O
floor (every core); plus the start-up time of a tiny job, o2v-batch's peak memory on ten
times the input, and `o2v-batch serve`'s requests/s and latency under concurrent clients
(`--systems serve`). Every o2v-batch row is held against the bound (on CPU
1 / (1/ceiling + 1/io_floor), on a GPU min(ceiling, io_floor)) and reports the parent
process's share of the job's CPU time. Prints a Markdown table, writes it as JSON
(bench.json) and plots records/s (bench.png, when matplotlib is installed).

Usage:
    python scripts/bench.py [--records N] [--heavy-records M] [--out bench-results/]
                            [--quick] [--systems o2v-batch,baseline,...]
    python scripts/bench.py --gpu [--gpu-device cuda]

On a machine with CUDA it adds GPU rows: the ceiling on the GPU and o2v-batch with
--devices cuda (the CPU rows then pass --devices cpu, so they stay CPU figures).

--gpu is the GPU table alone, sized for one H200 and 16 cores (under 6 minutes there, no
Ray, no matplotlib): light embedding, heavy embedding (jsonlines and .npy) and heavy
classification; o2v-batch --devices cuda and --devices cpu, each also after start-up
(a quarter-run difference), the GPU ceiling and the all-cores I/O floor, with the GPU's
mean utilisation per row. Without CUDA it stops with exit status 2; `--gpu-device cpu`
rehearses the same table on the CPU (the device rows then run on the CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import child, suite
from benchmarks.measure import machine
from benchmarks.paths import ROOT
from benchmarks.report import report
from benchmarks.runner import Bench
from benchmarks.systems.o2v_batch import VARIANTS
from benchmarks.systems.scaling import SCALING, SCALING_RECORDS
from benchmarks.targets import fill_ratios
from benchmarks.workloads import (
    DEFAULT_RECORDS,
    GPU_RECORDS,
    GPU_WORKLOADS,
    QUICK_RECORDS,
    SHARDS,
    WORKLOADS,
    Workload,
)

SYSTEMS = (
    "o2v-batch",
    "baseline",
    "ray-data",
    "ceiling",
    "io-floor",
    "startup",
    "scaling",
    "formats",
    "serve",
)
# Ray Data takes tens of seconds to start and run even on tiny inputs: --quick skips it.
QUICK_SYSTEMS = tuple(s for s in SYSTEMS if s != "ray-data")


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        child.main(argv[1:])
        return 0
    started = time.perf_counter()
    args = parse_args(argv)
    require_extras(args)
    info = machine()
    print(
        f"machine: {info['cores']} cores ({info['cpu']}), {info['memory_gb']} GB, "
        f"Python {info['python']}, torch {info['torch']}, GPU: {info['gpu'] or 'none'}"
    )
    if args.gpu and args.gpu_device != "cpu" and info["gpu"] is None:
        print(
            "bench.py: error: --gpu: no CUDA device here (torch.cuda.is_available() is "
            "False); --gpu --gpu-device cpu rehearses the GPU table on the CPU",
            file=sys.stderr,
        )
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="o2v-bench-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Every system runs as an installed program does, from Python's bytecode cache, even
    # where the environment turns writing it off (each start would compile from source).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cuda = info["gpu"] is not None
    bench = Bench(work, env, cuda=cuda, keep=args.work is not None, gpu_table=args.gpu)
    try:
        rows = suite.run_all(bench, args)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    fill_ratios(rows)
    report(rows, info, args)
    print(f"bench: {time.perf_counter() - started:.0f} s in all")
    return 1 if any(r.error for r in rows) else 0


def require_extras(args: argparse.Namespace) -> None:
    """Checked before the runs, not when the plot or the Ray Data row needs them."""
    needed = [] if args.gpu else ["matplotlib"]
    needed += ["ray", "pyarrow"] if "ray-data" in args.systems and not args.gpu else []
    needed += ["uvicorn"] if "serve" in args.systems and not args.gpu else []
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"scripts/bench.py needs {' and '.join(missing)}: pip install -e '.[bench]'")


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = parser()
    args = p.parse_args(argv)
    if args.gpu and (args.systems or args.variants):
        p.error("--gpu runs its own systems: leave out --systems and --variants")
    default_systems = QUICK_SYSTEMS if args.quick else SYSTEMS
    args.systems = split_list(args.systems, SYSTEMS, "--systems") or list(default_systems)
    offered = list(GPU_WORKLOADS) if args.gpu else [w.name for w in WORKLOADS]
    chosen = split_list(args.workloads, offered, "--workloads") or offered
    args.workloads = [w for w in WORKLOADS if w.name in chosen]
    args.counts = {w.name: record_count(w, args) for w in (*WORKLOADS, *SCALING)}
    if args.variants is None:
        args.variants = "" if args.quick or args.gpu else ";".join(VARIANTS)
    args.variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    return args


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--records",
        type=int,
        help="records of each light-model workload (default: light embedding "
        f"{DEFAULT_RECORDS['light-embedding']:,}, light classification "
        f"{DEFAULT_RECORDS['light-classification']:,}; --gpu "
        f"{GPU_RECORDS['light-embedding']:,}; --quick {QUICK_RECORDS['light']:,})",
    )
    p.add_argument(
        "--heavy-records",
        type=int,
        help="records of each heavy-model workload (default: embedding "
        f"{DEFAULT_RECORDS['heavy-embedding']:,}, classification "
        f"{DEFAULT_RECORDS['heavy-classification']:,}; --gpu "
        f"{GPU_RECORDS['heavy-embedding']:,} and {GPU_RECORDS['heavy-classification']:,}; "
        f"--quick {QUICK_RECORDS['heavy']:,})",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-results", help="results folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes, no Ray Data unless asked")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument(
        "--workloads", help=f"comma-separated subset of {','.join(w.name for w in WORKLOADS)}"
    )
    p.add_argument(
        "--variants",
        help=f"o2v-batch flag sets beside the defaults, ';'-separated (default: {';'.join(VARIANTS)}; --quick: none)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help=f"the GPU table only ({', '.join(GPU_WORKLOADS)}; o2v-batch on the GPU and "
        "on the CPU, the GPU ceiling, the I/O floor); exits 2 without CUDA",
    )
    p.add_argument(
        "--gpu-device",
        default="cuda",
        help="the device of --gpu's device rows (default cuda; cpu rehearses the table "
        "on a machine without a GPU)",
    )
    p.add_argument(
        "--work", type=Path, help="keep data and outputs here (default: a temp folder, removed)"
    )
    return p


def record_count(w: Workload, args: argparse.Namespace) -> int:
    """The workload's records: --records or --heavy-records, else the mode's default."""
    given = args.records if w.model == "light" else args.heavy_records
    if w in SCALING:
        base = given or (QUICK_RECORDS["light"] if args.quick else SCALING_RECORDS)
    elif given:
        base = given
    elif args.quick:
        base = QUICK_RECORDS[w.model]
    else:
        base = GPU_RECORDS.get(w.name, 0) if args.gpu else DEFAULT_RECORDS[w.name]
    return max(SHARDS, int(base * w.scale))


def split_list(text: str | None, allowed: tuple[str, ...] | list[str], option: str) -> list[str]:
    if not text:
        return []
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        sys.exit(f"{option}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items
