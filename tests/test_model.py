"""The network: encoders, comparator, MLP, head, and the parameter count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tiny_models import VOCAB, build, embed, random_rows, saved, tiny

from o2v_batch.artifacts import load_network
from o2v_batch.errors import O2VError
from o2v_batch.model.network import Comparator, count_parameters

ENCODER_CONFIGS = {
    "hcnn": {"enc0_network": "hcnn"},
    "hcnn-1-layer": {"enc0_network": "hcnn", "enc0_layers": 1},
    "hcnn-width-1": {"enc0_network": "hcnn", "enc0_cnn_filter_width": 1, "enc0_layers": 2},
    "hcnn-width-2": {"enc0_network": "hcnn", "enc0_cnn_filter_width": 2, "enc0_layers": 2},
    "hcnn-width-4": {"enc0_network": "hcnn", "enc0_cnn_filter_width": 4},
    "bilstm": {"enc0_network": "bilstm"},
    "bilstm-2-layers-odd-dim": {"enc0_network": "bilstm", "enc0_layers": 2, "enc_dim": 7},
    "pooled_embedding": {"enc0_network": "pooled_embedding"},
}
encoder_configs = pytest.mark.parametrize(
    "values", ENCODER_CONFIGS.values(), ids=ENCODER_CONFIGS.keys()
)


# ---------------------------------------------------------------- encoders


@encoder_configs
def test_encoder_output_shape(values: dict) -> None:
    hp = tiny(**values)
    network = build(hp)
    for encoder in (0, 1):
        assert embed(network, random_rows(5), encoder).shape == (5, hp.enc_dim)


@encoder_configs
@pytest.mark.parametrize(
    "padded",
    [
        [3, 4, 5, 0],
        [3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [3, 0, 4, 5],
        [0, 0, 3, 4, 0, 0, 5, 0],
    ],
)
def test_padding_never_changes_an_embedding(values: dict, padded: list[int]) -> None:
    network = build(tiny(**values))
    torch.testing.assert_close(
        embed(network, [padded]), embed(network, [[3, 4, 5]]), atol=1e-6, rtol=0
    )


@encoder_configs
def test_batch_mixing_lengths_gives_each_its_embedding_alone(values: dict) -> None:
    network = build(tiny(**values))
    rows = random_rows(16)
    together = embed(network, rows)
    alone = torch.cat([embed(network, [row]) for row in rows])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


@encoder_configs
def test_given_lengths_skip_alignment_and_change_nothing(values: dict) -> None:
    """encode with the rows' lengths (left-aligned rows, as TokenIds pads them) gives
    what the alignment pass would, for every encoder."""
    network = build(tiny(**values))
    rows = random_rows(12, seed=3)
    width = max(map(len, rows))
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    with torch.inference_mode():
        for encoder in (0, 1):
            torch.testing.assert_close(
                network.encode(tokens, encoder, lengths), embed(network, rows, encoder)
            )


@encoder_configs
def test_encoders_are_deterministic(values: dict) -> None:
    rows = random_rows(8)
    first = embed(build(tiny(**values), seed=3), rows)
    assert torch.equal(first, embed(build(tiny(**values), seed=3), rows))
    assert not torch.equal(first, embed(build(tiny(**values), seed=4), rows))


def test_hcnn_is_non_negative_with_exact_zeros() -> None:
    out = embed(build(tiny(enc0_network="hcnn")), random_rows(64))
    assert (out >= 0).all()
    assert (out == 0).any()


def _conv_same(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Reference 'same' conv of one (L, C_in) sequence with zeros outside it."""
    length, width = x.shape[0], weight.shape[2]
    out = np.tile(bias, (length, 1)).astype(np.float64)
    for t in range(length):
        for k in range(width):
            source = t + k - width // 2
            if 0 <= source < length:
                out[t] += weight[:, :, k] @ x[source]
    return out


