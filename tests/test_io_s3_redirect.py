"""An S3 endpoint answering with a redirect that names no region (a web server or
proxy at AWS_ENDPOINT_URL, say): one line naming the endpoint and the redirect."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from o2v_batch.cli import main

EXAMPLE_MODEL = Path(__file__).resolve().parents[1] / "examples" / "model"
SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"


def redirecting_server(status: int, location: str | None) -> http.server.ThreadingHTTPServer:
    class Redirect(http.server.BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.send_response(status)
            if location:
                self.send_header("Location", location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    return http.server.ThreadingHTTPServer(("127.0.0.1", 0), Redirect)


@pytest.fixture
def endpoint(request) -> Iterator[str]:
    server = redirecting_server(*request.param)
    # Polled often: shutdown() waits for the next poll.
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def transform(replace_servers):
    """transform ENDPOINT ARGS... as the command runs it, against the endpoint. The job
    never gets to serve: its workers start as tests' servers, without torch."""
    replace_servers("fake_servers:Echo")

    def run(endpoint: str, *args: str | Path):
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "AKIAREDIRECTTEST",
            "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        args = ["transform", *map(str, args), "--model", str(EXAMPLE_MODEL)]
        return CliRunner().invoke(main, args, env=env)

    return run


@pytest.mark.parametrize(
    ("endpoint", "redirect"),
    [
        ((301, None), "301 with no Location"),
        (
            (301, "https://elsewhere/b/in/?X-Amz-Signature=0123abcd"),
            "301 to https://elsewhere/b/in/?<redacted>",
        ),
        ((307, "http://other:9000/"), "307 to http://other:9000/"),
    ],
    indirect=["endpoint"],
)
def test_a_redirect_naming_no_region_is_one_line_while_listing(
    tmp_path, endpoint, redirect, transform
):
    done = transform(endpoint, "s3://b/in/", tmp_path / "out")

    assert done.exit_code == 1
    assert done.stderr == (
        f"Error: the S3 endpoint {endpoint} answered with a redirect that an S3 client "
        f"cannot follow (check AWS_ENDPOINT_URL): {redirect}\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("endpoint", [(301, None)], indirect=True)
def test_a_redirect_naming_no_region_is_one_line_when_writing(tmp_path, endpoint, transform):
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"in0": [1, 2, 3]}\n')

    done = transform(endpoint, tmp_path / "in", "s3://b/out/")

    assert done.exit_code == 1
    assert done.stderr.splitlines() == [
        f"Error: the S3 endpoint {endpoint} answered with a redirect that an S3 client "
        "cannot follow (check AWS_ENDPOINT_URL): 301 with no Location"
    ]
    assert SECRET not in done.stderr
