"""The training data: reading and checking the pairs, negative sampling, the
shuffled mini-batches of an epoch, and pretrained token embeddings.

Training pairs are jsonlines (`{"label": 1, "in0": [..], "in1": [..]}`); token ids
are checked as inference checks them and cut to each encoder's max_seq_len.
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
import torch

from o2v_batch.errors import BadRecordError, InputError, TrainingDataError
from o2v_batch.inputs.token_ids import check_sequence
from o2v_batch.io import open_read
from o2v_batch.model.hyperparameters import EncoderConfig, Hyperparameters
from o2v_batch.model.network import Object2Vec
from o2v_batch.model.tokens import truncate_sequence


@dataclass(frozen=True)
class Pair:
    """One training example: two token-id sequences and their label."""

    in0: list[int]
    in1: list[int]
    label: int | float


# ---- pairs -----------------------------------------------------------------


class _Problem(Exception):
    """What is wrong with one line; read_pairs adds the file and line number."""


def read_pairs(uri: str, hp: Hyperparameters) -> tuple[list[Pair], int]:
    """Read and validate a jsonlines file of pairs (.gz and s3:// work).

    Returns the pairs and how many sequences were truncated to max_seq_len.
    """
    encoders = (hp.encoder(0), hp.encoder(1))
    pairs: list[Pair] = []
    truncated = 0
    try:
        stream = open_read(uri)
    except InputError as e:
        raise InputError(f"cannot open {uri}: {e}") from None
    with stream:
        for number, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                pair = _parse_pair(line, hp, encoders)
            except _Problem as problem:
                raise TrainingDataError(f"{uri}, line {number}: {problem}") from None
            pair, cut = _truncate(pair, encoders)
            truncated += cut
            pairs.append(pair)
    if not pairs:
        raise TrainingDataError(f"{uri} holds no pairs")
    return pairs, truncated


def _parse_pair(line: bytes, hp: Hyperparameters, encoders: Sequence[EncoderConfig]) -> Pair:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise _Problem("not valid JSON") from None
    if not isinstance(record, dict):
        raise _Problem('expected an object like {"label": 1, "in0": [...], "in1": [...]}')
    for name in ("label", "in0", "in1"):
        if name not in record:
            raise _Problem(f"missing field {name!r}")
    return Pair(
        in0=_token_ids(record["in0"], "in0", encoders[0].vocab_size),
        in1=_token_ids(record["in1"], "in1", encoders[1].vocab_size),
        label=_label(record["label"], hp),
    )


def _label(label: object, hp: Hyperparameters) -> int | float:
    if hp.output_layer == "softmax":
        if type(label) is not int or not 0 <= label < hp.num_classes:
            raise _Problem(
                f"label {_show(label)} is not a class: expected an integer in "
                f"0..{hp.num_classes - 1} (num_classes={hp.num_classes})"
            )
        return label
    if type(label) not in (int, float) or not math.isfinite(label):
        raise _Problem(f"label {_show(label)} is not a number (output_layer=mean_squared_error)")
    return float(label)


def _token_ids(value: object, name: str, vocab_size: int) -> list[int]:
    # The check inference runs, so a problem is worded as a transform words it.
    try:
        check_sequence(value, vocab_size, name)
    except BadRecordError as e:
        raise _Problem(str(e)) from None
    return value


def _show(value: object) -> str:
    """A JSON value the way the user wrote it, cut short."""
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _truncate(pair: Pair, encoders: Sequence[EncoderConfig]) -> tuple[Pair, int]:
    """The pair cut to each encoder's max_seq_len, and how many of its sequences were cut."""
    in0, cut0 = truncate_sequence(pair.in0, encoders[0].max_seq_len)
    in1, cut1 = truncate_sequence(pair.in1, encoders[1].max_seq_len)
    return (Pair(in0, in1, pair.label) if cut0 or cut1 else pair), cut0 + cut1


# ---- epochs ----------------------------------------------------------------


def negative_pairs(pairs: Sequence[Pair], rate: int, rng: np.random.Generator) -> list[Pair]:
    """`rate` negatives per positive pair (label != 0): its in0 with the in1 of a
    random other pair, labelled 0. Called every epoch, so the negatives change."""
    positives = np.array([i for i, pair in enumerate(pairs) if pair.label != 0], dtype=np.int64)
    if rate <= 0 or len(pairs) < 2 or len(positives) == 0:
        return []
    sources = np.repeat(positives, rate)
    # Draw from the n - 1 other pairs: shift the draws at or above the source by one.
    others = rng.integers(0, len(pairs) - 1, size=len(sources))
    others += others >= sources
    return [
        Pair(pairs[i].in0, pairs[j].in1, 0)
        for i, j in zip(sources.tolist(), others.tolist(), strict=True)
    ]


def epoch_batches(
    pairs: Sequence[Pair], batch_size: int, bucket_width: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled mini-batches of pair indices. With bucket_width > 0 a mini-batch
    only holds pairs whose longer sequence falls in the same length bucket."""
    if bucket_width <= 0:
        order = rng.permutation(len(pairs))
        return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    buckets: dict[int, list[int]] = defaultdict(list)
    for i, pair in enumerate(pairs):
        buckets[max(len(pair.in0), len(pair.in1)) // bucket_width].append(i)
    batches = []
    for key in sorted(buckets):
        members = rng.permutation(buckets[key])
        batches += [members[i : i + batch_size] for i in range(0, len(members), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


# ---- pretrained token embeddings -------------------------------------------


def load_pretrained_embeddings(network: Object2Vec, hp: Hyperparameters) -> None:
    """Copy GloVe-style vectors into the token embeddings, by way of encX_vocab_file."""
    for index, encoder in enumerate((network.enc0, network.enc1)):
        config = hp.encoder(index)
        # A tied enc1 holds enc0's embedding, which is already loaded.
        if not config.pretrained_embedding_file or (index == 1 and hp.tied_token_embedding_weight):
            continue
        vocabulary = read_vocabulary(config.vocab_file, config.vocab_size)
        ids, vectors = read_vectors(
            config.pretrained_embedding_file, vocabulary, config.token_embedding_dim
        )
        weight = encoder.embedding.weight
        with torch.no_grad():
            weight[torch.tensor(ids, dtype=torch.long)] = torch.tensor(vectors, dtype=weight.dtype)
        if config.freeze_pretrained_embedding:
            weight.requires_grad_(False)


def read_vocabulary(uri: str, vocab_size: int) -> dict[str, int]:
    """A JSON object word -> token id, every id inside the vocabulary."""
    with open_read(uri) as f:
        try:
            vocabulary = orjson.loads(f.read())
        except orjson.JSONDecodeError:
            raise TrainingDataError(f"{uri}: not valid JSON") from None
    if not isinstance(vocabulary, dict):
        raise TrainingDataError(f"{uri}: expected a JSON object mapping word -> token id")
    for word, token in vocabulary.items():
        if type(token) is not int or not 0 <= token < vocab_size:
            raise TrainingDataError(
                f"{uri}: id {_show(token)} of word {word!r} is not a token id in 0..{vocab_size - 1}"
            )
    return vocabulary


def read_vectors(uri: str, vocabulary: dict[str, int], dim: int) -> tuple[list[int], np.ndarray]:
    """The vectors of the vocabulary's words, streamed from a `word v1 v2 ...` file."""
    ids: list[int] = []
    rows: list[list[float]] = []
    with io.TextIOWrapper(open_read(uri), encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            word, *values = line.rstrip("\n").split(" ")
            if not line.strip() or word not in vocabulary:
                continue
            if len(values) != dim:
                raise TrainingDataError(
                    f"{uri}, line {number}: {word!r} has {len(values)} numbers, "
                    f"but token_embedding_dim is {dim}"
                )
            try:
                rows.append([float(v) for v in values])
            except ValueError:
                raise TrainingDataError(
                    f"{uri}, line {number}: {word!r} has a value that is not a number"
                ) from None
            ids.append(vocabulary[word])
    return ids, np.asarray(rows, dtype=np.float32).reshape(len(rows), dim)
