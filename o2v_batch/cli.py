"""The `o2v-batch` command line: the group, `transform` and `main` (`train` and
`inspect` live in `o2v_batch.cli_model`). Commands only: each builds a config, calls the
library and maps library errors to messages and exit codes."""

from __future__ import annotations

import os
import signal
import sys

import click

from o2v_batch import __version__
from o2v_batch.cli_model import inspect_command, train_command
from o2v_batch.config import (
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
from o2v_batch.responses import ACCEPT_TYPES
from o2v_batch.sharding import shard_index_from


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="o2v-batch")
def cli() -> None:
    """Batch inference and training for Object2Vec models.

    Example:

        o2v-batch transform examples/requests/ out/ --model examples/model
    """


cli.add_command(train_command)
cli.add_command(inspect_command)


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
