"""The factories of the workers that run forward passes (protocol.DEFAULT_FACTORY,
protocol.DEVICE_FACTORY): torch's threads set, then the model loaded on the device. A
spare worker imports this module, and so torch, before its model is known."""

from __future__ import annotations

import torch

from o2v_batch.execution.device_link import DEVICE_THREADS, DeviceServer
from o2v_batch.execution.forward import LocalForward
from o2v_batch.execution.inference import Server
from o2v_batch.execution.protocol import ServingOptions


def create_server(model_dir: str, device: str, options: ServingOptions, threads: int) -> Server:
    """The worker factory (protocol.DEFAULT_FACTORY): torch's threads, then the model."""
    torch.set_num_threads(threads)
    return Server(model_dir, device, options, LocalForward.load(model_dir, device, options))


def create_device_server(
    model_dir: str, device: str, options: ServingOptions, threads: int
) -> DeviceServer:
    """The device process's factory (protocol.DEVICE_FACTORY): the model on its device,
    serving the forward passes its host workers send."""
    torch.set_num_threads(threads)
    forward = LocalForward.load(model_dir, device, options)
    return DeviceServer([forward] + [forward.sibling() for _ in range(DEVICE_THREADS - 1)])
