"""The tensors a model's weights file holds, by name and shape, worked out from the
hyperparameters alone (no torch), and the words for a file that does not match.

Names and shapes are those of model.Object2Vec's state dict, in its order; a test
builds every kind of network and compares.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import pairwise
from typing import NamedTuple

from o2v_batch.model.hyperparameters import EncoderConfig, Hyperparameters

Shapes = dict[str, tuple[int, ...]]
# With tied_token_embedding_weight enc1 shares enc0's embedding; the file holds it once.
TIED_TENSOR = "enc1.embedding.weight"
# An LSTM's steps run one after another in small matrix products: about twice the time
# per multiply-add of a convolution's.
LSTM_WORK = 2


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def mismatches(found: Shapes, expected: Shapes) -> list[str]:
    """What is wrong with the tensors `found`, tensor by tensor, in the expected order."""
    problems = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"{name} is missing")
        elif found[name] != shape:
            problems.append(
                f"{name} has shape {_shape_text(found[name])}, expected {_shape_text(shape)}"
            )
    problems += [f"{name} is not expected" for name in sorted(found) if name not in expected]
    return problems


def expected_shapes(hp: Hyperparameters, encoders_only: bool = False) -> Shapes:
    """The tensors a model file of `hp` holds and their shapes, in the network's order
    (model.Object2Vec's state dict), computed without torch."""
    shapes = _encoder_shapes("enc0", hp.encoder(0), hp.enc_dim)
    shapes |= _encoder_shapes("enc1", hp.encoder(1), hp.enc_dim)
    if hp.tied_token_embedding_weight:
        del shapes[TIED_TENSOR]
    if encoders_only:
        return shapes
    # The comparator has no weights; concat puts u and v side by side, the others are enc_dim wide.
    width = hp.enc_dim * sum(2 if name == "concat" else 1 for name in hp.comparator_list)
    for i, (d_in, d_out) in enumerate(pairwise([width] + [hp.mlp_dim] * hp.mlp_layers)):
        shapes |= _with_bias(f"mlp.layers.{i}", d_out, d_in)
    outputs = hp.num_classes if hp.output_layer == "softmax" else 1
    return shapes | _with_bias("head", outputs, hp.mlp_dim)


def _encoder_shapes(prefix: str, enc: EncoderConfig, enc_dim: int) -> Shapes:
    """One encoder's tensors, as model.HCNN, model.BiLSTM and model.PooledEmbedding hold them."""
    shapes = {f"{prefix}.embedding.weight": (enc.vocab_size, enc.token_embedding_dim)}
    if enc.network == "hcnn":
        channels = [enc.token_embedding_dim] * enc.layers + [enc_dim]
        for i, (c_in, c_out) in enumerate(pairwise(channels)):
            shapes |= _with_bias(f"{prefix}.convs.{i}", c_out, c_in, enc.cnn_filter_width)
    elif enc.network == "bilstm":
        hidden = (enc_dim + 1) // 2
        for layer in range(enc.layers):
            width = enc.token_embedding_dim if layer == 0 else 2 * hidden
            for name in (f"l{layer}", f"l{layer}_reverse"):
                shapes[f"{prefix}.lstm.weight_ih_{name}"] = (4 * hidden, width)
                shapes[f"{prefix}.lstm.weight_hh_{name}"] = (4 * hidden, hidden)
                shapes[f"{prefix}.lstm.bias_ih_{name}"] = (4 * hidden,)
                shapes[f"{prefix}.lstm.bias_hh_{name}"] = (4 * hidden,)
        shapes |= _with_bias(f"{prefix}.proj", enc_dim, 2 * hidden)
    return shapes


def _with_bias(name: str, *weight: int) -> Shapes:
    """A layer's weight and its bias, one number per output."""
    return {f"{name}.weight": weight, f"{name}.bias": weight[:1]}


class ForwardWork(NamedTuple):
    """Multiply-adds of a forward pass: per token and per record."""

    per_token: int
    per_record: int


def forward_work(hp: Hyperparameters, encoders_only: bool = False) -> ForwardWork:
    """The forward pass's multiply-adds from the weight shapes: per token, the costlier
    encoder's (its token embedding and the layers that run on every token); per record,
    the MLP and output layer a pair goes through (none with `encoders_only`)."""
    shapes = expected_shapes(hp, encoders_only)
    per_token = max(
        hp.encoder(i).token_embedding_dim
        + sum(math.prod(s) for name, s in shapes.items() if name.startswith(f"enc{i}.convs."))
        + LSTM_WORK
        * sum(math.prod(s) for name, s in shapes.items() if name.startswith(f"enc{i}.lstm.w"))
        for i in (0, 1)
    )
    per_record = sum(
        math.prod(s) for name, s in shapes.items() if name.startswith(("mlp.", "head."))
    )
    return ForwardWork(per_token, per_record)


def parameter_count(hp: Hyperparameters) -> int:
    """The numbers a network of `hp` holds, without torch (model.count_parameters of the
    network built): a tied token embedding counts once."""
    return sum(math.prod(shape) for shape in expected_shapes(hp).values())
