"""`serve`'s limits on clients as options: --body-timeout and --max-connections, their
defaults, what reaches the server, and bad values as usage errors (exit 2)."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from o2v_batch.cli import main
from o2v_batch.config import ServeConfig
from o2v_batch.errors import ConfigError
from o2v_batch.serve import server


@pytest.fixture
def configs(monkeypatch):
    """The ServeConfig each invocation would serve with (nothing is started)."""
    taken = []
    monkeypatch.setattr(server, "serve", taken.append)
    return taken


def test_the_defaults_and_given_values_reach_the_config(configs):
    assert CliRunner().invoke(main, ["serve"]).exit_code == 0
    options = ["serve", "--body-timeout", "2.5", "--max-connections", "9"]
    assert CliRunner().invoke(main, options).exit_code == 0
    assert [(c.body_timeout, c.max_connections) for c in configs] == [(60.0, 256), (2.5, 9)]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--body-timeout", "0"], "Invalid value for '--body-timeout': 0.0 is not in the range x>0."),
        (["--max-connections", "0"], "Invalid value for '--max-connections': 0 is not in the range x>=1."),
    ],
)  # fmt: skip
def test_bad_values_are_usage_errors(configs, options, message):
    result = CliRunner().invoke(main, ["serve", *options])
    assert (result.exit_code, configs) == (2, [])
    assert result.output.endswith(f"Error: {message}\n")


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("body_timeout", 0, "--body-timeout must be positive, got 0"),
        ("body_timeout", -1.5, "--body-timeout must be positive, got -1.5"),
        ("max_connections", 0, "--max-connections must be at least 1, got 0"),
    ],
)
def test_the_library_refuses_them_too(field, value, message):
    with pytest.raises(ConfigError) as caught:
        ServeConfig(**{field: value})
    assert str(caught.value) == message
