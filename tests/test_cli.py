"""The command line: help for every command, `train` errors and exit codes, `train` then
`inspect`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from o2v_batch.cli import cli
from o2v_batch.hyperparameters import Hyperparameters
from o2v_batch.model import Object2Vec

REPO = Path(__file__).resolve().parents[1]
HYPERPARAMETERS = {
    "enc0_vocab_size": "50",
    "enc0_max_seq_len": "10",
    "enc0_network": "hcnn",
    "enc0_layers": "1",
    "enc0_token_embedding_dim": "8",
    "enc1_network": "bilstm",
    "enc1_token_embedding_dim": "6",
    "enc_dim": "12",
    "mlp_dim": "8",
    "epochs": "5",
}
PAIRS = [
    {"label": i % 2, "in0": [1 + i % 7, 2 + i % 11], "in1": [3 + i % 5, 40, 1 + i % 3]}
    for i in range(40)
]


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(p) + "\n" for p in PAIRS))
    hp = tmp_path / "hp.json"
    hp.write_text(json.dumps(HYPERPARAMETERS))
    return {"train": train, "hp": hp, "output": tmp_path / "model"}


def invoke(*args: str | Path):
    return CliRunner().invoke(cli, [str(a) for a in args])


def train_args(files: dict[str, Path], *extra: str | Path) -> list:
    return [
        "train",
        "--train",
        files["train"],
        "--output",
        files["output"],
        "--hyperparameters",
        files["hp"],
        *extra,
    ]


# ---- help ----------------------------------------------------------------------


@pytest.mark.parametrize("command", [[], *([name] for name in cli.commands)])
def test_every_command_has_help_with_an_example(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Example:\n\n      o2v-batch " in result.output


def test_commands_are_listed_in_the_group_help() -> None:
    result = invoke("--help")
    for name in ("train", "inspect"):
        assert f"\n  {name} " in result.output


# ---- train: errors ---------------------------------------------------------------


def test_train_without_train_file_is_a_usage_error(files: dict[str, Path]) -> None:
    result = invoke("train", "--output", files["output"])
    assert result.exit_code == 2
    assert result.output.endswith("Error: Missing option '--train'.\n")


@pytest.mark.parametrize("item", ["epochs", "=5", " =5"])
def test_malformed_hp_is_a_usage_error(files: dict[str, Path], item: str) -> None:
    result = invoke(*train_args(files, "--hp", item))
    assert result.exit_code == 2
    assert result.output.endswith(
        f"Error: Invalid value for '--hp': {item!r} is not NAME=VALUE (e.g. --hp epochs=10)\n"
    )
    assert not files["output"].exists()


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("epoch=3", "unknown hyperparameter epoch (did you mean epochs?)"),
        ("zzz=3", "unknown hyperparameter zzz"),
        ("epochs=0", "epochs=0 is out of range: must be an integer in 1..100"),
        (
            "optimizer=lbfgs",
            "optimizer='lbfgs' is not valid: must be one of adam, adadelta, adagrad, sgd, rmsprop",
        ),
    ],
)
def test_bad_hyperparameter_exits_1_naming_it(
    files: dict[str, Path], item: str, message: str
) -> None:
    result = invoke(*train_args(files, "--hp", item))
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"


def test_bad_training_line_exits_1_naming_file_and_line(files: dict[str, Path]) -> None:
    files["train"].write_text(json.dumps(PAIRS[0]) + '\n{"label": 0, "in0": [1], "in1": [50]}\n')
    result = invoke(*train_args(files))
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {files['train']}, line 2: in1 id 50 is out of range: vocab size is 50 "
        "(ids must be in 0..49)\n"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "{nope",
            "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)",
        ),
        ("[1, 2]", "must hold a JSON object of hyperparameters"),
    ],
)
def test_malformed_hyperparameters_file(files: dict[str, Path], text: str, message: str) -> None:
    files["hp"].write_text(text)
    result = invoke(*train_args(files))
    assert result.exit_code == 1
    assert result.output == f"Error: {files['hp']} {message}\n"


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("gpu", "'gpu' is not auto, cpu, cuda or cuda:N"),
        ("cuda:99", "cuda:99 is not available: torch sees"),
    ],
)
def test_bad_device_is_a_usage_error(files: dict[str, Path], device: str, message: str) -> None:
    result = invoke(*train_args(files, "--device", device))
    assert result.exit_code == 2
    assert f"Error: Invalid value for '--device': {message}" in result.output


def test_missing_training_file_exits_1(files: dict[str, Path]) -> None:
    missing = files["train"].with_name("missing.jsonl")
    result = invoke(
        "train", "--train", missing, "--output", files["output"], "--hyperparameters", files["hp"]
    )
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: cannot open {missing}: ")


# ---- train, then inspect ---------------------------------------------------------


def test_train_then_inspect(files: dict[str, Path]) -> None:
    result = invoke(
        *train_args(files, "--hp", "epochs=2", "--hp", "mlp_activation=tanh", "--device", "cpu")
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "epoch 2/2: loss " in result.stderr
    saved = json.loads((files["output"] / "hyperparameters.json").read_text())
    # --hp overrides the file; the file's other values stay.
    assert (saved["epochs"], saved["mlp_activation"], saved["enc_dim"]) == (2, "tanh", 12)

    # Counted independently of the product's count_parameters.
    parameters = sum(p.numel() for p in Object2Vec(Hyperparameters.from_dict(saved)).parameters())
    text = invoke("inspect", files["output"])
    assert text.exit_code == 0, text.output
    lines = text.output.splitlines()
    assert f"parameters: {parameters:,}" in lines
    assert "enc_dim: 12 (embedding length)" in lines
    assert "output_layer: softmax, 2 classes" in lines
    assert (
        "encoder 0: hcnn, 1 layer, cnn_filter_width 3, token_embedding_dim 8, vocab_size 50, max_seq_len 10"
        in lines
    )
    assert (
        "encoder 1: bilstm, 1 layer, token_embedding_dim 6, vocab_size 50, max_seq_len 10" in lines
    )
    assert "  * mlp_activation = tanh" in lines
    assert "    optimizer = adam" in lines

    as_json = invoke("inspect", files["output"], "--json")
    info = json.loads(as_json.output)
    assert (info["parameters"], info["enc_dim"], info["num_classes"]) == (parameters, 12, 2)
    assert info["hyperparameters"] == saved
    assert info["encoders"][1] == {
        "network": "bilstm",
        "layers": 1,
        "cnn_filter_width": 3,
        "token_embedding_dim": 6,
        "vocab_size": 50,
        "max_seq_len": 10,
    }
    # Required ones and every value that differs from SageMaker's default.
    assert info["non_default"] == sorted(
        [
            "enc0_vocab_size",
            "enc0_max_seq_len",
            "enc0_layers",
            "enc0_token_embedding_dim",
            "enc1_network",
            "enc1_token_embedding_dim",
            "enc_dim",
            "mlp_dim",
            "mlp_activation",
            "epochs",
        ]
    )


def test_inspect_a_tarball_and_a_regression_model(files: dict[str, Path], tmp_path: Path) -> None:
    regression = [{**p, "label": p["label"] * 2.5} for p in PAIRS]
    files["train"].write_text("".join(json.dumps(p) + "\n" for p in regression))
    archive = tmp_path / "model.tar.gz"
    args = ["--hp", "output_layer=mean_squared_error", "--hp", "epochs=1", "--no-progress"]
    result = invoke(
        "train",
        "--train",
        files["train"],
        "--output",
        archive,
        "--hyperparameters",
        files["hp"],
        *args,
    )
    assert result.exit_code == 0, result.output
    text = invoke("inspect", archive)
    assert "output_layer: mean_squared_error (one regression value)" in text.output.splitlines()
    assert json.loads(invoke("inspect", archive, "--json").output)["num_classes"] is None


def test_inspect_the_example_model() -> None:
    lines = invoke("inspect", REPO / "examples" / "model").output.splitlines()
    assert "enc_dim: 16 (embedding length)" in lines
    assert "token embedding: shared by both encoders (tied_token_embedding_weight)" in lines


def test_inspect_a_missing_model(tmp_path: Path) -> None:
    result = invoke("inspect", tmp_path / "nope")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: model {tmp_path / 'nope'} does not exist")
