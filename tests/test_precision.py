"""--precision fp32 is IEEE float32 on every device; tf32 asks for TensorFloat-32 by name.

PyTorch lets cuDNN convolutions and RNNs round float32 inputs to TF32 by default, so
loading a network must set the process's float32 math: what these tests read back.
The numbers themselves are compared on a GPU by scripts/gpu_check.py.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_model, random_records, write_jsonl

from o2v_batch import load_model
from o2v_batch.model.devices import set_float32_math

REPO = Path(__file__).resolve().parent.parent


def float32_math() -> set[str]:
    """The modes of the settings that decide float32 math on CUDA."""
    cudnn = torch.backends.cudnn
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):
        matmul = torch.backends.cuda.matmul.fp32_precision
        # "none" defers to torch.get_float32_matmul_precision(), "highest" by default
        if matmul == "none":
            matmul = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        return {matmul, cudnn.conv.fp32_precision, cudnn.rnn.fp32_precision}
    legacy = {torch.backends.cuda.matmul.allow_tf32, cudnn.allow_tf32}
    return {"tf32" if allowed else "ieee" for allowed in legacy}


@pytest.fixture
def restore_math():
    before = float32_math()
    yield
    set_float32_math(tf32=before == {"tf32"})


@pytest.mark.slow  # a fresh interpreter importing torch
def test_pytorch_defaults_are_not_ieee_float32(restore_math):
    """Why loading sets the math at all: in a fresh interpreter, some float32 kernels
    may use TF32."""
    probe = (
        "import torch; c = torch.backends.cudnn; "
        "print(c.conv.fp32_precision if hasattr(c, 'conv') else c.allow_tf32)"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip() in ("tf32", "True"), out


@pytest.mark.parametrize(("precision", "math"), [("fp32", "ieee"), ("tf32", "tf32")])
def test_loading_a_model_sets_the_float32_math(tmp_path, restore_math, precision, math):
    make_model(tmp_path)
    set_float32_math(tf32=math == "ieee")  # the other way round first
    load_model(str(tmp_path), precision=precision)
    assert float32_math() == {math}


def test_low_precisions_leave_float32_math_ieee(tmp_path, restore_math):
    make_model(tmp_path)
    set_float32_math(tf32=True)
    load_model(str(tmp_path), precision="bf16")
    assert float32_math() == {"ieee"}


@pytest.mark.slow  # two whole jobs
def test_tf32_on_cpu_is_float32_byte_for_byte(tmp_path):
    model = make_model(tmp_path / "model")
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(40, seed=2))
    outputs = {}
    for precision in ("fp32", "tf32"):
        out = tmp_path / precision
        command = ["transform", str(tmp_path / "in"), str(out), "--model", str(model)]
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "o2v_batch",
                *command,
                "--precision",
                precision,
                "--workers",
                "1",
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
        )
        assert done.returncode == 0, done.stderr
        outputs[precision] = (out / "a.jsonl.out").read_bytes()
    assert outputs["tf32"] == outputs["fp32"]
    assert outputs["fp32"].count(b"\n") == 40
