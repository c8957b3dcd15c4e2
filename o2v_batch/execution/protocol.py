"""The worker boundary: what the parent tells a worker and what a worker answers.

Plain data only, so every message pickles and unpickles anywhere: a worker's
failure crosses as text, never as an exception object that might not unpickle.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

# "module:function" building a worker's server: factory(model_dir, device, options, threads)
# returns an object with serve(positions, records, content_type, accept) -> BatchResult.
DEFAULT_FACTORY = "o2v_batch.execution.factories:create_server"
# A GPU's host workers and its device process (device_link.py): the host workers' server
# runs its forward passes in the device process, whose server runs them on the device.
HOST_FACTORY = "o2v_batch.execution.device_link:create_host_server"
DEVICE_FACTORY = "o2v_batch.execution.factories:create_device_server"

# What a worker does (WorkerSpec.role): the whole of each mini-batch it takes; the host
# work of them (reading, checking, encoding; no torch), its forward passes sent to its
# device's device process; or the forward passes of its device's host workers (it takes
# no mini-batches itself).
WHOLE, HOST, DEVICE = "whole", "host", "device"
# How a host worker exits when its device process is gone: the pool retries what it
# held on the host worker that takes its place.
DEVICE_LOST = 71


@dataclass(frozen=True)
class ServingOptions:
    """What a worker needs to know to serve mini-batches."""

    mode: str = "auto"  # auto | embedding | classification
    join_source: str = "None"
    input_filter: str = "$"
    output_filter: str = "$"
    on_bad_record: str = "fail"
    infer_max_seqlens: tuple[int, int] | None = None
    precision: str = "fp32"  # a key of artifacts.PRECISIONS


@dataclass(frozen=True)
class WorkerSpec:
    """How to start one worker: its model, device, torch threads and server factory."""

    model_dir: str
    device: str  # "cpu" or "cuda:N" (N as the parent sees it)
    threads: int
    options: ServingOptions
    # Tests hand in servers that hang, crash or fail to load.
    factory: str = DEFAULT_FACTORY
    # Request and response segments (segments.py): their handles follow the spec on
    # the worker's pipe, requests' first.
    request_segments: int = 0
    segments: int = 0
    role: str = WHOLE  # WHOLE, HOST or DEVICE

    @property
    def takes_mini_batches(self) -> bool:
        return self.role != DEVICE


@dataclass(frozen=True, slots=True)
class ServeRequest:
    """One mini-batch for a worker: raw record bytes and where each record is."""

    task_id: int
    positions: Sequence[int]
    records: Sequence[bytes] | SharedLines  # lines in a request segment
    content_type: str
    accept: str


@dataclass
class BatchResult:
    """Encoded responses of one mini-batch, or the bad record that failed it."""

    payload: bytes = b""
    records: int = 0
    bad_records: int = 0
    truncated: int = 0
    error_pos: int | None = None
    error: str | None = None
    # Where the payload is instead, in the worker's shared segments (then payload is b"").
    placed: Placed | None = None


# -- shared memory (segments.py): what travels instead of bytes -----------------


@dataclass(frozen=True, slots=True)
class SharedLines:
    """A request's records: `count` lines, the first `length` bytes of request segment `slot`."""

    slot: int
    length: int
    count: int


@dataclass(frozen=True, slots=True)
class Placed:
    """Where a worker put a response: segment `slot`, its first `length` bytes."""

    slot: int
    length: int


@dataclass(frozen=True, slots=True)
class Release:
    """The parent is done with the response in segment `slot`: the worker may reuse it."""

    slot: int


@dataclass(frozen=True, slots=True)
class WriteAt:
    """The parent to a worker: write the response in `slot` at `offset` of `path`; the
    segment is free again once written."""

    slot: int
    path: str
    offset: int
    length: int


@dataclass(frozen=True, slots=True)
class Wrote:
    """A worker's answer to WriteAt: None, or why it could not write."""

    slot: int
    error: str | None


# -- a GPU's host workers and its device process (device_link.py) -------------------


@dataclass(frozen=True, slots=True)
class Attach:
    """The parent to a device process: a host worker's link follows (its handle)."""


@dataclass(frozen=True, slots=True)
class ForwardCall:
    """A host worker to its device process: a Forward's arrays are in the host's ids
    file where `layout` says (device_link.ArrayFile); `singles` as Forward's."""

    layout: list
    singles: tuple[bool, bool]


@dataclass(frozen=True, slots=True)
class ForwardDone:
    """The answer: scores, in0's and in1's embeddings in the host's output file."""

    layout: list


@dataclass(frozen=True, slots=True)
class ForwardFailed:
    reason: str


# -- what a worker answers ------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The worker's own code runs: its interpreter started (a loss after this is not a
    start-up failure)."""


@dataclass(frozen=True)
class Ready:
    """The model is loaded; requests may come."""

    pid: int


@dataclass(frozen=True)
class Fatal:
    """The server could not be built: the job cannot run."""

    reason: str


@dataclass
class Done:
    task_id: int
    result: BatchResult


@dataclass
class Failed:
    """The server raised on this mini-batch (or, in the pool's events, retries ran out)."""

    task_id: int
    reason: str
