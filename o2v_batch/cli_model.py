"""The `train` and `inspect` commands: the model's side of the `o2v-batch` command line.
`o2v_batch.cli` registers them on its group."""

from __future__ import annotations

import json
from pathlib import Path

import click

from o2v_batch.errors import HyperparameterError, O2VError, OutputExistsError
from o2v_batch.hyperparameters import Hyperparameters

# ---- train -----------------------------------------------------------------


def _parse_hp(ctx: click.Context, param: click.Parameter, items: tuple[str, ...]) -> dict[str, str]:
    """--hp NAME=VALUE, repeated; values stay strings, as SageMaker passes them."""
    pairs = {}
    for item in items:
        name, equals, value = item.partition("=")
        if not equals or not name.strip():
            raise click.BadParameter(f"{item!r} is not NAME=VALUE (e.g. --hp epochs=10)")
        pairs[name.strip()] = value
    return pairs


def _parse_device(ctx: click.Context, param: click.Parameter, value: str) -> str | None:
    from o2v_batch.devices import parse_device

    try:
        return parse_device(value)
    except O2VError as exc:
        raise click.BadParameter(str(exc)) from None


def _read_hyperparameters_file(path: str | None) -> dict:
    if path is None:
        return {}
    try:
        values = json.loads(Path(path).read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise click.ClickException(f"{path} is not valid JSON: {e}") from None
    if not isinstance(values, dict):
        raise click.ClickException(f"{path} must hold a JSON object of hyperparameters")
    return values


@click.command("train")
@click.option(
    "--train",
    "train_uri",
    required=True,
    metavar="FILE",
    help="Training pairs, jsonlines (.gz and s3:// work).",
)
@click.option(
    "--validation",
    "validation_uri",
    metavar="FILE",
    help="Validation pairs: enables early stopping and picks the epoch that is saved.",
)
@click.option(
    "--output",
    required=True,
    metavar="DIR",
    help="Model folder, .tar.gz, or s3:// prefix to write.",
)
@click.option(
    "--hyperparameters",
    "hp_file",
    type=click.Path(exists=True, dir_okay=False),
    help="JSON object of hyperparameters (SageMaker names; string values accepted).",
)
@click.option(
    "--hp",
    "hp_items",
    multiple=True,
    metavar="NAME=VALUE",
    callback=_parse_hp,
    help="One hyperparameter; repeat for more. Overrides --hyperparameters.",
)
@click.option(
    "--overwrite",
    is_flag=True,
    help="Replace the model at --output; without it an output that is not empty is refused.",
)
@click.option(
    "--device",
    default="auto",
    show_default=True,
    metavar="auto|cpu|cuda[:N]",
    callback=_parse_device,
    help="auto, cpu, cuda or cuda:N.",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="tqdm bars on stderr [default: when stderr is a terminal].",
)
def train_command(
    train_uri: str,
    validation_uri: str | None,
    output: str,
    hp_file: str | None,
    hp_items: dict[str, str],
    overwrite: bool,
    device: str | None,
    progress: bool | None,
) -> None:
    """Train an Object2Vec model on jsonlines pairs.

    Each line is {"label": 1, "in0": [...], "in1": [...]}: integer labels for
    output_layer=softmax, numbers for mean_squared_error. With --validation,
    training stops early when the validation accuracy (softmax) or MSE
    (regression) stops improving, and the best epoch is saved; without it every
    epoch runs and the last one is saved. The seed hyperparameter makes CPU runs
    repeatable.

    Example:

    \b
        o2v-batch train --train examples/train/train.jsonl \\
            --validation examples/train/validation.jsonl \\
            --hyperparameters examples/train/hyperparameters.json \\
            --hp epochs=5 --output model/
    """
    from o2v_batch.artifacts import check_output
    from o2v_batch.train import train

    values = {**_read_hyperparameters_file(hp_file), **hp_items}
    try:
        hp = Hyperparameters.from_dict(values)
        if not overwrite:
            check_output(output)
        train(
            hp,
            train_uri,
            output,
            validation_uri=validation_uri,
            device=device,
            progress=progress,
            log=lambda message: click.echo(message, err=True),
        )
    except OutputExistsError as e:
        raise click.UsageError(str(e.phrased(None, "--overwrite"))) from None
    except HyperparameterError as e:  # how it was asked, not the data
        raise click.UsageError(str(e)) from None
    except O2VError as e:
        raise click.ClickException(str(e)) from None


# ---- inspect ---------------------------------------------------------------


def _describe(uri: str) -> dict:
    """What `inspect` shows, as plain JSON values."""
    from o2v_batch.artifacts import load_network, resolve_model
    from o2v_batch.model import count_parameters

    network = load_network(resolve_model(uri))
    hp = network.hp
    values = hp.to_dict()
    required = {"enc0_max_seq_len": hp.enc0_max_seq_len, "enc0_vocab_size": hp.enc0_vocab_size}
    defaults = Hyperparameters.from_dict(required).to_dict()
    encoders = []
    for index in (0, 1):
        encoder = hp.encoder(index)
        encoders.append(
            {
                "network": encoder.network,
                "layers": encoder.layers,
                "cnn_filter_width": encoder.cnn_filter_width,
                "token_embedding_dim": encoder.token_embedding_dim,
                "vocab_size": encoder.vocab_size,
                "max_seq_len": encoder.max_seq_len,
            }
        )
    return {
        "model": uri,
        "parameters": count_parameters(network),
        "enc_dim": hp.enc_dim,
        "output_layer": hp.output_layer,
        "num_classes": hp.num_classes if hp.output_layer == "softmax" else None,
        "encoders": encoders,
        "tied_token_embedding_weight": hp.tied_token_embedding_weight,
        "enc1_copies_enc0": hp.enc1_network == "enc0",
        "hyperparameters": values,
        # Required ones count as set: they have no default.
        "non_default": sorted(
            k for k, v in values.items() if k in required or defaults.get(k) != v
        ),
    }


def _encoder_line(encoder: dict) -> str:
    parts = [encoder["network"]]
    if encoder["network"] != "pooled_embedding":
        parts.append(f"{encoder['layers']} layer" + ("s" if encoder["layers"] > 1 else ""))
    if encoder["network"] == "hcnn":
        parts.append(f"cnn_filter_width {encoder['cnn_filter_width']}")
    parts += [
        f"{name} {encoder[name]}" for name in ("token_embedding_dim", "vocab_size", "max_seq_len")
    ]
    return ", ".join(parts)


def _show_value(value: object) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return json.dumps(value) if isinstance(value, bool) else str(value)


def _describe_text(info: dict) -> str:
    if info["output_layer"] == "softmax":
        output = f"softmax, {info['num_classes']} classes"
    else:
        output = "mean_squared_error (one regression value)"
    lines = [
        f"model: {info['model']}",
        f"parameters: {info['parameters']:,}",
        f"enc_dim: {info['enc_dim']} (embedding length)",
        f"output_layer: {output}",
        f"encoder 0: {_encoder_line(info['encoders'][0])}",
        f"encoder 1: {_encoder_line(info['encoders'][1])}",
    ]
    if info["enc1_copies_enc0"]:
        lines[-1] += " (enc1_network=enc0: enc0's settings, not its weights)"
    if info["tied_token_embedding_weight"]:
        lines.append("token embedding: shared by both encoders (tied_token_embedding_weight)")
    lines.append("hyperparameters (* = set, not the default):")
    for name, value in info["hyperparameters"].items():
        mark = "*" if name in info["non_default"] else " "
        lines.append(f"  {mark} {name} = {_show_value(value)}")
    return "\n".join(lines)


@click.command("inspect")
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
def inspect_command(model: str, as_json: bool) -> None:
    """Describe a model: encoders, embedding length, output layer, parameter
    count and hyperparameters.

    MODEL is a model folder or .tar.gz, local or on S3.

    Example:

    \b
        o2v-batch inspect examples/model
        o2v-batch inspect s3://bucket/model.tar.gz --json
    """
    try:
        info = _describe(model)
    except O2VError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(info, indent=2) if as_json else _describe_text(info))
