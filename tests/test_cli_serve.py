"""The `serve` command: SageMaker's variables as defaults, usage errors (exit 2) naming
the variable a bad value came from, and library errors in one line (exit 1)."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import REPO

from o2v_batch.cli import main
from o2v_batch.config import ServeConfig
from o2v_batch.errors import ConfigError
from o2v_batch.serve import server

MODEL = str(REPO / "examples" / "model")
SAGEMAKER_VARIABLES = (
    "SAGEMAKER_BIND_TO_PORT",
    "SAGEMAKER_MAX_PAYLOAD_IN_MB",
    "INFERENCE_PREFERRED_MODE",
)


@pytest.fixture
def configs(monkeypatch):
    """The ServeConfig each invocation would serve with (nothing is started)."""
    for name in SAGEMAKER_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    taken = []
    # The command imports serve() when it runs: the module attribute is what it finds.
    monkeypatch.setattr(server, "serve", taken.append)
    return taken


def test_the_defaults_are_the_sagemaker_containers(configs):
    result = CliRunner().invoke(main, ["serve"])
    assert result.exit_code == 0, result.output
    (config,) = configs
    assert (config.model, config.host, config.port) == ("/opt/ml/model", "0.0.0.0", 8080)
    assert (config.max_payload, config.mode) == (6, "auto")


def test_sagemakers_variables_set_port_payload_and_mode(configs):
    env = {
        "SAGEMAKER_BIND_TO_PORT": "9090",
        "SAGEMAKER_MAX_PAYLOAD_IN_MB": "20",
        "INFERENCE_PREFERRED_MODE": "embedding",
    }
    assert CliRunner().invoke(main, ["serve", "--model", MODEL], env=env).exit_code == 0
    assert (configs[0].port, configs[0].max_payload, configs[0].mode) == (9090, 20, "embedding")
    options = ["serve", "--port", "7070", "--max-payload", "2", "--mode", "classification"]
    assert CliRunner().invoke(main, options, env=env).exit_code == 0
    assert (configs[1].port, configs[1].max_payload, configs[1].mode) == (7070, 2, "classification")


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("SAGEMAKER_BIND_TO_PORT", "http", "SAGEMAKER_BIND_TO_PORT must be an integer in 0..65535, got 'http'"),
        ("SAGEMAKER_BIND_TO_PORT", "70000", "SAGEMAKER_BIND_TO_PORT must be an integer in 0..65535, got '70000'"),
        ("SAGEMAKER_MAX_PAYLOAD_IN_MB", "0", "SAGEMAKER_MAX_PAYLOAD_IN_MB must be an integer in 1..1048576, got '0'"),
        ("INFERENCE_PREFERRED_MODE", "vectors", "INFERENCE_PREFERRED_MODE must be one of auto, embedding, classification, got 'vectors'"),
    ],
)  # fmt: skip
def test_a_bad_variable_is_a_usage_error_naming_it(configs, name, value, message):
    result = CliRunner().invoke(main, ["serve"], env={name: value})
    assert result.exit_code == 2
    assert f"Error: {message}" in result.output
    assert "Usage: " in result.output
    assert configs == []


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--devices", "gpu"], "--devices: 'gpu' is not cpu, cuda or cuda:N"),
        (["--port", "-1"], "Invalid value for '--port'"),
        (["--max-payload", "0"], "Invalid value for '--max-payload'"),
        (["--max-queued-requests", "-1"], "Invalid value for '--max-queued-requests'"),
    ],
)
def test_bad_options_are_usage_errors(configs, options, message):
    result = CliRunner().invoke(main, ["serve", *options])
    assert result.exit_code == 2
    assert message in result.output


@pytest.mark.parametrize(
    ("value", "megabytes"),
    [("6", 6.0), ("0.05", 0.05), ("6MB", 6.0), ("500KB", 500 / 1024), ("2 mb", 2.0)],
)
def test_max_payload_takes_the_sizes_transform_takes(configs, value, megabytes):
    result = CliRunner().invoke(main, ["serve", "--max-payload", value])
    assert result.exit_code == 0, result.output
    assert configs[0].max_payload == megabytes


def test_max_payload_must_leave_a_cap(configs):
    result = CliRunner().invoke(main, ["serve", "--max-payload", "0"])
    assert (result.exit_code, configs) == (2, [])
    assert result.output.endswith(
        "Error: Invalid value for '--max-payload': '0' is not a size > 0 such as 6, 0.5, "
        "6MB or 500KB\n"
    )
    with pytest.raises(ConfigError, match="--max-payload must be a number of MB > 0, got 0"):
        ServeConfig(max_payload=0)


def test_a_missing_model_fails_in_one_line_before_anything_starts(tmp_path):
    result = CliRunner().invoke(
        main, ["serve", "--model", str(tmp_path / "nowhere"), "--port", "0"]
    )
    assert result.exit_code == 1
    assert result.output.startswith("Error: ") and result.output.count("\n") == 1
    assert str(tmp_path / "nowhere") in result.output


def test_a_port_in_use_fails_in_one_line():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        options = ["serve", "--model", MODEL, "--host", "127.0.0.1", "--port", str(port)]
        result = CliRunner().invoke(main, options)
    assert result.exit_code == 1
    assert result.output == f"Error: cannot listen on 127.0.0.1:{port}: Address already in use\n"


def test_serve_is_a_command_of_the_group_with_help():
    assert "serve" in CliRunner().invoke(main, ["--help"]).output
    result = CliRunner().invoke(main, ["serve", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--port", "--max-payload", "--mode", "--max-queued-requests"):
        assert option in result.output
    assert "$SAGEMAKER_BIND_TO_PORT" in result.output


def test_the_dockerfiles_entry_point_runs_serve():
    """`docker run IMAGE serve` is ENTRYPOINT + ["serve"]: o2v-batch's serve command."""
    text = (REPO / "examples" / "Dockerfile").read_text()
    entrypoint = json.loads(re.search(r"^ENTRYPOINT (.*)$", text, re.M).group(1))
    assert entrypoint == ["o2v-batch"]
    assert json.loads(re.search(r"^CMD (.*)$", text, re.M).group(1)) == ["serve"]
    assert "com.amazonaws.sagemaker.capabilities.accept-bind-to-port=true" in text
    program = shutil.which(entrypoint[0], path=str(Path(sys.executable).parent))
    run = subprocess.run([program, "serve", "--help"], capture_output=True, text=True)
    assert run.returncode == 0 and "SageMaker inference container" in run.stdout


