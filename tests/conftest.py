"""Shared fixtures: the real S3 server (SeaweedFS on loopback), started once per session."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Before anything imports torch: spinning OpenMP threads crawl on a busy 2-core machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """Tests run tiny models in this process beside worker processes: one thread each."""
    import torch

    torch.set_num_threads(1)


def load_script(name: str):
    """scripts/<name>.py as a module, registered under its name (dataclasses look
    their module up by name); loaded once."""
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_local_s3():
    return load_script("local_s3")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory, request):
    """A running LocalS3; os.environ points boto3 at it for the whole session."""
    local_s3 = load_local_s3()
    server = local_s3.LocalS3(tmp_path_factory.mktemp("s3"))
    # The data is thrown away, so a short grace period before SIGKILL is enough.
    request.addfinalizer(lambda: server.stop(timeout=2))
    server.start()  # raises with the server log's tail if it cannot start
    names = [*server.env(), *local_s3.OVERRIDDEN_ENV]
    saved = {name: os.environ.get(name) for name in names}
    for name in local_s3.OVERRIDDEN_ENV:
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
