"""The bound each o2v-batch row is held against, every row's ratios, and the targets
judged on them."""

from __future__ import annotations

from benchmarks.rows import NPY, PARQUET, Row
from benchmarks.systems.scaling import SCALING
from benchmarks.systems.startup import STARTUP_WORKLOAD
from benchmarks.workloads import WORKLOADS

STARTUP_GOAL_S = 1.5  # a 3-record job, the whole command
# The CPU targets: o2v-batch's whole command against the bound, the parent's share
# of the job's CPU time on light embedding, peak memory on ten times the input.
BOUND_GOAL, PARENT_SHARE_GOAL, MEMORY_GOAL = 0.85, 0.03, 1.2
# The GPU targets, after start-up: against the GPU bound (the I/O floor on light
# embedding), and --devices cuda over --devices cpu.
GPU_BOUND_GOAL, GPU_OVER_CPU_GOAL = 0.6, 1.2
# The o2v-batch rows held against the bound on CPU: the defaults on the shards
# and on one file, every workload; .npy and Parquet on heavy embedding.
BOUND_ROWS = ("o2v-batch", "o2v-batch (one file)")
BOUND_FORMAT_ROWS = {
    "heavy-embedding": (f"o2v-batch --accept {NPY}", f"o2v-batch --accept {PARQUET}")
}

Found = dict[tuple[str, str], Row]  # the rows without an error, by (workload, system)


def bound(ceiling: float, io_floor: float, device: str) -> float:
    """The records/s o2v-batch is held against (README, Performance). On CPU the model and
    the host work share the cores, so their times add up; on a GPU the device and the
    cores work side by side, so the slower of the two decides."""
    if device == "cpu":
        return 1 / (1 / ceiling + 1 / io_floor)
    return min(ceiling, io_floor)


def ceiling_label(device: str) -> str:
    return "ceiling" if device == "cpu" else f"ceiling ({device})"


def floor_label(output: str) -> str:
    return "io-floor" if output == "jsonlines" else f"io-floor ({output})"


def fill_ratios(rows: list[Row]) -> None:
    """Each row against the o2v-batch default (on CPU) and the ceiling on its own device;
    each o2v-batch row against the bound of its device and output format."""
    by_key = {(r.workload, r.system): r for r in rows if r.records_per_s}
    for row in rows:
        if not row.records_per_s or row.workload not in {w.name for w in WORKLOADS}:
            continue
        o2v = "o2v-batch" if (row.workload, "o2v-batch") in by_key else "o2v-batch --devices cpu"
        for attr, ref_name in (("o2v", o2v), ("ceiling", ceiling_label(row.device))):
            ref = by_key.get((row.workload, ref_name))
            if ref is not None:
                setattr(row, f"{attr}_reference", ref_name)
                setattr(row, f"ratio_to_{attr}", row.records_per_s / ref.records_per_s)
        ceiling = by_key.get((row.workload, ceiling_label(row.device)))
        floor = by_key.get((row.workload, floor_label(row.output)))
        if not row.system.startswith("o2v-batch") or ceiling is None or floor is None:
            continue
        row.bound = bound(ceiling.records_per_s, floor.records_per_s, row.device)
        row.ratio_to_bound = row.records_per_s / row.bound
        if "after_startup_records_per_s" in row.extra:
            ratio = row.extra["after_startup_records_per_s"] / row.bound
            row.extra["after_startup_ratio_to_bound"] = round(ratio, 3)


def targets(rows: list[Row]) -> list[str]:
    """The targets on CPU (whole commands) and, where there are GPU rows, on the
    GPU (after start-up); the start-up of a 3-record job; the speed-ups over the
    hand-written loop and Ray Data."""
    get = {(r.workload, r.system): r for r in rows if r.error is None}
    return [
        *_bound_notes(get),
        *_parent_notes(get),
        *_memory_notes(get),
        *_startup_notes(get),
        *_speedup_notes(get),
        *gpu_targets(rows),
    ]


