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

from o2v_batch.errors import BadRecordError, FilterError
from o2v_batch.formats import JSON, compile_filter, join_input
from o2v_batch.model import load_network
from o2v_batch.runtime import BatchResult, ServingOptions

EMBED0, EMBED1, PAIR = 0, 1, 2
INPUT_NAMES = ("in0", "in1")

# Device batches are cut by a token budget (rows x padded length) so one long
# record never forces a huge padded tensor; sorted by length to cut padding.
TOKEN_BUDGET = {"cpu": 16384, "cuda": 262144}
MAX_ROWS = {"cpu": 512, "cuda": 8192}


class Server:
    """Serves mini-batches with one model on one device."""

    def __init__(self, model_dir: str, device: str, options: ServingOptions):
        self.options = options
        self.device = torch.device(device)
        self.network = load_network(model_dir, device, encoders_only=options.mode == "embedding")
        self.hp = self.network.hp
        self.max_lens = [self.hp.encoder(i).max_seq_len for i in (0, 1)]
        if options.infer_max_seqlens:
            self.max_lens = [min(m, c) for m, c in zip(self.max_lens, options.infer_max_seqlens)]
        self.vocab = [self.hp.encoder(i).vocab_size for i in (0, 1)]
        kind = self.device.type if self.device.type in TOKEN_BUDGET else "cuda"
        self.token_budget = int(os.environ.get("O2V_DEVICE_BATCH_TOKENS", TOKEN_BUDGET[kind]))
        self.max_rows = MAX_ROWS[kind]
        self.input_filter = _filter_or_none(options.input_filter)
        self.output_filter = _filter_or_none(options.output_filter)
        self.join = options.join_source == "Input"
        self.regression = self.hp.output_layer == "mean_squared_error"

    def serve(self, positions: Sequence[int], records: Sequence[bytes], content_type: str, accept: str) -> BatchResult:
        result = BatchResult(records=len(records))
        self.error_key = "record" if content_type == JSON else "line"
        sep = b"," if accept == JSON else b"\n"
        n = len(records)
        kinds = np.full(n, -1, dtype=np.int8)
        seqs: list[list[list[int] | None]] = [[None] * n, [None] * n]
        sources: list[Any] = [None] * n if self.join or self.output_filter else []
        errors: dict[int, str] = {}
        for i, data in enumerate(records):
            try:
                obj = orjson.loads(data)
                if sources:
                    sources[i] = obj
                kinds[i] = self._read_record(obj, data, i, seqs, result)
            except (orjson.JSONDecodeError, BadRecordError, FilterError) as exc:
                if not self._bad(result, positions[i], i, exc, errors):
                    return result
        outputs = self._predict(kinds, seqs, errors, positions, result)
        if result.error is not None:
            return result
        parts = [self._encode(outputs[i], sources[i] if sources else None, errors.get(i), positions[i]) for i in range(n)]
        result.payload = sep.join(parts) + (b"\n" if accept != JSON else b"")
        return result

    # -- parsing and validation -------------------------------------------

    def _read_record(self, obj: Any, data: bytes, i: int, seqs, result: BatchResult) -> int:
        if self.input_filter is not None:
            obj = self.input_filter(obj)
        if not isinstance(obj, dict):
            raise BadRecordError(f"record is not a JSON object (got {_json_type(obj)})")
        has0, has1 = "in0" in obj, "in1" in obj
        if not (has0 or has1):
            raise BadRecordError('record has neither "in0" nor "in1"')
        if has0 and has1:
            if self.options.mode == "embedding":
                raise BadRecordError(
                    'record has both "in0" and "in1", but the mode is embedding '
                    "(pairs need --mode auto or classification)"
                )
            kind = PAIR
        else:
            kind = EMBED0 if has0 else EMBED1
        # A bool inside an id list would pass as 0/1 once in numpy; only then look closer.
        check_bools = b"true" in data or b"false" in data
        for enc in (0, 1):
            if kind == enc or kind == PAIR:
                name = INPUT_NAMES[enc]
                seq = _token_list(obj[name], name, check_bools)
                if len(seq) > self.max_lens[enc]:
                    seq = seq[: self.max_lens[enc]]
                    result.truncated += 1
                seqs[enc][i] = seq
        return kind

    def _bad(self, result: BatchResult, pos: int, i: int, exc: Exception, errors: dict[int, str]) -> bool:
        """Record a bad record; returns False when the mini-batch must fail."""
        message = _problem(exc)
        if self.options.on_bad_record == "fail":
            result.error_pos, result.error = pos, message
            return False
        errors[i] = message
        result.bad_records += 1
        return True

    # -- the forward pass -------------------------------------------------

    @torch.inference_mode()
    def _predict(self, kinds, seqs, errors, positions, result) -> list[Any]:
        n = len(kinds)
        outputs: list[Any] = [None] * n
        embeds: list[np.ndarray | None] = [None, None]
        enc_rows: list[np.ndarray] = [np.empty(0, dtype=np.int64)] * 2
        for enc in (0, 1):
            rows = np.flatnonzero((kinds == enc) | (kinds == PAIR))
            rows = self._valid_rows(rows, seqs[enc], enc, errors, positions, result, kinds)
            if rows is None:
                return outputs
            enc_rows[enc] = rows
            if len(rows):
                embeds[enc] = self._encode_rows(rows, seqs[enc], enc)
        where0 = _index_of(enc_rows[0], n)
        where1 = _index_of(enc_rows[1], n)
        pairs = np.flatnonzero(kinds == PAIR)
        if len(pairs):
            u = embeds[0][where0[pairs]]
            v = embeds[1][where1[pairs]]
            scores = self.network.predict_from_embeddings(u, v).float().cpu().numpy()
            for j, row in enumerate(pairs):
                outputs[row] = self._score_object(scores[j])
        for enc in (0, 1):
            rows = np.flatnonzero(kinds == enc)
            if len(rows):
                vectors = embeds[enc].float().cpu().numpy()
                index = where0 if enc == 0 else where1
                for row in rows:
                    outputs[row] = {"embeddings": vectors[index[row]]}
        return outputs

    def _valid_rows(self, rows, seqs, enc, errors, positions, result, kinds):
        """Checks the ids of every sequence at once; falls back to one by one to name the bad one."""
        if not len(rows):
            return rows
        flat: list[int] = []
        for r in rows:
            flat.extend(seqs[r])
        vocab = self.vocab[enc]
        try:
            ids = np.array(flat)
        except (ValueError, TypeError, OverflowError):  # nested lists and the like
            ids = None
        if ids is not None and ids.dtype.kind in "iu" and ids.min() >= 0 and ids.max() < vocab:
            return rows
        keep = []
        for r in rows:
            try:
                _check_ids(seqs[r], vocab, INPUT_NAMES[enc])
                keep.append(r)
            except BadRecordError as exc:
                if not self._bad(result, positions[r], r, exc, errors):
                    return None
                kinds[r] = -1
        return np.array(keep, dtype=np.int64)

    def _encode_rows(self, rows: np.ndarray, seqs, enc: int) -> torch.Tensor:
        """Embeds the given rows, length-sorted into token-budget device batches; rows come back in order."""
        lengths = np.fromiter((len(seqs[r]) for r in rows), dtype=np.int64, count=len(rows))
        order = np.argsort(-lengths, kind="stable")
        out = torch.empty((len(rows), self.hp.enc_dim), dtype=torch.float32, device=self.device)
        start = 0
        while start < len(order):
            longest = int(lengths[order[start]])
            size = max(1, min(self.max_rows, self.token_budget // longest, len(order) - start))
            chunk = order[start : start + size]
            tokens = _pad([seqs[rows[k]] for k in chunk], lengths[chunk], longest)
            tokens = torch.from_numpy(tokens).to(self.device, non_blocking=True)
            out[torch.from_numpy(chunk).to(self.device)] = self.network.encode(tokens, enc).float()
            start += size
        return out

    # -- responses --------------------------------------------------------

    def _score_object(self, scores: np.ndarray) -> dict:
        if self.regression:
            return {"scores": scores}
        return {"scores": scores, "predicted_label": int(scores.argmax())}

    def _encode(self, prediction: Any, source: Any, error: str | None, pos: int) -> bytes:
        if error is not None:
            return orjson.dumps({"error": {"message": error, self.error_key: pos}})
        out = prediction
        if self.join:
            out = join_input(source, prediction)
        if self.output_filter is not None:
            out = self.output_filter(out)
        return orjson.dumps(out, option=orjson.OPT_SERIALIZE_NUMPY)


def _filter_or_none(expr: str) -> Callable[[Any], Any] | None:
    return None if expr.strip() == "$" else compile_filter(expr)


def _index_of(rows: np.ndarray, n: int) -> np.ndarray:
    index = np.full(n, -1, dtype=np.int64)
    index[rows] = np.arange(len(rows))
    return index


def _pad(seqs: list[list[int]], lengths: np.ndarray, width: int) -> np.ndarray:
    """Right-pads sequences with 0 into one (B, T) array, without a Python loop over tokens."""
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64, count=int(lengths.sum()))
    tokens = np.zeros((len(seqs), width), dtype=np.int64)
    tokens[np.arange(width) < lengths[:, None]] = flat
    return tokens


def _token_list(value: Any, name: str, check_bools: bool) -> list:
    if not isinstance(value, list):
        raise BadRecordError(f"{name} must be a list of integer token ids, got {_json_type(value)}")
    if not value:
        raise BadRecordError(f"{name} is empty")
    if check_bools and any(type(t) is bool for t in value):
        raise BadRecordError(f"{name} ids must be integers, got a boolean")
    return value


def _check_ids(seq: list, vocab: int, name: str) -> None:
    for t in seq:
        if type(t) is not int:
            raise BadRecordError(f"{name} ids must be integers, got {_json_type(t)} {_short(t)}")
        if t < 0 or t >= vocab:
            raise BadRecordError(
                f"{name} id {t} is out of range: vocab size is {vocab} (ids must be in 0..{vocab - 1})"
            )


def _json_type(value: Any) -> str:
    return {
        dict: "an object",
        list: "a list",
        str: "a string",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _short(value: Any) -> str:
    text = orjson.dumps(value).decode()
    return text if len(text) <= 40 else text[:37] + "..."


def _problem(exc: Exception) -> str:
    if isinstance(exc, orjson.JSONDecodeError):
        return f"malformed JSON: {exc}"
    return str(exc)
