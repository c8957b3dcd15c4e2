"""`--engine ray`: the transform job on a Ray cluster.

The driver gets the shards planned exactly as the local engine does (same shards,
same skip and clobber rules, same array-job share). A pool of Ray actors
(engines/ray_actor.py) serves whole shards, handed out by the driver
(engines/ray_driver.py): one per GPU, running the local engine's pipeline there
(host workers feeding a device process), or CPU actors holding one model each. Ray
restarts a lost actor and retries the shard it held; a shard whose retries run out
fails alone.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable
from typing import Any

from o2v_batch import io
from o2v_batch.config import TransformConfig
from o2v_batch.engines.shard import ShardTask
from o2v_batch.errors import ConfigError, missing_extra, require_extra
from o2v_batch.reporting.report import Faults

MISSING_RAY = missing_extra("--engine ray", "Ray", "ray")


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
    from o2v_batch.engines.ray_driver import Driver

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
