"""What a mini-batch's forward pass takes and gives: plain arrays, so that it runs in
the worker's own process (forward.LocalForward) or in a device process
(device_link.py) alike. Numpy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from o2v_batch.execution.buckets import Prepared
from o2v_batch.model.tokens import TokenIds


@dataclass
class Forward:
    """What a mini-batch asks of the device: each encoder input's checked, truncated ids
    (None without rows), in row order, or already cut into the device's batches and
    padded (a GPU's host workers prepare them); the rows of each pair, (in0 rows, in1
    rows), for the head, or None without pairs (then the embeddings stay on the host);
    and whether each encoder's embeddings come back (some of its records are that input
    alone)."""

    ids: list[TokenIds | Prepared | None]
    pairs: tuple[np.ndarray, np.ndarray] | None
    singles: tuple[bool, bool]


@dataclass
class Forwarded:
    """The device's answer: the pairs' (n, width) float32 scores, and each encoder's
    (rows, enc_dim) float32 embeddings where `singles` asked for them."""

    scores: np.ndarray | None
    embeddings: list[np.ndarray | None]