def _bound_notes(get: Found) -> list[str]:
    notes = []
    for w in WORKLOADS:
        for system in (*BOUND_ROWS, *BOUND_FORMAT_ROWS.get(w.name, ())):
            row = get.get((w.name, system))
            if row and row.ratio_to_bound is not None and row.device == "cpu":
                after = row.extra.get("after_startup_ratio_to_bound")
                value = f"{row.ratio_to_bound:.2f}" + (
                    f" ({after:.2f} after start-up)" if after else ""
                )
                met = row.ratio_to_bound >= BOUND_GOAL
                notes.append(
                    verdict(f"{w.name}, {system} >= {BOUND_GOAL} of the bound", value, met)
                )
    return notes


def _parent_notes(get: Found) -> list[str]:
    notes = []
    for system in BOUND_ROWS:
        row = get.get(("light-embedding", system))
        if row and row.parent_cpu_share is not None:
            share = row.parent_cpu_share
            notes.append(
                verdict(
                    f"light-embedding, {system}: the parent's CPU <= {PARENT_SHARE_GOAL:.0%}",
                    f"{share:.1%}",
                    share <= PARENT_SHARE_GOAL,
                )
            )
    return notes


def _memory_notes(get: Found) -> list[str]:
    small, big = (get.get((w.name, "o2v-batch")) for w in SCALING)
    if not (small and big):
        return []
    growth = big.peak_rss_mb / small.peak_rss_mb
    return [
        verdict(
            f"peak memory, 10x input, <= {MEMORY_GOAL}x", f"{growth:.2f}x", growth <= MEMORY_GOAL
        )
    ]


def _startup_notes(get: Found) -> list[str]:
    start = get.get((STARTUP_WORKLOAD, "o2v-batch start-up"))
    if not start:
        return []
    first, whole = start.seconds, start.process_seconds
    return [
        verdict(
            f"3-record job <= {STARTUP_GOAL_S} s",
            f"first output {first:.2f} s, whole command {whole:.2f} s",
            whole <= STARTUP_GOAL_S,
        )
    ]


def _speedup_notes(get: Found) -> list[str]:
    notes = []
    for w in WORKLOADS:
        row = get.get((w.name, "o2v-batch"))
        for other in ("baseline", "ray-data"):
            ref = get.get((w.name, other))
            if row and ref:
                x = row.records_per_s / ref.records_per_s
                notes.append(verdict(f"{w.name} >= 5x {other}", f"{x:.2f}x", x >= 5))
    return notes


def gpu_targets(rows: list[Row]) -> list[str]:
    """After start-up: each o2v-batch row on a GPU against the GPU bound (light embedding:
    against the I/O floor) and against the same command with --devices cpu."""
    get = {(r.workload, r.system): r for r in rows if r.error is None}
    notes = []
    for row in rows:
        rate = row.extra.get("after_startup_records_per_s")
        if row.error or row.device == "cpu" or not row.system.startswith("o2v-batch") or not rate:
            continue
        notes += _gpu_bound_notes(get, row, rate)
        cpu = get.get(
            (row.workload, row.system.replace(f"--devices {row.device}", "--devices cpu"))
        )
        cpu_rate = cpu.extra.get("after_startup_records_per_s") if cpu else None
        if cpu_rate:
            x = rate / cpu_rate
            notes.append(
                verdict(
                    f"{row.workload}, {row.system} >= {GPU_OVER_CPU_GOAL}x --devices cpu",
                    f"{x:.2f}x",
                    x >= GPU_OVER_CPU_GOAL,
                )
            )
    return notes


def _gpu_bound_notes(get: Found, row: Row, rate: float) -> list[str]:
    """A GPU row after start-up against its bound; light embedding against the I/O floor."""
    name = f"{row.workload}, {row.system}"
    if row.workload == "light-embedding":
        floor = get.get((row.workload, floor_label(row.output)))
        if not floor:
            return []
        x = rate / floor.records_per_s
        return [
            verdict(f"{name} >= {GPU_BOUND_GOAL} of the I/O floor", f"{x:.2f}", x >= GPU_BOUND_GOAL)
        ]
    if not row.bound:
        return []
    x = rate / row.bound
    return [verdict(f"{name} >= {GPU_BOUND_GOAL} of the bound", f"{x:.2f}", x >= GPU_BOUND_GOAL)]


def verdict(target: str, value: str, met: bool) -> str:
    return f"- {target}: {value} ({'met' if met else 'MISSED'})"
