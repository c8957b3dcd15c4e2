"""`o2v-batch serve`: SageMaker's inference-container contract (`GET /ping`,
`POST /invocations`, `GET /execution-parameters`) over transform's worker pool.

The HTTP server is uvicorn running a small ASGI app of our own. Chosen because it is
a well-kept, widely deployed server with few dependencies (h11 and click), it drains
gracefully on SIGTERM (stops accepting, lets in-flight requests finish, then returns),
and an asyncio app needs no thread per connection: a burst of clients costs a
coroutine each while the requests themselves wait, bounded, for the worker processes.
"""

from __future__ import annotations

import asyncio
import math
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from o2v_batch.artifacts import PRECISIONS, check_model, resolve_model
from o2v_batch.batching import payload_bytes
from o2v_batch.config import (
    DEFAULT_BODY_TIMEOUT_S,
    DEFAULT_INVOCATION_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENT,
    DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_QUEUED,
    DEFAULT_MAX_RETRIES,
    MODES,
)
from o2v_batch.devices import check_devices, parse_devices
from o2v_batch.errors import ConfigError, O2VError, RequestError, WorkerError, require_extra
from o2v_batch.execution.pool import plan_workers
from o2v_batch.execution.protocol import ServingOptions, WorkerSpec
from o2v_batch.metrics import CONTENT_TYPE, ServeMetrics
from o2v_batch.report import batch_failure, plural, size, stderr_line
from o2v_batch.serve_pool import Dispatcher
from o2v_batch.serve_requests import (
    bad_record,
    invocation,
    parse_content_type,
    response_body,
    response_type,
)

# The worker server: transform's, honouring each request's infer_max_seqlens.
WORKER_FACTORY = "o2v_batch.serve_worker:create_server"
# Seconds a SIGTERM leaves in-flight requests to finish before they are cut off.
DRAIN_TIMEOUT_S = 30.0
_TEXT = b"text/plain; charset=utf-8"


@dataclass(frozen=True)
class ServeConfig:
    """What `serve` needs; defaults are the SageMaker container's."""

    model: str = "/opt/ml/model"
    host: str = "0.0.0.0"  # a container is reached from outside it
    port: int = 8080  # 0: any free port
    mode: str = "auto"
    devices: str = "auto"
    precision: str = "fp32"  # the dtype the network runs in (artifacts.PRECISIONS)
    workers: int | None = None  # None: execution.pool.plan_workers sizes them from cores and GPUs
    max_concurrent_transforms: int = DEFAULT_MAX_CONCURRENT  # requests in flight per worker
    max_payload: float = 6.0  # MB (2**20 bytes, fractions allowed) per request body
    # Requests waiting beyond those the workers hold; more get 503, so memory stays bounded.
    max_queued_requests: int = DEFAULT_MAX_QUEUED
    max_retries: int = DEFAULT_MAX_RETRIES
    invocation_timeout: float = DEFAULT_INVOCATION_TIMEOUT_S
    body_timeout: float = DEFAULT_BODY_TIMEOUT_S  # seconds for a request's body to arrive
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # a request on one more is a 503
    worker_factory: str = WORKER_FACTORY  # "module:function": tests hand in faulty servers

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"--mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        check_devices(self.devices)
        if self.precision not in PRECISIONS:
            raise ConfigError(
                f"--precision must be one of {', '.join(PRECISIONS)}; got {self.precision!r}"
            )
        if not 0 <= self.port <= 65535:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}")
        for name, value, least in (
            ("--workers", self.workers, 1),
            ("--max-concurrent-transforms", self.max_concurrent_transforms, 1),
            ("--max-queued-requests", self.max_queued_requests, 0),
            ("--max-retries", self.max_retries, 0),
            ("--max-connections", self.max_connections, 1),
        ):
            if value is not None and value < least:
                raise ConfigError(f"{name} must be at least {least}, got {value}")
        if not (math.isfinite(self.max_payload) and self.max_payload > 0):
            raise ConfigError(f"--max-payload must be a number of MB > 0, got {self.max_payload}")
        for name, seconds in (
            ("--invocation-timeout", self.invocation_timeout),
            ("--body-timeout", self.body_timeout),
        ):
            if not seconds > 0:
                raise ConfigError(f"{name} must be positive, got {seconds}")


