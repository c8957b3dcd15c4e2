"""The command line: help for every command, `train` errors and exit codes, `train` then
`inspect`."""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner
from helpers import make_model, random_records, write_jsonl

from o2v_batch.cli import main
from o2v_batch.inputs.batching import payload_bytes
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.network import Object2Vec
from o2v_batch.reporting.report import JobSummary

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
    return CliRunner().invoke(main, [str(a) for a in args])


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


@pytest.mark.parametrize("command", [[], *([name] for name in main.commands)])
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
def test_bad_hyperparameter_is_a_usage_error_naming_it(
    files: dict[str, Path], item: str, message: str
) -> None:
    result = invoke(*train_args(files, "--hp", item))
    assert result.exit_code == 2
    assert result.output.endswith(f"train --help' for help.\n\nError: {message}\n")
    assert not files["output"].exists()


def test_conflicting_training_hyperparameters_are_a_usage_error(files: dict[str, Path]) -> None:
    result = invoke(
        *train_args(files, "--hp", "output_layer=mean_squared_error"),
        *("--hp", "negative_sampling_rate=1"),
    )
    assert result.exit_code == 2
    assert result.output.endswith(
        "Error: negative_sampling_rate=1 needs output_layer=softmax (negatives are labelled 0), "
        "but output_layer is mean_squared_error\n"
    )


