"""Small shared builders for tests: tiny models and record files (the records themselves
come from benchmarks.records, shared with the benchmark and the memory check)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from benchmarks.records import random_records, write_jsonl
from o2v_batch.artifacts import save_model
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.network import Object2Vec

__all__ = [
    "TINY",
    "make_model",
    "random_records",
    "read_predictions",
    "write_json",
    "write_jsonl",
]

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