def serve(config: ServeConfig, log: Callable[[str], None] | None = None) -> None:
    """Serves until SIGTERM or SIGINT, then finishes the requests in flight and stops
    the workers. The model is checked first. O2VError when the model, the port or the
    workers fail."""
    log = log or stderr_line
    require_extra("uvicorn", "o2v-batch serve", "uvicorn", "serve")
    model_dir = resolve_model(config.model)
    check_model(model_dir, encoders_only=config.mode == "embedding")
    import uvicorn

    listener = _listen(config.host, config.port)
    port = listener.getsockname()[1]
    servers = []  # the HTTP server once built: workers that cannot serve stop it
    metrics = ServeMetrics(ROUTES)  # this process's own registry

    def failed(reason: str) -> None:  # the reason is raised once the server has stopped
        servers[0].should_exit = True

    dispatcher = Dispatcher(
        _specs(config, model_dir),
        config.max_concurrent_transforms,
        config.max_retries,
        config.invocation_timeout,
        log,
        metrics,
        on_failure=failed,
        on_ready=lambda: log(f"o2v-batch: serving {config.model} on port {port}"),
    )
    servers.append(_server(uvicorn, _App(config, dispatcher, metrics), config))
    _run(servers[0], dispatcher, listener)
    if dispatcher.failure is not None:
        raise WorkerError(dispatcher.failure)


def _server(uvicorn: Any, app: _App, config: ServeConfig) -> Any:
    """uvicorn's server for `app`, telling it when the server starts to stop: bodies
    still arriving then are refused, not waited for."""

    class Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            app.stop()
            await super().shutdown(sockets)

    return Server(uvicorn.Config(app, **_uvicorn_options(config)))


def _uvicorn_options(config: ServeConfig) -> dict:
    """Our app and our socket: no lifespan events, no logging setup or access log of
    uvicorn's own (o2v-batch logs its lines itself)."""
    return {
        "lifespan": "off",
        "http": "h11",
        "loop": "asyncio",
        "log_config": None,
        "access_log": False,
        "timeout_graceful_shutdown": DRAIN_TIMEOUT_S,
        # uvicorn counts the connection a request came on among those open: without
        # the +1 a cap of N would serve N - 1.
        "limit_concurrency": config.max_connections + 1,
    }


def _run(server: Any, dispatcher: Dispatcher, listener: socket.socket) -> None:
    """Runs the HTTP server on `listener` until it stops, then stops the workers."""
    # uvicorn raises a signal that stopped it again once it is done: these handlers take
    # it, so the workers are stopped below rather than the process killed on the spot.
    previous = {sig: signal.signal(sig, _noted) for sig in (signal.SIGTERM, signal.SIGINT)}
    dispatcher.start()
    try:
        server.run(sockets=[listener])
    finally:
        dispatcher.stop()
        dispatcher.join()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        listener.close()


def _noted(signum: int, frame: object) -> None:
    """A stop signal after uvicorn's own handling: the server has drained already."""


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named, not left 0: asyncio sets TCP_NODELAY on accepted connections only
    # then, and without it a response's headers and body wait on the client's delayed ACK
    # (measured: 44 ms per request).
    listener = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind((host, port))
    except OSError as exc:
        listener.close()
        raise O2VError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    listener.listen(2048)
    listener.setblocking(False)
    return listener


def _specs(config: ServeConfig, model_dir: str) -> list[WorkerSpec]:
    # A bad record fails its request (a 400), as it fails a shard in transform.
    options = ServingOptions(mode=config.mode, precision=config.precision)
    return [
        WorkerSpec(model_dir, device, threads, options, config.worker_factory)
        for device, threads in plan_workers(parse_devices(config.devices), config.workers)
    ]


