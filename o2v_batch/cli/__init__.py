"""The `o2v-batch` command line: the click group `main` and its commands, one module
each (transform.py, serve.py, train.py, inspect.py), sharing the options declared once
in options.py.

Commands only: each builds a config, calls one library function and turns library
errors into messages and exit codes (2 for usage errors). On top of the project, it
may import any part of it, and no part imports it (but `o2v_batch.__main__`). Heavy
parts (torch, the HTTP server, the job) are imported when a command runs: a worker
spawned from the `o2v-batch` script imports these modules as it starts.
"""

from __future__ import annotations

import click

from o2v_batch import __version__
from o2v_batch.cli.inspect import inspect_command
from o2v_batch.cli.serve import serve_command
from o2v_batch.cli.train import train_command
from o2v_batch.cli.transform import transform_command
from o2v_batch.execution import allocator


@click.group("o2v-batch", context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="o2v-batch")
def main() -> None:
    """Batch inference and training for Object2Vec models.

    Example:

        o2v-batch transform examples/requests/ out/ --model examples/model
    """
    allocator.keep_freed_memory()  # the parent reads and writes mini-batches too


for command in (transform_command, train_command, inspect_command, serve_command):
    main.add_command(command)
