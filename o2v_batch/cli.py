"""The `o2v-batch` command line. Commands only: each builds a config, calls the
library and maps library errors to messages and exit codes."""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path

import click

from o2v_batch import __version__
from o2v_batch.config import (
    ACCEPT_TYPES,
    BAD_RECORD_POLICIES,
    CONTENT_TYPES,
    DEFAULT_INVOCATION_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_RETRIES,
    ENGINES,
    JOIN_SOURCES,
    MODES,
    STRATEGIES,
    TransformConfig,
    preferred_mode,
)
from o2v_batch.errors import ConfigError, O2VError, OutputExistsError
from o2v_batch.sharding import shard_index_from


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="o2v-batch")
def cli() -> None:
    """Batch inference and training for Object2Vec models.

    Example:

        o2v-batch transform examples/requests/ out/ --model examples/model
    """


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


@cli.command("train")
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
    from o2v_batch.config import Hyperparameters
    from o2v_batch.train import train

    values = {**_read_hyperparameters_file(hp_file), **hp_items}
    try:
        hp = Hyperparameters.from_dict(values)
        train(
            hp,
            train_uri,
            output,
            validation_uri=validation_uri,
            device=device,
            progress=progress,
            log=lambda message: click.echo(message, err=True),
        )
    except O2VError as e:
        raise click.ClickException(str(e)) from None


# ---- inspect ---------------------------------------------------------------


def _describe(uri: str) -> dict:
    """What `inspect` shows, as plain JSON values."""
    from o2v_batch.artifacts import load_network, resolve_model
    from o2v_batch.config import Hyperparameters
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


@cli.command("inspect")
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


# ---- transform -------------------------------------------------------------


class _SeqLens(click.ParamType):
    name = "A,B"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            self.fail(f"{value!r} is not two integers A,B (e.g. 50,50)", param, ctx)
        return int(parts[0]), int(parts[1])


class _Signalled(BaseException):
    """SIGTERM arrived: unwinds the job like Ctrl-C so every open output is aborted."""


def _on_sigterm(signum, frame):
    raise _Signalled()


@cli.command()
@click.argument("input_uri", metavar="INPUT")
@click.argument("output_uri", metavar="OUTPUT")
@click.option("--model", required=True, help="Model folder or .tar.gz, local or s3://.")
@click.option(
    "--content-type",
    type=click.Choice(CONTENT_TYPES),
    help="Request format. [default: by extension, .json is JSON, the rest jsonlines]",
)
@click.option(
    "--accept",
    type=click.Choice(ACCEPT_TYPES),
    help="Response format. [default: the content type]",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="MultiRecord",
    show_default=True,
    help="Records per mini-batch: as many as fit the payload cap, or one.",
)
@click.option(
    "--max-payload",
    type=click.FloatRange(min=0),
    default=6.0,
    show_default=True,
    help="Mini-batch cap in MB (2^20 bytes of records); 0 = no cap.",
)
@click.option(
    "--mode",
    type=click.Choice(MODES),
    default=None,
    help="Mode. [default: $INFERENCE_PREFERRED_MODE, else auto]",
)
@click.option(
    "--devices", default="auto", show_default=True, help="auto, cpu, cuda or cuda:0,cuda:1."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    help="Worker processes. [default: one per GPU; on CPU, by core count]",
)
@click.option(
    "--max-concurrent-transforms",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONCURRENT,
    show_default=True,
    help="Mini-batches in flight per worker.",
)
@click.option(
    "--join-source",
    type=click.Choice(JOIN_SOURCES),
    default="None",
    show_default=True,
    help="Input: add the prediction to the input record as SageMakerOutput.",
)
@click.option(
    "--input-filter", default="$", show_default=True, help="JSONPath picking what the model sees."
)
@click.option(
    "--output-filter", default="$", show_default=True, help="JSONPath picking what is written."
)
@click.option(
    "--manifest",
    is_flag=True,
    help='INPUT is a manifest: [{"prefix": "s3://b/p/"}, "rel/a.jsonl", ...].',
)
@click.option(
    "--num-shards",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Nodes sharing the inputs in an array job.",
)
@click.option(
    "--shard-index",
    type=click.IntRange(min=0),
    default=None,
    help="This node's share, 0..N-1. [default: $JOB_COMPLETION_INDEX or $AWS_BATCH_JOB_ARRAY_INDEX, else 0]",
)
@click.option("--resume", is_flag=True, help="Skip shards whose output exists.")
@click.option("--overwrite", is_flag=True, help="Replace existing outputs.")
@click.option(
    "--on-bad-record",
    type=click.Choice(BAD_RECORD_POLICIES),
    default="fail",
    show_default=True,
    help="fail the shard, or emit-error objects in place.",
)
@click.option(
    "--infer-max-seqlens",
    type=_SeqLens(),
    help="Cap the sequence lengths used at inference, as A,B (in0,in1).",
)
@click.option(
    "--max-retries",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_RETRIES,
    show_default=True,
    help="Retries of a mini-batch whose worker died or hung.",
)
@click.option(
    "--invocation-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_INVOCATION_TIMEOUT_S,
    show_default=True,
    help="Seconds before a worker stuck on one mini-batch is replaced.",
)
@click.option(
    "--summary",
    "summary_uri",
    help="Write the JSON job summary here. [default: OUTPUT/_SUCCESS when every shard succeeded]",
)
@click.option(
    "--engine",
    type=click.Choice(ENGINES),
    default="local",
    show_default=True,
    help="local: worker processes on this machine; ray: Ray actors on a cluster.",
)
@click.option(
    "--ray-address",
    metavar="ADDRESS",
    help="--engine ray: the cluster to join (auto: the one running on this machine). "
    "[default: $RAY_ADDRESS, else a new local Ray]",
)
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr. [default: when stderr is a terminal]",
)
def transform(input_uri: str, output_uri: str, model: str, **options) -> None:
    """Run MODEL over every record under INPUT, writing OUTPUT/<path>.out per shard.

    INPUT is a file, a folder, s3://bucket/prefix/ or - (stdin); OUTPUT a
    folder, s3://bucket/prefix/ or - (stdout).

    Example:

        o2v-batch transform examples/requests/ out/ --model examples/model
    """
    from o2v_batch.job import transform as run_transform

    try:
        options["mode"] = options["mode"] or preferred_mode(os.environ)
        if options["shard_index"] is None:
            options["shard_index"] = shard_index_from(os.environ) or 0
        config = TransformConfig(
            input=input_uri,
            output=output_uri,
            model=model,
            summary=options.pop("summary_uri"),
            **options,
        )
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        summary = run_transform(config)
    except (OutputExistsError, ConfigError) as exc:
        raise click.UsageError(str(exc)) from None
    except O2VError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("o2v-batch: interrupted", err=True)
        sys.exit(130)
    except _Signalled:
        click.echo("o2v-batch: terminated", err=True)
        sys.exit(143)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if summary.shards_failed:
        sys.exit(1)


def main() -> None:
    cli(prog_name="o2v-batch")
