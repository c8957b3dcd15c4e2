"""Training data: reading and checking pairs, labels, truncation, negative sampling and
the mini-batches of an epoch."""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

import numpy as np
import pytest
from helpers import write_jsonl

from o2v_batch.errors import TrainingDataError
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.training.data import Pair, epoch_batches, negative_pairs, read_pairs

# Ids 0..95 and at most 12 tokens per sequence: the numbers the messages below quote.
DATA = {"enc0_vocab_size": 96, "enc0_max_seq_len": 12}


def hyperparameters(**overrides) -> Hyperparameters:
    return Hyperparameters.from_dict({**DATA, **overrides})


# ---- negative sampling and bucketing ------------------------------------------


def numbered_pairs(labels: list[int]) -> list[Pair]:
    return [Pair([i + 1], [100 + i], label) for i, label in enumerate(labels)]


def test_negative_sampling_pairs_each_positive_with_other_in1s() -> None:
    pairs = numbered_pairs([1, 0, 1, 1, 0, 1])
    rng = np.random.default_rng(0)
    negatives = negative_pairs(pairs, 3, rng)
    positives = [p for p in pairs if p.label == 1]
    assert len(negatives) == 3 * len(positives)
    assert all(n.label == 0 for n in negatives)
    # Each positive's in0 appears exactly `rate` times, never with its own in1.
    for positive in positives:
        mine = [n for n in negatives if n.in0 is positive.in0]
        assert len(mine) == 3
        assert all(n.in1 is not positive.in1 and any(n.in1 is p.in1 for p in pairs) for n in mine)
    # Regenerated every epoch: the next call draws other partners.
    again = negative_pairs(pairs, 3, rng)
    assert [n.in1 for n in again] != [n.in1 for n in negatives]


def test_negative_sampling_draws_every_other_in1() -> None:
    pairs = numbered_pairs([1, 0, 0, 0])
    negatives = negative_pairs(pairs, 300, np.random.default_rng(1))
    assert {n.in1[0] for n in negatives} == {101, 102, 103}


@pytest.mark.parametrize("labels", [[0, 0, 0], [1]])
def test_negative_sampling_needs_a_positive_and_another_pair(labels: list[int]) -> None:
    assert negative_pairs(numbered_pairs(labels), 2, np.random.default_rng(0)) == []


@pytest.mark.parametrize(("bucket_width", "batch_size"), [(0, 4), (1, 3), (4, 2), (5, 5)])
def test_epoch_batches_cover_every_pair_once_within_buckets(
    bucket_width: int, batch_size: int
) -> None:
    rng = random.Random(bucket_width)
    pairs = [Pair([1] * rng.randint(1, 20), [1] * rng.randint(1, 20), 0) for _ in range(57)]
    batches = epoch_batches(pairs, batch_size, bucket_width, np.random.default_rng(0))
    assert sorted(i for batch in batches for i in batch.tolist()) == list(range(57))
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    if bucket_width:
        for batch in batches:
            buckets = {
                max(len(pairs[i].in0), len(pairs[i].in1)) // bucket_width for i in batch.tolist()
            }
            assert len(buckets) == 1


def test_epoch_batches_shuffle_differently_each_epoch() -> None:
    pairs = numbered_pairs([0] * 40)
    rng = np.random.default_rng(0)
    first, second = (np.concatenate(epoch_batches(pairs, 8, 0, rng)).tolist() for _ in range(2))
    assert first != second
    assert sorted(first) == sorted(second) == list(range(40))


# ---- reading pairs ---------------------------------------------------------

