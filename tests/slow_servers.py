"""Serve's worker server, slowed on purpose: requests stay in flight long enough for a
test to send a burst or a SIGTERM while they are. Loaded in worker processes by
"module:function" name."""

from __future__ import annotations

import time

from o2v_batch.serve_worker import InvocationServer

LOAD_S = 0.5  # /ping answers 503 at least this long
SERVE_S = 1.0  # per request


class Slow(InvocationServer):
    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        time.sleep(LOAD_S)
        super().__init__(model_dir, device, options)

    def serve(self, positions, records, content_type, accept):
        if records:  # not the empty mini-batch that tells the model is loaded
            time.sleep(SERVE_S)
        return super().serve(positions, records, content_type, accept)
