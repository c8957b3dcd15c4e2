"""The `inspect` command: what a model is, as text or JSON."""

from __future__ import annotations

import json

import click

from o2v_batch.errors import O2VError
from o2v_batch.hyperparameters import Hyperparameters


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
