"""The transform job's configuration: each invalid setting is a ConfigError in the
option's own words."""

from __future__ import annotations

import pytest

from o2v_batch.config import TransformConfig, preferred_mode
from o2v_batch.engines.shard import serving_options
from o2v_batch.errors import ConfigError

SUPPORTED_FILTERS = "(supported: $, .name, ['a','b'], [i], [i:j], *, [*])"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_payload": -1.0}, "--max-payload must be a number of MB >= 0 (0 = no cap), got -1.0"),
        (
            {"max_payload": float("nan")},
            "--max-payload must be a number of MB >= 0 (0 = no cap), got nan",
        ),
        ({"resume": True, "overwrite": True}, "--resume and --overwrite exclude each other"),
        ({"num_shards": 2, "shard_index": 2}, "--shard-index must be in 0..1, got 2"),
        ({"shard_index": -1}, "--shard-index must be in 0..0, got -1"),
        (
            {"input_filter": "in0"},
            f"--input-filter: bad filter 'in0': it must start with '$' {SUPPORTED_FILTERS}",
        ),
        (
            {"output_filter": "$.x["},
            f"--output-filter: bad filter '$.x[': cannot read '[' at position 3 {SUPPORTED_FILTERS}",
        ),
        ({"precision": "fp8"}, "--precision must be one of fp32, tf32, bf16, fp16; got 'fp8'"),
    ],
)
def test_invalid_settings(options: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TransformConfig(input="in/", output="out/", model="model/", **options)
    assert str(caught.value) == message


def test_defaults_are_valid() -> None:
    config = TransformConfig(input="in/", output="out/", model="model/")
    assert (config.max_payload, config.shard_index, config.num_shards) == (6.0, 0, 1)


@pytest.mark.parametrize(
    ("devices", "message"),
    [
        ("gpu", "--devices: 'gpu' is not cpu, cuda or cuda:N"),
        ("cuda:0,tpu", "--devices: 'tpu' is not cpu, cuda or cuda:N"),
        ("cuda:1,cuda:1", "--devices: 'cuda:1,cuda:1' names a device twice"),
        (" , ", "--devices: ' , ' is not auto, cpu, cuda or cuda:N"),
    ],
)
def test_devices_are_spelled_right_before_any_work(devices: str, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        TransformConfig(input="in/", output="out/", model="model/", devices=devices)
    assert str(caught.value) == message


@pytest.mark.parametrize("devices", ["auto", "cpu", "cuda", "CUDA:0", "cuda:0,cuda:3"])
def test_device_names_need_no_gpu_to_be_valid(devices: str) -> None:
    assert TransformConfig(input="in/", output="out/", model="model/", devices=devices)


@pytest.mark.parametrize(
    ("value", "mode"),
    [
        ("", "auto"),
        ("auto", "auto"),
        (" Embedding ", "embedding"),
        ("classification", "classification"),
    ],
)
def test_inference_preferred_mode(value: str, mode: str) -> None:
    assert preferred_mode({"INFERENCE_PREFERRED_MODE": value}) == mode
    assert preferred_mode({}) == "auto"


def test_a_bad_inference_preferred_mode_names_the_variable() -> None:
    with pytest.raises(ConfigError) as caught:
        preferred_mode({"INFERENCE_PREFERRED_MODE": "scores"})
    assert str(caught.value) == (
        "INFERENCE_PREFERRED_MODE must be one of auto, embedding, classification, got 'scores'"
    )


def test_precision_reaches_the_workers() -> None:
    config = TransformConfig(input="in/", output="out/", model="model/", precision="bf16")
    assert serving_options(config).precision == "bf16"
    assert serving_options(TransformConfig("in/", "out/", "model/")).precision == "fp32"
