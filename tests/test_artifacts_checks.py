"""Checking a model without torch: the same messages as loading it, and NaN or
infinity in its weights refused, naming the tensor, with flat memory."""

from __future__ import annotations

import itertools
import math
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import (
    rewrite_hyperparameters,
    saved,
)

from o2v_batch.api import load_model
from o2v_batch.artifacts import check_model, load_network, tensors
from o2v_batch.errors import ModelFormatError


def test_check_model_needs_no_torch(tmp_path: Path) -> None:
    saved(tmp_path, enc1_network="bilstm")
    code = (
        "import sys; from o2v_batch.artifacts import check_model; "
        f"hp = check_model({str(tmp_path)!r}); "
        "print(hp.enc1_network, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bilstm", "False"]


@pytest.mark.parametrize("keep", [0.5, 0.99, 8 / 100_000])
def test_check_model_finds_a_truncated_file(tmp_path: Path, keep: float) -> None:
    saved(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: max(int(len(data) * keep), 1)])
    with pytest.raises(ModelFormatError, match=rf"^{path} is not a readable safetensors file: "):
        check_model(tmp_path)


def test_check_model_says_what_load_network_says(tmp_path: Path) -> None:
    saved(tmp_path, enc0_vocab_size=60)
    rewrite_hyperparameters(tmp_path, enc0_vocab_size=50, mlp_dim=6)
    with pytest.raises(ModelFormatError) as checked:
        check_model(tmp_path)
    with pytest.raises(ModelFormatError) as loaded:
        load_network(tmp_path)
    assert str(checked.value) == str(loaded.value)
    assert str(checked.value).startswith(
        "model.safetensors does not match hyperparameters.json: "
        "enc0.embedding.weight has shape (60, 8), expected (50, 8); "
    )


def test_check_model_of_the_encoders_only_ignores_the_rest(tmp_path: Path) -> None:
    saved(tmp_path)
    rewrite_hyperparameters(tmp_path, mlp_dim=6)
    assert check_model(tmp_path, encoders_only=True).mlp_dim == 6
    with pytest.raises(ModelFormatError, match=r"mlp\.layers\.0\.weight has shape \(8, 32\)"):
        check_model(tmp_path)


# ---------------------------------------------------------------- NaN and infinity


def poison(folder: Path, name: str, *positions: int, dtype: torch.dtype = torch.float32) -> None:
    """NaN, infinity and minus infinity in turn at these flat positions of a tensor."""
    tensors = load_file(folder / "model.safetensors")
    flat = tensors[name].view(-1)
    for position, value in zip(positions, itertools.cycle([math.nan, math.inf, -math.inf])):
        flat[position] = value
    save_file({n: t.to(dtype) for n, t in tensors.items()}, folder / "model.safetensors")


def not_finite(folder: Path, name: str, count: int) -> str:
    values = "value" if count == 1 else "values"
    return (
        f"{folder / 'model.safetensors'}: tensor {name} holds NaN or infinity "
        f"({count} {values}): the model cannot give finite outputs"
    )


def test_nan_or_infinity_in_the_weights_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    saved(tmp_path)
    poison(tmp_path, "enc0.embedding.weight", 0, 17, 399)
    expected = not_finite(tmp_path, "enc0.embedding.weight", 3)
    for load in (check_model, load_network, load_model):
        with pytest.raises(ModelFormatError) as caught:
            load(str(tmp_path))
        assert str(caught.value) == expected, load


def test_a_bfloat16_file_is_searched_once_loaded(tmp_path: Path) -> None:
    saved(tmp_path)
    poison(tmp_path, "mlp.layers.1.weight", 5, 6, dtype=torch.bfloat16)
    with pytest.raises(ModelFormatError) as caught:
        load_network(tmp_path)
    assert str(caught.value) == not_finite(tmp_path, "mlp.layers.1.weight", 2)


def test_only_the_tensors_that_will_be_loaded_are_searched(tmp_path: Path) -> None:
    saved(tmp_path)
    poison(tmp_path, "head.weight", 3)
    assert check_model(tmp_path, encoders_only=True).enc_dim == 8
    assert load_model(str(tmp_path), mode="embedding").embed([[1, 2, 3]]).shape == (1, 8)
    with pytest.raises(ModelFormatError) as caught:
        check_model(tmp_path)
    assert str(caught.value) == not_finite(tmp_path, "head.weight", 1)


@pytest.mark.parametrize("scan_bytes", [64, 96, 4 << 20])
def test_large_tensors_are_searched_a_few_rows_at_a_time(tmp_path, monkeypatch, scan_bytes):
    # 64 bytes are two rows of eight float32 numbers, 96 three: the last slice is short.
    monkeypatch.setattr(tensors, "SCAN_BYTES", scan_bytes)
    saved(tmp_path)
    poison(tmp_path, "enc0.embedding.weight", 0, 8 * 49 + 7, 8 * 25)
    expected = not_finite(tmp_path, "enc0.embedding.weight", 3)
    for load in (check_model, load_network):
        with pytest.raises(ModelFormatError) as caught:
            load(tmp_path)
        assert str(caught.value) == expected


def test_searching_a_large_embedding_keeps_memory_flat(tmp_path: Path) -> None:
    saved(tmp_path, enc0_vocab_size=400_000)  # two 12.8 MB embeddings
    poison(tmp_path, "enc1.embedding.weight", 8 * 400_000 - 1)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError) as caught:
            check_model(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == not_finite(tmp_path, "enc1.embedding.weight", 1)
    assert peak < tensors.SCAN_BYTES * 2, peak


def test_transform_refuses_nan_weights_before_reading_input(tmp_path: Path) -> None:
    saved(tmp_path / "model")
    poison(tmp_path / "model", "enc1.convs.0.bias", 1)
    out = tmp_path / "out"
    missing = tmp_path / "never-read"  # a missing INPUT would say so if it were read first
    command = [sys.executable, "-m", "o2v_batch", "transform", missing, out, "--model"]
    done = subprocess.run(
        [*map(str, command), str(tmp_path / "model")], capture_output=True, text=True
    )
    expected = not_finite(tmp_path / "model", "enc1.convs.0.bias", 1)
    assert (done.returncode, done.stderr, done.stdout) == (1, f"Error: {expected}\n", "")
    assert not out.exists()
