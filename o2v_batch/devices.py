"""Device strings, parsed in one place: `auto`, `cpu`, `cuda`, `cuda:N` lists."""

from __future__ import annotations

import os
import re

from o2v_batch.errors import O2VError


def visible_gpus() -> int:
    """How many CUDA devices this process may use; avoids importing torch on machines
    without NVIDIA devices."""
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1"):
        return 0
    if not (os.path.exists("/dev/nvidia0") or os.path.exists("/proc/driver/nvidia")):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def parse_devices(devices: str) -> list[str]:
    """`auto`, `cpu`, `cuda` or `cuda:0,cuda:1` to a list of device names."""
    text = devices.strip().lower()
    if text == "cpu":
        return ["cpu"]
    if text in ("auto", "cuda"):
        count = visible_gpus()
        if count:
            return [f"cuda:{i}" for i in range(count)]
        if text == "cuda":
            raise O2VError("--devices cuda: no CUDA device is visible")
        return ["cpu"]
    names = [d.strip() for d in text.split(",") if d.strip()]
    count = None
    for name in names:
        kind, _, index = name.partition(":")
        if kind != "cuda" or not index.isdigit():
            raise O2VError(f"--devices: {name!r} is not cpu, cuda or cuda:N")
        count = visible_gpus() if count is None else count
        if int(index) >= count:
            raise O2VError(f"--devices: {name} is not visible ({count} CUDA devices visible)")
    if len(set(names)) != len(names):
        raise O2VError(f"--devices: {devices!r} names a device twice")
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
