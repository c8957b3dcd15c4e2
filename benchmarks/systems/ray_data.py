"""Ray Data: read_json -> map_batches with an actor holding the model -> write_json."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.systems.baseline import BASELINE_BATCH

# Ray Data's actors: two with half a Ray CPU and one torch thread each, so one Ray CPU is
# left for the read and write tasks (actors holding every CPU starve them: the job hangs).
# Fastest of those tried on 2 cores: 1 actor x 1 CPU x 2 threads ran at 0.4x, 1 x 1 x 1 at 0.8x.
RAY_ACTORS, RAY_ACTOR_CPUS, RAY_ACTOR_THREADS = 2, 0.5, 1


class RayPredictor:
    """The Ray Data actor: the same model, called on batches of 256."""

    def __init__(self, model_dir: str, mode: str, threads: int):
        import torch

        import o2v_batch

        torch.set_num_threads(threads)
        self.model = o2v_batch.load_model(model_dir, mode=mode)
        self.mode = mode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        in0 = [s.tolist() for s in batch["in0"]]
        if self.mode == "embedding":
            return {"embeddings": list(self.model.embed(in0))}
        scores = self.model.score(in0, [s.tolist() for s in batch["in1"]])
        return {"scores": list(scores)}


def run(data: Path, out: Path, model_dir: str, mode: str, device: str) -> dict:
    """read_json -> map_batches(actor) -> write_json, timed from ray.init to the written output."""
    import ray

    cores = os.cpu_count() or 1
    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.read_json(str(data)).map_batches(
        RayPredictor,
        fn_constructor_args=(model_dir, mode, RAY_ACTOR_THREADS),
        batch_size=BASELINE_BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=RAY_ACTORS),
        num_cpus=RAY_ACTOR_CPUS,
    )
    dataset.write_json(str(out))
    end = time.perf_counter()
    ray.shutdown()
    return {"seconds": end - start, "ray_init_seconds": started - start}
