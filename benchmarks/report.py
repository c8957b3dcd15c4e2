"""The results: a Markdown table and the notes below it on stdout, bench.json, and a
plot of records/s (bench.png, when matplotlib is installed)."""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from benchmarks.rows import Row
from benchmarks.systems.scaling import SCALING
from benchmarks.systems.serve import serve_notes
from benchmarks.targets import targets
from benchmarks.workloads import WORKLOADS

COLUMNS = (
    "system", "workload", "records/s", "after start-up", "start-up s", "bound", "x bound",
    "x bound after start-up", "x o2v-batch", "x ceiling", "parent's CPU", "GPU busy",
    "device process cores", "seconds", "peak MB", "others' CPU", "output B/record",
)  # fmt: skip


def report(rows: list[Row], info: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    notes = targets(rows)
    print()
    print(markdown(rows))
    if notes:
        print("\nTargets:")
        print("\n".join(notes))
    formats = format_notes(rows)
    if formats:
        print("\nOutput formats against jsonlines (this run):")
        print("\n".join(formats))
    served = serve_notes(rows)
    if served:
        print("\nServe (one server run, light model, embeddings):")
        print("\n".join(served))
    for r in rows:
        if r.error:
            print(f"\n{r.system} on {r.workload} failed: {r.error}")
    document = {
        "machine": info,
        "records": {w.name: args.counts[w.name] for w in (*WORKLOADS, *SCALING)},
        "gpu": args.gpu,
        "systems": args.systems,
        "variants": args.variants,
        "rows": [asdict(r) for r in rows],
        "targets": notes,
        "formats": formats,
    }
    (args.out / "bench.json").write_text(json.dumps(document, indent=2) + "\n")
    written = [args.out / "bench.json"]
    if importlib.util.find_spec("matplotlib") is not None:
        plot(rows, args.out / "bench.png")
        written.append(args.out / "bench.png")
    print(f"\nwrote {' and '.join(map(str, written))}")


def fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


def markdown(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * (len(COLUMNS) - 2),
    ]
    for r in rows:
        rate = "failed" if r.error else fmt(r.records_per_s, ",.0f")
        if r.system == "o2v-batch start-up":
            rate = "(time to first output)"
        cells = [
            r.system,
            r.workload,
            rate,
            fmt(r.extra.get("after_startup_records_per_s"), ",.0f"),
            fmt(r.extra.get("startup_seconds"), ".1f"),
            fmt(r.bound, ",.0f"),
            fmt(r.ratio_to_bound, ".2f"),
            fmt(r.extra.get("after_startup_ratio_to_bound"), ".2f"),
            fmt(r.ratio_to_o2v, ".2f"),
            fmt(r.ratio_to_ceiling, ".2f"),
            fmt(r.parent_cpu_share, ".1%"),
            "" if r.gpu_busy_percent is None else f"{r.gpu_busy_percent:.1f}%",
            fmt(r.device_process_cores, ".2f"),
            fmt(r.seconds, ".2f"),
            fmt(r.peak_rss_mb, ",.0f"),
            fmt(r.others_cores, ".2f"),
            fmt(r.extra.get("output_bytes_per_record"), ",.1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_notes(rows: list[Row]) -> list[str]:
    """Each columnar output against jsonlines (the o2v-batch default) on its workload."""
    get = {(r.workload, r.system): r for r in rows if r.error is None}
    notes = []
    for row in rows:
        text = get.get((row.workload, "o2v-batch"))
        if row.error or "--accept" not in row.system or text is None:
            continue
        smaller = text.extra["output_bytes_per_record"] / row.extra["output_bytes_per_record"]
        notes.append(
            f"- {row.workload}: {row.system.removeprefix('o2v-batch ')}: {smaller:.1f}x smaller "
            f"than jsonlines ({row.extra['output_bytes_per_record']:,.1f} vs "
            f"{text.extra['output_bytes_per_record']:,.1f} B/record), "
            f"{row.records_per_s / text.records_per_s:.2f}x its records/s"
        )
    return notes


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w.name for w in WORKLOADS if any(r.workload == w.name for r in rows)]
    systems = list(dict.fromkeys(r.system for r in rows if r.workload in workloads))
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(workloads)), 5))
    width = 0.8 / max(1, len(systems))
    for k, system in enumerate(systems):
        values = [
            next((r.records_per_s or 0 for r in rows if (r.workload, r.system) == (w, system)), 0)
            for w in workloads
        ]
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(workloads))]
        ax.bar(xs, values, width, label=system)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_yscale("log")
    ax.set_ylabel("records/s (log scale)")
    ax.set_title("o2v-batch benchmark: records/s per system")
    ax.legend(fontsize="small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)
