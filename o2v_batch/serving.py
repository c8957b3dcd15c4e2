"""One mini-batch in, encoded responses out. Runs inside a worker process.

Parsing, validation, tensor building, the forward pass and response encoding
all happen here, so the parent only moves bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import orjson
import torch

from o2v_batch.config import Hyperparameters
from o2v_batch.errors import BadRecordError, O2VError
from o2v_batch.formats import JSON
from o2v_batch.jsonpath import compile_filter, join_input, json_type
from o2v_batch.model import check_sequence, fast_ids, load_network
from o2v_batch.protocol import BatchResult, ServingOptions

INPUT_NAMES = ("in0", "in1")
PAIR = 2  # record kinds: 0 = in0 only, 1 = in1 only, 2 = both
_MISSING = object()
_NUMPY = orjson.OPT_SERIALIZE_NUMPY

# Device batches are cut by a token budget (rows x padded length), so one long
# record never forces a huge padded tensor, and sorted by length to cut padding.
# The budget is set so that one layer's activations (tokens x widest layer) stay
# near a size the device handles best: a core's cache on CPU (measured: the heavy
# model ran 578 records/s at 16,384 tokens and 917 at 2,048; the light one
# prefers 32,768), plenty on a GPU.
ACTIVATIONS = {"cpu": 2**20, "cuda": 2**27}
MAX_ROWS = {"cpu": 512, "cuda": 8192}


def token_budget(hp: Hyperparameters, kind: str) -> int:
    """Tokens per device batch for this model on a `cpu` or `cuda` device."""
    widest = max(hp.enc_dim, *(hp.encoder(i).token_embedding_dim for i in (0, 1)))
    return int(os.environ.get("O2V_DEVICE_BATCH_TOKENS", max(256, ACTIVATIONS[kind] // widest)))


ENCODE_CHUNK = 1024


class Server:
    """Serves mini-batches with one model on one device."""

    def __init__(self, model_dir: str, device: str, options: ServingOptions):
        self.options = options
        self.device = torch.device(device)
        self.network = load_network(model_dir, device, encoders_only=options.mode == "embedding")
        hp = self.network.hp
        self.enc_dim = hp.enc_dim
        self.vocab = [hp.encoder(i).vocab_size for i in (0, 1)]
        self.max_lens = [hp.encoder(i).max_seq_len for i in (0, 1)]
        if options.infer_max_seqlens:
            self.max_lens = [
                min(m, c) for m, c in zip(self.max_lens, options.infer_max_seqlens, strict=True)
            ]
        kind = "cpu" if self.device.type == "cpu" else "cuda"
        self.token_budget = token_budget(hp, kind)
        self.max_rows = MAX_ROWS[kind]
        self.input_filter = _filter_or_none(options.input_filter)
        self.output_filter = _filter_or_none(options.output_filter)
        self.join = options.join_source == "Input"
        self.regression = hp.output_layer == "mean_squared_error"

    def serve(
        self, positions: Sequence[int], records: Sequence[bytes], content_type: str, accept: str
    ) -> BatchResult:
        batch = _Batch(self, positions, records, "record" if content_type == JSON else "line")
        try:
            batch.parse()
            batch.predict()
            payload = batch.encode(b"," if accept == JSON else b"\n")
        except _Failed:
            return batch.result
        batch.result.payload = payload if accept == JSON else payload + b"\n"
        return batch.result


class _Failed(Exception):
    """A bad record under --on-bad-record fail: the mini-batch stops here."""


class _Batch:
    """The state of one mini-batch while it is served."""

    def __init__(
        self, server: Server, positions: Sequence[int], records: Sequence[bytes], error_key: str
    ):
        self.server = server
        self.positions = positions
        self.records = records
        self.error_key = error_key
        self.result = BatchResult(records=len(records))
        self.kinds = [-1] * len(records)
        self.sources: list[Any] | None = (
            [None] * len(records) if server.join or server.output_filter else None
        )
        self.errors: dict[int, str] = {}
        self.rows: tuple[list[int], list[int]] = ([], [])  # record index per encoder input
        self.seqs: tuple[list[Any], list[Any]] = ([], [])
        self.outputs: list[Any] = [None] * len(records)

    def bad(self, i: int, problem: str) -> None:
        if self.server.options.on_bad_record == "fail":
            self.result.error_pos, self.result.error = self.positions[i], problem
            raise _Failed
        self.errors[i] = problem
        self.kinds[i] = -1
        self.result.bad_records += 1

    # -- parsing ----------------------------------------------------------

    def parse(self) -> None:
        loads, keep, flt = orjson.loads, self.sources, self.server.input_filter
        pairs_allowed = self.server.options.mode != "embedding"
        rows0, rows1 = self.rows
        seqs0, seqs1 = self.seqs
        for i, data in enumerate(self.records):
            try:
                obj = loads(data)
                if keep is not None:
                    keep[i] = obj
                if flt is not None:
                    obj = flt(obj)
                if type(obj) is not dict:
                    raise BadRecordError(f"record is not a JSON object (got {json_type(obj)})")
                s0, s1 = obj.get("in0", _MISSING), obj.get("in1", _MISSING)
            except orjson.JSONDecodeError as exc:
                self.bad(i, f"malformed JSON: {exc}")
                continue
            except O2VError as exc:
                self.bad(i, str(exc))
                continue
            if s1 is _MISSING:
                if s0 is _MISSING:
                    self.bad(i, 'record has neither "in0" nor "in1"')
                    continue
                self.kinds[i] = 0
                rows0.append(i)
                seqs0.append(s0)
            elif s0 is _MISSING:
                self.kinds[i] = 1
                rows1.append(i)
                seqs1.append(s1)
            elif pairs_allowed:
                self.kinds[i] = PAIR
                rows0.append(i)
                seqs0.append(s0)
                rows1.append(i)
                seqs1.append(s1)
            else:
                self.bad(
                    i,
                    'record has both "in0" and "in1", but the mode is embedding '
                    "(pairs need --mode auto or classification)",
                )

    # -- the forward pass -------------------------------------------------

    @torch.inference_mode()
    def predict(self) -> None:
        embeddings = [self._embed(enc) for enc in (0, 1)]
        where = []
        for enc in (0, 1):
            index = np.full(len(self.records), -1, dtype=np.int64)
            index[self.rows[enc]] = np.arange(len(self.rows[enc]))
            where.append(index)
        kinds = np.array(self.kinds, dtype=np.int64)
        pairs = np.flatnonzero(kinds == PAIR)
        if len(pairs):
            u = embeddings[0][torch.from_numpy(where[0][pairs]).to(self.server.device)]
            v = embeddings[1][torch.from_numpy(where[1][pairs]).to(self.server.device)]
            scores = self.server.network.predict_from_embeddings(u, v).float().cpu().numpy()
            labels = scores.argmax(axis=1).tolist()
            for j, i in enumerate(pairs.tolist()):
                if self.server.regression:
                    self.outputs[i] = {"scores": scores[j]}
                else:
                    self.outputs[i] = {"scores": scores[j], "predicted_label": labels[j]}
        for enc in (0, 1):
            rows = np.flatnonzero(kinds == enc)
            if len(rows):
                vectors = embeddings[enc].float().cpu().numpy()
                for i, j in zip(rows.tolist(), where[enc][rows].tolist(), strict=True):
                    self.outputs[i] = {"embeddings": vectors[j]}

    def _embed(self, enc: int) -> torch.Tensor | None:
        """Embeddings of one encoder's inputs, in row order, from length-sorted token-budget batches."""
        server = self.server
        checked = fast_ids(self.seqs[enc], server.vocab[enc]) if self._drop_unpaired(enc) else None
        if checked is None:
            self._drop_bad(enc)
            checked = fast_ids(self.seqs[enc], server.vocab[enc])
        seqs = self.seqs[enc]
        if not seqs:
            return None
        ids, lengths = checked
        max_len = server.max_lens[enc]
        if lengths.max() > max_len:
            self.result.truncated += int((lengths > max_len).sum())
            position = np.arange(ids.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            ids = ids[position < max_len]
            lengths = np.minimum(lengths, max_len)
        starts = np.cumsum(lengths) - lengths
        order = np.argsort(-lengths, kind="stable")
        out = torch.empty((len(seqs), server.enc_dim), dtype=torch.float32, device=server.device)
        done = 0
        while done < len(order):
            longest = int(lengths[order[done]])
            size = max(1, min(server.max_rows, server.token_budget // longest, len(order) - done))
            chunk = order[done : done + size]
            done += size
            columns = np.arange(longest)
            inside = columns < lengths[chunk, None]  # (B, T)
            tokens = np.where(
                inside, ids[np.minimum(starts[chunk, None] + columns, ids.size - 1)], 0
            )
            tokens = torch.from_numpy(tokens).to(server.device, non_blocking=True)
            out[torch.from_numpy(chunk).to(server.device)] = server.network.encode(
                tokens, enc
            ).float()
        return out

    def _drop_unpaired(self, enc: int) -> bool:
        """Drops in1 of pairs whose in0 was bad; True when nothing else needs a look."""
        rows, seqs = self.rows[enc], self.seqs[enc]
        if enc == 1 and self.errors:
            keep = [k for k, i in enumerate(rows) if self.kinds[i] != -1]
            rows[:], seqs[:] = [rows[k] for k in keep], [seqs[k] for k in keep]
        return bool(seqs)

    def _drop_bad(self, enc: int) -> None:
        """The slow path, once the batch check failed: record by record, to name the bad one."""
        name, vocab = INPUT_NAMES[enc], self.server.vocab[enc]
        rows, seqs = self.rows[enc], self.seqs[enc]
        good_rows, good_seqs = [], []
        for i, seq in zip(rows, seqs, strict=True):
            try:
                check_sequence(seq, vocab, name)
            except BadRecordError as exc:
                self.bad(i, str(exc))
                continue
            good_rows.append(i)
            good_seqs.append(seq)
        rows[:], seqs[:] = good_rows, good_seqs

    # -- responses --------------------------------------------------------

    def encode(self, sep: bytes) -> bytes:
        """The responses, one per record, joined by `sep` (b"," or b"\n")."""
        server = self.server
        if not (self.errors or self.sources is not None):
            # One dumps call for the whole batch: faster, and orjson gives every small
            # result a 4 KiB buffer, which per record multiplied memory by 20. These
            # objects nest no other object, so "},{" only ever separates two records.
            body = orjson.dumps(self.outputs, option=_NUMPY)[1:-1]
            return body if sep == b"," else body.replace(b"},{", b"}\n{")
        chunks, parts = [], []
        for i, prediction in enumerate(self.outputs):
            if i in self.errors:
                parts.append(self._error_part(i))
            else:
                out = join_input(self.sources[i], prediction) if server.join else prediction
                try:
                    if server.output_filter is not None:
                        out = server.output_filter(out)
                    parts.append(orjson.dumps(out, option=_NUMPY))
                except O2VError as exc:
                    self.bad(i, str(exc))
                    parts.append(self._error_part(i))
            if len(parts) == ENCODE_CHUNK:  # bounds the per-result buffers held at once
                chunks.append(sep.join(parts))
                parts = []
        chunks.append(sep.join(parts))
        return sep.join(chunks)

    def _error_part(self, i: int) -> bytes:
        """What a bad record's place holds under --on-bad-record emit-error."""
        return orjson.dumps(
            {"error": {"message": self.errors[i], self.error_key: self.positions[i]}}
        )


def _filter_or_none(expr: str) -> Callable[[Any], Any] | None:
    return None if expr.strip() == "$" else compile_filter(expr)
