"""The tensors a model file holds, worked out from the hyperparameters without torch,
against the networks torch builds."""

from __future__ import annotations

import pytest
from tiny_models import build, tiny

from o2v_batch.model.network import count_parameters
from o2v_batch.model.weights import TIED_TENSOR, expected_shapes, mismatches, parameter_count

NETWORKS = {
    "hcnn": {},
    "hcnn-wide-filter-3-layers": {"enc0_layers": 3, "enc0_cnn_filter_width": 4},
    "bilstm-pair": {"enc0_network": "bilstm", "enc1_network": "hcnn", "enc1_vocab_size": 30},
    "bilstm-2-layers-odd-enc-dim": {"enc0_network": "bilstm", "enc0_layers": 2, "enc_dim": 9},
    "pooled-tied": {"enc0_network": "pooled_embedding", "tied_token_embedding_weight": True},
    "regression": {"output_layer": "mean_squared_error", "enc1_network": "bilstm"},
    "concat-only-3-mlp-layers": {"comparator_list": "concat", "mlp_layers": 3},
    "abs-diff-5-classes": {"comparator_list": "abs_diff,hadamard", "num_classes": 5},
}


@pytest.mark.parametrize("encoders_only", [False, True], ids=["whole", "encoders-only"])
@pytest.mark.parametrize("values", NETWORKS.values(), ids=NETWORKS.keys())
def test_expected_shapes_are_the_networks_in_its_order(values: dict, encoders_only: bool) -> None:
    hp = tiny(**values)
    state = build(hp, encoders_only=encoders_only).state_dict()
    if hp.tied_token_embedding_weight:
        del state[TIED_TENSOR]  # the file holds the shared embedding once
    assert expected_shapes(hp, encoders_only) == {n: tuple(t.shape) for n, t in state.items()}
    assert list(expected_shapes(hp, encoders_only)) == list(state)


@pytest.mark.parametrize("values", NETWORKS.values(), ids=NETWORKS.keys())
def test_parameter_count_is_the_networks(values: dict) -> None:
    hp = tiny(**values)
    assert parameter_count(hp) == count_parameters(build(hp))


def test_mismatches_name_every_tensor_in_order() -> None:
    expected = {"a.weight": (2, 3), "a.bias": (2,), "b.weight": (4,)}
    found = {"a.weight": (2, 4), "b.weight": (4,), "c": (1,)}
    assert mismatches(found, expected) == [
        "a.weight has shape (2, 4), expected (2, 3)",
        "a.bias is missing",
        "c is not expected",
    ]
    assert mismatches(expected, expected) == []
