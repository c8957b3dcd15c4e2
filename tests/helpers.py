"""Small shared builders for tests: tiny models and record files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from o2v_batch.artifacts import save_model
from o2v_batch.hyperparameters import Hyperparameters
from o2v_batch.model import Object2Vec

TINY = {
    "enc0_vocab_size": 60,
    "enc0_max_seq_len": 24,
    "enc0_network": "hcnn",
    "enc0_layers": 2,
    "enc0_token_embedding_dim": 8,
    "enc1_network": "bilstm",
    "enc1_vocab_size": 60,
    "enc1_max_seq_len": 24,
    "enc1_token_embedding_dim": 8,
    "enc_dim": 8,
    "mlp_dim": 8,
    "num_classes": 3,
}


def make_model(folder: Path, seed: int = 0, **overrides) -> Path:
    """A randomly initialised (untrained) model: enough to check the plumbing exactly."""
    torch.manual_seed(seed)
    hp = Hyperparameters.from_dict({**TINY, **overrides})
    save_model(Object2Vec(hp), hp, folder)
    return folder


def random_records(
    n: int, seed: int = 0, pairs: bool = True, vocab: int = 60, max_len: int = 30
) -> list[dict]:
    """in0-only, in1-only and (optionally) pair records with very uneven lengths, some over max_seq_len."""
    rng = random.Random(seed)

    def seq() -> list[int]:
        length = rng.choice([1, 2, 3, 5, 8, 13, 21, max_len])
        return [rng.randrange(1, vocab) for _ in range(length)]

    kinds = ["in0", "in1", "pair"] if pairs else ["in0", "in1"]
    records = []
    for _ in range(n):
        kind = rng.choice(kinds)
        records.append({"in0": seq(), "in1": seq()} if kind == "pair" else {kind: seq()})
    return records


def write_jsonl(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def write_json(path: Path, records: list) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"instances": records}, indent=1))
    return path


def read_predictions(path: Path) -> list[dict]:
    """An output shard in either format, as a list of prediction objects."""
    text = path.read_text()
    if text.startswith('{"predictions"'):
        return json.loads(text)["predictions"]
    return [json.loads(line) for line in text.splitlines()]
