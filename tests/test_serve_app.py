"""`serve`'s ASGI app in this process, its workers stood in for: the routes it lists, the
payload cap as transform takes it, and its messages' words and numbers."""

from __future__ import annotations

import asyncio
import json
import threading

import pytest
from click.testing import CliRunner

from o2v_batch.cli import main
from o2v_batch.config import ServeConfig
from o2v_batch.execution.protocol import BatchResult
from o2v_batch.reporting.metrics import ServeMetrics
from o2v_batch.serve import app, server
from o2v_batch.serve.dispatcher import Outcome


class _Workers:
    """Stands in for the Dispatcher: ready, holding `capacity` requests; each answer
    waits until `release` is set."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.ready = threading.Event()
        self.ready.set()
        self.warm_up_failure = None
        self.release: asyncio.Event | None = None

    async def submit(self, invocation) -> Outcome:
        if self.release is not None:
            await self.release.wait()
        records = len(invocation.records)
        return Outcome(BatchResult(payload=b'{"embeddings":[0.5]}\n' * records, records=records))


def _app(workers: _Workers, **config) -> app.App:
    return app.App(ServeConfig(**config), workers, ServeMetrics(app.ROUTES))


async def _request(app, method: str, path: str, body: bytes = b"", headers=()) -> tuple:
    """(status, body) of one request through the app."""
    sent: list[dict] = []
    received = iter([{"type": "http.request", "body": body, "more_body": False}])

    async def receive() -> dict:
        return next(received, {"type": "http.disconnect"})

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "headers": list(headers)}
    await app(scope, receive, send)
    return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])


def call(app, method: str, path: str, body: bytes = b"", headers=()) -> tuple:
    return asyncio.run(_request(app, method, path, body, headers))


JSONLINES = [(b"content-type", b"application/jsonlines")]


# SageMaker's container contract, and the metrics.
CONTRACT = [
    ("GET", "/ping"),
    ("POST", "/invocations"),
    ("GET", "/execution-parameters"),
    ("GET", "/metrics"),
]


def test_not_found_lists_every_route_of_the_table():
    status, body = call(_app(_Workers(2)), "GET", "/models")
    assert (status, body) == (
        404,
        b"not found: use /ping, /invocations, /execution-parameters, /metrics\n",
    )
    assert tuple(path for _, path in CONTRACT) == app.ROUTES
    for method, path in CONTRACT:
        assert call(_app(_Workers(2)), method, path, b"", JSONLINES)[0] == 200
    assert call(_app(_Workers(2)), "DELETE", "/ping") == (405, b"DELETE is not allowed on /ping\n")


@pytest.mark.parametrize(
    ("cap", "limit", "told"),
    [("6", "6 MB", 6), ("500KB", "500 KB", 500 / 1024), ("0.5", "512 KB", 0.5), ("2MB", "2 MB", 2)],
)
def test_the_payload_cap_is_given_as_transform_gives_it(monkeypatch, cap, limit, told):
    taken = []
    monkeypatch.setattr(server, "serve", taken.append)
    result = CliRunner().invoke(main, ["serve", "--max-payload", cap], env={})
    assert result.exit_code == 0, result.output
    app = _app(_Workers(2), max_payload=taken[0].max_payload)
    over = app.limit + 1
    status, body = call(
        app, "POST", "/invocations", b"", [*JSONLINES, (b"content-length", b"%d" % over)]
    )
    assert (status, body) == (
        413,
        f"the request body is over {limit} (SAGEMAKER_MAX_PAYLOAD_IN_MB, --max-payload)\n".encode(),
    )
    parameters = json.loads(call(app, "GET", "/execution-parameters")[1])
    assert parameters["MaxPayloadInMB"] == told
    assert type(parameters["MaxPayloadInMB"]) is type(told)


def test_a_whole_number_of_mb_from_sagemakers_variable_is_told_as_one():
    app = _app(_Workers(2), max_payload=20)  # SAGEMAKER_MAX_PAYLOAD_IN_MB=20
    assert json.loads(call(app, "GET", "/execution-parameters")[1])["MaxPayloadInMB"] == 20
    assert app.limit == 20 * 2**20


def test_a_body_just_under_a_kb_cap_is_served():
    app = _app(_Workers(2), max_payload=500 / 1024)
    line = b'{"in0": [1]}\n'
    body = line * (500 * 1024 // len(line))
    assert call(app, "POST", "/invocations", body, JSONLINES)[0] == 200


@pytest.mark.parametrize("waiting", [1, 3])
def test_busy_says_how_many_requests_wait_in_words_that_agree(waiting):
    async def burst() -> tuple:
        workers = _Workers(waiting)
        workers.release = asyncio.Event()
        app = _app(workers, max_queued_requests=0)
        held = [
            asyncio.ensure_future(
                _request(app, "POST", "/invocations", b'{"in0":[1]}\n', JSONLINES)
            )
            for _ in range(waiting)
        ]
        while app.pending < waiting:
            await asyncio.sleep(0.001)
        refused = await _request(app, "POST", "/invocations", b'{"in0":[1]}\n', JSONLINES)
        workers.release.set()
        return refused, [(await h)[0] for h in held]

    refused, served = asyncio.run(burst())
    words = "1 request is" if waiting == 1 else f"{waiting} requests are"
    assert refused == (503, f"the server is busy: {words} waiting; retry later\n".encode())
    assert served == [200] * waiting