GOOD = '{"label": 1, "in0": [1, 2], "in1": [3]}'


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        ("not json", "not valid JSON"),
        ('{"label": 1, "in0": [1]', "not valid JSON"),
        ("[1, 2]", 'expected an object like {"label": 1, "in0": [...], "in1": [...]}'),
        ('{"in0": [1], "in1": [2]}', "missing field 'label'"),
        ('{"label": 0, "in1": [2]}', "missing field 'in0'"),
        ('{"label": 0, "in0": [2]}', "missing field 'in1'"),
        (
            '{"label": 2, "in0": [1], "in1": [2]}',
            "label 2 is not a class: expected an integer in 0..1 (num_classes=2)",
        ),
        (
            '{"label": -1, "in0": [1], "in1": [2]}',
            "label -1 is not a class: expected an integer in 0..1 (num_classes=2)",
        ),
        (
            '{"label": 1.0, "in0": [1], "in1": [2]}',
            "label 1.0 is not a class: expected an integer in 0..1 (num_classes=2)",
        ),
        (
            '{"label": "1", "in0": [1], "in1": [2]}',
            'label "1" is not a class: expected an integer in 0..1 (num_classes=2)',
        ),
        (
            '{"label": true, "in0": [1], "in1": [2]}',
            "label true is not a class: expected an integer in 0..1 (num_classes=2)",
        ),
        (
            '{"label": null, "in0": [1], "in1": [2]}',
            "label null is not a class: expected an integer in 0..1 (num_classes=2)",
        ),
        ('{"label": 1, "in0": "1 2", "in1": [2]}', "in0 must be a list of token ids, got a string"),
        (
            '{"label": 1, "in0": [1], "in1": {"a": 1}}',
            "in1 must be a list of token ids, got an object",
        ),
        ('{"label": 1, "in0": [], "in1": [2]}', "in0 is empty: it needs at least one token id"),
        ('{"label": 1, "in0": [1], "in1": []}', "in1 is empty: it needs at least one token id"),
        (
            '{"label": 1, "in0": [1, 2.5], "in1": [2]}',
            "in0 has a token id that is not an integer: 2.5",
        ),
        (
            '{"label": 1, "in0": [1, "3"], "in1": [2]}',
            'in0 has a token id that is not an integer: "3"',
        ),
        (
            '{"label": 1, "in0": [true], "in1": [2]}',
            "in0 has a token id that is not an integer: true",
        ),
        (
            '{"label": 1, "in0": [1], "in1": [2, -1]}',
            "in1 id -1 is out of range: vocab size is 96 (ids must be in 0..95)",
        ),
        (
            '{"label": 1, "in0": [96], "in1": [2]}',
            "in0 id 96 is out of range: vocab size is 96 (ids must be in 0..95)",
        ),
    ],
)
def test_bad_training_line_names_file_line_and_problem(
    tmp_path: Path, line: str, problem: str
) -> None:
    path = tmp_path / "train.jsonl"
    # The blank line still counts: line numbers are what an editor shows.
    path.write_text(f"{GOOD}\n\n{line}\n{GOOD}\n")
    with pytest.raises(TrainingDataError) as error:
        read_pairs(str(path), hyperparameters())
    assert str(error.value) == f"{path}, line 3: {problem}"


@pytest.mark.parametrize(
    ("label", "problem"),
    [
        ('"x"', 'label "x" is not a number (output_layer=mean_squared_error)'),
        ("[1]", "label [1] is not a number (output_layer=mean_squared_error)"),
    ],
)
def test_bad_regression_label(tmp_path: Path, label: str, problem: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(f'{{"label": {label}, "in0": [1], "in1": [2]}}\n')
    with pytest.raises(TrainingDataError) as error:
        read_pairs(str(path), hyperparameters(output_layer="mean_squared_error"))
    assert str(error.value) == f"{path}, line 1: {problem}"


def test_labels_for_each_output_layer(tmp_path: Path) -> None:
    records = [{"label": 2, "in0": [1], "in1": [2]}, {"label": 0, "in0": [3], "in1": [4]}]
    path = str(write_jsonl(tmp_path / "train.jsonl", records))
    classes, _ = read_pairs(path, hyperparameters(num_classes=3))
    values, _ = read_pairs(path, hyperparameters(output_layer="mean_squared_error"))
    assert [p.label for p in classes] == [2, 0]
    assert [(p.label, type(p.label)) for p in values] == [(2.0, float), (0.0, float)]


def test_long_sequences_are_truncated_and_counted_gzip_too(tmp_path: Path) -> None:
    records = [
        {"label": 1, "in0": list(range(1, 21)), "in1": [5]},
        {"label": 0, "in0": [1, 2], "in1": list(range(1, 14))},
        {"label": 0, "in0": list(range(1, 13)), "in1": list(range(1, 13))},
    ]
    path = tmp_path / "train.jsonl.gz"
    path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    pairs, truncated = read_pairs(str(path), hyperparameters())  # max_seq_len 12
    assert truncated == 2
    assert [(len(p.in0), len(p.in1)) for p in pairs] == [(12, 1), (2, 12), (12, 12)]
    assert pairs[0].in0 == list(range(1, 13))


def test_empty_training_file(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text("\n\n")
    with pytest.raises(TrainingDataError) as error:
        read_pairs(str(path), hyperparameters())
    assert str(error.value) == f"{path} holds no pairs"
