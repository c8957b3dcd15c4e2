"""Option bundles shared by the commands that run workers (`transform`, `serve`)."""

from __future__ import annotations

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
        help="Worker processes. [default: one per GPU; on CPU, by core count]",
    ),
)


def worker_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """--devices, --precision and --workers, listed in that order."""
    for option in reversed(_WORKER_OPTIONS):
        command = option(command)
    return command
