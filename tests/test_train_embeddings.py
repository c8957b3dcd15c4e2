"""Training with pretrained token embeddings: loaded into their rows, frozen or not,
and a file that does not fit named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from training import hyperparameters, quiet, topic_pairs, weights, write_jsonl

from o2v_batch.errors import HyperparameterError, TrainingDataError
from o2v_batch.training.train import train

VECTORS = {
    "apple": [0.5, -1.25, 2.0, 0.0],
    "pear": [1.5, 0.25, -0.75, 3.0],
    "unused": [9.0, 9.0, 9.0, 9.0],
}
VOCABULARY = {"apple": 5, "pear": 21, "kiwi": 30}


def write_embeddings(tmp_path: Path, vectors: dict[str, list[float]] = VECTORS) -> dict[str, str]:
    glove = tmp_path / "glove.txt"
    glove.write_text("".join(f"{word} {' '.join(map(str, v))}\n" for word, v in vectors.items()))
    vocab = tmp_path / "vocab.json"
    vocab.write_text(json.dumps(VOCABULARY))
    return {"enc0_pretrained_embedding_file": str(glove), "enc0_vocab_file": str(vocab)}


@pytest.mark.parametrize("freeze", [True, False])
def test_pretrained_embeddings_are_loaded_and_frozen(tmp_path: Path, freeze: bool) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(200, seed=17))
    hp = hyperparameters(
        enc0_network="hcnn",
        enc0_layers=1,
        enc0_token_embedding_dim=4,
        tied_token_embedding_weight=True,
        enc0_freeze_pretrained_embedding=freeze,
        epochs=2,
        **write_embeddings(tmp_path),
    )
    train(hp, train_file, str(tmp_path / "model"), log=quiet)
    embedding = weights(tmp_path / "model")["enc0.embedding.weight"]
    rows = embedding[[5, 21]]
    expected = torch.tensor([VECTORS["apple"], VECTORS["pear"]])
    # Frozen rows equal the file's vectors after training; trainable ones have moved.
    assert torch.equal(rows, expected) == freeze
    if not freeze:
        assert torch.allclose(rows, expected, atol=0.5)


def test_pretrained_embedding_dimension_mismatch_names_the_file(tmp_path: Path) -> None:
    files = write_embeddings(tmp_path, {"pear": [1.0, 2.0, 3.0, 4.0], "apple": [1.0, 2.0, 3.0]})
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(8, seed=18))
    hp = hyperparameters(enc0_network="hcnn", enc0_token_embedding_dim=4, **files)
    with pytest.raises(TrainingDataError) as error:
        train(hp, train_file, str(tmp_path / "model"), log=quiet)
    assert str(error.value) == (
        f"{files['enc0_pretrained_embedding_file']}, line 2: 'apple' has 3 numbers, "
        "but token_embedding_dim is 4"
    )


def test_pretrained_embedding_needs_a_vocab_file(tmp_path: Path) -> None:
    files = write_embeddings(tmp_path)
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(8, seed=19))
    hp = hyperparameters(enc0_pretrained_embedding_file=files["enc0_pretrained_embedding_file"])
    with pytest.raises(HyperparameterError) as error:
        train(hp, train_file, str(tmp_path / "model"), log=quiet)
    assert str(error.value) == (
        "enc0_pretrained_embedding_file is set but enc0_vocab_file is not: "
        "the vocab file (JSON word -> token id) says which row each word fills"
    )