class _Given(Exception):
    """What serve() hands its dispatcher: the workers' specs."""


def _dispatcher(specs, *args, **kwargs):
    raise _Given(specs)


def test_precision_reaches_the_workers(configs, monkeypatch):
    assert CliRunner().invoke(main, ["serve", "--precision", "bf16"]).exit_code == 0
    (config,) = configs
    assert config.precision == "bf16"
    monkeypatch.undo()  # the real serve(), which stops once it has the workers' specs
    monkeypatch.setattr(server, "Dispatcher", _dispatcher)
    config = replace(config, model=MODEL, host="127.0.0.1", port=0, devices="cpu", workers=1)
    with pytest.raises(_Given) as given:
        server.serve(config)
    [[spec]] = given.value.args
    assert spec.options.precision == "bf16"
    with pytest.raises(
        ConfigError, match="--precision must be one of fp32, tf32, bf16, fp16; got 'fp8'"
    ):
        replace(config, precision="fp8")


def test_transform_and_serve_share_the_worker_options():
    def option_help(command: str) -> dict[str, str]:
        text = CliRunner().invoke(main, [command, "--help"], terminal_width=200).output
        return {
            name: " ".join(line.split())
            for line in text.splitlines()
            for name in ("--devices", "--precision", "--workers")
            if line.strip().startswith(name)
        }

    assert option_help("transform") == option_help("serve")
    assert len(option_help("serve")) == 3
