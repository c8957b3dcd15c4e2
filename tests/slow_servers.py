"""Serve's worker server, slowed or broken on purpose: requests stay in flight long
enough for a test to send a burst or a SIGTERM while they are, the warm-up request waits
for a test's signal, or every request fails. Loaded in worker processes by
"module:function" name."""

from __future__ import annotations

import os
import time
from pathlib import Path

from o2v_batch.serve.worker import InvocationServer

LOAD_S = 0.5  # /ping answers 503 at least this long
SERVE_S = 1.0  # per request
# Gated's folder (an environment variable, as workers inherit it): it writes LOADED
# there once the model is loaded, and serves nothing until a test writes OPEN there.
GATE_VARIABLE = "O2V_TEST_GATE"
LOADED, OPEN = "loaded", "open"
BROKEN = "the model cannot serve"


class Slow(InvocationServer):
    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        time.sleep(LOAD_S)
        super().__init__(model_dir, device, options)

    def serve(self, positions, records, content_type, accept):
        time.sleep(SERVE_S)
        return super().serve(positions, records, content_type, accept)


class Gated(InvocationServer):
    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        super().__init__(model_dir, device, options)
        self.gate = Path(os.environ[GATE_VARIABLE])
        (self.gate / LOADED).touch()

    def serve(self, positions, records, content_type, accept):
        if records:  # an empty mini-batch has nothing to wait for
            while not (self.gate / OPEN).exists():
                time.sleep(0.02)
        return super().serve(positions, records, content_type, accept)


class Broken(InvocationServer):
    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        super().__init__(model_dir, device, options)

    def serve(self, positions, records, content_type, accept):
        if records:
            raise RuntimeError(BROKEN)
        return super().serve(positions, records, content_type, accept)
