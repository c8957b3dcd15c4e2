"""Tiny networks for the model, artifact and API tests: build, save, embed one by one."""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import numpy as np
import torch

from o2v_batch.api import load_model
from o2v_batch.artifacts import save_model
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.network import Object2Vec

VOCAB = 50


def tiny(**values: object) -> Hyperparameters:
    base = {
        "enc0_max_seq_len": 12,
        "enc0_vocab_size": VOCAB,
        "enc0_token_embedding_dim": 8,
        "enc_dim": 8,
        "mlp_dim": 8,
    }
    return Hyperparameters.from_dict({**base, **values})


def build(hp: Hyperparameters, seed: int = 0, encoders_only: bool = False) -> Object2Vec:
    torch.manual_seed(seed)
    return Object2Vec(hp, encoders_only=encoders_only).eval()


def random_rows(count: int, seed: int = 1, max_len: int = 10) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, rng.integers(1, max_len + 1)).tolist() for _ in range(count)]


def embed(network: Object2Vec, rows: list[list[int]], encoder: int = 0) -> torch.Tensor:
    """The rows in one zero-padded batch, straight through the network."""
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    with torch.inference_mode():
        return network.encode(tokens, encoder)


def saved(folder: Path, **values: object) -> tuple[Hyperparameters, Object2Vec]:
    hp = tiny(**values)
    network = build(hp)
    save_model(network, hp, folder)
    return hp, network


def score_pair(network: Object2Vec, a: list[int], b: list[int]) -> torch.Tensor:
    """(1, C) scores of one pair, straight through the network: embeddings, then head."""
    u, v = network.encode(torch.tensor([a]), 0), network.encode(torch.tensor([b]), 1)
    return network.predict_from_embeddings(u, v)


def assert_same_outputs(model_uri: str, network: Object2Vec) -> None:
    """The model at model_uri answers as `network` does, record by record."""
    rows0, rows1 = random_rows(9, seed=5), random_rows(9, seed=6)
    rows1 = [[t % network.hp.encoder(1).vocab_size or 1 for t in r] for r in rows1]
    model = load_model(model_uri)
    with torch.inference_mode():
        expected = torch.cat([score_pair(network, a, b) for a, b in zip(rows0, rows1, strict=True)])
    np.testing.assert_allclose(model.embed(rows0), embed(network, rows0).numpy(), atol=1e-6)
    np.testing.assert_allclose(model.embed(rows1, 1), embed(network, rows1, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(model.score(rows0, rows1), expected.numpy(), atol=1e-6)


def make_tar(path: Path, folder: Path, prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in ("hyperparameters.json", "model.safetensors"):
            tar.add(folder / name, arcname=prefix + name)
    return path


def rewrite_hyperparameters(folder: Path, **changes: object) -> None:
    """hyperparameters.json of a saved model with some values changed."""
    path = folder / "hyperparameters.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))
