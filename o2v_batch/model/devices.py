"""Device strings, parsed in one place: `auto`, `cpu`, `cuda`, `cuda:N` lists."""

from __future__ import annotations

import os
import re

from o2v_batch.errors import ConfigError, O2VError

# Where the NVIDIA driver shows its GPUs: a device node each (/dev/nvidia0, ...), and a
# folder each under /proc (hosts whose containers see no device nodes of their own).
DEVICE_NODES = "/dev"
DRIVER_GPUS = "/proc/driver/nvidia/gpus"


def visible_gpus() -> int:
    """How many CUDA devices this process may use, counted from what the NVIDIA driver
    shows and CUDA_VISIBLE_DEVICES, without importing torch: the parent of the workers
    never loads it (on a GPU host that alone takes seconds, before any worker starts)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return 0
    count = _driver_gpus()
    if visible is not None:
        # CUDA stops at the first entry that names no device; -1 hides every later one.
        entries = [e.strip() for e in visible.split(",")]
        listed = entries.index("-1") if "-1" in entries else len(entries)
        count = min(count, listed)
    return count


def _driver_gpus() -> int:
    try:
        nodes = [n for n in os.listdir(DEVICE_NODES) if re.fullmatch(r"nvidia\d+", n)]
    except OSError:
        nodes = []
    if nodes:
        return len(nodes)
    try:
        return len(os.listdir(DRIVER_GPUS))
    except OSError:
        return 0


def check_devices(devices: str) -> None:
    """Checks a --devices value's spelling without looking for GPUs, so a typo is a
    usage error before any work."""
    _device_names(devices)


def _device_names(devices: str) -> list[str]:
    """`auto`, `cpu` or `cuda` alone, or a list of distinct `cuda:N`; else ConfigError."""
    text = devices.strip().lower()
    if text in ("auto", "cpu", "cuda"):
        return [text]
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise ConfigError(f"--devices: {devices!r} is not auto, cpu, cuda or cuda:N")
    for name in names:
        kind, _, index = name.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise ConfigError(f"--devices: {name!r} is not cpu, cuda or cuda:N")
    if len(set(names)) != len(names):
        raise ConfigError(f"--devices: {devices!r} names a device twice")
    return names


def parse_devices(devices: str) -> list[str]:
    """`auto`, `cpu`, `cuda` or `cuda:0,cuda:1` to a list of device names."""
    names = _device_names(devices)
    if names == ["cpu"]:
        return names
    count = visible_gpus()
    if names in (["auto"], ["cuda"]):
        if count:
            return [f"cuda:{i}" for i in range(count)]
        if names == ["cuda"]:
            raise O2VError("--devices cuda: no CUDA device is visible")
        return ["cpu"]
    for name in names:
        if int(name.partition(":")[2]) >= count:
            raise O2VError(f"--devices: {name} is not visible ({count} CUDA devices visible)")
    return names


def parse_device(value: str) -> str | None:
    """One device for training: `auto` (None: a GPU when torch sees one), `cpu`, `cuda[:N]`."""
    if value == "auto":
        return None
    if value == "cpu":
        return value
    if not re.fullmatch(r"cuda(:\d+)?", value):
        raise O2VError(f"{value!r} is not auto, cpu, cuda or cuda:N")
    import torch  # only naming a GPU needs torch

    index = int(value.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise O2VError(f"{value} is not available: torch sees {torch.cuda.device_count()} GPU(s)")
    return value


def worker_device(device: str) -> str:
    """The device a worker process uses once it sees only its own GPU (as cuda:0).

    Sets CUDA_VISIBLE_DEVICES to that GPU; call before torch initialises CUDA. The
    index is the parent's view, so it maps through a CUDA_VISIBLE_DEVICES already set
    (by the user, or by Ray for an actor).
    """
    if not device.startswith("cuda"):
        return "cpu"
    index = int(device.partition(":")[2] or 0)
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = (
        visible.split(",")[index].strip() if visible else str(index)
    )
    return "cuda:0"


def set_float32_math(tf32: bool) -> None:
    """How this process's CUDA kernels do float32 math: IEEE float32, or TensorFloat-32
    (10-bit mantissa inputs, float32 sums) in matmuls, convolutions and RNNs.

    PyTorch lets cuDNN convolutions and RNNs use TF32 by default, so float32 on a GPU
    would otherwise differ from the CPU's in the fourth digit. Process-wide, as
    PyTorch's own settings are; no effect on CPU kernels.
    """
    import torch

    mode = "tf32" if tf32 else "ieee"
    cudnn = torch.backends.cudnn
    if hasattr(getattr(cudnn, "conv", None), "fp32_precision"):  # PyTorch 2.9 and later
        torch.backends.cuda.matmul.fp32_precision = mode
        cudnn.conv.fp32_precision = mode
        cudnn.rnn.fp32_precision = mode
    else:
        torch.backends.cuda.matmul.allow_tf32 = tf32
        cudnn.allow_tf32 = tf32
