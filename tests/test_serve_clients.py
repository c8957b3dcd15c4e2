"""`o2v-batch serve` under idle, slow and refused clients, over raw sockets on loopback:
refusals the headers decide come before the body, a body that does not arrive in time
is a 408, bodies still arriving take no place in the queue, connections are capped, and
SIGTERM does not wait for stalled bodies."""

from __future__ import annotations

import http.client
import signal
import socket
import threading
import time

import pytest
from test_serve import MODEL, Served, call, invoke, serve_command

pytestmark = pytest.mark.slow

JSON, JSONLINES = "application/json", "application/jsonlines"
RECORD = b'{"in0": [1, 2, 3]}\n'
BODY_TIMEOUT = "1"
MAX_CONNECTIONS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One worker, one request in flight and two queued: 3 places in all."""
    log = tmp_path_factory.mktemp("server") / "serve.log"
    served = Served(
        serve_command(
            "--model", str(MODEL), "--workers", "1", "--max-concurrent-transforms", "1",
            "--max-queued-requests", "2", "--max-payload", "1",
            "--body-timeout", BODY_TIMEOUT, "--max-connections", str(MAX_CONNECTIONS),
        ),
        log,
    )  # fmt: skip
    served.wait_ready()
    yield served
    assert served.terminate() == 0, log.read_text()


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=15)


def _head(content_type: str = JSONLINES, length: int | None = 1000, **headers: str) -> bytes:
    """A POST /invocations request's head: a Content-Length of `length`, or chunked."""
    lines = ["POST /invocations HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    lines += [f"{name.replace('_', '-')}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _response(sock: socket.socket) -> http.client.HTTPResponse:
    response = http.client.HTTPResponse(sock)
    response.begin()
    return response


def _closed(sock: socket.socket) -> bool:
    """The server closed the connection: what is left to read ends at once."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize(
    ("head", "status", "message"),
    [
        (_head("text/csv"), 415, "unsupported content type 'text/csv': use application/jsonlines or application/json"),
        (_head(JSON, Accept="text/csv"), 406, "unsupported accept type 'text/csv': use application/jsonlines or application/json"),
        (_head(f"{JSON};infer_max_seqlens=0,1"), 400, "infer_max_seqlens must be two integers A,B (in0, in1), each in 1..5000; got '0,1'"),
        (_head(length=2**20 + 1), 413, "the request body is over 1 MB (SAGEMAKER_MAX_PAYLOAD_IN_MB, --max-payload)"),
    ],
)  # fmt: skip
def test_refusals_the_headers_decide_come_before_the_body(server, head, status, message):
    with _connect(server.port) as sock:
        sock.sendall(head)  # and no body
        response = _response(sock)
        # The refusal, not the 408 of a body that never came.
        assert (response.status, response.read()) == (status, f"{message}\n".encode())


def test_after_an_early_refusal_the_body_sent_anyway_leaves_the_connection_usable(server):
    body = b" " * 1000
    alone = invoke(server.port, RECORD, JSONLINES)
    assert alone[:2] == (200, JSONLINES)
    with _connect(server.port) as sock:
        sock.sendall(_head("text/csv", len(body)))
        refused = _response(sock)
        assert (refused.status, refused.getheader("Connection")) == (415, None)
        refused.read()
        sock.sendall(body + _head(JSONLINES, len(RECORD)) + RECORD)
        response = _response(sock)
        assert (response.status, response.getheader("Content-Type")) == (200, JSONLINES)
        assert response.read() == alone[2]


def _trickle(sock: socket.socket, head: bytes, piece: bytes, stop: threading.Event) -> None:
    """Sends `head`, then `piece` every 0.2 s until `stop` or the server closes."""
    sock.sendall(head)
    while not stop.wait(0.2):
        try:
            sock.sendall(piece)
        except OSError:
            return


@pytest.mark.parametrize(
    ("head", "piece"),
    [
        (_head(length=10**6), b" "),  # a Content-Length body that trickles in
        (_head(length=None), b"1\r\n \r\n"),  # a chunked body that never ends
    ],
    ids=["content-length", "chunked"],
)
def test_a_body_that_does_not_arrive_in_time_is_a_408_and_the_connection_closes(
    server, head, piece
):
    stop = threading.Event()
    with _connect(server.port) as sock:
        sender = threading.Thread(target=_trickle, args=(sock, head, piece, stop))
        started = time.monotonic()
        sender.start()
        try:
            response = _response(sock)
            waited = time.monotonic() - started
            assert (response.status, response.getheader("Connection")) == (408, "close")
            assert (
                response.read()
                == (
                    f"the request body did not arrive within {BODY_TIMEOUT} s (--body-timeout)\n"
                ).encode()
            )
            # The whole body's time, not the time between its pieces (0.2 s): a body
            # trickling in forever would keep the connection open (the socket's own
            # time-out would fail the test).
            assert waited >= float(BODY_TIMEOUT)
            assert _closed(sock)
        finally:
            stop.set()
            sender.join()
    assert invoke(server.port, RECORD, JSONLINES)[0] == 200


def test_connections_over_the_cap_get_503_until_some_close(server):
    idle = [_connect(server.port) for _ in range(MAX_CONNECTIONS - 1)]
    try:
        time.sleep(0.5)  # all accepted: a request on one more connection is within the cap
        assert call(server.port, "GET", "/ping")[0] == 200
        idle.append(_connect(server.port))
        deadline = time.monotonic() + 10
        while call(server.port, "GET", "/ping")[::2] != (503, b"Service Unavailable"):
            assert time.monotonic() < deadline, "no 503 over the connection cap"
            time.sleep(0.05)
    finally:
        for sock in idle:
            sock.close()
    deadline = time.monotonic() + 10
    while call(server.port, "GET", "/ping")[0] != 200:
        assert time.monotonic() < deadline, "still 503 once the idle connections closed"
        time.sleep(0.05)


def test_stalled_bodies_take_no_place_in_the_queue_and_sigterm_does_not_wait_for_them(
    tmp_path,
):
    """Three places (one in flight, two queued), ten bodies that stall after one byte:
    a whole request still gets its answer, and SIGTERM answers the stalled ones at once
    and exits in a moment, with no traceback."""
    options = ["--model", str(MODEL), "--workers", "1", "--max-concurrent-transforms", "1"]
    served = Served(serve_command(*options, "--max-queued-requests", "2"), tmp_path / "log")
    served.wait_ready()
    stalled = [_connect(served.port) for _ in range(10)]
    for sock in stalled:
        sock.sendall(_head(length=len(RECORD)) + RECORD[:1])
    time.sleep(0.5)  # each is reading its body by now
    status, answered_type, _ = invoke(served.port, RECORD, JSONLINES)
    assert (status, answered_type) == (200, JSONLINES)
    served.process.send_signal(signal.SIGTERM)
    for sock in stalled:
        response = _response(sock)
        assert (response.status, response.read()) == (503, b"the server is stopping\n")
        sock.close()
    # Well before the stalled bodies' time-out (60 s by default).
    assert served.process.wait(10) == 0, served.log.read_text()
    log = served.log.read_text()
    assert "Traceback" not in log and "CancelledError" not in log, log
