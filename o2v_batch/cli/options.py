"""The one declaration of every option more than one command takes, as small decorator
bundles, and the value types of the options.

The commands that run workers (`transform`, `serve`) name in their help what a worker
holds at a time: a mini-batch for transform, a request for serve (`Unit`).
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar

import click

from o2v_batch.artifacts import PRECISIONS
from o2v_batch.config import (
    DEFAULT_INVOCATION_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_RETRIES,
    MODES,
    SAGEMAKER_MODEL_DIR,
    preferred_mode,
)
from o2v_batch.errors import ConfigError

Command = TypeVar("Command", bound=Callable[..., Any])
# The sizes --max-payload takes, in every command's help.
SIZES = "a number of MB (MB = 2^20 bytes, fractions allowed), or 6MB, 500KB (KB = 2^10 bytes)"


class Unit(NamedTuple):
    """What a worker serves at a time, as the help of the shared options names it."""

    one: str
    many: str


MINI_BATCH = Unit("mini-batch", "Mini-batches")
REQUEST = Unit("request", "Requests")


def _applied(options: tuple[Callable[[Command], Command], ...], command: Command) -> Command:
    """`options` on `command`, listed in their order."""
    for option in reversed(options):
        command = option(command)
    return command


def model_option(required: bool) -> Callable[[Command], Command]:
    """--model: required, or by default where SageMaker unpacks the model (serve)."""
    where = "" if required else " (SageMaker unpacks model.tar.gz there)"
    return click.option(
        "--model",
        required=required,
        default=None if required else SAGEMAKER_MODEL_DIR,
        show_default=not required,
        help=f"Model folder or .tar.gz, local or s3://{where}.",
    )


def _mode_from_environment(ctx: click.Context, param: click.Parameter, value: str | None) -> str:
    """--mode, when not given, from SageMaker's INFERENCE_PREFERRED_MODE; a bad value
    names the variable, which the user may not know is set."""
    if value is not None:
        return value
    try:
        return preferred_mode(os.environ)
    except ConfigError as exc:
        raise click.UsageError(str(exc), ctx) from None


mode_option = click.option(
    "--mode",
    type=click.Choice(MODES),
    callback=_mode_from_environment,
    help="auto: per record, a pair scores and one input embeds; embedding: the encoders "
    "only (a pair is a bad record); classification: the whole network. "
    "[default: $INFERENCE_PREFERRED_MODE, else auto]",
)


def max_payload_option(
    what: str, then: str, no_cap: bool, default: float | None, shown: str
) -> Callable[[Command], Command]:
    """--max-payload in the sizes PayloadSize reads: `what` it caps, `then` what a
    larger one meets, `shown` its default as the help tells it."""
    return click.option(
        "--max-payload",
        type=PayloadSize(no_cap=no_cap),
        default=default,
        help=f"{what}: {SIZES}; {then}. [default: {shown}]",
    )


def worker_options(unit: Unit) -> Callable[[Command], Command]:
    """--devices, --precision, --workers and --max-concurrent-transforms, in that order."""
    options = (
        click.option(
            "--devices",
            default="auto",
            show_default=True,
            help="auto (every visible GPU, else CPU), cpu, cuda (every visible GPU) or a list "
            "such as cuda:0,cuda:1.",
        ),
        click.option(
            "--precision",
            type=click.Choice(tuple(PRECISIONS)),
            default="fp32",
            show_default=True,
            help="The dtype the network runs in; outputs are float32 numbers either way.",
        ),
        click.option(
            "--workers",
            type=click.IntRange(min=1),
            help="Worker processes that take mini-batches: on GPUs, host workers (no torch) "
            "feeding one device process per GPU; on CPU, whole workers. [default: on GPUs "
            "one per core left, on CPU one per core; up to 32; one per 16 KB of input "
            "for a smaller one]",
        ),
        click.option(
            "--max-concurrent-transforms",
            type=click.IntRange(min=1),
            default=DEFAULT_MAX_CONCURRENT,
            show_default=True,
            help=f"{unit.many} in flight per worker.",
        ),
    )
    return lambda command: _applied(options, command)


def retry_options(unit: Unit) -> Callable[[Command], Command]:
    """--max-retries and --invocation-timeout: how a worker that died or hung is met."""
    options = (
        click.option(
            "--max-retries",
            type=click.IntRange(min=0),
            default=DEFAULT_MAX_RETRIES,
            show_default=True,
            help=f"Retries of a {unit.one} whose worker died or hung.",
        ),
        click.option(
            "--invocation-timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_INVOCATION_TIMEOUT_S,
            show_default=True,
            help=f"Seconds before a worker stuck on one {unit.one} is replaced.",
        ),
    )
    return lambda command: _applied(options, command)


progress_option = click.option(
    "--progress/--no-progress",
    default=None,
    help="Progress bars on stderr. [default: when stderr is a terminal]",
)


class SeqLens(click.ParamType):
    """--infer-max-seqlens: two whole numbers, A,B (in0, in1)."""

    name = "A,B"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        parts = [p.strip() for p in str(value).split(",")]
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            self.fail(f"{value!r} is not two integers A,B (e.g. 50,50)", param, ctx)
        return int(parts[0]), int(parts[1])


class PayloadSize(click.ParamType):
    """--max-payload, in transform and serve alike: a bare number is MB (2^20 bytes,
    fractions allowed), as SageMaker's MaxPayloadInMB; or a number with a unit, 6MB or
    500KB (2^10 bytes). The value is in MB; 0 is accepted only where it means no cap."""

    name = "SIZE"

    def __init__(self, no_cap: bool) -> None:
        self.no_cap = no_cap

    def convert(self, value, param, ctx):
        if isinstance(value, float | int):
            return float(value)
        number, unit = re.fullmatch(r"(.*?)\s*(mb|kb)?", str(value).strip(), re.I).groups()
        try:
            mb = float(number)
        except ValueError:
            mb = math.nan
        if not (math.isfinite(mb) and (mb >= 0 if self.no_cap else mb > 0)):
            least = ">= 0" if self.no_cap else "> 0"
            self.fail(f"{value!r} is not a size {least} such as 6, 0.5, 6MB or 500KB", param, ctx)
        return mb / 1024 if unit and unit.lower() == "kb" else mb
