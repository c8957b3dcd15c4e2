"""The public Python API: `load_model(uri)` and the Model it returns.

Sequences go through the same checks, truncation and length-sorted device batches
as the batch transform, so a model called here answers as `transform` does.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from o2v_batch.artifacts import PRECISIONS, load_network, resolve_model
from o2v_batch.config import LOAD_MODES
from o2v_batch.errors import O2VError
from o2v_batch.execution.device_loop import DeviceLoop
from o2v_batch.inputs.token_ids import check_ids
from o2v_batch.model.network import Object2Vec
from o2v_batch.model.tokens import TokenIds


class Model:
    """A loaded model for Python callers: lists of token ids in, numpy arrays out."""

    def __init__(self, network: Object2Vec, device: torch.device | str, mode: str) -> None:
        self.network = network
        self.hp = network.hp
        self.device = torch.device(device)
        self.mode = mode
        self.truncated = 0  # sequences cut to max_seq_len so far
        # Embeddings come back as float32; the head takes them in the network's dtype.
        self.dtype = next(network.parameters()).dtype
        self.loop = DeviceLoop(network, self.device)

    def embed(self, sequences: Sequence[Sequence[int]], encoder: int = 0) -> np.ndarray:
        """(n, enc_dim) float32 embeddings of token-id sequences by encoder 0 or 1."""
        return self.loop.host_embeddings(self._ids(sequences, encoder), encoder)

    def score(
        self, in0_sequences: Sequence[Sequence[int]], in1_sequences: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """(n, num_classes) probabilities, or (n, 1) values for a regression model."""
        if self.mode == "embedding":
            raise O2VError(
                "score needs the whole network, but the model was loaded in embedding mode "
                "(encoders only); load it with mode='classification'"
            )
        if len(in0_sequences) != len(in1_sequences):
            raise O2VError(
                f"in0 and in1 must have as many sequences: {len(in0_sequences)} != "
                f"{len(in1_sequences)}"
            )
        width = self.hp.num_classes if self.hp.output_layer == "softmax" else 1
        with torch.inference_mode():
            u = self.loop.embeddings(self._ids(in0_sequences, 0), 0)
            v = self.loop.embeddings(self._ids(in1_sequences, 1), 1)
            out = torch.empty((len(u), width), dtype=torch.float32, device=self.device)
            # The head in slices too, so its activations stay as small as the encoders'.
            step = self.loop.planner.max_rows
            for lo in range(0, len(u), step):
                rows = slice(lo, lo + step)
                pair = u[rows].to(self.dtype), v[rows].to(self.dtype)
                out[rows] = self.network.predict_from_embeddings(*pair).float()
            return out.cpu().numpy()

    def _ids(self, sequences: Sequence[Sequence[int]], encoder: int) -> TokenIds:
        """The sequences checked and cut to max_seq_len."""
        config = self.hp.encoder(encoder)
        ids = check_ids(sequences, config.vocab_size, f"in{encoder}")
        ids, truncated = ids.truncate(config.max_seq_len)
        self.truncated += truncated
        return ids


def load_model(
    uri: str, device: str = "cpu", mode: str = "classification", precision: str = "fp32"
) -> Model:
    """Load a model folder or .tar.gz, local or on S3.

    mode "embedding" loads only the encoders (embed only); "classification" loads the
    whole network (embed and score). precision (fp32, tf32, bf16, fp16) is the dtype
    the network runs in; the arrays returned are float32 either way. fp32 is IEEE
    float32 on a GPU too, and tf32 lets a GPU round float32 math to TensorFloat-32: a
    setting of the whole process, as PyTorch's own settings are.
    """
    if mode not in LOAD_MODES:
        raise O2VError(f"mode must be one of {', '.join(LOAD_MODES)}, got {mode!r}")
    if precision not in PRECISIONS:
        raise O2VError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    network = load_network(
        resolve_model(uri), device, encoders_only=mode == "embedding", precision=precision
    )
    return Model(network, device, mode)
