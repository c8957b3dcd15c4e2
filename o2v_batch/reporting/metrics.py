"""Prometheus metrics: what `serve` exposes at `/metrics` (a `transform` job's text file
for the node exporter: textfile.py).

Built with prometheus_client, each on a registry of its own (never the library's
global default registry), so a program that imports o2v-batch keeps its registry clean.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode()
# The label of every path that is not a route: the raw path would let clients make
# series without end.
OTHER_ROUTE = "other"
# Request latency: 1 ms (a 1-record request on CPU takes about 5) up to a minute.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    """The metrics of one `serve` process: the HTTP side counts requests, the worker
    pool's thread counts what the workers served and recovered from."""

    def __init__(self, routes: Sequence[str]) -> None:
        self.registry = CollectorRegistry()
        self._routes = frozenset(routes)
        self._requests = Counter(
            "o2v_batch_requests",
            "HTTP requests answered, by route (other: any unknown path) and status code.",
            ["route", "status"],
            registry=self.registry,
        )
        self._latency = Histogram(
            "o2v_batch_request_duration_seconds",
            "Seconds from a request's headers to the end of its response, by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for route in (*sorted(self._routes), OTHER_ROUTE):
            self._latency.labels(route)  # every route's series exists, at 0, from the start
        self._records = self._counter("records_served", "Records answered with a prediction.")
        self._mini_batches = self._counter(
            "mini_batches_served",
            "Mini-batches (requests with records) the workers answered, bad records included.",
        )
        self._restarts = self._counter(
            "worker_restarts", "Workers replaced after dying or hanging."
        )
        self._retries = self._counter(
            "mini_batch_retries", "Requests tried again because their worker died or hung."
        )
        self.queue_depth = self._gauge("queue_depth", "Requests waiting for a worker.")
        self.in_flight = self._gauge("requests_in_flight", "Requests the workers hold.")
        self._load_seconds = self._gauge(
            "model_load_seconds",
            "Seconds from start until a worker had loaded the model and served the warm-up "
            "request.",
        )

    def _counter(self, name: str, help: str) -> Counter:
        return Counter(f"o2v_batch_{name}", help, registry=self.registry)

    def _gauge(self, name: str, help: str) -> Gauge:
        return Gauge(f"o2v_batch_{name}", help, registry=self.registry)

    def exposition(self) -> bytes:
        """The body of `GET /metrics` (its type: CONTENT_TYPE)."""
        return generate_latest(self.registry)

    @contextlib.contextmanager
    def request(self, path: str, send: Callable) -> Iterator[Callable]:
        """Counts and times one request: yields the ASGI `send` to answer it through,
        which notes the status it answers with."""
        route = path if path in self._routes else OTHER_ROUTE
        status = [500]  # what uvicorn answers when the app raises before answering

        async def noting(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        start = time.perf_counter()
        try:
            yield noting
        finally:
            self._latency.labels(route).observe(time.perf_counter() - start)
            self._requests.labels(route, str(status[0])).inc()

    def served(self, records: int, bad: bool) -> None:
        """A worker answered a request of `records` records; `bad`: one of them was bad,
        so the request fails with none served."""
        self._mini_batches.inc()
        if not bad:
            self._records.inc(records)

    def recovered(self, restarted: bool, retried: bool) -> None:
        self._restarts.inc(restarted)
        self._retries.inc(retried)

    def loaded(self, seconds: float) -> None:
        self._load_seconds.set(seconds)
