"""The Object2Vec hyperparameters: SageMaker's defaults, validation messages and the
resolved encoder settings."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest
from hypothesis import given
from hypothesis import strategies as st

from o2v_batch.errors import HyperparameterError
from o2v_batch.model.hyperparameters import COMPARATORS, EncoderConfig, Hyperparameters

REQUIRED = {"enc0_max_seq_len": 10, "enc0_vocab_size": 50}


def make(**values: object) -> Hyperparameters:
    return Hyperparameters.from_dict({**REQUIRED, **values})


def error_of(**values: object) -> str:
    with pytest.raises(HyperparameterError) as caught:
        Hyperparameters.from_dict({**REQUIRED, **values})
    return str(caught.value)


# SageMaker's documented defaults, typed as o2v-batch stores them.
SAGEMAKER_DEFAULTS = {
    "enc0_network": "hcnn",
    "enc0_layers": "auto",
    "enc0_cnn_filter_width": 3,
    "enc0_token_embedding_dim": 300,
    "enc0_pretrained_embedding_file": None,
    "enc0_freeze_pretrained_embedding": True,
    "enc0_vocab_file": None,
    "enc1_network": "enc0",
    "enc_dim": 4096,
    "comparator_list": ("hadamard", "concat", "abs_diff"),
    "mlp_layers": 2,
    "mlp_dim": 512,
    "mlp_activation": "linear",
    "output_layer": "softmax",
    "num_classes": 2,
    "dropout": 0.0,
    "tied_token_embedding_weight": False,
    "token_embedding_storage_type": "dense",
    "optimizer": "adam",
    "learning_rate": 0.0004,
    "weight_decay": 0.0,
    "mini_batch_size": 32,
    "epochs": 30,
    "early_stopping_patience": 3,
    "early_stopping_tolerance": 0.01,
    "bucket_width": 0,
    "negative_sampling_rate": 0,
    "seed": 0,
}


@pytest.mark.parametrize(("name", "default"), SAGEMAKER_DEFAULTS.items())
def test_defaults(name: str, default: object) -> None:
    assert getattr(make(), name) == default


def test_every_field_has_a_tested_default_or_is_required_or_an_enc1_setting() -> None:
    names = {spec.name for spec in fields(Hyperparameters)}
    enc1_settings = {n for n in names if n.startswith("enc1_") and n != "enc1_network"}
    assert names == set(SAGEMAKER_DEFAULTS) | set(REQUIRED) | enc1_settings
    assert all(getattr(make(), n) is None for n in enc1_settings)


@pytest.mark.parametrize("missing", ["enc0_max_seq_len", "enc0_vocab_size"])
def test_required(missing: str) -> None:
    values = {k: v for k, v in REQUIRED.items() if k != missing}
    allowed = {"enc0_max_seq_len": "1..5000", "enc0_vocab_size": "2..3000000"}[missing]
    with pytest.raises(HyperparameterError) as caught:
        Hyperparameters.from_dict(values)
    assert str(caught.value) == f"{missing} is required: must be an integer in {allowed}"


def test_sagemaker_string_values() -> None:
    strings = {
        "enc0_max_seq_len": "20",
        "enc0_vocab_size": "1000",
        "enc0_network": "bilstm",
        "enc0_layers": "2",
        "enc_dim": "16",
        "comparator_list": "hadamard, concat",
        "mlp_layers": "1",
        "mlp_activation": "relu",
        "dropout": "0.1",
        "learning_rate": "0.0004",
        "enc0_freeze_pretrained_embedding": "false",
        "tied_token_embedding_weight": "True",
        "output_layer": "mean_squared_error",
        "enc1_network": "enc0",
    }
    hp = Hyperparameters.from_dict(strings)
    assert hp.enc0_max_seq_len == 20
    assert hp.enc0_vocab_size == 1000
    assert hp.enc0_layers == 2
    assert hp.enc_dim == 16
    assert hp.comparator_list == ("hadamard", "concat")
    assert hp.mlp_layers == 1
    assert hp.dropout == 0.1
    assert hp.learning_rate == 0.0004
    assert hp.enc0_freeze_pretrained_embedding is False
    assert hp.tied_token_embedding_weight is True
    assert hp.output_layer == "mean_squared_error"
    assert Hyperparameters.from_dict(hp.to_dict()) == hp


def test_direct_construction_is_validated_too() -> None:
    assert Hyperparameters(enc0_max_seq_len="5", enc0_vocab_size=9, enc_dim="8").enc_dim == 8
    with pytest.raises(HyperparameterError, match=r"^enc_dim=2 is out of range"):
        Hyperparameters(enc0_max_seq_len=5, enc0_vocab_size=9, enc_dim=2)


BAD_VALUES = [
    ("enc_dim", 3, "enc_dim=3 is out of range: must be an integer in 4..10000"),
    ("enc_dim", "10001", "enc_dim=10001 is out of range: must be an integer in 4..10000"),
    ("enc_dim", "abc", "enc_dim='abc' is not valid: must be an integer in 4..10000"),
    ("enc_dim", 16.0, "enc_dim=16.0 is not valid: must be an integer in 4..10000"),
    ("enc_dim", "16.5", "enc_dim='16.5' is not valid: must be an integer in 4..10000"),
    ("enc_dim", True, "enc_dim=true is not valid: must be an integer in 4..10000"),
    ("enc_dim", None, "enc_dim=None is not valid: must be an integer in 4..10000"),
    ("enc0_max_seq_len", 0, "enc0_max_seq_len=0 is out of range: must be an integer in 1..5000"),
    (
        "enc0_vocab_size",
        "3000001",
        "enc0_vocab_size=3000001 is out of range: must be an integer in 2..3000000",
    ),
    ("num_classes", 31, "num_classes=31 is out of range: must be an integer in 2..30"),
    ("mlp_layers", 0, "mlp_layers=0 is out of range: must be an integer in 1..10"),
    ("mlp_dim", 1, "mlp_dim=1 is out of range: must be an integer in 2..10000"),
    ("epochs", 101, "epochs=101 is out of range: must be an integer in 1..100"),
    ("mini_batch_size", 0, "mini_batch_size=0 is out of range: must be an integer in 1..10000"),
    (
        "early_stopping_patience",
        6,
        "early_stopping_patience=6 is out of range: must be an integer in 1..5",
    ),
    ("bucket_width", -1, "bucket_width=-1 is out of range: must be an integer in 0..100"),
    (
        "negative_sampling_rate",
        101,
        "negative_sampling_rate=101 is out of range: must be an integer in 0..100",
    ),
    ("seed", -1, "seed=-1 is out of range: must be an integer in 0..4294967295"),
    (
        "enc0_cnn_filter_width",
        10,
        "enc0_cnn_filter_width=10 is out of range: must be an integer in 1..9",
    ),
    (
        "enc0_token_embedding_dim",
        1,
        "enc0_token_embedding_dim=1 is out of range: must be an integer in 2..1000",
    ),
    ("enc0_layers", 5, "enc0_layers=5 is out of range: must be auto or an integer in 1..4"),
    ("enc0_layers", "0", "enc0_layers=0 is out of range: must be auto or an integer in 1..4"),
    ("enc0_layers", "Auto", "enc0_layers='Auto' is not valid: must be auto or an integer in 1..4"),
    ("dropout", 1.5, "dropout=1.5 is out of range: must be a number in 0.0..1.0"),
    ("dropout", "-0.1", "dropout=-0.1 is out of range: must be a number in 0.0..1.0"),
    ("dropout", "nan", "dropout='nan' is not valid: must be a number in 0.0..1.0"),
    ("dropout", "lots", "dropout='lots' is not valid: must be a number in 0.0..1.0"),
    ("learning_rate", 0, "learning_rate=0.0 is out of range: must be a number in 1e-06..1.0"),
    (
        "weight_decay",
        1e5,
        "weight_decay=100000.0 is out of range: must be a number in 0.0..10000.0",
    ),
    (
        "early_stopping_tolerance",
        0.5,
        "early_stopping_tolerance=0.5 is out of range: must be a number in 1e-06..0.1",
    ),
    (
        "enc0_network",
        "cnn",
        "enc0_network='cnn' is not valid: must be one of hcnn, bilstm, pooled_embedding",
    ),
    (
        "enc1_network",
        "enc1",
        "enc1_network='enc1' is not valid: must be one of hcnn, bilstm, pooled_embedding, enc0",
    ),
    (
        "mlp_activation",
        "sigmoid",
        "mlp_activation='sigmoid' is not valid: must be one of linear, tanh, relu",
    ),
    (
        "output_layer",
        "hinge",
        "output_layer='hinge' is not valid: must be one of softmax, mean_squared_error",
    ),
    (
        "optimizer",
        "lbfgs",
        "optimizer='lbfgs' is not valid: must be one of adam, adadelta, adagrad, sgd, rmsprop",
    ),
    (
        "token_embedding_storage_type",
        "sparse",
        "token_embedding_storage_type='sparse' is not valid: must be one of dense, row_sparse",
    ),
    (
        "tied_token_embedding_weight",
        "yes",
        "tied_token_embedding_weight='yes' is not valid: must be true or false",
    ),
    (
        "enc0_freeze_pretrained_embedding",
        1,
        "enc0_freeze_pretrained_embedding=1 is not valid: must be true or false",
    ),
    ("enc0_vocab_file", "", "enc0_vocab_file='' is not valid: must be a file path"),
    (
        "enc0_pretrained_embedding_file",
        7,
        "enc0_pretrained_embedding_file=7 is not valid: must be a file path",
    ),
]
COMPARATOR_CHOICES = "a comma-separated list of hadamard, concat, abs_diff, each at most once"
BAD_VALUES += [
    (
        "comparator_list",
        value,
        f"comparator_list={shown} is not valid: must be {COMPARATOR_CHOICES}",
    )
    for value, shown in [
        ("hadamard, dot", "'hadamard, dot'"),
        ("hadamard, hadamard", "'hadamard, hadamard'"),
        ("", "''"),
        (" , ", "' , '"),
        ("hadamard,", "'hadamard,'"),
        (["concat", 3], "['concat', 3]"),
        (7, "7"),
    ]
]


@pytest.mark.parametrize(("name", "value", "message"), BAD_VALUES)
def test_bad_values(name: str, value: object, message: str) -> None:
    assert error_of(**{name: value}) == message


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("enc_dims", "unknown hyperparameter enc_dims (did you mean enc_dim?)"),
        ("enc0_vocab", "unknown hyperparameter enc0_vocab (did you mean enc0_vocab_size?)"),
        ("learningrate", "unknown hyperparameter learningrate (did you mean learning_rate?)"),
        ("zzz", "unknown hyperparameter zzz"),
    ],
)
def test_unknown_name(name: str, message: str) -> None:
    assert error_of(**{name: "1"}) == message


@pytest.mark.parametrize(
    ("value", "parsed"),
    [
        ("hadamard", ("hadamard",)),
        ("abs_diff ,hadamard", ("abs_diff", "hadamard")),
        ("concat, abs_diff, hadamard", ("concat", "abs_diff", "hadamard")),
        (["abs_diff", "concat"], ("abs_diff", "concat")),
        (("hadamard",), ("hadamard",)),
    ],
)
def test_comparator_list_keeps_order(value: object, parsed: tuple[str, ...]) -> None:
    assert make(comparator_list=value).comparator_list == parsed


def test_enc1_network_enc0_copies_every_enc0_setting() -> None:
    hp = make(
        enc0_network="bilstm",
        enc0_layers=3,
        enc0_cnn_filter_width=5,
        enc0_token_embedding_dim=12,
        enc0_pretrained_embedding_file="glove.txt",
        enc0_freeze_pretrained_embedding=False,
        enc0_vocab_file="vocab.json",
    )
    expected = EncoderConfig(
        network="bilstm",
        layers=3,
        cnn_filter_width=5,
        token_embedding_dim=12,
        max_seq_len=10,
        vocab_size=50,
        pretrained_embedding_file="glove.txt",
        freeze_pretrained_embedding=False,
        vocab_file="vocab.json",
    )
    assert hp.encoder(0) == expected
    assert hp.encoder(1) == expected


def test_enc1_configured_separately() -> None:
    hp = make(enc0_token_embedding_dim=12, enc1_network="bilstm", enc1_vocab_size=70)
    assert hp.encoder(1) == EncoderConfig(
        network="bilstm",
        layers=1,
        cnn_filter_width=3,
        token_embedding_dim=300,
        max_seq_len=10,  # not given: enc0's
        vocab_size=70,
        pretrained_embedding_file=None,
        freeze_pretrained_embedding=True,
        vocab_file=None,
    )


@pytest.mark.parametrize(
    ("values", "message"),
    [
        (
            {"enc1_vocab_size": 20},
            "enc1_vocab_size=20 differs from enc0_vocab_size=50, but enc1_network=enc0 copies "
            "enc0's settings to enc1; "
            "set enc1_network to hcnn, bilstm or pooled_embedding to configure enc1 separately",
        ),
        (
            {"enc1_network": "enc0", "enc1_max_seq_len": "7", "enc1_layers": "auto"},
            "enc1_max_seq_len=7 differs from enc0_max_seq_len=10, but enc1_network=enc0 copies "
            "enc0's settings to enc1; set enc1_network to hcnn, bilstm or pooled_embedding "
            "to configure enc1 separately",
        ),
        (
            {"enc1_freeze_pretrained_embedding": "false"},
            "enc1_freeze_pretrained_embedding=false differs from "
            "enc0_freeze_pretrained_embedding=true, but enc1_network=enc0 copies "
            "enc0's settings to enc1; set enc1_network to hcnn, bilstm or pooled_embedding "
            "to configure enc1 separately",
        ),
    ],
)
def test_enc1_setting_with_enc0_network_is_an_error(values: dict, message: str) -> None:
    assert error_of(**values) == message


def test_enc1_settings_equal_to_enc0_are_accepted_as_sagemaker_passes_them() -> None:
    """AWS's sentence-similarity example sets enc1's lengths and vocabulary next to
    enc1_network=enc0, every value a string."""
    values = {
        "enc0_max_seq_len": "10",
        "enc0_vocab_size": "50",
        "enc0_network": "hcnn",
        "enc1_network": "enc0",
        "enc1_max_seq_len": "10",
        "enc1_vocab_size": "50",
        "enc1_layers": "auto",
        "enc1_cnn_filter_width": "3",
        "enc1_token_embedding_dim": "300",
        "enc1_freeze_pretrained_embedding": "true",
    }
    hp = Hyperparameters.from_dict(values)
    assert hp.encoder(1) == hp.encoder(0)


def test_every_conflicting_enc1_setting_is_named_with_enc0s_value() -> None:
    message = error_of(enc1_network="enc0", enc1_vocab_size="50", enc1_layers=2, enc1_max_seq_len=7)
    assert message.startswith(
        "enc1_max_seq_len=7 differs from enc0_max_seq_len=10; "
        "enc1_layers=2 differs from enc0_layers=4, but enc1_network=enc0 copies"
    )


@pytest.mark.parametrize(
    ("network", "layers", "resolved"),
    [
        ("hcnn", "auto", 4),
        ("bilstm", "auto", 1),
        ("pooled_embedding", "auto", 1),
        ("hcnn", 2, 2),
        ("bilstm", "3", 3),
    ],
)
def test_auto_layers(network: str, layers: object, resolved: int) -> None:
    assert make(enc0_network=network, enc0_layers=layers).encoder(0).layers == resolved
    enc1 = make(enc1_network=network, enc1_layers=layers).encoder(1)
    assert enc1.layers == resolved


def test_pooled_embedding_token_dim_is_enc_dim() -> None:
    hp = make(enc0_network="pooled_embedding", enc0_token_embedding_dim=12, enc_dim=20)
    assert hp.encoder(0).token_embedding_dim == 20
    assert hp.encoder(1).token_embedding_dim == 20


def test_encoder_index() -> None:
    with pytest.raises(ValueError, match="encoder must be 0 or 1, got 2"):
        make().encoder(2)


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"enc1_network": "bilstm", "enc1_token_embedding_dim": 300},
        {"enc1_network": "pooled_embedding", "enc0_network": "pooled_embedding"},
    ],
)
def test_tied_embedding_with_matching_shapes(values: dict) -> None:
    assert make(tied_token_embedding_weight=True, **values).tied_token_embedding_weight


@pytest.mark.parametrize(
    ("values", "enc0", "enc1"),
    [
        ({"enc1_network": "hcnn", "enc1_vocab_size": 60}, "50 x 300", "60 x 300"),
        ({"enc1_network": "hcnn", "enc1_token_embedding_dim": 8}, "50 x 300", "50 x 8"),
        ({"enc1_network": "pooled_embedding", "enc_dim": 16}, "50 x 300", "50 x 16"),
    ],
)
def test_tied_embedding_with_different_shapes(values: dict, enc0: str, enc1: str) -> None:
    assert error_of(tied_token_embedding_weight="true", **values) == (
        "tied_token_embedding_weight=true needs both encoders to have the same vocab size and "
        f"token embedding dim: enc0 has {enc0}, enc1 has {enc1}"
    )


def test_to_dict_is_plain_json_and_omits_unset_enc1_settings() -> None:
    hp = make(comparator_list="concat, hadamard")
    values = hp.to_dict()
    assert json.loads(json.dumps(values)) == values
    assert values["comparator_list"] == ["concat", "hadamard"]
    assert not any(name.startswith("enc1_") and name != "enc1_network" for name in values)


@given(
    enc_dim=st.integers(4, 10000),
    dropout=st.floats(0.0, 1.0),
    comparators=st.lists(st.sampled_from(COMPARATORS), min_size=1, max_size=3, unique=True),
    enc1_network=st.sampled_from(["enc0", "hcnn", "bilstm", "pooled_embedding"]),
    enc1_layers=st.one_of(st.just("auto"), st.integers(1, 4)),
    as_strings=st.booleans(),
)
def test_round_trip(
    enc_dim: int,
    dropout: float,
    comparators: list[str],
    enc1_network: str,
    enc1_layers: object,
    as_strings: bool,
) -> None:
    values = {**REQUIRED, "enc_dim": enc_dim, "dropout": dropout, "enc1_network": enc1_network}
    values["comparator_list"] = ", ".join(comparators)
    if enc1_network != "enc0":
        values["enc1_layers"] = enc1_layers
    if as_strings:
        values = {name: str(value) for name, value in values.items()}
    hp = Hyperparameters.from_dict(values)
    assert hp.comparator_list == tuple(comparators)
    assert Hyperparameters.from_dict(json.loads(json.dumps(hp.to_dict()))) == hp
