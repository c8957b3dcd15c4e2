"""How many workers a job runs, in which roles, on which devices, with how many torch
threads each. Nothing here imports torch: the parent plans its workers before any of
them starts."""

from __future__ import annotations

import os

from o2v_batch.execution.protocol import DEVICE, HOST, WHOLE

# One single-threaded worker per core, up to this many (then more torch threads each):
# each holds its own torch and model (about 250 MB on CPU), and the parent feeds them all.
MAX_CPU_WORKERS = 32
# A worker's start costs about a second of a core (importing torch). A job whose inputs
# come to less than this per worker starts fewer workers, one per this many bytes
# (16 KiB: about 150 records of the bench's heavy classification, a quarter of a second
# of one core), so that a small job's workers do not start for nothing: on few cores
# they slow the one that serves it, on many they hold 250 MB each.
MIN_BYTES_PER_WORKER = 16 * 1024


def plan_workers(
    devices: list[str],
    workers: int | None,
    cpu_count: int | None = None,
    split: bool = False,
    input_bytes: int | None = None,
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
    (measured: scripts/bench.py). By default a job of `input_bytes` (None: unknown, as
    stdin's or a compressed shard's) starts no more workers than it has
    MIN_BYTES_PER_WORKER of input."""
    cores = cpu_count or os.cpu_count() or 1
    if split or devices != ["cpu"]:
        n = workers or _fewer(
            max(len(devices), min(cores - len(devices), MAX_CPU_WORKERS)), input_bytes
        )
        fed = devices[:n]  # --workers below the GPUs' count leaves the last ones out
        hosts = [(HOST, fed[i % len(fed)], 1) for i in range(n)]
        return [(DEVICE, device, 1) for device in fed] + hosts
    n = workers or _fewer(min(cores, MAX_CPU_WORKERS), input_bytes)
    return [(WHOLE, devices[i % len(devices)], max(1, cores // n)) for i in range(n)]


def _fewer(n: int, input_bytes: int | None) -> int:
    """`n` workers, or fewer for a small input: one per MIN_BYTES_PER_WORKER of it."""
    if input_bytes is None:
        return n
    return min(n, max(1, -(-input_bytes // MIN_BYTES_PER_WORKER)))
