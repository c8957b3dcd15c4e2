"""The worker boundary: what the parent tells a worker and what a worker answers.
Plain data only, so every message pickles and unpickles anywhere."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServingOptions:
    """What a worker needs to know to serve mini-batches."""

    mode: str = "auto"  # auto | embedding | classification
    join_source: str = "None"
    input_filter: str = "$"
    output_filter: str = "$"
    on_bad_record: str = "fail"
    infer_max_seqlens: tuple[int, int] | None = None


@dataclass
class BatchResult:
    """Encoded responses of one mini-batch, or the bad record that failed it."""

    payload: bytes = b""
    records: int = 0
    bad_records: int = 0
    truncated: int = 0
    error_pos: int | None = None
    error: str | None = None


@dataclass(frozen=True)
class WorkerSpec:
    model_dir: str
    device: str  # "cpu" or "cuda:N" (N as the parent sees it)
    threads: int
    options: ServingOptions
    # "module:function" returning an object with serve(positions, records, content_type, accept);
    # lets tests hand in a model that hangs or crashes.
    factory: str = "o2v_batch.serving:Server"


@dataclass
class Done:
    task_id: int
    result: BatchResult


@dataclass
class Failed:
    task_id: int
    reason: str
