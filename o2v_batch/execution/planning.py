"""How many workers a job runs, in which roles, on which devices, with how many torch
threads each. Nothing here imports torch: the parent plans its workers before any of
them starts."""

from __future__ import annotations

import os

from o2v_batch.execution.protocol import DEVICE, HOST, WHOLE

# One single-threaded worker per core, up to this many (then more torch threads each):
# each holds its own torch and model (about 250 MB on CPU), and the parent feeds them all.
MAX_CPU_WORKERS = 32


def plan_workers(
    devices: list[str],
    workers: int | None,
    cpu_count: int | None = None,
    split: bool = False,
) -> list[tuple[str, str, int]]:
    """(role, device, torch threads) per worker, the cores shared out.

    On GPUs (and on CPU where `split` says: tests run it so), host work and device work are apart: a device
    process per device first (protocol.DEVICE), then `workers` host workers (default:
    one per core left, up to MAX_CPU_WORKERS, at least one per device), spread over
    the devices in turn (a device no host worker feeds gets no process), which
    read, check and encode without torch while the device processes run the forward
    passes. On CPU, whole workers: one single-threaded worker per core (up to
    MAX_CPU_WORKERS, then threads per worker), which keeps every core busy, parsing
    included, and never leaves torch threads waiting on a core the parent holds
    (measured: scripts/bench.py)."""
    cores = cpu_count or os.cpu_count() or 1
    if split or devices != ["cpu"]:
        n = workers or max(len(devices), min(cores - len(devices), MAX_CPU_WORKERS))
        fed = devices[:n]  # --workers below the GPUs' count leaves the last ones out
        hosts = [(HOST, fed[i % len(fed)], 1) for i in range(n)]
        return [(DEVICE, device, 1) for device in fed] + hosts
    n = workers or min(cores, MAX_CPU_WORKERS)
    return [(WHOLE, devices[i % len(devices)], max(1, cores // n)) for i in range(n)]
