"""The `serve` command: o2v-batch as a SageMaker inference container."""

from __future__ import annotations

import os
from collections.abc import Mapping

import click

from o2v_batch.cli.options import (
    REQUEST,
    max_payload_option,
    mode_option,
    model_option,
    retry_options,
    worker_options,
)
from o2v_batch.config import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_PAYLOAD_MB,
    DEFAULT_MAX_QUEUED,
    DEFAULT_PORT,
    ServeConfig,
)
from o2v_batch.errors import ConfigError, O2VError

PORT_VARIABLE = "SAGEMAKER_BIND_TO_PORT"
PAYLOAD_VARIABLE = "SAGEMAKER_MAX_PAYLOAD_IN_MB"


def _from_environment(
    environ: Mapping[str, str], name: str, default: float, least: int, most: int
) -> float:
    """An integer SageMaker passes in an environment variable; a bad value names it."""
    text = environ.get(name, "").strip()
    if not text:
        return default
    if not (text.isdigit() and least <= int(text) <= most):
        raise ConfigError(f"{name} must be an integer in {least}..{most}, got {text!r}")
    return int(text)


def _environment_defaults(options: dict, environ: Mapping[str, str]) -> None:
    """--port and --max-payload, when not given, from the variables SageMaker sets
    (MaxPayloadInMB is a whole number of MB)."""
    if options["port"] is None:
        options["port"] = _from_environment(environ, PORT_VARIABLE, DEFAULT_PORT, 0, 65535)
    if options["max_payload"] is None:
        mb = _from_environment(environ, PAYLOAD_VARIABLE, DEFAULT_MAX_PAYLOAD_MB, 1, 2**20)
        options["max_payload"] = float(mb)


@click.command("serve")
@model_option(required=False)
@click.option(
    "--host",
    default="0.0.0.0",
    show_default=True,
    help="Address to listen on (127.0.0.1: this machine only). There is no "
    "authentication: outside a container, bind 127.0.0.1 behind a reverse proxy with TLS "
    "and authentication.",
)
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    help=f"Port; 0 takes a free one. [default: ${PORT_VARIABLE}, else {DEFAULT_PORT}]",
)
@mode_option
@max_payload_option(
    "Largest request body, as transform's --max-payload",
    "a larger one is a 413",
    no_cap=False,
    default=None,
    shown=f"${PAYLOAD_VARIABLE} MB, else {DEFAULT_MAX_PAYLOAD_MB:g}MB",
)
@worker_options(REQUEST)
@click.option(
    "--max-queued-requests",
    type=click.IntRange(min=0),
    default=DEFAULT_MAX_QUEUED,
    show_default=True,
    help="Requests waiting beyond those in flight; more are answered 503.",
)
@retry_options(REQUEST)
@click.option(
    "--body-timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_BODY_TIMEOUT_S,
    show_default=True,
    help="Seconds a request's whole body may take to arrive; a slower one is a 408.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_CONNECTIONS,
    show_default=True,
    help="Open connections served at once; a request on one more is a 503.",
)
def serve_command(**options) -> None:
    """Serve a model over HTTP as a SageMaker inference container does.

    GET /ping answers 200 once a worker has served a warm-up record; POST /invocations takes
    application/json or application/jsonlines requests and answers as
    `transform` writes; GET /execution-parameters tells Batch Transform the
    container's limits; GET /metrics answers Prometheus metrics. SIGTERM stops
    accepting, finishes the requests in flight (bodies still arriving are refused
    with a 503) and exits.

    Example:

    \b
        o2v-batch serve --model examples/model --port 8080
        curl -s localhost:8080/invocations -H 'Content-Type: application/jsonlines' \\
            --data-binary @examples/requests/documented.jsonl
    """
    # Imported here: the HTTP side is not needed by the other commands (nor by a
    # transform's workers, which import the command line's modules when they start).
    from o2v_batch.serve.server import serve

    try:
        _environment_defaults(options, os.environ)
        config = ServeConfig(**options)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        serve(config)
    except ConfigError as exc:  # an extra that is not installed
        raise click.UsageError(str(exc)) from None
    except O2VError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo("o2v-batch: stopped", err=True)
