"""A model folder's network: its weights file checked without torch (the tensors its
hyperparameters need, by name and shape, and no NaN or infinity), saved and loaded.
Saving and loading import torch when they run."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from o2v_batch import io
from o2v_batch.artifacts.files import (
    HYPERPARAMETERS_FILE,
    WEIGHTS_FILE,
    file_label,
    folder_label,
    read_hyperparameters,
)
from o2v_batch.errors import ModelFormatError, O2VError
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.weights import TIED_TENSOR, Shapes, expected_shapes, mismatches

if TYPE_CHECKING:
    import torch

    from o2v_batch.model.network import Object2Vec

_T = TypeVar("_T")
# Tensors are searched for NaN and infinity this many bytes of rows at a time.
SCAN_BYTES = 4 << 20
# safetensors dtypes numpy reads; a bfloat16 tensor is searched once loaded instead.
_NUMPY_FLOATS = ("F16", "F32", "F64")
# Token-embedding numbers above which a network is built on the meta device.
META_BUILD_NUMBERS = 2**25
# --precision: the dtype (a torch attribute name) the network runs in.
# tf32 keeps float32 weights but lets a GPU's matmuls and convolutions round their inputs
# to TensorFloat-32 (devices.set_float32_math); fp32 there is IEEE float32, as on CPUs.
PRECISIONS = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


def _saved_tensors(network: Object2Vec) -> dict[str, torch.Tensor]:
    """The tensors a model file holds: the state dict with a tied embedding once."""
    state = network.state_dict()
    if network.hp.tied_token_embedding_weight:
        del state[TIED_TENSOR]
    return state


def _shapes(network: Object2Vec) -> Shapes:
    return {name: tuple(t.shape) for name, t in _saved_tensors(network).items()}


def save_model(network: Object2Vec, hp: Hyperparameters, folder: str | os.PathLike[str]) -> None:
    """Write hyperparameters.json and model.safetensors into `folder` (created if needed)."""
    import torch
    from safetensors.torch import save

    if network.encoders_only:
        raise O2VError("cannot save an encoders-only network: it has no comparator, MLP or head")
    problems = mismatches(_shapes(network), expected_shapes(hp))
    if problems:
        raise ModelFormatError("network does not match the hyperparameters: " + "; ".join(problems))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous()
        for name, t in _saved_tensors(network).items()
    }
    text = json.dumps(hp.to_dict(), sort_keys=True, indent=2) + "\n"
    # Atomic writes: a crash never leaves half a file where a model is expected.
    io.write_atomic(str(folder / WEIGHTS_FILE), save(tensors))
    io.write_atomic(str(folder / HYPERPARAMETERS_FILE), text.encode("utf-8"))


def check_model(folder: str | os.PathLike[str], encoders_only: bool = False) -> Hyperparameters:
    """Checks a model folder without torch: valid hyperparameters, a weights file whose
    header lists exactly the tensors (names and shapes) they need, and no NaN or
    infinity in those tensors (read a few MB at a time, so memory stays flat).

    encoders_only checks the enc0./enc1. tensors only, as load_network reads them.
    """
    hp = _check_header(folder, encoders_only)
    names = list(expected_shapes(hp, encoders_only))
    _from_weights(folder, "numpy", lambda weights: _check_finite_in_file(folder, weights, names))
    return hp


def _check_header(folder: str | os.PathLike[str], encoders_only: bool) -> Hyperparameters:
    hp = read_hyperparameters(folder)
    _check_weights(Path(folder), expected_shapes(hp, encoders_only), encoders_only)
    return hp


def _check_weights(folder: Path, expected: Shapes, encoders_only: bool) -> None:
    """Reads the file's header only, which safetensors checks against the file's length
    (so a truncated file fails here too); numpy, so no torch."""
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelFormatError(f"{folder_label(folder)} has no {WEIGHTS_FILE}")
    found = _from_weights(
        folder,
        "numpy",
        lambda weights: {
            name: tuple(weights.get_slice(name).get_shape())
            for name in weights.keys()  # noqa: SIM118 (safe_open is not a dict)
            if not encoders_only or name.startswith(("enc0.", "enc1."))
        },
    )
    problems = mismatches(found, expected)
    if problems:
        raise ModelFormatError(
            f"{WEIGHTS_FILE} does not match {HYPERPARAMETERS_FILE}: " + "; ".join(problems)
        )


def _check_finite_in_file(folder: str | os.PathLike[str], weights: Any, names: list[str]) -> None:
    for name in names:
        tensor = weights.get_slice(name)
        if tensor.get_dtype() in _NUMPY_FLOATS:
            _check_finite(folder, name, tensor, tensor.get_shape())


def _check_finite(
    folder: str | os.PathLike[str], name: str, rows: Any, shape: Sequence[int]
) -> None:
    """Refuses a tensor holding NaN or infinity. `rows` is an array or a safetensors
    slice: either gives a few MB of rows at a time."""
    step = max(1, SCAN_BYTES // (4 * math.prod(shape[1:])))
    count = sum(
        int(np.count_nonzero(~np.isfinite(rows[start : min(start + step, shape[0])])))
        for start in range(0, shape[0], step)
    )
    if count:
        values = "value" if count == 1 else "values"
        raise ModelFormatError(
            f"{file_label(folder, WEIGHTS_FILE)}: tensor {name} holds NaN or infinity "
            f"({count} {values}): the model cannot give finite outputs"
        )


def _from_weights(folder: str | os.PathLike[str], framework: str, read: Callable[[Any], _T]) -> _T:
    """`read` applied to the open weights file; a file that cannot be read names itself."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(
            str(Path(folder) / WEIGHTS_FILE), framework=framework, device="cpu"
        ) as weights:
            return read(weights)
    except (SafetensorError, OSError, ValueError) as error:
        label = file_label(folder, WEIGHTS_FILE)
        raise ModelFormatError(f"{label} is not a readable safetensors file: {error}") from error


def _build_device(hp: Hyperparameters) -> str:
    """Where to build a network whose random init is about to be replaced.

    The meta device skips the init, but its first use imports sympy: about 1 s per
    worker. A small model's init on the CPU takes milliseconds; a large vocabulary's
    would take seconds and gigabytes, so those still go to the meta device.
    """
    numbers = sum(hp.encoder(i).vocab_size * hp.encoder(i).token_embedding_dim for i in (0, 1))
    return "meta" if numbers > META_BUILD_NUMBERS else "cpu"


def load_network(
    folder: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    encoders_only: bool = False,
    precision: str = "fp32",
) -> Object2Vec:
    """The network of a model folder, in eval mode on `device`, in the dtype of
    `precision` (a key of PRECISIONS).

    encoders_only builds and reads only the enc0./enc1. tensors: the comparator, MLP and
    head weights are never read.
    """
    import torch

    from o2v_batch.model.devices import set_float32_math
    from o2v_batch.model.network import Object2Vec

    hp = _check_header(folder, encoders_only)
    with torch.device(_build_device(hp)):
        network = Object2Vec(hp, encoders_only=encoders_only)
    state = _from_weights(
        folder,
        "pt",
        lambda weights: {name: weights.get_tensor(name).float() for name in _shapes(network)},
    )
    for name, tensor in state.items():  # as loaded, so a bfloat16 file is searched too
        _check_finite(folder, name, tensor.numpy(), tensor.shape)
    if hp.tied_token_embedding_weight:
        state[TIED_TENSOR] = state["enc0.embedding.weight"]
    network.load_state_dict(state, assign=True)
    set_float32_math(tf32=precision == "tf32")
    return network.to(device=device, dtype=getattr(torch, PRECISIONS[precision])).eval()
