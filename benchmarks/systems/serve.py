"""`o2v-batch serve` on the light model, one server run: requests of each size (records
per request) from SERVE_CLIENTS concurrent clients, each on its own kept-alive
connection; requests/s and p50/p99 latency."""

from __future__ import annotations

import http.client
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np

from benchmarks.measure import TreeMonitor, kill_tree, tail
from benchmarks.paths import LIGHT_MODEL, ROOT
from benchmarks.records import VOCAB, record_lines, zipf_cdf
from benchmarks.rows import Row
from benchmarks.runner import Bench
from benchmarks.systems.o2v_batch import o2v_command

SERVE_SIZES = (1, 100)
SERVE_CLIENTS = 8
SERVE_REQUESTS = {1: 4000, 100: 800}  # per size, all clients together (--quick: a tenth)
SERVE_WARM_UP = 2  # untimed requests per client first: the first forward passes cost more
SERVE_START_S = 120.0


def run(bench: Bench, quick: bool) -> list[Row]:
    """Requests/s and p50/p99 latency of `o2v-batch serve` for each request size."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [*o2v_command(), "serve", "--model", str(LIGHT_MODEL), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *(["--devices", "cpu"] if bench.cuda else [])]
    log = bench.folder("logs") / "serve.log"
    rng, cdf = np.random.default_rng(99), zipf_cdf(VOCAB)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=bench.env, cwd=ROOT)
    try:
        deadline = time.monotonic() + SERVE_START_S
        while _ping(port) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                return [Row("o2v-batch serve", "serve", error=f"did not start: {tail(log)}")]
            time.sleep(0.1)
        rows = []
        for size in SERVE_SIZES:
            count = SERVE_REQUESTS[size] // (10 if quick else 1)
            lines = record_lines(rng, 50 * size, ("in0",), cdf).splitlines(keepends=True)
            bodies = [b"".join(lines[i : i + size]) for i in range(0, len(lines), size)]
            print(f"  serve: {count:,} requests of {size} records ...", end="", file=sys.stderr)
            rows.append(_serve_row(proc.pid, port, bodies, count, size, shlex.join(cmd)))
            print(f" {rows[-1].extra.get('requests_per_s', 0):,.0f} requests/s", file=sys.stderr)
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()


def _ping(port: int) -> int:
    """The status /ping answers; 0 while nothing listens."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


class _Clients:
    """SERVE_CLIENTS threads sending `per_client` timed requests each, after
    SERVE_WARM_UP untimed ones; they start timing together, with the caller."""

    def __init__(self, port: int, bodies: list[bytes], per_client: int, size: int) -> None:
        self.port, self.bodies, self.per_client, self.size = port, bodies, per_client, size
        self.latencies: list[float] = []
        self.failures: list[str] = []
        self.start_line = threading.Barrier(SERVE_CLIENTS + 1)
        self.threads = [
            threading.Thread(target=self._client, args=(k,)) for k in range(SERVE_CLIENTS)
        ]

    def _client(self, k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        headers = {"Content-Type": "application/jsonlines"}
        mine = []
        for j in range(SERVE_WARM_UP + self.per_client):
            if j == SERVE_WARM_UP:
                self.start_line.wait()
            sent = time.perf_counter()
            body = self.bodies[(k + j) % len(self.bodies)]
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or answer.count(b"\n") != self.size:
                self.failures.append(f"{response.status}: {answer[:200]!r}")
            if j >= SERVE_WARM_UP:
                mine.append(time.perf_counter() - sent)
        connection.close()
        self.latencies.extend(mine)


def _serve_row(pid: int, port: int, bodies: list[bytes], count: int, size: int, cmd: str) -> Row:
    """SERVE_CLIENTS threads send `count` requests in all; every answer must be a 200."""
    clients = _Clients(port, bodies, count // SERVE_CLIENTS, size)
    for t in clients.threads:
        t.start()
    clients.start_line.wait()
    monitor = TreeMonitor(pid)
    monitor.start()
    started = time.perf_counter()
    for t in clients.threads:
        t.join()
    seconds = time.perf_counter() - started
    monitor.done.set()
    monitor.join()
    requests = clients.per_client * SERVE_CLIENTS
    row = Row(f"o2v-batch serve ({SERVE_CLIENTS} clients)", f"{size}-record requests", command=cmd)
    row.records = row.records_out = requests * size
    row.seconds, row.records_per_s = seconds, requests * size / seconds
    row.peak_rss_mb = monitor.peak / 2**20
    row.others_cores = max(0.0, monitor.others) / seconds
    p50, p99 = np.percentile(np.array(clients.latencies) * 1000, [50, 99])
    row.extra.update(
        requests=requests,
        clients=SERVE_CLIENTS,
        requests_per_s=requests / seconds,
        p50_ms=float(p50),
        p99_ms=float(p99),
    )
    if clients.failures:
        row.error = f"{len(clients.failures)} requests failed, first: {clients.failures[0]}"
    return row


def serve_notes(rows: list[Row]) -> list[str]:
    """Requests/s and latency of each serve row."""
    return [
        f"- {r.workload}, {r.extra['clients']} clients: {r.extra['requests_per_s']:,.0f} "
        f"requests/s ({r.records_per_s:,.0f} records/s), p50 {r.extra['p50_ms']:.1f} ms, "
        f"p99 {r.extra['p99_ms']:.1f} ms"
        for r in rows
        if r.system.startswith("o2v-batch serve") and r.error is None
    ]
