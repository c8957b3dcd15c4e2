"""The validated, frozen configurations of a transform job and of the server, and the
option values they accept; the options both take are checked by one function."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from o2v_batch.artifacts import PRECISIONS
from o2v_batch.errors import ConfigError, FilterError, require_extra
from o2v_batch.inputs.batching import STRATEGIES
from o2v_batch.inputs.jsonpath import compile_filter
from o2v_batch.model.devices import check_devices
from o2v_batch.outputs.codec import COLUMNAR_TYPES, EMBEDDING_DTYPES, NPY, PARQUET
from o2v_batch.outputs.responses import ACCEPT_TYPES, TEXT_TYPES

CONTENT_TYPES = ("application/jsonlines", "application/json")
MODES = ("auto", "embedding", "classification")
# load_model's modes: the whole network, or its encoders only.
LOAD_MODES = ("classification", "embedding")
JOIN_SOURCES = ("None", "Input")
BAD_RECORD_POLICIES = ("fail", "emit-error")
ENGINES = ("local", "ray")
# Seconds one mini-batch may take before its worker is presumed hung (SageMaker's
# InvocationsTimeoutInSeconds default), and its invocation retries.
DEFAULT_INVOCATION_TIMEOUT_S = 600.0
DEFAULT_MAX_RETRIES = 3
# Two mini-batches per worker: one computing while the next is already waiting.
DEFAULT_MAX_CONCURRENT = 2
DEFAULT_MAX_QUEUED = 64  # o2v-batch serve: requests waiting for a worker
# o2v-batch serve: seconds a request's whole body may take to arrive; a slower one is a
# 408. Enough for the 6 MB default cap at 1 Mbit/s, short enough that stalled clients
# let go soon.
DEFAULT_BODY_TIMEOUT_S = 60.0
# o2v-batch serve: open connections served at once; a request on one more is a 503.
# Well above the requests the workers hold and queue (a few, plus DEFAULT_MAX_QUEUED),
# since bodies still arriving take no place in the queue; it bounds what they can hold:
# this many times the payload cap.
DEFAULT_MAX_CONNECTIONS = 256
# SageMaker's MaxPayloadInMB default: a mini-batch's cap, a request body's limit.
DEFAULT_MAX_PAYLOAD_MB = 6.0
SAGEMAKER_MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks model.tar.gz
DEFAULT_PORT = 8080  # SageMaker's, when SAGEMAKER_BIND_TO_PORT does not say


@dataclass(frozen=True)
class TransformConfig:
    """Everything a `transform` job needs; option names follow SageMaker Batch Transform."""

    input: str
    output: str
    model: str
    content_type: str | None = None  # None: by extension, `.json` is JSON, the rest jsonlines
    accept: str | None = None  # None: the shard's content type
    strategy: str = "MultiRecord"
    max_payload: float = DEFAULT_MAX_PAYLOAD_MB  # MB (2**20 bytes); 0 = no cap
    mode: str = "auto"
    devices: str = "auto"
    workers: int | None = None  # None: execution.planning sizes them from cores and GPUs
    max_concurrent_transforms: int = DEFAULT_MAX_CONCURRENT
    join_source: str = "None"
    input_filter: str = "$"
    output_filter: str = "$"
    manifest: bool = False
    num_shards: int = 1
    shard_index: int = 0
    resume: bool = False
    overwrite: bool = False
    allow_empty: bool = False  # an input with no shards succeeds instead of failing
    on_bad_record: str = "fail"
    engine: str = "local"
    ray_address: str | None = None  # --engine ray: None means $RAY_ADDRESS, else a local Ray
    progress: bool | None = None  # None: on when stderr is a terminal
    infer_max_seqlens: tuple[int, int] | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT_S
    summary: str | None = None  # None: `<output>/_SUCCESS` when every shard succeeded
    metrics_file: str | None = None  # a Prometheus text file of the job's figures, local
    # Of the embeddings in Parquet and .npy outputs: float16 halves their size.
    embedding_dtype: str = "float32"
    precision: str = "fp32"  # the dtype the network runs in; outputs stay float32

    def __post_init__(self) -> None:
        check_output_format(self)  # what --accept's format holds, and where it goes
        _choice("--content-type", self.content_type, CONTENT_TYPES, optional=True)
        _choice("--accept", self.accept, ACCEPT_TYPES, optional=True)
        _choice("--strategy", self.strategy, STRATEGIES)
        _choice("--join-source", self.join_source, JOIN_SOURCES)
        _choice("--on-bad-record", self.on_bad_record, BAD_RECORD_POLICIES)
        _choice("--engine", self.engine, ENGINES)
        check_worker_options(self, no_cap=True)
        _at_least(("--num-shards", self.num_shards, 1))
        if not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"--shard-index must be in 0..{self.num_shards - 1}, got {self.shard_index}"
            )
        if self.resume and self.overwrite:
            raise ConfigError("--resume and --overwrite exclude each other")
        for option, expr in (
            ("--input-filter", self.input_filter),
            ("--output-filter", self.output_filter),
        ):
            try:
                compile_filter(expr)
            except FilterError as exc:
                raise ConfigError(f"{option}: {exc}") from None
        if self.infer_max_seqlens is not None:
            for n in self.infer_max_seqlens:
                if not 1 <= n <= 5000:
                    raise ConfigError(f"--infer-max-seqlens values must be in 1..5000, got {n}")


@dataclass(frozen=True)
class ServeConfig:
    """What `serve` needs; defaults are the SageMaker container's."""

    model: str = SAGEMAKER_MODEL_DIR
    host: str = "0.0.0.0"  # a container is reached from outside it
    port: int = DEFAULT_PORT  # 0: any free port
    mode: str = "auto"
    devices: str = "auto"
    precision: str = "fp32"  # the dtype the network runs in (artifacts.PRECISIONS)
    workers: int | None = None  # None: execution.planning sizes them from cores and GPUs
    max_concurrent_transforms: int = DEFAULT_MAX_CONCURRENT  # requests in flight per worker
    max_payload: float = DEFAULT_MAX_PAYLOAD_MB  # MB (2**20 bytes, fractions allowed) per body
    # Requests waiting beyond those the workers hold; more get 503, so memory stays bounded.
    max_queued_requests: int = DEFAULT_MAX_QUEUED
    max_retries: int = DEFAULT_MAX_RETRIES
    invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S  # seconds for a request's body to arrive
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # a request on one more is a 503

    def __post_init__(self) -> None:
        check_worker_options(self, no_cap=False)
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        _at_least(
            ("--max-queued-requests", self.max_queued_requests, 0),
            ("--max-connections", self.max_connections, 1),
        )
        _positive(("--body-timeout", self.body_timeout))


