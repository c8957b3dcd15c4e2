"""Training: convergence, early stopping, reproducibility, optimizers, negative sampling
in training, and the example model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import REPO
from training import (
    hyperparameters,
    quiet,
    topic_pairs,
    weights,
    write_jsonl,
)

from o2v_batch.api import load_model
from o2v_batch.errors import HyperparameterError
from o2v_batch.model.network import Object2Vec
from o2v_batch.training.train import EarlyStopping, train

# ---- convergence -----------------------------------------------------------


def test_classification_converges_and_saves_the_best_epoch(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(1200, seed=1))
    validation = topic_pairs(300, seed=2)
    validation_file = write_jsonl(tmp_path / "validation.jsonl", validation)
    result = train(
        hyperparameters(), train_file, str(tmp_path / "model"), validation_file, log=quiet
    )
    assert result.metric_name == "accuracy"
    assert result.best_metric >= 0.95
    assert result.best_metric == max(e.metric for e in result.history)
    # The saved weights are the best epoch's: score the validation pairs independently.
    model = load_model(str(tmp_path / "model"))
    scores = model.score([p["in0"] for p in validation], [p["in1"] for p in validation])
    accuracy = np.mean(scores.argmax(axis=1) == np.array([p["label"] for p in validation]))
    assert accuracy == pytest.approx(result.best_metric)


def test_regression_converges_well_below_the_label_variance(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(1200, seed=3, regression=True))
    validation = topic_pairs(300, seed=4, regression=True)
    validation_file = write_jsonl(tmp_path / "validation.jsonl", validation)
    hp = hyperparameters(output_layer="mean_squared_error", mlp_activation="relu")
    result = train(hp, train_file, str(tmp_path / "model"), validation_file, log=quiet)
    labels = np.array([p["label"] for p in validation])
    scores = load_model(str(tmp_path / "model")).score(
        [p["in0"] for p in validation], [p["in1"] for p in validation]
    )
    mse = float(np.mean((scores[:, 0] - labels) ** 2))
    assert result.metric_name == "MSE"
    assert mse == pytest.approx(result.best_metric, rel=1e-4)
    assert mse < 0.25 * labels.var()


# ---- early stopping --------------------------------------------------------


@pytest.mark.parametrize(
    ("higher_is_better", "metrics", "stop_after", "best_epoch"),
    [
        # Improvements of at most 0.009 are below the tolerance: patience runs out at epoch 4,
        # yet epoch 4 holds the best value.
        (True, [0.5, 0.504, 0.508, 0.509, 0.9], 4, 4),
        (True, [0.5, 0.6, 0.7, 0.65, 0.6, 0.69, 0.9], 6, 3),
        # An improvement above the tolerance resets the patience.
        (True, [0.5, 0.5, 0.5, 0.52, 0.52, 0.52, 0.52], 7, 4),
        (False, [3.0, 2.0, 2.5, 1.995, 1.999], 5, 4),
        (False, [3.0, 2.0, 1.0, 0.5, 0.25], None, 5),
    ],
)
def test_early_stopping_rule(
    higher_is_better: bool, metrics: list[float], stop_after: int | None, best_epoch: int
) -> None:
    stopping = EarlyStopping(higher_is_better=higher_is_better, patience=3, tolerance=0.01)
    stopped = None
    for epoch, metric in enumerate(metrics, 1):
        stopping.update(epoch, metric)
        if stopping.should_stop:
            stopped = epoch
            break
    assert stopped == stop_after
    assert stopping.best_epoch == best_epoch


def test_training_stops_early_on_a_plateau(tmp_path: Path) -> None:
    # A learning rate of 1e-6 cannot move the accuracy by the 0.1 tolerance: the
    # metric plateaus from the first epoch, so training must stop after 1 + patience.
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(200, seed=5))
    validation_file = write_jsonl(tmp_path / "validation.jsonl", topic_pairs(100, seed=6))
    hp = hyperparameters(
        optimizer="sgd",
        learning_rate=1e-6,
        early_stopping_tolerance=0.1,
        early_stopping_patience=2,
        epochs=20,
    )
    result = train(hp, train_file, str(tmp_path / "model"), validation_file, log=quiet)
    assert result.stopped_early
    assert result.epochs_run == 3


def test_without_validation_every_epoch_runs_and_the_last_is_saved(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(100, seed=7))
    lines: list[str] = []
    result = train(hyperparameters(epochs=3), train_file, str(tmp_path / "model"), log=lines.append)
    assert (result.epochs_run, result.best_epoch, result.stopped_early) == (3, 3, False)
    assert [e.metric for e in result.history] == [None, None, None]
    assert [line.split(":")[0] for line in lines[:3]] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert lines[0] == f"epoch 1/3: loss {result.history[0].loss:.4f}"


def test_epoch_lines_name_the_validation_metric(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=8, regression=True))
    validation_file = write_jsonl(tmp_path / "v.jsonl", topic_pairs(32, seed=9, regression=True))
    lines: list[str] = []
    hp = hyperparameters(epochs=1, output_layer="mean_squared_error")
    result = train(hp, train_file, str(tmp_path / "model"), validation_file, log=lines.append)
    epoch = result.history[0]
    assert lines[0] == f"epoch 1/1: loss {epoch.loss:.4f}, validation MSE {epoch.metric:.4f}"


# ---- reproducibility, optimizers, outputs ------------------------------------


def test_seeded_runs_are_reproducible(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(200, seed=10))
    hp = {
        "epochs": 2,
        "enc0_network": "hcnn",
        "enc0_layers": 2,
        "enc0_token_embedding_dim": 8,
        "dropout": 0.2,
    }
    runs = {}
    for name, seed in [("a", 3), ("b", 3), ("c", 4)]:
        train(
            hyperparameters(seed=seed, bucket_width=3, **hp),
            train_file,
            str(tmp_path / name),
            log=quiet,
        )
        runs[name] = weights(tmp_path / name)
    assert runs["a"].keys() == runs["c"].keys()
    assert all(torch.equal(runs["a"][k], runs["b"][k]) for k in runs["a"])
    assert not all(torch.equal(runs["a"][k], runs["c"][k]) for k in runs["a"])


@pytest.mark.parametrize("optimizer", ["adam", "adadelta", "adagrad", "sgd", "rmsprop"])
def test_every_optimizer_trains(tmp_path: Path, optimizer: str) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=11))
    hp = hyperparameters(epochs=2, optimizer=optimizer, learning_rate=0.1)
    # train() seeds torch, then builds the network: the same seed gives its initial weights.
    torch.manual_seed(hp.seed)
    initial = Object2Vec(hp).state_dict()
    result = train(hp, train_file, str(tmp_path / "model"), log=quiet)
    trained = weights(tmp_path / "model")
    assert all(np.isfinite(e.loss) for e in result.history)
    for name in ("enc0.embedding.weight", "mlp.layers.0.weight", "head.weight"):
        assert trained[name].shape == initial[name].shape
        assert not torch.equal(trained[name], initial[name]), name


@pytest.mark.parametrize("progress", [True, False])
def test_progress_bars_go_to_stderr_when_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture, progress: bool
) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=20))
    train(
        hyperparameters(epochs=1), train_file, str(tmp_path / "model"), progress=progress, log=quiet
    )
    captured = capsys.readouterr()
    assert captured.out == ""
    assert ("epoch 1/1" in captured.err) == progress


def test_weight_decay_shrinks_the_weights(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=12))
    norms = []
    for decay in (0.0, 1.0):
        hp = hyperparameters(epochs=2, optimizer="sgd", learning_rate=0.1, weight_decay=decay)
        train(hp, train_file, str(tmp_path / str(decay)), log=quiet)
        norms.append(float(weights(tmp_path / str(decay))["mlp.layers.0.weight"].norm()))
    assert norms[1] < 0.9 * norms[0]


# ---- negative sampling ---------------------------------------------------------


@pytest.mark.parametrize(("rate", "accuracy"), [(0, (0.5, 0.5)), (1, (0.85, 1.0))])
def test_negative_sampling_in_training_adds_negatives(
    tmp_path: Path, rate: int, accuracy: tuple[float, float]
) -> None:
    # Only positives: without negatives the model learns to answer 1, right half the time.
    # (A quarter of the sampled negatives share a topic by chance: noisy, but learnable.)
    positives = [p for p in topic_pairs(800, seed=15) if p["label"] == 1]
    train_file = write_jsonl(tmp_path / "train.jsonl", positives)
    validation_file = write_jsonl(tmp_path / "v.jsonl", topic_pairs(200, seed=16))
    hp = hyperparameters(
        negative_sampling_rate=rate, epochs=10, learning_rate=0.03, early_stopping_patience=5
    )
    result = train(hp, train_file, str(tmp_path / "model"), validation_file, log=quiet)
    assert accuracy[0] <= result.best_metric <= accuracy[1]


def test_negative_sampling_is_refused_for_regression() -> None:
    from o2v_batch.training.train import check_training_hyperparameters

    with pytest.raises(HyperparameterError) as error:
        check_training_hyperparameters(
            hyperparameters(output_layer="mean_squared_error", negative_sampling_rate=2)
        )
    assert str(error.value) == (
        "negative_sampling_rate=2 needs output_layer=softmax (negatives are labelled 0), "
        "but output_layer is mean_squared_error"
    )


# ---- the example model -------------------------------------------------------


def test_example_model_embeds_the_documented_requests() -> None:
    request = json.loads((REPO / "examples" / "requests" / "documented.json").read_text())
    lines = (REPO / "examples" / "requests" / "documented.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == request["instances"]
    model = load_model(str(REPO / "examples" / "model"), mode="embedding")
    embeddings = model.embed([record["in0"] for record in request["instances"]])
    assert embeddings.shape == (3, 16)
    assert np.isfinite(embeddings).all() and (embeddings >= 0).all()
    assert sum(f.stat().st_size for f in (REPO / "examples" / "model").iterdir()) < 5_000_000


def test_example_model_separates_the_example_topics() -> None:
    pairs = [json.loads(line) for line in (REPO / "examples" / "train" / "validation.jsonl").open()]
    scores = load_model(str(REPO / "examples" / "model")).score(
        [p["in0"] for p in pairs], [p["in1"] for p in pairs]
    )
    assert np.mean(scores.argmax(axis=1) == np.array([p["label"] for p in pairs])) >= 0.95
