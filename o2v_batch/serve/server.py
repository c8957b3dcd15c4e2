"""`o2v-batch serve`: SageMaker's inference-container contract over transform's worker
pool, served until a stop signal.

The HTTP server is uvicorn running a small ASGI app of our own (app.py). Chosen because
it is a well-kept, widely deployed server with few dependencies (h11 and click), it
drains gracefully on SIGTERM (stops accepting, lets in-flight requests finish, then
returns), and an asyncio app needs no thread per connection: a burst of clients costs a
coroutine each while the requests themselves wait, bounded, for the worker processes.
"""

from __future__ import annotations

import signal
import socket
from collections.abc import Callable
from typing import Any

from o2v_batch.artifacts import check_model, resolve_model
from o2v_batch.config import ServeConfig
from o2v_batch.errors import O2VError, WorkerError, require_extra
from o2v_batch.execution.planning import plan_workers
from o2v_batch.execution.protocol import HOST, ServingOptions, WorkerSpec
from o2v_batch.execution.worker import server_factory, splitting
from o2v_batch.model.devices import parse_devices
from o2v_batch.reporting.metrics import ServeMetrics
from o2v_batch.reporting.progress import stderr_line
from o2v_batch.serve.app import ROUTES, App
from o2v_batch.serve.dispatcher import Dispatcher

# The worker server: transform's, honouring each request's infer_max_seqlens.
WORKER_FACTORY = "o2v_batch.serve.worker:create_server"
HOST_FACTORY = "o2v_batch.serve.worker:create_host_server"  # a GPU's host workers'
# Seconds a SIGTERM leaves in-flight requests to finish before they are cut off.
DRAIN_TIMEOUT_S = 30.0


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
    servers.append(_server(uvicorn, App(config, dispatcher, metrics), config))
    _run(servers[0], dispatcher, listener)
    if dispatcher.failure is not None:
        raise WorkerError(dispatcher.failure)


def _server(uvicorn: Any, app: App, config: ServeConfig) -> Any:
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
        WorkerSpec(model_dir, device, threads, options, _factory(role), role=role)
        for role, device, threads in plan_workers(
            parse_devices(config.devices), config.workers, split=splitting()
        )
    ]


def _factory(role: str) -> str:
    """A worker's factory: serve's own server where it takes requests."""
    return HOST_FACTORY if role == HOST else server_factory(WORKER_FACTORY, role)
