"""`o2v-batch serve` over real sockets on loopback: the container contract, answers equal
to transform's, concurrency, a killed worker, a burst, and SIGTERM with requests in flight."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
import slow_servers
from conftest import REPO, replacing_servers
from helpers import random_records, write_json, write_jsonl
from processes import alive

from o2v_batch.config import TransformConfig
from o2v_batch.execution import segments
from o2v_batch.jobs.transform import transform

# Servers and worker processes, and transform jobs to compare with.
pytestmark = pytest.mark.slow

MODEL = REPO / "examples" / "model"
JSON, JSONLINES = "application/json", "application/jsonlines"
RECORDS = random_records(60, seed=11)  # ids < 60, lengths up to 30: caps of 5,3 truncate
# Answers of these come back through shared memory (over segments.MIN_SHARED_BYTES).
LARGE = random_records(3000, seed=12, pairs=False)
CAPS = "5,3"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def call(
    port: int,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict | None = None,
    connection: http.client.HTTPConnection | None = None,
) -> tuple[int, str, bytes]:
    """(status, content type, body) of one request; on `connection` if given (kept alive)."""
    own = connection is None
    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        if own:
            connection.close()


def invoke(port: int, body: bytes, content_type: str, accept: str | None = None, **kw):
    headers = {"Content-Type": content_type, **({"Accept": accept} if accept else {})}
    return call(port, "POST", "/invocations", body, headers, **kw)


class Served:
    """A server process on a free loopback port, its log in a file."""

    def __init__(self, command: list[str], log: Path, env: dict | None = None) -> None:
        """`command` ends with the port's option: the free port is added after it."""
        self.port = free_port()
        self.log = log
        with open(log, "wb") as out:
            self.process = subprocess.Popen(
                [*command, str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=REPO,
            )

    def wait_ready(self, timeout: float = 120) -> list[int]:
        """The /ping statuses seen until the first 200."""
        seen, deadline = [], time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text()
            try:
                seen.append(call(self.port, "GET", "/ping")[0])
            except OSError:
                time.sleep(0.05)
                continue
            if seen[-1] == 200:
                return seen
            time.sleep(0.05)
        raise AssertionError(f"no 200 from /ping: {self.log.read_text()}")

    def workers(self) -> list[psutil.Process]:
        children = psutil.Process(self.process.pid).children()
        return [p for p in children if "spawn_main" in " ".join(p.cmdline())]

    def terminate(self, timeout: float = 60) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)


