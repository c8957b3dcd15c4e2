"""`--engine ray`: the transform job on a Ray cluster.

The driver gets the shards planned exactly as the local engine does (same shards,
same skip and clobber rules, same array-job share). A pool of Ray actors
(engines/ray_actor.py), each holding one model, serves whole shards, handed out by the
driver (engines/ray_driver.py). Ray restarts a lost actor and retries the shard it
held; a shard whose retries run out fails alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.devices import GPU_WORKERS_PER_DEVICE
from o2v_batch.engines.shard import ShardTask
from o2v_batch.errors import ConfigError, missing_extra, require_extra
from o2v_batch.report import Faults

MISSING_RAY = missing_extra("--engine ray", "Ray", "ray")
# CPUs (and torch threads) of one CPU actor when --workers does not say.
CPUS_PER_ACTOR = 2


def check(config: TransformConfig) -> None:
    """Ray is installed and the job can run on a cluster."""
    _import_ray()
    if io.STDIO in (config.input, config.output):
        raise ConfigError(
            "--engine ray reads and writes shards on the cluster: "
            "INPUT and OUTPUT cannot be - (stdin or stdout)"
        )


def prestart(config: TransformConfig) -> contextlib.AbstractContextManager[None]:
    """Nothing starts early on Ray: actors start once the model is known."""
    return contextlib.nullcontext()


def run(
    config: TransformConfig,
    tasks: list[ShardTask],
    model_dir: str,
    log: Callable[[str], None],
    faults: Faults,
    spares: None = None,
) -> None:
    """Serves every shard on Ray actors, counting the actors restarted.

    `model_dir` is the model resolved (extracted) here; the actors take a remote model
    by its URI instead, since the cluster's nodes may not share a disk.
    """
    from o2v_batch.engines.ray_driver import Driver  # here: it imports plan_actors from us

    ray = _import_ray()
    model = config.model if io.transport_for(config.model).REMOTE else model_dir
    started = _connect(ray, config.ray_address)
    try:
        Driver(ray, config, log, tasks, faults).run(model)
    finally:
        if started:
            ray.shutdown()


def _import_ray() -> Any:
    require_extra("ray", "--engine ray", "Ray", "ray")
    import ray

    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Joins the cluster at `address`, else at $RAY_ADDRESS, else starts a local Ray.

    True when this call connected, so the caller disconnects (and stops a Ray it started).
    """
    if ray.is_initialized():
        return False
    ray.init(
        # "local": a Ray of our own, never a cluster someone started on this machine
        # (`--ray-address auto` joins that one).
        address=address or os.environ.get("RAY_ADDRESS") or "local",
        include_dashboard=False,
        # Actors report failures as plain data; their logs stay in Ray's log folder.
        log_to_driver=False,
        configure_logging=True,
        logging_level=logging.ERROR,
    )
    return True


@dataclass(frozen=True)
class ActorPlan:
    """How many actors, the device each sees, its torch threads and its Ray resources."""

    count: int
    device: str
    threads: int
    resources: dict[str, float]


def plan_actors(
    config: TransformConfig, shards: int, cluster_cpus: float, node_cpus: float, gpus: int
) -> ActorPlan:
    """Up to GPU_WORKERS_PER_DEVICE actors per GPU (a share of it each, as the cores
    allow), or CPU actors of CPUS_PER_ACTOR cores each; never more than shards.

    `node_cpus` is the largest node's: an actor asking for more could never start.
    """
    devices = config.devices.strip().lower()
    if devices not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"--devices {config.devices}: with --engine ray, Ray assigns the GPUs "
            "(use auto, cuda or cpu)"
        )
    if devices == "cuda" or (devices == "auto" and gpus):
        if not gpus:
            raise ConfigError(f"--devices {config.devices}: the Ray cluster has no GPUs")
        # As the local engine's workers: up to GPU_WORKERS_PER_DEVICE actors share each
        # GPU (a fraction of it each), as the cluster's cores allow.
        per_gpu = max(1, min(GPU_WORKERS_PER_DEVICE, int(cluster_cpus // gpus)))
        if config.workers is not None:
            per_gpu = -(-config.workers // gpus)
        count = min(config.workers or gpus * per_gpu, shards)
        # Ray sets CUDA_VISIBLE_DEVICES per actor: its one GPU is cuda:0.
        share = round(1 / per_gpu, 4)  # Ray counts GPUs to 4 decimals
        return ActorPlan(count, "cuda:0", 1, {"num_gpus": share, "num_cpus": 1})
    node_cpus = max(node_cpus, 1.0)
    if config.workers is None:
        per_actor = min(float(CPUS_PER_ACTOR), node_cpus)
        count = max(1, int(cluster_cpus // per_actor))
    else:
        count = config.workers
        per_actor = min(node_cpus, max(cluster_cpus, 1.0) / count)
    return ActorPlan(min(count, shards), "cpu", max(1, int(per_actor)), {"num_cpus": per_actor})