class _App:
    """The ASGI app: the three routes of the contract, and /metrics."""

    def __init__(self, config: ServeConfig, dispatcher: Dispatcher, metrics: ServeMetrics) -> None:
        self.dispatcher = dispatcher
        self.metrics = metrics
        self.limit = payload_bytes(config.max_payload)
        self.body_timeout = config.body_timeout
        self.max_pending = dispatcher.capacity + config.max_queued_requests
        self.pending = 0  # requests whose whole body has arrived, waiting or in flight
        self._stopping: asyncio.Future | None = None  # done once the server stops
        # SageMaker's field is a whole number of MB; a fraction (500KB) is told exactly.
        mb = float(config.max_payload)
        self.parameters = orjson.dumps(
            {
                "MaxConcurrentTransforms": dispatcher.capacity,
                "BatchStrategy": "MULTI_RECORD",
                "MaxPayloadInMB": int(mb) if mb.is_integer() else mb,
            }
        )

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            return
        with self.metrics.request(scope["path"], send) as send:
            await self._route(scope, receive, send)

    async def _route(self, scope: dict, receive: Callable, send: Callable) -> None:
        method, path = scope["method"], scope["path"]
        handler = _ROUTES.get((method, path))
        if handler is not None:
            await handler(self, scope, receive, send)
        elif path in ROUTES:
            await _respond(send, 405, f"{method} is not allowed on {path}\n".encode(), _TEXT)
        else:
            await _respond(send, 404, _NOT_FOUND, _TEXT)

    async def _ping(self, scope: dict, receive: Callable, send: Callable) -> None:
        """200 once a worker has served the warm-up request."""
        if self.dispatcher.ready.is_set():
            await _respond(send, 200, b"", _TEXT)
        elif self.dispatcher.warm_up_failure is not None:
            message = b"the model failed its warm-up request; see the server's log\n"
            await _respond(send, 503, message, _TEXT)
        else:
            await _respond(send, 503, b"the model is loading\n", _TEXT)

    async def _parameters(self, scope: dict, receive: Callable, send: Callable) -> None:
        await _respond(send, 200, self.parameters, b"application/json")

    async def _metrics(self, scope: dict, receive: Callable, send: Callable) -> None:
        """On the event loop: never queued behind the workers."""
        await _respond(send, 200, self.metrics.exposition(), CONTENT_TYPE)

    def stop(self) -> None:
        """The server is stopping: bodies still arriving are refused from now on."""
        stopping = self._stopping_signal()
        if not stopping.done():
            stopping.set_result(None)

    def _stopping_signal(self) -> asyncio.Future:
        if self._stopping is None:
            self._stopping = asyncio.get_running_loop().create_future()
        return self._stopping

    async def _invoke(self, scope: dict, receive: Callable, send: Callable) -> None:
        # A refusal before the whole body has arrived leaves the rest to uvicorn, which
        # reads and drops it after the response, keeping the connection usable.
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            content_type, accept = self._formats(headers)
            data = await self._arrived(_Body(receive))
            status, payload = await self._answer(data, content_type, accept)
        except RequestError as exc:
            # A body that did not arrive in time will not: the connection closes.
            close = exc.status == 408
            await _respond(send, exc.status, f"{exc}\n".encode(), _TEXT, close=close)
            return
        await _respond(send, status, payload, accept.encode())

    def _formats(self, headers: dict) -> tuple[str, str]:
        """The request's content type and the response's, refusing what the headers
        alone decide (415, 400, 406, and 413 by Content-Length) before any body is read."""
        content_type = parse_content_type(headers.get("content-type"))
        accept = response_type(headers.get("accept"), content_type)
        if int(headers.get("content-length") or 0) > self.limit:
            raise self._too_large()
        return content_type, accept

    async def _arrived(self, body: _Body) -> bytes:
        """The whole body; RequestError 413 as soon as it runs over the cap, 408 when it
        takes longer than the body time-out, 503 when the server stops first."""
        reading = asyncio.ensure_future(body.read(self.limit))
        stopping = self._stopping_signal()
        await asyncio.wait(
            (reading, stopping), timeout=self.body_timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if not reading.done():
            reading.cancel()
            if stopping.done():
                raise RequestError(503, "the server is stopping")
            raise RequestError(
                408,
                f"the request body did not arrive within {self.body_timeout:g} s (--body-timeout)",
            )
        data = reading.result()
        if data is None:
            raise self._too_large()
        return data

    async def _answer(self, data: bytes, content_type: str, accept: str) -> tuple[int, bytes]:
        """The response to a whole request: it waits for a worker if a place is free."""
        if self.pending >= self.max_pending:
            raise RequestError(
                503,
                f"the server is busy: {plural(self.pending, 'request')} "
                f"{'is' if self.pending == 1 else 'are'} waiting; retry later",
            )
        self.pending += 1
        try:
            request = invocation(data, content_type, accept)
            if not request.records:
                return 200, response_body(accept, b"")
            outcome = await self.dispatcher.submit(request)
        finally:
            self.pending -= 1
        if outcome.failure is not None:
            reason = batch_failure(request.positions[0], content_type, outcome.failure)
            raise RequestError(500, reason)
        if outcome.result.error is not None:
            raise RequestError(400, bad_record(outcome.result, content_type))
        return 200, response_body(accept, outcome.result.payload)

    def _too_large(self) -> RequestError:
        return RequestError(
            413,
            f"the request body is over {size(self.limit)} "
            "(SAGEMAKER_MAX_PAYLOAD_IN_MB, --max-payload)",
        )


# The routing table: every route the server answers, and the one list of its paths.
_ROUTES: dict[tuple[str, str], Callable] = {
    ("GET", "/ping"): _App._ping,
    ("POST", "/invocations"): _App._invoke,
    ("GET", "/execution-parameters"): _App._parameters,
    ("GET", "/metrics"): _App._metrics,
}
ROUTES = tuple(dict.fromkeys(path for _, path in _ROUTES))
_NOT_FOUND = f"not found: use {', '.join(ROUTES)}\n".encode()


class _Body:
    """A request's body as it arrives."""

    def __init__(self, receive: Callable) -> None:
        self._receive = receive
        self._done = False

    async def read(self, limit: int) -> bytes | None:
        """The whole body; None as soon as it runs over `limit` bytes."""
        parts, size = [], 0
        while not self._done:
            chunk = await self._next()
            size += len(chunk)
            if size > limit:
                return None
            parts.append(chunk)
        return b"".join(parts)

    async def _next(self) -> bytes:
        message = await self._receive()
        self._done = message["type"] != "http.request" or not message.get("more_body")
        return message.get("body", b"")


async def _respond(
    send: Callable, status: int, body: bytes, content_type: bytes, close: bool = False
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
