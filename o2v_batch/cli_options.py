"""Option bundles and value types shared by the commands that run workers
(`transform`, `serve`), and the option types of `transform`."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import click

from o2v_batch.artifacts import PRECISIONS

_WORKER_OPTIONS = (
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
        help="Worker processes. [default: up to 4 per GPU as the cores allow; on CPU, one "
        "per core up to 32]",
    ),
)


def worker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--devices, --precision and --workers, listed in that order."""
    for option in reversed(_WORKER_OPTIONS):
        command = option(command)
    return command


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
    """--max-payload: MB (2^20 bytes) as a number, fractions allowed, or with a unit:
    6MB, 500KB (2^10 bytes). The value is in MB; 0 is accepted only when it means no cap."""

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
