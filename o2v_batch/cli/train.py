"""The `train` command: an Object2Vec model from jsonlines pairs."""

from __future__ import annotations

import json
from pathlib import Path

import click

from o2v_batch.cli.options import progress_option
from o2v_batch.errors import HyperparameterError, O2VError, OutputExistsError
from o2v_batch.model.hyperparameters import Hyperparameters


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
    from o2v_batch.model.devices import parse_device

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
@progress_option
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
    from o2v_batch.training.train import train

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
