"""A worker's loop over its mini-batches: each served whole, one after another, and
answered in the order it came; a mini-batch whose serving raises fails alone. (On a
GPU, host and device work overlap across processes: host workers and a device
process, device_link.py.)

Nothing here imports torch: the server's module does, in the worker.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from o2v_batch.errors import describe
from o2v_batch.execution import segments
from o2v_batch.execution.protocol import BatchResult, Done, Failed, ServeRequest, SharedLines


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
