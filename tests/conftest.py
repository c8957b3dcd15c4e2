"""Shared fixtures: the real S3 server (SeaweedFS on loopback), started once per session."""

from __future__ import annotations

import os
import tempfile
import uuid
from pathlib import Path

import pytest
from hypothesis import settings

from devservers.local_s3 import OVERRIDDEN_ENV, LocalS3

REPO = Path(__file__).resolve().parents[1]

# Before anything imports torch: spinning OpenMP threads crawl on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


# Hypothesis: each property test's own number of examples in a whole run (`python -m
# pytest`, as CI runs it); a tenth of them in a run that leaves the slow tests out
# (-m "not slow ..."), the quick loop while developing. --hypothesis-profile overrides.
settings.register_profile("quick", max_examples=10)


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None) and "not slow" in (
        config.getoption("markexpr") or ""
    ):
        settings.load_profile("quick")


def examples(n: int) -> int:
    """The examples for a property test that asks for `n` in a whole run: scaled as the
    loaded profile scales Hypothesis's default of 100, and never under 10."""
    return min(n, max(10, n * settings.default.max_examples // 100))


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run tiny models in this process beside worker processes: one thread each."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def replace_servers(monkeypatch):
    """replace_servers("module:function"): every worker this test starts builds that
    server (fake_servers, faulty_servers, slow_servers) instead of the product's."""
    from o2v_batch.execution import worker

    return lambda factory: monkeypatch.setattr(worker, "_replaced_factory", factory)


def replacing_servers(factory: str) -> str:
    """Python code that makes every worker its process starts build `factory`'s server,
    for a test that runs the product in a process of its own."""
    return f"from o2v_batch.execution import worker; worker._replaced_factory = {factory!r}; "


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory, request):
    """A running LocalS3; os.environ points boto3 at it for the whole session."""
    server = LocalS3(tmp_path_factory.mktemp("s3"))
    # The data is thrown away, so a short grace period before SIGKILL is enough.
    request.addfinalizer(lambda: server.stop(timeout=2))
    server.start()  # raises with the server log's tail if it cannot start
    names = [*server.env(), *OVERRIDDEN_ENV]
    saved = {name: os.environ.get(name) for name in names}
    for name in OVERRIDDEN_ENV:
        os.environ.pop(name, None)
    os.environ.update(server.env())
    yield server
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def s3_bucket(s3_server) -> str:
    """A fresh, empty bucket on the session's S3 server."""
    name = f"test-{uuid.uuid4().hex[:16]}"
    s3_server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def model_tmp(tmp_path: Path, monkeypatch) -> Path:
    """The temp folder models are downloaded and extracted under, inside this test's folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
