"""o2v-batch: offline batch inference and training for Object2Vec models."""

from __future__ import annotations

from o2v_batch.errors import O2VError

__version__ = "0.1.0"
__all__ = ["O2VError", "__version__", "load_model", "transform"]


def __getattr__(name: str):
    # Lazy, so `o2v-batch --help` and the batch parent never import torch.
    if name == "load_model":
        from o2v_batch.api import load_model

        return load_model
    if name == "transform":
        from o2v_batch.jobs.transform import transform

        return transform
    raise AttributeError(name)