@pytest.mark.parametrize(("layers", "width"), [(1, 3), (2, 2), (3, 5)])
def test_hcnn_against_a_hand_computation(layers: int, width: int) -> None:
    network = build(tiny(enc0_layers=layers, enc0_cnn_filter_width=width))
    ids = [5, 9, 2, 7, 7]
    x = network.enc0.embedding.weight.detach().numpy()[ids]
    for conv in network.enc0.convs:
        params = conv.weight.detach().numpy(), conv.bias.detach().numpy()
        x = np.maximum(_conv_same(x, *params), 0)
    expected = x.max(axis=0)
    np.testing.assert_allclose(embed(network, [[*ids, 0, 0]])[0].numpy(), expected, atol=1e-5)


def _hcnn_over_time_axis(encoder: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """The hcnn as (B, C, T) Conv1d blocks: the layout the encoder does not use."""
    T = tokens.shape[1]
    mask = (tokens != 0).unsqueeze(1).float()
    x = encoder.embedding(tokens).transpose(1, 2)
    for conv in encoder.convs:
        x = torch.relu(
            torch.nn.functional.conv1d(x * mask, conv.weight, conv.bias, padding=conv.padding)[
                :, :, :T
            ]
        )
    return (x * mask).amax(dim=2)


@pytest.mark.parametrize("width", [1, 2, 3, 4])
def test_hcnn_trains_and_serves_as_conv1d_over_time(width: int) -> None:
    """Serving (in place, no autograd) and training (autograd) give the embeddings and,
    in training, the gradients of plain Conv1d blocks over (B, C, T)."""
    network = build(tiny(enc0_layers=3, enc0_cnn_filter_width=width)).train()
    encoder = network.enc0
    rows = random_rows(16, seed=5)
    tokens = torch.tensor([r + [0] * (10 - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    with torch.inference_mode():
        served = encoder(tokens, lengths)
    trained = encoder(tokens, lengths)
    (trained * torch.arange(1.0, 9.0)).sum().backward()
    grads = [p.grad.clone() for p in encoder.parameters()]
    encoder.zero_grad()
    reference = _hcnn_over_time_axis(encoder, tokens)
    (reference * torch.arange(1.0, 9.0)).sum().backward()
    torch.testing.assert_close(served, reference.detach(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(trained.detach(), reference.detach(), atol=1e-6, rtol=1e-6)
    assert any(bool(g.abs().sum() > 0) for g in grads)
    for got, expected in zip(grads, (p.grad for p in encoder.parameters()), strict=True):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


def test_hcnn_weights_keep_their_layout_through_loading_and_saving(tmp_path) -> None:
    """The conv weights stay laid out for the channels-last kernels once loaded and
    moved to another dtype, and the saved file holds the same values."""
    _, network = saved(tmp_path, enc0_layers=2)
    for precision in ("fp32", "bf16"):
        loaded = load_network(tmp_path, precision=precision)
        for mine, theirs in zip(loaded.enc0.convs, network.enc0.convs, strict=True):
            view = mine.weight.unsqueeze(2)
            assert view.is_contiguous(memory_format=torch.channels_last)
            assert mine.weight.shape == theirs.weight.shape
            torch.testing.assert_close(mine.weight.float(), theirs.weight, atol=1e-2, rtol=1e-2)
            if precision == "fp32":
                assert torch.equal(mine.weight, theirs.weight)


def test_pooled_embedding_is_the_mean_of_token_embeddings() -> None:
    network = build(tiny(enc0_network="pooled_embedding"))
    table = network.enc0.embedding.weight.detach().numpy()
    expected = table[[4, 8, 8, 1]].mean(axis=0)
    got = embed(network, [[4, 0, 8, 8, 1, 0, 0]])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_bilstm_against_an_unpacked_run(layers: int) -> None:
    network = build(tiny(enc0_network="bilstm", enc0_layers=layers))
    ids = [5, 9, 2, 7]
    encoder = network.enc0
    with torch.inference_mode():
        states, _ = encoder.lstm(encoder.embedding(torch.tensor([ids])))  # (1, L, 2H)
        expected = encoder.proj(states[0].amax(dim=0))
    torch.testing.assert_close(embed(network, [[*ids, 0, 0, 0]])[0], expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- comparator, MLP, head


U = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
V = torch.tensor([[3.0, 4.0], [-1.0, 3.0]])
BY_HAND = {
    "hadamard": [[3.0, -8.0], [-0.5, 9.0]],
    "concat": [[1.0, -2.0, 3.0, 4.0], [0.5, 3.0, -1.0, 3.0]],
    "abs_diff": [[2.0, 6.0], [1.5, 0.0]],
}


@pytest.mark.parametrize(
    "names",
    [
        ("hadamard", "concat", "abs_diff"),
        ("abs_diff", "hadamard"),
        ("concat",),
        ("concat", "abs_diff", "hadamard"),
    ],
)
def test_comparator_by_hand(names: tuple[str, ...]) -> None:
    expected = torch.cat([torch.tensor(BY_HAND[name]) for name in names], dim=1)
    comparator = Comparator(names)
    assert torch.equal(comparator(U, V), expected)
    assert comparator.output_dim(2) == expected.shape[1]


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
@pytest.mark.parametrize("output_layer", ["softmax", "mean_squared_error"])
def test_predict_against_a_hand_computation(activation: str, output_layer: str) -> None:
    hp = tiny(
        mlp_activation=activation,
        output_layer=output_layer,
        num_classes=3,
        mlp_layers=2,
        comparator_list="abs_diff, hadamard",
    )
    network = build(hp)
    u, v = torch.randn(4, 8), torch.randn(4, 8)
    un, vn = u.numpy(), v.numpy()
    act = {"linear": lambda x: x, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0)}[activation]
    x = np.concatenate([np.abs(un - vn), un * vn], axis=1)
    for layer in network.mlp.layers:
        x = act(x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy())
    x = x @ network.head.weight.detach().numpy().T + network.head.bias.detach().numpy()
    if output_layer == "softmax":
        x = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    with torch.inference_mode():
        got = network.predict_from_embeddings(u, v)
    assert got.shape == (4, 3 if output_layer == "softmax" else 1)
    np.testing.assert_allclose(got.numpy(), x, atol=1e-5)


@pytest.mark.parametrize("output_layer", ["softmax", "mean_squared_error"])
def test_scores_of_the_two_embeddings_are_those_of_the_training_logits(output_layer: str) -> None:
    network = build(tiny(enc1_network="bilstm", enc1_vocab_size=30, output_layer=output_layer))
    in0, in1 = torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([[7, 0], [8, 9]])
    with torch.inference_mode():
        scores = network.predict_from_embeddings(network.encode(in0, 0), network.encode(in1, 1))
        logits = network.logits(in0, in1)
    if output_layer == "softmax":
        torch.testing.assert_close(logits.softmax(dim=1), scores)
        torch.testing.assert_close(scores.sum(dim=1), torch.ones(2))
    else:
        assert torch.equal(logits, scores)


def test_encoders_only_builds_no_comparator_mlp_or_head() -> None:
    network = build(tiny(), encoders_only=True)
    assert {name.split(".")[0] for name, _ in network.named_parameters()} == {"enc0", "enc1"}
    with pytest.raises(
        O2VError, match=r"^this network holds the encoders only; it cannot score pairs$"
    ):
        network.predict_from_embeddings(U, V)


def test_dropout_is_active_in_training_mode_only() -> None:
    network = build(tiny(dropout=0.5))
    in0, in1 = torch.tensor([[1, 2, 3]] * 8), torch.tensor([[4, 5]] * 8)
    with torch.no_grad():
        assert torch.equal(network.logits(in0, in1), network.logits(in0, in1))
        network.train()
        assert not torch.equal(network.logits(in0, in1), network.logits(in0, in1))


def test_tied_embedding_is_one_module_counted_once() -> None:
    tied, untied = build(tiny(tied_token_embedding_weight=True)), build(tiny())
    assert tied.enc1.embedding is tied.enc0.embedding
    assert count_parameters(untied) - count_parameters(tied) == VOCAB * 8


def test_count_parameters_by_hand() -> None:
    hp = tiny(
        enc0_network="pooled_embedding", comparator_list="concat", mlp_layers=1, num_classes=3
    )
    # Two embeddings (50 x 8), MLP 16 -> 8, head 8 -> 3.
    assert count_parameters(build(hp)) == 2 * 50 * 8 + (16 * 8 + 8) + (8 * 3 + 3)
