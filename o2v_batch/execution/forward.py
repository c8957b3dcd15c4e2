"""A mini-batch's forward pass on one device: its encoders over checked token ids, the
head over its pairs. The torch side of serving, in the worker that serves mini-batches
whole or in the device process that runs the forward passes of a GPU's host workers
(factories.py). Imports torch.
"""

from __future__ import annotations

import numpy as np
import torch

from o2v_batch.artifacts import load_network
from o2v_batch.execution.buckets import Planner
from o2v_batch.execution.device_loop import DeviceLoop
from o2v_batch.execution.forward_work import Forward, Forwarded
from o2v_batch.execution.protocol import ServingOptions
from o2v_batch.model.network import Object2Vec


class LocalForward:
    """Forward passes with one model on one device, in this process."""

    def __init__(self, network: Object2Vec, device: torch.device, loop: DeviceLoop | None = None):
        self.device = device
        self.network = network
        self.hp = network.hp
        # Embeddings come back as float32; the head takes them in the network's dtype.
        self.dtype = next(network.parameters()).dtype
        self.loop = DeviceLoop(network, device) if loop is None else loop
        # On a GPU each forward computes on a stream of its own, so that siblings' calls
        # overlap and each waits for its own work alone.
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    @classmethod
    def load(cls, model_dir: str, device: str, options: ServingOptions) -> LocalForward:
        """The model of `model_dir` on `device`, as `options` asks (mode, precision)."""
        network = load_network(
            model_dir,
            device,
            encoders_only=options.mode == "embedding",
            precision=options.precision,
        )
        return cls(network, torch.device(device))

    @property
    def planner(self) -> Planner:
        """How this forward cuts calls into device batches (device_link.py sends it)."""
        return self.loop.planner

    def sibling(self) -> LocalForward:
        """Another forward on the same network, cutting calls into the same device batches,
        with staging buffers of its own: two threads may run calls side by side, one
        staging while the other computes."""
        return LocalForward(self.network, self.device, self.loop.sibling())

    def __call__(self, work: Forward) -> Forwarded:
        if self.stream is None:
            return self._forward(work)
        with torch.cuda.stream(self.stream):
            return self._forward(work)

    @torch.inference_mode()
    def _forward(self, work: Forward) -> Forwarded:
        # The head takes pairs' embeddings on the device; without pairs they go to the host.
        on_host = work.pairs is None
        embed = self.loop.host_embeddings if on_host else self.loop.embeddings
        embeddings = [None if ids is None else embed(ids, enc) for enc, ids in enumerate(work.ids)]
        scores = None
        if work.pairs is not None:
            u, v = (
                embeddings[enc][torch.from_numpy(work.pairs[enc]).to(self.device)] for enc in (0, 1)
            )
            head = self.network.predict_from_embeddings
            scores = head(u.to(self.dtype), v.to(self.dtype)).float().cpu().numpy()
        singles: list[np.ndarray | None] = [None, None]
        for enc in (0, 1):
            if work.singles[enc] and embeddings[enc] is not None:
                found = embeddings[enc]
                singles[enc] = found if on_host else found.cpu().numpy()
        return Forwarded(scores, singles)
