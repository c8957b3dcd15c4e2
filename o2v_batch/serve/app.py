"""The server's ASGI app: SageMaker's routes (`GET /ping`, `POST /invocations`,
`GET /execution-parameters`) and `GET /metrics`, over the dispatcher that holds the
workers. A request's body is read within the payload cap and the body time-out, and
waits, bounded, for a worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import orjson

from o2v_batch.config import ServeConfig
from o2v_batch.errors import RequestError
from o2v_batch.inputs.batching import payload_bytes
from o2v_batch.reporting.messages import batch_failure, plural, size
from o2v_batch.reporting.metrics import CONTENT_TYPE, ServeMetrics
from o2v_batch.serve.dispatcher import Dispatcher
from o2v_batch.serve.invocations import (
    bad_record,
    invocation,
    parse_content_type,
    response_body,
    response_type,
)

_TEXT = b"text/plain; charset=utf-8"


class App:
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
    ("GET", "/ping"): App._ping,
    ("POST", "/invocations"): App._invoke,
    ("GET", "/execution-parameters"): App._parameters,
    ("GET", "/metrics"): App._metrics,
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
