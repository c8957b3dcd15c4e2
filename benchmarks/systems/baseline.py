"""The hand-written loop o2v-batch is compared with: json module, batches of 256 in
arrival order, json.dumps."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from benchmarks.workloads import shards

BASELINE_BATCH = 256


def run(data: Path, out: Path, model_dir: str, mode: str, device: str) -> dict:
    """A Friday-afternoon loop: json module, batches of 256 in arrival order, json.dumps."""
    import torch

    import o2v_batch

    torch.set_num_threads(os.cpu_count() or 1)
    model = o2v_batch.load_model(model_dir, device=device, mode=mode)
    out.mkdir(parents=True)
    start = time.perf_counter()
    for shard in shards(data):
        with open(shard) as reader, open(out / (shard.name + ".out"), "w") as writer:
            batch = []
            for line in reader:
                batch.append(json.loads(line))
                if len(batch) == BASELINE_BATCH:
                    writer.write(predict(model, batch, mode))
                    batch = []
            if batch:
                writer.write(predict(model, batch, mode))
    # The whole process's wall time is what counts, as for o2v-batch; this is for the record.
    return {"loop_seconds": time.perf_counter() - start}


def predict(model: Any, batch: list[dict], mode: str) -> str:
    if mode == "embedding":
        vectors = model.embed([r["in0"] for r in batch])
        lines = [json.dumps({"embeddings": v.tolist()}) for v in vectors]
    else:
        scores = model.score([r["in0"] for r in batch], [r["in1"] for r in batch])
        lines = [json.dumps({"scores": s.tolist()}) for s in scores]
    return "\n".join(lines) + "\n"
