"""Model artifacts on disk and on S3: a folder with hyperparameters.json and
model.safetensors, or a .tar.gz of one; resolved (resolve.py, extracting archives
safely with archive.py), checked, saved and loaded (tensors.py), and a trained one
written where it goes (publish.py).

Resolving, safe extraction and checking need no torch, so the batch parent can fetch
and check a model once without importing it: saving and loading import torch when
they run.
"""

from __future__ import annotations

from o2v_batch.artifacts.files import (
    HYPERPARAMETERS_FILE,
    MODEL_FILES,
    WEIGHTS_FILE,
    read_hyperparameters,
)
from o2v_batch.artifacts.publish import check_output, write_model
from o2v_batch.artifacts.resolve import resolve_model
from o2v_batch.artifacts.tensors import PRECISIONS, check_model, load_network, save_model

__all__ = [
    "HYPERPARAMETERS_FILE",
    "MODEL_FILES",
    "PRECISIONS",
    "WEIGHTS_FILE",
    "check_model",
    "check_output",
    "load_network",
    "read_hyperparameters",
    "resolve_model",
    "save_model",
    "write_model",
]
