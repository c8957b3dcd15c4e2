"""Small training data for the training tests: pairs of topic sequences (label 1 when
both share a topic), and hyperparameters small enough to train in seconds."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from safetensors.torch import load_file

from o2v_batch.model.hyperparameters import Hyperparameters

TOPICS, WORDS = 4, 20  # topic t owns ids 1 + 20 t .. 20 + 20 t
SMALL = {
    "enc0_vocab_size": 96,
    "enc0_max_seq_len": 12,
    "enc0_network": "pooled_embedding",
    "enc_dim": 16,
    "mlp_dim": 16,
    "learning_rate": 0.01,
    "mini_batch_size": 32,
    "epochs": 8,
}


def quiet(message: str) -> None:
    """A log that drops the per-epoch lines."""


def topic_sequence(rng: random.Random, topic: int) -> list[int]:
    return [1 + WORDS * topic + rng.randrange(WORDS) for _ in range(rng.randint(3, 10))]


def topic_pairs(n: int, seed: int, regression: bool = False) -> list[dict]:
    """Label 1 when both sequences share a topic (half the pairs); for regression the
    label is topic0 + topic1."""
    rng = random.Random(seed)
    pairs = []
    for i in range(n):
        t0 = rng.randrange(TOPICS)
        t1 = t0 if i % 2 == 0 else (t0 + rng.randrange(1, TOPICS)) % TOPICS
        label = float(t0 + t1) if regression else int(t0 == t1)
        pairs.append(
            {"label": label, "in0": topic_sequence(rng, t0), "in1": topic_sequence(rng, t1)}
        )
    return pairs


def write_jsonl(path: Path, records: list) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


def hyperparameters(**overrides) -> Hyperparameters:
    return Hyperparameters.from_dict({**SMALL, **overrides})


def weights(folder: Path) -> dict[str, torch.Tensor]:
    """The tensors of the model saved in `folder`."""
    return load_file(str(folder / "model.safetensors"))