def serve_command(*options: str) -> list[str]:
    return [sys.executable, "-m", "o2v_batch", "serve", "--host", "127.0.0.1", *options, "--port"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("requests")
    write_jsonl(folder / "records.jsonl", RECORDS)
    write_json(folder / "records.json", RECORDS)
    bad = [*RECORDS[:3], {"in0": "not ids"}, *RECORDS[3:6]]
    write_jsonl(folder / "bad.jsonl", bad)
    write_jsonl(folder / "large.jsonl", LARGE)
    return folder


@pytest.fixture(scope="module")
def expected(inputs, tmp_path_factory) -> dict:
    """transform's outputs of the same requests, with and without the caps:
    {(file, caps or None): bytes}, and the bad shard's failure reason."""
    found = {}
    for caps in (None, CAPS):
        out = tmp_path_factory.mktemp("transformed")
        seqlens = tuple(int(n) for n in caps.split(",")) if caps else None
        config = TransformConfig(
            input=str(inputs),
            output=str(out),
            model=str(MODEL),
            workers=1,
            infer_max_seqlens=seqlens,
        )
        summary = transform(config, log=lambda line: None)
        for name in ("records.jsonl", "records.json", "large.jsonl"):
            found[name, caps] = (out / f"{name}.out").read_bytes()
        found["bad"] = summary.failed[0]["reason"]
    return found


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("server") / "serve.log"
    served = Served(
        serve_command("--model", str(MODEL), "--workers", "2", "--max-payload", "1"), log
    )
    served.wait_ready()
    workers = served.workers()
    yield served
    # SIGTERM: the server stops its workers and exits 0, leaving no process behind.
    assert served.terminate() == 0, log.read_text()
    assert "o2v-batch: stopped" in log.read_text()
    assert alive(workers) == []


def test_ping_and_execution_parameters(server):
    assert call(server.port, "GET", "/ping")[0] == 200
    status, content_type, body = call(server.port, "GET", "/execution-parameters")
    assert (status, content_type) == (200, JSON)
    assert json.loads(body) == {
        "MaxConcurrentTransforms": 4,  # 2 workers x 2 in flight each
        "BatchStrategy": "MULTI_RECORD",
        "MaxPayloadInMB": 1,
    }


def test_the_start_logs_one_serving_line_and_no_worker_error(server):
    log = server.log.read_text()
    assert log.count(f"o2v-batch: serving {MODEL} on port {server.port}\n") == 1, log
    assert "the worker raised" not in log and "AttributeError" not in log, log


@pytest.mark.parametrize("caps", [None, CAPS])
@pytest.mark.parametrize(("name", "media"), [("records.jsonl", JSONLINES), ("records.json", JSON)])
def test_invocations_answer_with_the_bytes_transform_writes(
    server, inputs, expected, name, media, caps
):
    content_type = f"{media}; infer_max_seqlens={caps}" if caps else media
    status, answered_type, body = invoke(server.port, (inputs / name).read_bytes(), content_type)
    assert (status, answered_type) == (200, media)
    assert body == expected[name, caps]
    if caps:
        assert body != expected[name, None]


def test_large_answers_come_through_shared_memory_as_transform_writes_them(
    server, inputs, expected
):
    """Answers over 64 KB travel in the workers' response segments: more requests than
    the segments, one after another, so each must have been handed back."""
    body = (inputs / "large.jsonl").read_bytes()
    want = expected["large.jsonl", None]
    assert len(want) > segments.MIN_SHARED_BYTES
    for _ in range(12):  # 2 workers x 4 segments each, and more
        assert invoke(server.port, body, JSONLINES) == (200, JSONLINES, want)
    maps = [Path(f"/proc/{worker.pid}/maps").read_text() for worker in server.workers()]
    assert any("memfd:o2v-batch-response" in text for text in maps)


def test_the_accept_header_picks_the_response_format(server, inputs, expected):
    request = (inputs / "records.json").read_bytes()
    status, answered_type, body = invoke(server.port, request, JSON, accept=JSONLINES)
    assert (status, answered_type) == (200, JSONLINES)
    assert body == expected["records.jsonl", None]


def test_a_bad_record_is_a_400_with_transforms_message(server, inputs, expected):
    status, answered_type, body = invoke(
        server.port, (inputs / "bad.jsonl").read_bytes(), JSONLINES
    )
    assert (status, answered_type) == (400, "text/plain; charset=utf-8")
    # transform names the shard first: `<shard>: line 4: ...`
    assert f"{inputs / 'bad.jsonl'}: {body.decode().strip()}" == expected["bad"]
    assert body.decode().startswith("line 4: ")


def test_a_body_over_the_payload_cap_is_a_413(server):
    line = json.dumps({"in0": list(range(1, 50))}).encode() + b"\n"
    body = line * (2**20 // len(line) + 1)
    assert len(body) > 2**20
    status, _, message = invoke(server.port, body, JSONLINES)
    assert (status, message) == (
        413,
        b"the request body is over 1 MB (SAGEMAKER_MAX_PAYLOAD_IN_MB, --max-payload)\n",
    )
    # Without a Content-Length (chunked), the cap holds as the body arrives.
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
    connection.request(
        "POST",
        "/invocations",
        body=chunks,
        headers={"Content-Type": JSONLINES},
        encode_chunked=True,
    )
    assert connection.getresponse().status == 413
    connection.close()
    assert invoke(server.port, line, JSONLINES)[0] == 200


@pytest.mark.parametrize(
    ("method", "path", "headers", "body", "status", "message"),
    [
        ("POST", "/invocations", {"Content-Type": "text/csv"}, b"1,2", 415, "unsupported content type 'text/csv'"),
        ("POST", "/invocations", {"Content-Type": JSON, "Accept": "text/csv"}, b"{}", 406, "unsupported accept type 'text/csv'"),
        ("POST", "/invocations", {"Content-Type": f"{JSON};infer_max_seqlens=0,1"}, b"{}", 400, "infer_max_seqlens must be"),
        ("POST", "/invocations", {"Content-Type": JSON}, b'{"instances": [{"in0": [1]}', 400, "JSON document ends after instances[0]"),
        ("GET", "/invocations", {}, None, 405, "GET is not allowed on /invocations"),
        ("GET", "/models", {}, None, 404, "not found"),
    ],
)  # fmt: skip
def test_refused_requests(server, method, path, headers, body, status, message):
    answered, content_type, text = call(server.port, method, path, body, headers)
    assert (answered, content_type) == (status, "text/plain; charset=utf-8")
    assert text.decode().startswith(message)


def test_an_empty_request_gets_an_empty_answer(server):
    assert invoke(server.port, b"", JSONLINES)[:3] == (200, JSONLINES, b"")
    assert invoke(server.port, b'{"instances": []}', JSON)[2] == b'{"predictions":[]}\n'


def _client_requests(lines: list[bytes], client: int, count: int):
    """Each request of one client: 1 to 3 records, jsonlines or JSON, and the answer
    transform's output gives for them, framed as transform frames it."""
    for j in range(count):
        start, n = (client * 37 + j * 7) % (len(RECORDS) - 3), 1 + j % 3
        records = RECORDS[start : start + n]
        answers = lines[start : start + n]
        if j % 2:
            body = json.dumps({"instances": records}).encode()
            yield body, JSON, b'{"predictions":[' + b",".join(answers) + b"]}\n"
        else:
            body = "".join(json.dumps(r) + "\n" for r in records).encode()
            yield body, JSONLINES, b"".join(a + b"\n" for a in answers)


def same_answers(got: bytes, want: bytes) -> bool:
    """The same responses, numbers equal to float32 rounding: a record's numbers
    depend in the last bits on the records it shares a device batch with."""

    def parsed(body: bytes) -> list:
        text = body.decode()
        if text.startswith('{"predictions"'):
            return json.loads(text)["predictions"]
        return [json.loads(line) for line in text.splitlines()]

    a, b = parsed(got), parsed(want)
    return len(a) == len(b) and all(
        x.keys() == y.keys() and all(np.allclose(x[k], y[k], rtol=1e-5, atol=1e-6) for k in x)
        for x, y in zip(a, b, strict=True)
    )


def _load(server, expected, clients: int, count: int, midway=None) -> list[str]:
    """`clients` threads, `count` requests each on one kept-alive connection; the
    problems seen (wrong status or answers). `midway` runs once half the requests are done."""
    lines = expected["records.jsonl", None].splitlines()
    problems, done = [], [0]
    lock = threading.Lock()

    def client(i: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        for body, media, answer in _client_requests(lines, i, count):
            status, answered_type, got = invoke(server.port, body, media, connection=connection)
            with lock:
                done[0] += 1
                if (status, answered_type) != (200, media) or not same_answers(got, answer):
                    problems.append(f"client {i}: {status} {got[:200]!r}")
        connection.close()

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    if midway is not None:
        while done[0] < clients * count // 2:
            time.sleep(0.01)
        midway()
    for t in threads:
        t.join()
    assert done[0] == clients * count
    return problems


def test_16_clients_200_requests_each_all_answered_correctly(server, expected):
    assert _load(server, expected, clients=16, count=200) == []


def test_a_worker_killed_under_load_is_replaced_and_every_request_answered(server, expected):
    before = server.workers()
    assert len(before) == 2
    victim = before[0]
    assert _load(server, expected, clients=4, count=100, midway=victim.kill) == []
    victim.wait(10)
    after = server.workers()
    assert len(after) == 2 and victim.pid not in [p.pid for p in after]
    # One line on stderr, as in transform: the worker lost (found dead or its pipe
    # closed, whichever the server saw first) and what was done about it.
    logged = [
        line for line in server.log.read_text().splitlines() if f"worker {victim.pid} " in line
    ]
    assert len(logged) == 1 and "started a new worker" in logged[0]
    assert call(server.port, "GET", "/ping")[0] == 200


def test_burst_gets_503_and_sigterm_answers_every_request_in_flight_then_exits(tmp_path, expected):
    """One slow worker, 2 requests in flight and 2 queued: a fifth gets 503; SIGTERM
    then stops accepting, answers the four and exits, its workers with it."""
    code = replacing_servers("slow_servers:Slow") + (
        "import sys; from o2v_batch.config import ServeConfig; "
        "from o2v_batch.serve.server import serve; "
        "serve(ServeConfig(model=sys.argv[1], host='127.0.0.1', port=int(sys.argv[3]), "
        "workers=1, max_concurrent_transforms=2, max_queued_requests=2))"
    )
    tests = str(Path(slow_servers.__file__).parent)
    env = {"PYTHONPATH": os.pathsep.join([tests, os.environ.get("PYTHONPATH", "")])}
    served = Served([sys.executable, "-c", code, str(MODEL), "--port"], tmp_path / "log", env)
    seen = served.wait_ready()
    assert 503 in seen  # /ping said "loading" before the model was loaded
    workers = served.workers()
    lines = expected["records.jsonl", None].splitlines()
    answers = [None] * 4

    def send(i: int) -> None:
        body = json.dumps(RECORDS[i]).encode() + b"\n"
        answers[i] = invoke(served.port, body, JSONLINES)

    threads = [threading.Thread(target=send, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)  # all four sent: the worker takes SERVE_S for each, one after another
    status, _, message = invoke(served.port, b'{"in0": [1]}\n', JSONLINES)
    assert (status, message) == (503, b"the server is busy: 4 requests are waiting; retry later\n")
    served.process.send_signal(signal.SIGTERM)
    refused = False
    while not refused and served.process.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", served.port), timeout=1).close()
        except ConnectionRefusedError:
            refused = served.process.poll() is None and any(a is None for a in answers)
        time.sleep(0.05)
    assert refused, "new connections were still accepted while requests were in flight"
    for t in threads:
        t.join(60)
    for i, (status, answered_type, body) in enumerate(answers):
        assert (status, answered_type) == (200, JSONLINES)
        assert same_answers(body, lines[i] + b"\n")
    assert served.process.wait(30) == 0, served.log.read_text()
    assert alive(workers) == []
