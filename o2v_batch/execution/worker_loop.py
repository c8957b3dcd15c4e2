"""A worker's loop over its mini-batches: whole, one after another, or pipelined.

Pipelined (a whole worker's loop on a GPU: a Ray actor's), a server's three phases run in three threads joined
by queues of one: while mini-batch k is on the device, k+1 is parsed and checked and
k-1 encoded and answered. Torch releases the GIL in its kernels and while it waits
for the GPU, so the host's work and the device's overlap. Every mini-batch goes
through every stage in turn, so answers keep their order; a phase that raises fails
its own mini-batch alone, and a stage that breaks ends the worker, which the pool
replaces.

Nothing here imports torch: the server's module does, in the worker.
"""

from __future__ import annotations

import os
import queue
import threading
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from o2v_batch.errors import describe
from o2v_batch.execution import segments
from o2v_batch.execution.protocol import BatchResult, Done, Failed, ServeRequest, SharedLines

# Mini-batches a pipelined worker holds, one per stage, to keep its stages busy.
PIPELINE_DEPTH = 3
# How a worker whose stage thread broke (a fault of the loop, not of a mini-batch)
# exits: the pool sees it lost, replaces it and retries what it held.
STAGE_BROKE = 70


@dataclass
class Endpoint:
    """A worker's side of its pipe and shared segments, as its loop uses them."""

    conn: Connection
    sending: threading.Lock  # the loop answers requests; the reader, writes
    request_segments: list[int]
    responses: segments.Responses

    def records(self, request: ServeRequest) -> Sequence[bytes]:
        """A request's records. Lines in a request segment are copied out: the parent
        reuses the segment once the request is answered."""
        if isinstance(request.records, SharedLines):
            return segments.read_lines(self.request_segments, request.records)
        return request.records

    def done(self, task_id: int, result: BatchResult) -> Done:
        """The answer to a served request: a large payload goes in a response segment."""
        if (placed := self.responses.place(result.payload)) is not None:
            result.payload, result.placed = b"", placed
        return Done(task_id, result)

    def send(self, answer: Done | Failed) -> None:
        with self.sending:
            self.conn.send(answer)


def has_phases(server: Any) -> bool:
    """Whether `server.serve` is its phases in a row (protocol.DEFAULT_FACTORY): it has
    `prepare`, and no class below the one defining `prepare` redefines `serve` (a
    server that wraps serve, to slow it or make it fail, is run whole)."""
    mro = type(server).__mro__
    prepare = next((cls for cls in mro if "prepare" in vars(cls)), None)
    serve = next((cls for cls in mro if "serve" in vars(cls)), None)
    return prepare is not None and serve is not None and issubclass(prepare, serve)


def serve_in_turn(server: Any, requests: queue.SimpleQueue, endpoint: Endpoint) -> None:
    """Serves each request whole, then answers it, until the stop (None)."""
    while (request := requests.get()) is not None:
        try:
            records = endpoint.records(request)
            result = server.serve(request.positions, records, request.content_type, request.accept)
            answer = endpoint.done(request.task_id, result)
        except Exception as exc:  # one line in the job's log, not a traceback per retry
            answer = Failed(request.task_id, describe(exc))
        endpoint.send(answer)


def serve_pipelined(server: Any, requests: queue.SimpleQueue, endpoint: Endpoint) -> None:
    """Serves requests in three stages side by side: prepare; predict; finish and answer.
    The stop (None) passes through every stage behind the work before it, so what was
    asked before it is answered."""

    def prepare(request: ServeRequest) -> Any:
        records = endpoint.records(request)
        return server.prepare(request.positions, records, request.content_type, request.accept)

    def predict(batch: Any) -> Any:
        batch.predict()
        return batch

    prepared: queue.Queue[_Step | None] = queue.Queue(maxsize=1)
    predicted: queue.Queue[_Step | None] = queue.Queue(maxsize=1)
    stages = [
        threading.Thread(
            target=_stage,
            args=(lambda: _step(requests.get()), prepare, prepared.put),
            name="o2v-prepare",
            daemon=True,
        ),
        threading.Thread(
            target=_stage,
            args=(prepared.get, predict, predicted.put),
            name="o2v-predict",
            daemon=True,
        ),
    ]
    for stage in stages:
        stage.start()
    # The last stage (finish, answer) is this thread's.
    _stage(predicted.get, lambda batch: batch.finish(), lambda step: _answer(endpoint, step))
    for stage in stages:
        stage.join()


@dataclass(slots=True)
class _Step:
    """One mini-batch between stages: its request, then its batch, then its result;
    or why a phase failed it."""

    task_id: int
    work: Any
    failure: str | None = None


def _step(request: ServeRequest | None) -> _Step | None:
    return None if request is None else _Step(request.task_id, request)


def _answer(endpoint: Endpoint, step: _Step | None) -> None:
    """The last stage's end: a step's answer sent, in the order the steps came."""
    if step is None:
        return
    if step.failure is None:
        try:
            answer = endpoint.done(step.task_id, step.work)
        except Exception as exc:  # a payload that could not be placed
            answer = Failed(step.task_id, describe(exc))
    else:
        answer = Failed(step.task_id, step.failure)
    endpoint.send(answer)


def _stage(
    take: Callable[[], _Step | None],
    phase: Callable[[Any], Any],
    give: Callable[[_Step | None], None],
) -> None:
    """One stage: runs `phase` on each step's work in order, passing failed steps and
    the stop (None) on untouched. A fault of the stage itself ends the worker: a stage
    gone quiet would leave the pool waiting for answers that never come."""
    try:
        while (step := take()) is not None:
            if step.failure is None:
                try:
                    step.work = phase(step.work)
                except Exception as exc:  # this mini-batch's fault: it alone fails
                    step.failure = describe(exc)
            give(step)
        give(None)
    except BaseException:
        traceback.print_exc()
        os._exit(STAGE_BROKE)
