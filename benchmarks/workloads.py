"""The benchmark's workloads: which model and mode, how many records, written as seeded
jsonlines shards (and as one file); the heavy model."""

from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from benchmarks.records import VOCAB, record_lines, zipf_cdf

# The heavy model: hcnn, token dim 300, enc_dim 512, 4 layers.
HEAVY_HYPERPARAMETERS = {
    "enc0_network": "hcnn",
    "enc0_layers": 4,
    "enc0_token_embedding_dim": 300,
    "enc0_vocab_size": 10240,
    "enc0_max_seq_len": 200,
    "enc_dim": 512,
}
SHARDS = 8
ONE_FILE = "one-file"  # the same records as the shards, in one file: data/<workload>-one-file
GENERATE_CHUNK = 100_000  # records drawn at a time
# Records per workload. On this project's 2-core machine a default o2v-batch run lasts
# at least 20 s even at the bound itself (o2v-batch ran at 0.83-0.97 of it), so that
# start-up is a small part of it. The bounds: light embedding 396,000 records/s and
# light classification 235,000 at commit bcd0df7 (hcnn's max over tokens as a pooling
# window); heavy embedding 5,050-5,490 (by output format) and heavy classification
# 2,580 at commit 82df84a.
DEFAULT_RECORDS = {
    "light-embedding": 8_000_000,
    "light-classification": 4_800_000,
    "heavy-embedding": 110_000,
    "heavy-classification": 56_000,
}
QUICK_RECORDS = {"light": 5_000, "heavy": 300}
# --gpu on one H200 and 16 cores, at the rates measured there (o2v-batch light
# 118,000-186,000 records/s, heavy 10,000-18,000 on the GPU, 2,800-5,200 on the cores;
# each process's start-up 6-9 s): about 4.5 minutes at the slow end of each range.
GPU_RECORDS = {
    "light-embedding": 1_000_000,
    "heavy-embedding": 60_000,
    "heavy-classification": 30_000,
}


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # light | heavy
    mode: str  # embedding | classification
    scale: float = 1.0  # times the model's record count (the memory-scaling run)

    @property
    def pairs(self) -> bool:
        return self.mode == "classification"


WORKLOADS = (
    Workload("light-embedding", "light", "embedding"),
    Workload("light-classification", "light", "classification"),
    Workload("heavy-embedding", "heavy", "embedding"),
    Workload("heavy-classification", "heavy", "classification"),
)
GPU_WORKLOADS = ("light-embedding", "heavy-embedding", "heavy-classification")


def write_workload(folder: Path, n: int, pairs: bool, seed: int, shards: int = SHARDS) -> None:
    """n records (in0 only, or in0/in1 pairs) as jsonlines shards, drawn chunk by chunk so
    that memory stays small whatever n is."""
    rng = np.random.default_rng(seed)
    cdf = zipf_cdf(VOCAB)
    names = ("in0", "in1") if pairs else ("in0",)
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    for shard, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        with open(folder / f"part-{shard:05d}.jsonl", "wb") as out:
            for start in range(lo, hi, GENERATE_CHUNK):
                out.write(record_lines(rng, min(GENERATE_CHUNK, hi - start), names, cdf))


def write_one_file(shards_folder: Path, folder: Path) -> None:
    """The shards' records, in order, as one file (the case where work must be split
    inside a file to keep every core busy)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "all.jsonl", "wb") as out:
        for shard in shards(shards_folder):
            with open(shard, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def make_heavy_model(folder: Path) -> None:
    """Random weights: the heavy model is about cost, not accuracy."""
    import torch

    from o2v_batch.artifacts import save_model
    from o2v_batch.model.hyperparameters import Hyperparameters
    from o2v_batch.model.network import Object2Vec

    torch.manual_seed(0)
    hp = Hyperparameters.from_dict(HEAVY_HYPERPARAMETERS)
    save_model(Object2Vec(hp), hp, folder)


def count_lines(folder: Path) -> int:
    total = 0
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(("_", ".")):
            with open(path, "rb") as f:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return total
