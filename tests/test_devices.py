"""Device strings: parsed in one place for transform, train and the workers."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from o2v_batch.errors import ConfigError, O2VError
from o2v_batch.model.devices import (
    check_devices,
    parse_device,
    parse_devices,
    visible_gpus,
    worker_device,
)


def test_device_parsing_on_cpu():
    assert parse_devices("cpu") == ["cpu"]
    with pytest.raises(O2VError, match=r"--devices: 'tpu' is not cpu, cuda or cuda:N"):
        parse_devices("tpu")


def test_cuda_devices_are_refused_without_gpus(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert parse_devices("auto") == ["cpu"]
    with pytest.raises(O2VError, match="--devices cuda: no CUDA device is visible"):
        parse_devices("cuda")
    with pytest.raises(
        O2VError, match=r"--devices: cuda:1 is not visible \(0 CUDA devices visible\)"
    ):
        parse_devices("cuda:1")


@pytest.mark.parametrize(("value", "expected"), [("auto", None), ("cpu", "cpu")])
def test_training_device(value, expected):
    assert parse_device(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [("tpu", "'tpu' is not auto, cpu, cuda or cuda:N"), ("cuda:7", "cuda:7 is not available")],
)
def test_training_device_refused(value, message):
    with pytest.raises(O2VError, match=message):
        parse_device(value)


@pytest.mark.parametrize(
    ("visible", "device", "expected_visible"),
    [(None, "cuda:1", "1"), ("4,6", "cuda:1", "6"), ("3", "cuda:0", "3")],
)
def test_a_worker_sees_only_its_own_gpu(monkeypatch, visible, device, expected_visible):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert worker_device(device) == "cuda:0"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == expected_visible


def test_a_cpu_worker_keeps_the_environment(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2")
    assert worker_device("cpu") == "cpu"
    import os

    assert os.environ["CUDA_VISIBLE_DEVICES"] == "2"


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("gpu", "--devices: 'gpu' is not cpu, cuda or cuda:N"),
        ("cuda:x", "--devices: 'cuda:x' is not cpu, cuda or cuda:N"),
        ("cuda:0,cuda:0", "--devices: 'cuda:0,cuda:0' names a device twice"),
        ("", "--devices: '' is not auto, cpu, cuda or cuda:N"),
    ],
)
def test_misspelled_devices_are_config_errors_without_looking_for_gpus(
    monkeypatch, devices, message
):
    def no_gpu_lookup():
        raise AssertionError("a spelling check needs no GPU")

    monkeypatch.setattr("o2v_batch.model.devices.visible_gpus", no_gpu_lookup)
    for check in (check_devices, parse_devices):
        with pytest.raises(ConfigError) as caught:
            check(devices)
        assert str(caught.value) == message
    check_devices("cuda:7,cuda:2")


@pytest.fixture
def driver(tmp_path, monkeypatch):
    """A fake NVIDIA driver view: device nodes in one folder, /proc entries in another."""
    nodes, gpus = tmp_path / "dev", tmp_path / "gpus"
    nodes.mkdir()
    monkeypatch.setattr("o2v_batch.model.devices.DEVICE_NODES", str(nodes))
    monkeypatch.setattr("o2v_batch.model.devices.DRIVER_GPUS", str(gpus))
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    return nodes, gpus


@pytest.mark.parametrize(
    ("node_names", "proc_entries", "visible", "count"),
    [
        ([], [], None, 0),
        (["nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm"], [], None, 2),
        ([], ["0000:17:00.0", "0000:65:00.0", "0000:ca:00.0"], None, 3),  # no nodes of its own
        (["nvidia0", "nvidia1", "nvidia2", "nvidia3"], [], "2,3", 2),
        (["nvidia0", "nvidia1"], [], "1,0,5", 2),  # more listed than there are
        (["nvidia0", "nvidia1"], [], "0,-1,1", 1),  # -1 hides the rest
        (["nvidia0", "nvidia1"], [], "", 0),
        (["nvidia0", "nvidia1"], [], "-1", 0),
        (["nvidia0"], [], "GPU-8f1e3a52-0c6c-4d7e", 1),
    ],
)
def test_gpus_are_counted_from_the_driver_and_cuda_visible_devices(
    driver, monkeypatch, node_names, proc_entries, visible, count
):
    nodes, gpus = driver
    for name in node_names:
        (nodes / name).touch()
    if proc_entries:
        gpus.mkdir()
        for name in proc_entries:
            (gpus / name).mkdir()
    if visible is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus() == count
    expected = [f"cuda:{i}" for i in range(count)] or ["cpu"]
    assert parse_devices("auto") == expected


def test_counting_gpus_never_imports_torch(tmp_path):
    """The parent plans a device process per GPU, and host workers feeding each,
    without loading torch."""
    (tmp_path / "nvidia0").touch()
    (tmp_path / "nvidia1").touch()
    probe = (
        "import sys\n"
        "import o2v_batch.model.devices as d\n"
        f"d.DEVICE_NODES = {str(tmp_path)!r}\n"
        "import o2v_batch.engines.local  # the engine's own imports too\n"
        "from o2v_batch.config import TransformConfig\n"
        "from o2v_batch.execution.planning import plan_workers\n"
        "config = TransformConfig(input='in/', output='out/', model='m/')\n"
        "plan = plan_workers(d.parse_devices(config.devices), config.workers)\n"
        "fed = sorted({device for role, device, _ in plan if role == 'host'})\n"
        "print(plan[:2], fed, 'torch' in sys.modules)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    )
    devices = "[('device', 'cuda:0', 1), ('device', 'cuda:1', 1)]"
    assert done.stdout == f"{devices} ['cuda:0', 'cuda:1'] False\n", done.stderr
