"""One mini-batch in, encoded responses out. Runs inside a worker process.

Reading and checking the records (records.py), the forward pass (`Forward` in,
`Forwarded` out, run by the server's forward: forward.py's in this process, or a
device process's through device_link.py) and response encoding (predictions.py) all
happen here, so the parent only moves bytes. Numpy only: a GPU's host workers serve
with it and never import torch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence

import numpy as np

from o2v_batch.execution.forward_work import Forward, Forwarded
from o2v_batch.execution.predictions import Predictions
from o2v_batch.execution.protocol import BatchResult, ServingOptions
from o2v_batch.execution.records import PAIR, Failed, RecordRules, filter_or_none
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.tokens import TokenIds
from o2v_batch.outputs.responses import codec_for, position_key


class Server:
    """Serves mini-batches with one model: `forward` runs its forward passes (by default
    forward.LocalForward, on `device` in this process)."""

    def __init__(
        self,
        model_dir: str,
        device: str,
        options: ServingOptions,
        forward: Callable[[Forward], Forwarded] | None = None,
    ):
        if forward is None:
            from o2v_batch.execution.forward import LocalForward  # torch

            forward = LocalForward.load(model_dir, device, options)
        self.forward = forward
        self.options = options
        hp: Hyperparameters = forward.hp
        self.enc_dim = hp.enc_dim
        self.max_lens = [hp.encoder(i).max_seq_len for i in (0, 1)]
        if options.infer_max_seqlens:
            self.max_lens = [
                min(m, c) for m, c in zip(self.max_lens, options.infer_max_seqlens, strict=True)
            ]
        self.rules = RecordRules.of(hp, options)
        self.output_filter = filter_or_none(options.output_filter)
        self.join = options.join_source == "Input"

    @property
    def loop(self):
        """The device loop of a forward in this process."""
        return self.forward.loop

    def serve(
        self, positions: Sequence[int], records: Sequence[bytes], content_type: str, accept: str
    ) -> BatchResult:
        """One mini-batch from end to end: its three phases one after another."""
        batch = self.prepare(positions, records, content_type, accept)
        batch.predict()
        return batch.finish()

    def prepare(
        self, positions: Sequence[int], records: Sequence[bytes], content_type: str, accept: str
    ) -> _Batch | _Stopped:
        """The host work before the forward pass: the records parsed and checked, their
        token ids read. Then the batch's predict() runs the forward pass on the device
        and its finish() encodes the responses."""
        error_key = position_key(content_type)
        batch = _Batch(self, positions, records, error_key, accept, self.max_lens_for(content_type))
        try:
            batch.parse()
            batch.check()
        except Failed:
            return _Stopped(batch.result)
        return batch

    def max_lens_for(self, content_type: str) -> list[int]:
        """Each encoder input's length cap for a mini-batch sent as `content_type`."""
        return self.max_lens


class _Stopped:
    """A mini-batch that a bad record stopped under --on-bad-record fail: its result says
    where; no phase is left to run."""

    def __init__(self, result: BatchResult):
        self.result = result

    def predict(self) -> None:
        pass

    def finish(self) -> BatchResult:
        return self.result


class _Batch(Predictions):
    """The state of one mini-batch while it is served."""

    def __init__(
        self,
        server: Server,
        positions: Sequence[int],
        records: Sequence[bytes],
        error_key: str,
        accept: str,
        max_lens: list[int],
    ):
        rules, join, output_filter = server.rules, server.join, server.output_filter
        super().__init__(rules, positions, records, error_key, join, output_filter)
        self.server = server
        self.accept = accept
        self.max_lens = max_lens  # this mini-batch's: a serve request may cap its own

    # -- the forward pass -------------------------------------------------

    def predict(self) -> None:
        ids = [self._ids(enc) for enc in (0, 1)]
        kinds = np.array(self.kinds, dtype=np.int64)  # bad ids found while checking are out
        pairs = np.flatnonzero(kinds == PAIR)
        where = []
        for enc in (0, 1):
            index = np.full(len(self.records), -1, dtype=np.int64)
            index[self.rows[enc]] = np.arange(len(self.rows[enc]))
            where.append(index)
        singles = (bool((kinds == 0).any()), bool((kinds == 1).any()))
        paired = (where[0][pairs], where[1][pairs]) if len(pairs) else None
        forwarded = self.server.forward(Forward(ids, paired, singles))
        if len(pairs):
            scores = forwarded.scores
            # Exactly the hosted algorithm's response: classification and regression
            # alike carry "scores" only (predicted_label belongs to other algorithms).
            if len(pairs) == len(self.records):  # pairs and scores in the same order
                self.vectors, self.key = scores, "scores"
            else:
                for j, i in enumerate(pairs.tolist()):
                    self.outputs[i] = {"scores": scores[j]}
        for enc in (0, 1):
            rows = np.flatnonzero(kinds == enc)
            if not len(rows):
                continue
            vectors = forwarded.embeddings[enc]
            if len(rows) == len(self.records):  # rows and embeddings in the same order
                self.vectors = vectors
                continue
            for i, j in zip(rows.tolist(), where[enc][rows].tolist(), strict=True):
                self.outputs[i] = {"embeddings": vectors[j]}

    def _ids(self, enc: int) -> TokenIds | None:
        """One encoder input's checked ids cut to this mini-batch's caps, or None without rows."""
        checked = self.checked_ids(enc)
        if not self.rows[enc]:
            return None
        checked, truncated = checked.truncate(self.max_lens[enc])
        self.result.truncated += truncated
        return checked

    # -- responses --------------------------------------------------------

    def finish(self) -> BatchResult:
        """The phase after the forward pass: the responses encoded, or the bad record
        (an output's complaint) that stopped them."""
        with contextlib.suppress(Failed):
            self.result.payload = self.encode(codec_for(self.accept))
        return self.result
