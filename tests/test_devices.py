"""Device strings: parsed in one place for transform, train and the workers."""

from __future__ import annotations

import pytest

from o2v_batch.devices import check_devices, parse_device, parse_devices, worker_device
from o2v_batch.errors import ConfigError, O2VError


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

    monkeypatch.setattr("o2v_batch.devices.visible_gpus", no_gpu_lookup)
    for check in (check_devices, parse_devices):
        with pytest.raises(ConfigError) as caught:
            check(devices)
        assert str(caught.value) == message
    check_devices("cuda:7,cuda:2")
