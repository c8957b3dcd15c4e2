"""The transform job's validated, frozen configuration and the option values it accepts."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from o2v_batch.artifacts import PRECISIONS
from o2v_batch.batching import STRATEGIES
from o2v_batch.devices import check_devices
from o2v_batch.errors import ConfigError, FilterError
from o2v_batch.jsonpath import compile_filter
from o2v_batch.responses import ACCEPT_TYPES, check_output_format

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
# Two mini-batches per worker: one computing while the next is already waiting. A
# pipelined (GPU) worker holds at least three, one per stage (execution.pool.WorkerPool).
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


@dataclass(frozen=True)
class TransformConfig:
    """Everything a `transform` job needs; option names follow SageMaker Batch Transform."""

    input: str
    output: str
    model: str
    content_type: str | None = None  # None: by extension, `.json` is JSON, the rest jsonlines
    accept: str | None = None  # None: the shard's content type
    strategy: str = "MultiRecord"
    max_payload: float = 6.0  # MB (2**20 bytes); 0 = no cap
    mode: str = "auto"
    devices: str = "auto"
    workers: int | None = None  # None: execution.pool.plan_workers sizes them from cores and GPUs
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
    # "module:function" building the per-worker server; tests hand in faulty models.
    worker_factory: str = "o2v_batch.execution.inference:create_server"
    # Workers that overlap parsing, the forward pass and encoding (protocol.WorkerSpec);
    # None: GPU workers do. Tests and benchmarks set it to run them on CPU.
    pipelined: bool | None = None
    # Of the embeddings in Parquet and .npy outputs: float16 halves their size.
    embedding_dtype: str = "float32"
    precision: str = "fp32"  # the dtype the network runs in; outputs stay float32

    def __post_init__(self) -> None:
        check_output_format(self)  # what --accept's format holds, and where it goes
        _choice("--content-type", self.content_type, CONTENT_TYPES, optional=True)
        _choice("--accept", self.accept, ACCEPT_TYPES, optional=True)
        _choice("--strategy", self.strategy, STRATEGIES)
        _choice("--mode", self.mode, MODES)
        _choice("--join-source", self.join_source, JOIN_SOURCES)
        _choice("--on-bad-record", self.on_bad_record, BAD_RECORD_POLICIES)
        _choice("--engine", self.engine, ENGINES)
        _choice("--precision", self.precision, tuple(PRECISIONS))
        check_devices(self.devices)
        if not (self.max_payload >= 0 and math.isfinite(self.max_payload)):
            raise ConfigError(
                f"--max-payload must be a number of MB >= 0 (0 = no cap), got {self.max_payload}"
            )
        for name, value in (
            ("--workers", self.workers),
            ("--max-concurrent-transforms", self.max_concurrent_transforms),
            ("--num-shards", self.num_shards),
        ):
            if value is not None and value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")
        if not 0 <= self.shard_index < self.num_shards:
            raise ConfigError(
                f"--shard-index must be in 0..{self.num_shards - 1}, got {self.shard_index}"
            )
        if self.max_retries < 0:
            raise ConfigError(f"--max-retries must be at least 0, got {self.max_retries}")
        if not self.invocation_timeout > 0:
            raise ConfigError(
                f"--invocation-timeout must be positive, got {self.invocation_timeout}"
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