def check_worker_options(config: TransformConfig | ServeConfig, no_cap: bool) -> None:
    """The options transform and serve share: the mode, the devices, precision and
    workers, the payload cap (0 means none where `no_cap`), the retries and time-out."""
    _choice("--mode", config.mode, MODES)
    _choice("--precision", config.precision, tuple(PRECISIONS))
    check_devices(config.devices)
    payload = config.max_payload
    if not (math.isfinite(payload) and (payload >= 0 if no_cap else payload > 0)):
        least = ">= 0 (0 = no cap)" if no_cap else "> 0"
        raise ConfigError(f"--max-payload must be a number of MB {least}, got {payload}")
    _at_least(
        ("--workers", config.workers, 1),
        ("--max-concurrent-transforms", config.max_concurrent_transforms, 1),
        ("--max-retries", config.max_retries, 0),
    )
    _positive(("--invocation-timeout", config.invocation_timeout))


def _at_least(*limits: tuple[str, int | None, int]) -> None:
    """(option, value, least) for each option; None is a value not given."""
    for option, value, least in limits:
        if value is not None and value < least:
            raise ConfigError(f"{option} must be at least {least}, got {value}")


def _positive(*values: tuple[str, float]) -> None:
    for option, seconds in values:
        if not seconds > 0:
            raise ConfigError(f"{option} must be positive, got {seconds}")


def _choice(option: str, value: str | None, allowed: Sequence[str], optional: bool = False) -> None:
    if (value is None and optional) or value in allowed:
        return
    raise ConfigError(f"{option} must be one of {', '.join(allowed)}; got {value!r}")


def preferred_mode(environ: Mapping[str, str]) -> str:
    """The mode `INFERENCE_PREFERRED_MODE` asks for (SageMaker's variable), else auto."""
    value = environ.get("INFERENCE_PREFERRED_MODE", "").strip().lower()
    if not value:
        return "auto"
    if value not in MODES:
        raise ConfigError(
            f"INFERENCE_PREFERRED_MODE must be one of {', '.join(MODES)}, got {value!r}"
        )
    return value


def check_output_format(config: TransformConfig) -> None:
    """Refuses, before any work, what the --accept format cannot hold (ConfigError)."""
    problem = _output_format_problem(config)
    if problem is not None:
        raise ConfigError(problem)


def _output_format_problem(config: TransformConfig) -> str | None:
    accept, dtype = config.accept, config.embedding_dtype
    if dtype not in EMBEDDING_DTYPES:
        return f"--embedding-dtype must be one of {', '.join(EMBEDDING_DTYPES)}; got {dtype!r}"
    if accept not in COLUMNAR_TYPES:
        if dtype != "float32" and accept in (None, *TEXT_TYPES):
            return (
                f"--embedding-dtype {dtype} needs --accept {PARQUET} or {NPY} "
                "(JSON responses carry float32 numbers)"
            )
        return None  # an unknown type is --accept's own error
    if config.output == "-":
        return (
            f"--accept {accept} writes one binary file per shard: OUTPUT must be a folder "
            "or s3://bucket/prefix/, not - (stdout)"
        )
    if accept != NPY:
        require_extra("pyarrow", f"--accept {accept}", "pyarrow", "parquet")
    joined, filtered = config.join_source == "Input", config.output_filter.strip() != "$"
    if accept == NPY:
        for option, used in (
            ("--mode classification", config.mode == "classification"),
            ("--join-source Input", joined),
            ("--output-filter", filtered),
        ):
            if used:
                return (
                    f"--accept {NPY} holds embeddings only, so {option} has no place in it "
                    f"(use --accept {PARQUET} or JSON)"
                )
    if filtered and not joined:
        return (
            f"--output-filter with --accept {accept} picks the input fields that become "
            "columns: use it with --join-source Input"
        )
    return None
