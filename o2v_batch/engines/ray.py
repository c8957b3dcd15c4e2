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
import signal
import threading
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
    with _SigtermBetweenRayCalls() as sigterm:
        started = _connect(ray, config.ray_address)
        try:
            sigterm.defer()  # after ray.init, which puts in a handler of its own
            Driver(ray, config, log, tasks, faults, sigterm.deliver).run(model)
        finally:
            if started:
                ray.shutdown()


class _SigtermBetweenRayCalls:
    """SIGTERM while the driver waits inside one of Ray's calls: the caller's handler (the
    CLI's aborts what is half written and exits 143) runs once that call has returned,
    in the driver's loop (`deliver`). Raised inside the call, any exception but
    KeyboardInterrupt would come out as a SystemError, and ray.init's own handler exits
    at once (with status 1, by that SystemError). Only the main thread handles signals;
    elsewhere this does nothing."""

    def __init__(self) -> None:
        # None: nothing to do (not the main thread, or a handler not set from Python).
        main = threading.current_thread() is threading.main_thread()
        self.caller = signal.getsignal(signal.SIGTERM) if main else None
        self.pending: tuple[int, Any] | None = None

    def __enter__(self) -> _SigtermBetweenRayCalls:
        return self

    def defer(self) -> None:
        if self.caller is not None:
            signal.signal(signal.SIGTERM, self._arrived)

    def _arrived(self, signum: int, frame: Any) -> None:
        self.pending = (signum, frame)

    def deliver(self) -> None:
        """Runs the caller's handler for a SIGTERM that arrived meanwhile."""
        if self.pending is None:
            return
        signum, frame = self.pending
        self.pending = None
        if callable(self.caller):
            self.caller(signum, frame)
        elif self.caller == signal.SIG_DFL:
            # The process ends, as by default; but once the job has unwound (its actors
            # killed, its half-written outputs gone, the Ray it started stopped), as
            # ray.init's own handler means to.
            raise SystemExit(128 + signum)

    def __exit__(self, kind: Any, *rest: Any) -> None:
        if self.caller is not None:
            signal.signal(signal.SIGTERM, self.caller)
            if kind is None:  # one that arrived as the job ended
                self.deliver()


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
