"""`o2v-batch serve`'s warm-up: /ping answers 200 only once a worker has served a real
record, and a warm-up that fails keeps /ping at 503 and is logged once."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import slow_servers
from conftest import replacing_servers
from test_serve import MODEL, Served, call

from o2v_batch.config import DEFAULT_MAX_RETRIES

pytestmark = pytest.mark.slow

TESTS = str(Path(slow_servers.__file__).parent)
LOADING = b"the model is loading\n"
FAILED = b"the model failed its warm-up request; see the server's log\n"


def _served(tmp_path: Path, factory: str, env: dict | None = None) -> Served:
    code = replacing_servers(factory) + (
        "import sys; from o2v_batch.config import ServeConfig; "
        "from o2v_batch.serve.server import serve; "
        "serve(ServeConfig(model=sys.argv[1], host='127.0.0.1', port=int(sys.argv[3]), "
        "workers=1))"
    )
    env = {"PYTHONPATH": os.pathsep.join([TESTS, os.environ.get("PYTHONPATH", "")]), **(env or {})}
    return Served([sys.executable, "-c", code, str(MODEL), "--port"], tmp_path / "log", env)


def _until(served: Served, condition, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert served.process.poll() is None, served.log.read_text()
        assert time.monotonic() < deadline, served.log.read_text()
        time.sleep(0.05)


def test_ping_is_200_only_once_a_worker_has_served_the_warm_up_record(tmp_path):
    gate = tmp_path / "gate"
    gate.mkdir()
    served = _served(tmp_path, "slow_servers:Gated", {slow_servers.GATE_VARIABLE: str(gate)})
    try:
        # The worker has loaded the model, but serves no record until the gate opens.
        _until(served, lambda: (gate / slow_servers.LOADED).exists())
        deadline = time.monotonic() + 1.5
        while time.monotonic() < deadline:
            status, _, body = call(served.port, "GET", "/ping")
            assert (status, body) == (503, LOADING)
            time.sleep(0.05)
        (gate / slow_servers.OPEN).touch()
        served.wait_ready(30)
    finally:
        assert served.terminate() == 0, served.log.read_text()
    log = served.log.read_text()
    assert "the worker raised" not in log and "Error" not in log, log


def test_a_failed_warm_up_keeps_ping_at_503_and_is_logged_once(tmp_path):
    served = _served(tmp_path, "slow_servers:Broken")
    try:
        _until(served, lambda: "warm-up" in served.log.read_text())
        for _ in range(5):
            assert call(served.port, "GET", "/ping")[::2] == (503, FAILED)
            time.sleep(0.1)
    finally:
        assert served.terminate() == 0, served.log.read_text()
    # One line: not one per attempt.
    assert served.log.read_text().splitlines() == [
        "o2v-batch: the warm-up request failed, so /ping answers 503: the worker raised "
        f"RuntimeError: {slow_servers.BROKEN}; gave up after {DEFAULT_MAX_RETRIES + 1} attempts"
    ]
