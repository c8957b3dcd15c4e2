"""Training: convergence, early stopping, reproducibility, negative sampling in training,
pretrained embeddings, outputs, and the example model."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from o2v_batch.api import load_model
from o2v_batch.errors import HyperparameterError, OutputExistsError, TrainingDataError
from o2v_batch.hyperparameters import Hyperparameters
from o2v_batch.model import Object2Vec
from o2v_batch.train import EarlyStopping, check_output, train

REPO = Path(__file__).resolve().parents[1]
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


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "model.safetensors"))


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


def test_output_as_a_tarball_loads(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=13))
    train(hyperparameters(epochs=1), train_file, str(tmp_path / "folder"), log=quiet)
    train(hyperparameters(epochs=1), train_file, str(tmp_path / "out" / "model.tar.gz"), log=quiet)
    sequences = [p["in0"] for p in topic_pairs(8, seed=14)]
    from_folder = load_model(str(tmp_path / "folder")).embed(sequences)
    from_tarball = load_model(str(tmp_path / "out" / "model.tar.gz")).embed(sequences)
    np.testing.assert_array_equal(from_folder, from_tarball)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.tar.gz"]


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
    from o2v_batch.train import check_training_hyperparameters

    with pytest.raises(HyperparameterError) as error:
        check_training_hyperparameters(
            hyperparameters(output_layer="mean_squared_error", negative_sampling_rate=2)
        )
    assert str(error.value) == (
        "negative_sampling_rate=2 needs output_layer=softmax (negatives are labelled 0), "
        "but output_layer is mean_squared_error"
    )


# ---- pretrained embeddings ---------------------------------------------------

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


@pytest.mark.s3
@pytest.mark.parametrize("target", ["models/run1/", "models/run1", "models/run1.tar.gz"])
def test_training_data_from_s3_and_model_to_s3(
    tmp_path: Path, s3_server, s3_bucket: str, target: str
) -> None:
    local = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=21))
    s3_server.client().upload_file(local, s3_bucket, "data/train.jsonl")
    output = f"s3://{s3_bucket}/{target}"
    train(hyperparameters(epochs=1), f"s3://{s3_bucket}/data/train.jsonl", output, log=quiet)
    train(hyperparameters(epochs=1), local, str(tmp_path / "model"), log=quiet)
    sequences = [p["in0"] for p in topic_pairs(8, seed=22)]
    np.testing.assert_array_equal(
        load_model(output).embed(sequences), load_model(str(tmp_path / "model")).embed(sequences)
    )


def test_check_output_refuses_what_is_not_empty(tmp_path: Path) -> None:
    folder, archive, file = tmp_path / "model", tmp_path / "model.tar.gz", tmp_path / "f"
    for fresh in (folder, archive, tmp_path / "new" / "model"):
        check_output(str(fresh))
    folder.mkdir()
    check_output(str(folder))  # an empty folder holds nothing to lose
    (folder / ".hidden").write_text("x")
    archive.write_bytes(b"x")
    file.write_text("x")
    for taken in (folder, archive, file):
        with pytest.raises(OutputExistsError) as caught:
            check_output(str(taken))
        # Only `o2v-batch train --overwrite` replaces it: the CLI names it (test_cli).
        assert str(caught.value) == f"output already exists: {taken}"
        assert str(caught.value.phrased(None, "--overwrite")) == (
            f"output already exists: {taken} (use --overwrite to replace it)"
        )


@pytest.mark.s3
def test_check_output_on_s3(s3_server, s3_bucket: str) -> None:
    check_output(f"s3://{s3_bucket}/models/run1/")
    check_output(f"s3://{s3_bucket}/models/run1.tar.gz")
    for key in ("models/run1/model.safetensors", "models/run1.tar.gz"):
        s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    for taken in ("models/run1/", "models/run1", "models/run1.tar.gz"):
        with pytest.raises(OutputExistsError, match=r"^output already exists: s3://"):
            check_output(f"s3://{s3_bucket}/{taken}")
    check_output(f"s3://{s3_bucket}/models/run2/")
