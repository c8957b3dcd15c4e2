"""The `transform` command: run a model over every record of the inputs."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Mapping

import click

from o2v_batch.cli.options import (
    MINI_BATCH,
    SeqLens,
    max_payload_option,
    mode_option,
    model_option,
    progress_option,
    retry_options,
    worker_options,
)
from o2v_batch.config import (
    BAD_RECORD_POLICIES,
    CONTENT_TYPES,
    DEFAULT_MAX_PAYLOAD_MB,
    ENGINES,
    JOIN_SOURCES,
    STRATEGIES,
    TransformConfig,
)
from o2v_batch.errors import ConfigError, O2VError, OutputExistsError
from o2v_batch.jobs.nodes import INDEX_VARIABLES, shard_index_from
from o2v_batch.outputs.codec import EMBEDDING_DTYPES
from o2v_batch.outputs.responses import ACCEPT_TYPES


class _Signalled(BaseException):
    """SIGTERM arrived: unwinds the job like Ctrl-C so every open output is aborted."""


def _on_sigterm(signum, frame):
    raise _Signalled()


@click.command("transform")
@click.argument("input_uri", metavar="INPUT")
@click.argument("output_uri", metavar="OUTPUT")
@model_option(required=True)
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
    "--embedding-dtype",
    type=click.Choice(EMBEDDING_DTYPES),
    default="float32",
    show_default=True,
    help="Of the embeddings in Parquet and .npy outputs: float16 halves their size and "
    "keeps about 3 significant digits.",
)
@click.option(
    "--strategy",
    type=click.Choice(STRATEGIES),
    default="MultiRecord",
    show_default=True,
    help="Records per mini-batch: as many as fit the payload cap, or one.",
)
@max_payload_option(
    "Mini-batch cap on record bytes",
    "0 = no cap",
    no_cap=True,
    default=DEFAULT_MAX_PAYLOAD_MB,
    shown=f"{DEFAULT_MAX_PAYLOAD_MB:g}MB",
)
@mode_option
@worker_options(MINI_BATCH)
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
    "--allow-empty",
    is_flag=True,
    help="An input with no shards succeeds. [default: it is an error, exit 1]",
)
@click.option(
    "--on-bad-record",
    type=click.Choice(BAD_RECORD_POLICIES),
    default="fail",
    show_default=True,
    help="fail the shard, or emit-error objects in place.",
)
@click.option(
    "--infer-max-seqlens",
    type=SeqLens(),
    help="Cap the sequence lengths used at inference, as A,B (in0,in1), each 1..5000. "
    "[default: the model's enc0_max_seq_len,enc1_max_seq_len]",
)
@retry_options(MINI_BATCH)
@click.option(
    "--summary",
    "summary_uri",
    help="Also write the JSON job summary here, whatever the outcome. "
    "[default: none; OUTPUT/_SUCCESS is written when every shard succeeded]",
)
@click.option(
    "--metrics-file",
    metavar="PATH",
    help="Also write the job's figures there as a Prometheus text file, whatever the "
    "outcome: a local path, *.prom in the node exporter's textfile folder. [default: none]",
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
@progress_option
@click.option(
    "--dry-run",
    is_flag=True,
    help="Check the model and options, list each shard's plan and check its first 100 "
    "records; start no worker, write nothing (but --summary, as JSON). Exit as the job would.",
)
def transform_command(input_uri: str, output_uri: str, model: str, **options) -> None:
    """Run MODEL over every record under INPUT, writing OUTPUT/<path>.out per shard.

    INPUT is a file, a folder, s3://bucket/prefix/ or - (stdin); OUTPUT a
    folder, s3://bucket/prefix/ or - (stdout).

    Example:

        o2v-batch transform examples/requests/ out/ --model examples/model
    """
    from o2v_batch.errors import StdoutClosed

    dry_run = options.pop("dry_run")
    try:
        _environment_defaults(options, os.environ)
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
        status = _dry_run(config) if dry_run else _run(config)
    except OutputExistsError as exc:
        raise click.UsageError(str(exc.phrased("--resume", "--overwrite"))) from None
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    except O2VError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        click.echo("o2v-batch: interrupted", err=True)
        sys.exit(130)
    except _Signalled:
        click.echo("o2v-batch: terminated", err=True)
        sys.exit(143)
    except StdoutClosed:
        _silence_stdout()
        sys.exit(141)  # 128 + SIGPIPE: what a Unix tool stopped by a closed pipe returns
    finally:
        signal.signal(signal.SIGTERM, previous)
    if status:
        sys.exit(status)


def _run(config: TransformConfig) -> int:
    from o2v_batch.jobs.transform import transform as run_transform

    return 1 if run_transform(config).shards_failed else 0


def _dry_run(config: TransformConfig) -> int:
    """The job's plan on stdout, the bad records found on stderr; the job's exit status."""
    from o2v_batch.jobs.dry_run import dry_run

    result = dry_run(config)
    for message in result.messages():
        click.echo(message, err=True)
    click.echo("\n".join(result.lines()))
    return result.exit_status


def _environment_defaults(options: dict, environ: Mapping[str, str]) -> None:
    """--shard-index, when not given, from the variables array-job schedulers set; a bad
    value names its variable, which the user may not know is set."""
    if options["shard_index"] is not None:
        return
    index = shard_index_from(environ) or 0
    num_shards = options["num_shards"]
    if index >= num_shards:
        name = next(name for name in INDEX_VARIABLES if environ.get(name, "").strip())
        raise ConfigError(
            f"{name}={index} is out of range: --num-shards {num_shards} takes a shard index "
            f"in 0..{num_shards - 1}"
        )
    options["shard_index"] = index


def _silence_stdout() -> None:
    """Points stdout at /dev/null, so Python's last flush of what is left in its buffer
    meets no closed pipe (and prints no traceback)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