def test_train_refuses_a_model_folder_that_is_not_empty(files: dict[str, Path]) -> None:
    files["output"].mkdir()
    (files["output"] / "notes.txt").write_text("keep me")
    refused = invoke(*train_args(files, "--hp", "epochs=1", "--no-progress"))
    assert refused.exit_code == 2
    assert refused.output.endswith(
        f"Error: output already exists: {files['output']} (use --overwrite to replace it)\n"
    )
    assert [p.name for p in files["output"].iterdir()] == ["notes.txt"]

    replaced = invoke(*train_args(files, "--hp", "epochs=1", "--no-progress", "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    assert (files["output"] / "model.safetensors").is_file()
    again = invoke(*train_args(files, "--hp", "epochs=1", "--no-progress"))
    assert again.exit_code == 2 and "output already exists" in again.output


def test_train_into_an_empty_folder(files: dict[str, Path]) -> None:
    files["output"].mkdir()
    result = invoke(*train_args(files, "--hp", "epochs=1", "--no-progress"))
    assert result.exit_code == 0, result.output
    assert (files["output"] / "hyperparameters.json").is_file()


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


def test_inspect_imports_no_torch() -> None:
    """The parameters are counted from the weights' shapes, not from a network built."""
    code = (
        "import sys; from o2v_batch.cli import main\n"
        f"try:\n    main(['inspect', {str(REPO / 'examples' / 'model')!r}])\n"
        "except SystemExit as exit:\n    print('torch' in sys.modules, exit.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "parameters: 339,138" in done.stdout.splitlines()
    assert done.stdout.splitlines()[-1] == "False 0", done.stderr


def test_a_job_without_a_bar_or_metrics_file_starts_without_their_libraries(tmp_path):
    """The parent imports neither torch nor, when stderr gets no progress bar and no
    --metrics-file is asked for, tqdm and prometheus_client: each is start-up time."""
    out = tmp_path / "out"
    code = (
        "import sys; from o2v_batch.cli import main\n"
        f"args = ['transform', {str(REPO / 'examples' / 'requests')!r}, {str(out)!r},\n"
        f"        '--model', {str(REPO / 'examples' / 'model')!r}, '--workers', '1']\n"
        "try:\n    main(args)\n"
        "except SystemExit as exit:\n"
        "    print(*(m in sys.modules for m in ('torch', 'tqdm', 'prometheus_client')), exit.code)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.stdout.splitlines()[-1] == "False False False 0", done.stderr
    assert (out / "_SUCCESS").exists()
    assert "o2v-batch: " in done.stderr  # its summary, written without tqdm


def test_inspect_a_missing_model(tmp_path: Path) -> None:
    result = invoke("inspect", tmp_path / "nope")
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: model {tmp_path / 'nope'} does not exist")


# ---- transform: options, usage errors and exit codes --------------------------------

UNSET = dict.fromkeys(
    ["INFERENCE_PREFERRED_MODE", "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"]
)


@pytest.fixture
def configs(monkeypatch) -> list:
    """The TransformConfigs the CLI hands the library; no job runs."""
    seen = []

    def transform(config):
        seen.append(config)
        return JobSummary()

    monkeypatch.setattr("o2v_batch.jobs.transform.transform", transform)
    return seen


def transform_args(tmp_path: Path, *extra: str) -> list:
    return ["transform", tmp_path / "in", tmp_path / "out", "--model", tmp_path / "model", *extra]


@pytest.mark.parametrize(
    ("extra", "environ", "message"),
    [
        (["--devices", "gpu"], {}, "--devices: 'gpu' is not cpu, cuda or cuda:N"),
        (["--devices", "cuda:0,cuda:0"], {}, "--devices: 'cuda:0,cuda:0' names a device twice"),
        (["--devices", ""], {}, "--devices: '' is not auto, cpu, cuda or cuda:N"),
        (
            ["--infer-max-seqlens", "0,10"],
            {},
            "--infer-max-seqlens values must be in 1..5000, got 0",
        ),
        (["--num-shards", "2", "--shard-index", "2"], {}, "--shard-index must be in 0..1, got 2"),
        (
            [],
            {"INFERENCE_PREFERRED_MODE": "fast"},
            "INFERENCE_PREFERRED_MODE must be one of auto, embedding, classification, got 'fast'",
        ),
        (
            [],
            {"JOB_COMPLETION_INDEX": "x"},
            "JOB_COMPLETION_INDEX='x' is not a shard index (a whole number)",
        ),
        (
            ["--num-shards", "2"],
            {"JOB_COMPLETION_INDEX": "3"},
            "JOB_COMPLETION_INDEX=3 is out of range: --num-shards 2 takes a shard index in 0..1",
        ),
        (
            [],
            {"AWS_BATCH_JOB_ARRAY_INDEX": "5"},
            "AWS_BATCH_JOB_ARRAY_INDEX=5 is out of range: --num-shards 1 takes a shard index in 0..0",
        ),
    ],
)
def test_transform_usage_errors_exit_2_before_any_work(
    tmp_path: Path, configs: list, extra: list, environ: dict, message: str
) -> None:
    result = CliRunner().invoke(
        main, [str(a) for a in transform_args(tmp_path, *extra)], env={**UNSET, **environ}
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith("Usage: o2v-batch transform [OPTIONS] INPUT OUTPUT\n")
    assert result.output.endswith(f"transform --help' for help.\n\nError: {message}\n")
    assert configs == []


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "'-1' is not a size >= 0 such as 6, 0.5, 6MB or 500KB"),
        ("6GB", "'6GB' is not a size >= 0 such as 6, 0.5, 6MB or 500KB"),
        ("nan", "'nan' is not a size >= 0 such as 6, 0.5, 6MB or 500KB"),
    ],
)
def test_a_bad_max_payload_is_a_usage_error(
    tmp_path: Path, configs: list, value: str, message: str
) -> None:
    result = invoke(*transform_args(tmp_path, "--max-payload", value))
    assert result.exit_code == 2
    assert result.output.endswith(f"Error: Invalid value for '--max-payload': {message}\n")


@pytest.mark.parametrize(
    ("value", "megabytes", "cap_bytes"),
    [
        ("6", 6.0, 6 * 2**20),
        ("0.05", 0.05, 52428),  # fractions of MB round down to whole bytes
        ("0", 0.0, 0),
        ("6MB", 6.0, 6 * 2**20),
        ("500KB", 500 / 1024, 500 * 1024),
        ("2 mb", 2.0, 2 * 2**20),
    ],
)
def test_max_payload_takes_megabytes_or_a_unit(
    tmp_path: Path, configs: list, value: str, megabytes: float, cap_bytes: int
) -> None:
    assert invoke(*transform_args(tmp_path, "--max-payload", value)).exit_code == 0
    [config] = configs
    assert config.max_payload == megabytes
    assert payload_bytes(config.max_payload) == cap_bytes


@pytest.mark.parametrize(
    ("module", "args", "feature", "package", "extra"),
    [
        ("pyarrow", ["transform", "in", "out", "--model", "m", "--accept", "application/x-parquet"], "--accept application/x-parquet", "pyarrow", "parquet"),
        ("ray", ["transform", "in", "out", "--model", "m", "--engine", "ray"], "--engine ray", "Ray", "ray"),
        ("uvicorn", ["serve", "--model", "m"], "o2v-batch serve", "uvicorn", "serve"),
    ],
)  # fmt: skip
def test_a_missing_extra_is_a_usage_error_that_says_what_to_install(
    tmp_path: Path, module: str, args: list, feature: str, package: str, extra: str
) -> None:
    """Run as a user without the extra runs it: `import <module>` fails in the process."""
    hide_and_run = (
        f"import sys; sys.modules[{module!r}] = None; sys.argv = ['o2v-batch', *{args!r}]; "
        "from o2v_batch.cli import main; main()"
    )
    run = subprocess.run(
        [sys.executable, "-c", hide_and_run],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert run.stderr.startswith(f"Usage: o2v-batch {args[0]} [OPTIONS]")
    assert run.stderr.endswith(
        f"Error: {feature} needs {package}: pip install -e '.[{extra}]' in a checkout, "
        f'or pip install "$(ls dist/o2v_batch-*.whl)[{extra}]" for a built wheel\n'
    )
    assert list(tmp_path.iterdir()) == []  # nothing started, nothing written


def test_settings_from_the_environment(tmp_path: Path, configs: list) -> None:
    environ = {**UNSET, "INFERENCE_PREFERRED_MODE": "auto", "AWS_BATCH_JOB_ARRAY_INDEX": "2"}
    args = [str(a) for a in transform_args(tmp_path, "--num-shards", "3")]
    assert CliRunner().invoke(main, args, env=environ).exit_code == 0
    environ["INFERENCE_PREFERRED_MODE"] = "Embedding"
    assert CliRunner().invoke(main, [*args, "--shard-index", "0"], env=environ).exit_code == 0
    assert [(c.mode, c.shard_index) for c in configs] == [("auto", 2), ("embedding", 0)]


def test_transform_help_shows_values_defaults_and_ranges() -> None:
    command = main.commands["transform"]
    ctx = click.Context(command, info_name="transform")
    helps = {}
    for param in command.get_params(ctx):
        record = param.get_help_record(ctx)
        if record and isinstance(param, click.Option) and not param.is_flag:
            helps[param.name] = " ".join(record)
    for name, text in helps.items():  # every option that takes a value says what it is unset
        assert "[default: " in text or "[required]" in text, name
    assert "--mode [auto|embedding|classification]" in helps["mode"]
    assert all(f"{mode}: " in helps["mode"] for mode in ("auto", "embedding", "classification"))
    assert "each 1..5000" in helps["infer_max_seqlens"]
    assert "[default: the model's enc0_max_seq_len,enc1_max_seq_len]" in helps["infer_max_seqlens"]
    payload = helps["max_payload"]
    for part in (
        "MB = 2^20 bytes",
        "6MB, 500KB",
        "KB = 2^10 bytes",
        "0 = no cap",
        "[default: 6MB]",
    ):
        assert part in payload


@pytest.mark.slow  # a whole job, in a real shell pipeline
def test_a_closed_stdout_ends_the_job_quietly(tmp_path: Path) -> None:
    """`... | head -3`: it stops reading, exits 141 as a Unix tool does, and says so in one
    line: no summary of shards "unfinished" and records "not written", no traceback."""
    make_model(tmp_path / "model")
    for i in range(6):  # each shard's output is larger than a pipe's buffer
        write_jsonl(tmp_path / "in" / f"part-{i}.jsonl", random_records(1500, seed=i, pairs=False))
    job = [sys.executable, "-m", "o2v_batch", "transform", "in/", "-", "--model", "model"]
    job += ["--no-progress", "--workers", "1", "--max-payload", "0.01"]
    pipeline = f"{shlex.join(job)} 2>err.txt | head -3 >head.txt"
    script = f'set -o pipefail; {pipeline}; echo "$? ${{PIPESTATUS[*]}}"'
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.stdout == "141 141 0\n", done.stderr
    assert len((tmp_path / "head.txt").read_text().splitlines()) == 3
    stderr = (tmp_path / "err.txt").read_text()
    said = re.fullmatch(
        r"o2v-batch: stdout's reader closed the pipe after (\d) whole shards? "
        r"\(([\d,]+) records?\); stopped\n",
        stderr,
    )
    assert said, stderr
    shards, records = int(said[1]), int(said[2].replace(",", ""))
    assert shards < 6 and records == 1500 * shards  # whole shards only, and it stopped
