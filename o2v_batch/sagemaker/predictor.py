"""A Predictor shaped like the SDK's, speaking HTTP to `o2v-batch serve`, and the
local endpoint that `deploy()` starts: a `serve` process on a free loopback port."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import weakref
from typing import Any
from urllib.parse import urlsplit

from o2v_batch.errors import InvocationError, O2VError
from o2v_batch.sagemaker.jobs import devices_for, ignore
from o2v_batch.sagemaker.serializers import JSONDeserializer, JSONSerializer

# How long deploy() waits for the model to load before it gives up.
START_TIMEOUT_S = 120.0
# How long delete_endpoint() lets the server finish its requests before killing it.
STOP_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 600.0  # as SageMaker's invocation timeout


# The SDK's arguments that only mean something on AWS: accepted and ignored.
AWS_ONLY = ("sagemaker_session", "component_name")
PREDICT_AWS_ONLY = (
    "target_model",
    "target_variant",
    "inference_id",
    "custom_attributes",
    "component_name",
)


class Predictor:
    """Sends `predict(data)` to an endpoint: the serializer makes the request body and
    its content type, the deserializer reads the response (any objects with the SDK's
    serializer and deserializer shapes)."""

    def __init__(
        self,
        endpoint_name: str,
        sagemaker_session: Any = None,
        serializer: Any = None,
        deserializer: Any = None,
        **kwargs: Any,
    ) -> None:
        ignore(Predictor.__init__, AWS_ONLY, sagemaker_session=sagemaker_session, **kwargs)
        self.endpoint_name = endpoint_name  # the endpoint's URL: http://127.0.0.1:PORT
        self.serializer = serializer or JSONSerializer()
        self.deserializer = deserializer or JSONDeserializer()
        self._endpoint: _LocalEndpoint | None = None

    @property
    def content_type(self) -> str:
        return self.serializer.CONTENT_TYPE

    @property
    def accept(self) -> str:
        accept = self.deserializer.ACCEPT
        return accept if isinstance(accept, str) else ", ".join(accept)

    def predict(self, data: Any, initial_args: dict | None = None, **kwargs: Any) -> Any:
        """The deserialized response to `data`; InvocationError for an error status.
        `initial_args` may set `ContentType` and `Accept`, as with the SDK."""
        ignore(Predictor.predict, PREDICT_AWS_ONLY, **kwargs)
        args = initial_args or {}
        body = self.serializer.serialize(data)
        if isinstance(body, str):
            body = body.encode("utf-8")
        headers = {
            "Content-Type": args.get("ContentType", self.content_type),
            "Accept": args.get("Accept", self.accept),
        }
        url = urlsplit(self.endpoint_name)
        connection = http.client.HTTPConnection(url.hostname, url.port, timeout=REQUEST_TIMEOUT_S)
        try:
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            if response.status != 200:
                text = response.read().decode("utf-8", "replace").strip()
                raise InvocationError(f"the endpoint answered {response.status}: {text}")
            return self.deserializer.deserialize(response, response.getheader("Content-Type"))
        except OSError as exc:
            raise InvocationError(
                f"cannot reach the endpoint {self.endpoint_name}: {exc}"
            ) from None
        finally:
            connection.close()

    def delete_endpoint(self, delete_endpoint_config: bool = True) -> None:
        """Stops the endpoint deploy() started: it finishes its requests and exits."""
        if self._endpoint is not None:
            self._endpoint.stop()


class _LocalEndpoint:
    """An `o2v-batch serve` process on this machine, and its log file."""

    def __init__(self, model_data: str, instance_type: str, env: dict[str, str]) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tempfile.mkstemp(prefix="o2v-endpoint-", suffix=".log")[1]
        command = [sys.executable, "-m", "o2v_batch", "serve", "--model", model_data]
        command += ["--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--devices", devices_for(instance_type)]
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **env},
            )
        # A notebook or script that ends without delete_endpoint() leaves no server behind.
        self._finalizer = weakref.finalize(self, _stop, self.process, self.log_path)

    def wait_ready(self) -> None:
        """Returns once /ping answers 200; O2VError with the server's last words if it
        exits first or takes too long."""
        deadline = time.monotonic() + START_TIMEOUT_S
        while _ping(self.port) != 200:
            if self.process.poll() is not None:
                reason = self._last_line()
                self._finalizer()
                raise O2VError(f"the endpoint did not start: {reason}")
            if time.monotonic() > deadline:
                reason = self._last_line()
                self._finalizer()
                raise O2VError(
                    f"the endpoint did not answer /ping within {START_TIMEOUT_S:g} s: {reason}"
                )
            time.sleep(0.1)

    def stop(self) -> None:
        self._finalizer()

    def _last_line(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as log:
            lines = [line.strip() for line in log if line.strip()]
        return lines[-1] if lines else f"exit status {self.process.returncode}"


def start_endpoint(
    model_data: str, instance_type: str, env: dict[str, str], serializer: Any, deserializer: Any
) -> Predictor:
    """deploy(): starts `o2v-batch serve` on a free loopback port, waits until the model
    is loaded, and returns a Predictor for it."""
    endpoint = _LocalEndpoint(model_data, instance_type, env)
    endpoint.wait_ready()
    predictor = Predictor(endpoint.url, serializer=serializer, deserializer=deserializer)
    predictor._endpoint = endpoint
    return predictor


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ping(port: int) -> int | None:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _stop(process: subprocess.Popen, log_path: str) -> None:
    """SIGTERM: the server finishes its requests and stops its workers; killed if it
    takes too long. Its log goes with it."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    with contextlib.suppress(OSError):
        os.unlink(log_path)
