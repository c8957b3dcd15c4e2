"""How many workers a job runs, on which devices, with how many torch threads each.
Nothing here imports torch: the parent plans its workers before any of them starts."""

from __future__ import annotations

import os

from o2v_batch.model.devices import GPU_WORKERS_PER_DEVICE

# One single-threaded worker per core, up to this many (then more torch threads each):
# each holds its own torch and model (about 250 MB on CPU), and the parent feeds them all.
MAX_CPU_WORKERS = 32


def plan_workers(
    devices: list[str], workers: int | None, cpu_count: int | None = None
) -> list[tuple[str, int]]:
    """(device, torch threads) per worker, the cores shared out: by default up to
    GPU_WORKERS_PER_DEVICE per GPU (no more than the cores), spread over the GPUs in
    turn; on CPU one per core."""
    cores = cpu_count or os.cpu_count() or 1
    if devices != ["cpu"]:
        per_device = max(1, min(GPU_WORKERS_PER_DEVICE, cores // len(devices)))
        n = workers or len(devices) * per_device
        return [(devices[i % len(devices)], max(1, cores // n)) for i in range(n)]
    # One single-threaded worker per core (up to MAX_CPU_WORKERS, then threads per
    # worker): it keeps every core busy, parsing included, and never leaves torch
    # threads waiting on a core the parent holds (measured: scripts/bench.py).
    n = workers or min(cores, MAX_CPU_WORKERS)
    return [("cpu", max(1, cores // n)) for _ in range(n)]
