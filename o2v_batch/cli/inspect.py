"""The `inspect` command: what a model is, as text or JSON (o2v_batch.artifacts.description)."""

from __future__ import annotations

import json

import click

from o2v_batch.artifacts.description import describe_model
from o2v_batch.errors import O2VError


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
        info = describe_model(model)
    except O2VError as e:
        raise click.ClickException(str(e)) from None
    click.echo(json.dumps(info, indent=2) if as_json else _describe_text(info))
