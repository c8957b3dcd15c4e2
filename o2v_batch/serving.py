"""One mini-batch in, encoded responses out. Runs inside a worker process.

Parsing, validation, tensor building, the forward pass and response encoding
all happen here, so the parent only moves bytes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import orjson
import torch

from o2v_batch.artifacts import load_network
from o2v_batch.columnar import NPY_PAIRS, OUR_COLUMNS, ColumnarCodec
from o2v_batch.errors import BadRecordError, O2VError
from o2v_batch.jsonpath import compile_filter, join_input, json_type
from o2v_batch.protocol import BatchResult, ServingOptions
from o2v_batch.responses import Codec, TextCodec, codec_for, error_object, position_key
from o2v_batch.tokens import (
    TokenIds,
    check_sequence,
    device_batch_shape,
    embed_ids,
    fast_ids,
    plain_ids,
)

INPUT_NAMES = ("in0", "in1")
PAIR = 2  # record kinds: 0 = in0 only, 1 = in1 only, 2 = both
_MISSING = object()


class Server:
    """Serves mini-batches with one model on one device."""

    def __init__(self, model_dir: str, device: str, options: ServingOptions):
        self.options = options
        self.device = torch.device(device)
        self.network = load_network(
            model_dir,
            device,
            encoders_only=options.mode == "embedding",
            precision=options.precision,
        )
        # Embeddings come back as float32; the head takes them in the network's dtype.
        self.dtype = next(self.network.parameters()).dtype
        hp = self.network.hp
        self.enc_dim = hp.enc_dim
        self.vocab = [hp.encoder(i).vocab_size for i in (0, 1)]
        self.max_lens = [hp.encoder(i).max_seq_len for i in (0, 1)]
        if options.infer_max_seqlens:
            self.max_lens = [
                min(m, c) for m, c in zip(self.max_lens, options.infer_max_seqlens, strict=True)
            ]
        self.token_budget, self.max_rows = device_batch_shape(hp, self.device)
        self.input_filter = _filter_or_none(options.input_filter)
        self.output_filter = _filter_or_none(options.output_filter)
        self.join = options.join_source == "Input"

    def serve(
        self, positions: Sequence[int], records: Sequence[bytes], content_type: str, accept: str
    ) -> BatchResult:
        batch = _Batch(self, positions, records, position_key(content_type))
        try:
            batch.parse()
            batch.predict()
            batch.result.payload = batch.encode(codec_for(accept))
        except _Failed:
            pass
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
        self.ids: list[TokenIds | None] = [None, None]  # per encoder input, once read
        self.outputs: list[Any] = [None] * len(records)
        # When every record is one input's, in order: their (n, enc_dim) embeddings,
        # turned into outputs only if the codec needs them one by one.
        self.vectors: np.ndarray | None = None

    def bad(self, i: int, problem: str) -> None:
        if self.server.options.on_bad_record == "fail":
            self.result.error_pos, self.result.error = self.positions[i], problem
            raise _Failed
        self.errors[i] = problem
        self.kinds[i] = -1
        self.result.bad_records += 1

    # -- parsing ----------------------------------------------------------

    def parse(self) -> None:
        if not self._parse_plain():
            self._parse_each()

    def _parse_plain(self) -> bool:
        """Reads a mini-batch whose records are all plain `{"in0":[ids]}`, all
        `{"in1":[ids]}` or all `{"in0":[ids],"in1":[ids]}` pairs (where the mode takes
        pairs) without the JSON parser; False when it is anything else."""
        server, n = self.server, len(self.records)
        if self.sources is not None or server.input_filter is not None or not n:
            return False
        shapes = [(0,), (1,)]
        if server.options.mode != "embedding":
            # The first record's key count says which shape to try first.
            shapes.insert(0 if self.records[0].count(b'":') == 2 else 2, (0, 1))
        for encoders in shapes:
            inputs = [(INPUT_NAMES[enc], server.vocab[enc]) for enc in encoders]
            ids = plain_ids(self.records, inputs)
            if ids is not None:
                self.kinds = [encoders[0] if len(encoders) == 1 else PAIR] * n
                for enc, checked in zip(encoders, ids, strict=True):
                    self.rows[enc].extend(range(n))
                    self.ids[enc] = checked
                return True
        return False

    def _parse_each(self) -> None:
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
                    got = json_type(obj)
                    if flt is None:
                        raise BadRecordError(f"record is not a JSON object (got {got})")
                    raise BadRecordError(
                        f"--input-filter '{self.server.options.input_filter}' gave {got}, "
                        'not a JSON object with "in0"/"in1"'
                    )
                s0, s1 = obj.get("in0", _MISSING), obj.get("in1", _MISSING)
            except orjson.JSONDecodeError as exc:
                self.bad(i, malformed_json(exc, data, self.error_key == "line"))
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
            u, v = (
                embeddings[enc][torch.from_numpy(where[enc][pairs]).to(self.server.device)]
                for enc in (0, 1)
            )
            head, dtype = self.server.network.predict_from_embeddings, self.server.dtype
            scores = head(u.to(dtype), v.to(dtype)).float().cpu().numpy()
            # Exactly the hosted algorithm's response: classification and regression
            # alike carry "scores" only (predicted_label belongs to other algorithms).
            for j, i in enumerate(pairs.tolist()):
                self.outputs[i] = {"scores": scores[j]}
        for enc in (0, 1):
            rows = np.flatnonzero(kinds == enc)
            if len(rows) == len(self.records):  # rows and embeddings in the same order
                self.vectors = embeddings[enc].float().cpu().numpy()
            elif len(rows):
                vectors = embeddings[enc].float().cpu().numpy()
                for i, j in zip(rows.tolist(), where[enc][rows].tolist(), strict=True):
                    self.outputs[i] = {"embeddings": vectors[j]}

    def _embed(self, enc: int) -> torch.Tensor | None:
        """Embeddings of one encoder's inputs, in row order, from length-sorted token-budget batches."""
        server = self.server
        checked = self.ids[enc]  # read without the parser, if the batch was plain
        if checked is None and self._drop_unpaired(enc):
            checked = fast_ids(self.seqs[enc], server.vocab[enc])
        if checked is None:
            self._drop_bad(enc)
            checked = fast_ids(self.seqs[enc], server.vocab[enc])
        if not self.rows[enc]:
            return None
        checked, truncated = checked.truncate(server.max_lens[enc])
        self.result.truncated += truncated
        return embed_ids(
            server.network, checked, enc, server.token_budget, server.max_rows, server.device
        )

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

    def encode(self, codec: Codec) -> bytes:
        """The responses, one per record, as one fragment."""
        plain = not (self.errors or self.sources is not None)
        if self.vectors is not None:
            if plain and isinstance(codec, TextCodec):
                return codec.encode_embeddings(self.vectors)
            self.outputs = [{"embeddings": row} for row in self.vectors]
        if isinstance(codec, ColumnarCodec):
            fields = self._columnar_fields(codec)
            return codec.encode_rows(self.positions, self.outputs, self.errors, fields)
        if plain:
            return codec.encode_predictions(self.outputs)
        return codec.encode(self._responses())

    def _columnar_fields(self, codec: ColumnarCodec) -> dict[int, dict]:
        """Marks the predictions a columnar format has no place for as bad; with
        --join-source Input, the fields each record adds as columns."""
        for i in codec.refused(self.outputs):
            self.bad(i, NPY_PAIRS)
        fields: dict[int, dict] = {}
        if self.server.join:
            for i, prediction in enumerate(self.outputs):
                if i not in self.errors and (joined := self._fields(i, prediction)):
                    fields[i] = joined
        return fields

    def _fields(self, i: int, prediction: dict) -> dict | None:
        """The joined input's fields that become columns (the prediction has its own)."""
        out = join_input(self.sources[i], prediction)
        try:
            if self.server.output_filter is not None:
                out = self.server.output_filter(out)
            if type(out) is not dict:
                raise BadRecordError(
                    f"--output-filter gave {json_type(out)}: columns need a JSON object"
                )
        except O2VError as exc:
            self.bad(i, str(exc))
            return None
        out.pop("SageMakerOutput", None)
        taken = [name for name in OUR_COLUMNS if name in out]
        if taken:
            self.bad(
                i,
                f'input field "{taken[0]}" has the name of an output column: '
                "leave it out with --output-filter",
            )
            return None
        return out

    def _responses(self) -> Iterator[Any]:
        """Each record's response: its prediction (joined, filtered) or its error object."""
        server = self.server
        for i, prediction in enumerate(self.outputs):
            if i in self.errors:
                yield self._error(i)
                continue
            out = join_input(self.sources[i], prediction) if server.join else prediction
            if server.output_filter is not None:
                try:
                    out = server.output_filter(out)
                except O2VError as exc:
                    self.bad(i, str(exc))
                    yield self._error(i)
                    continue
            yield out

    def _error(self, i: int) -> dict:
        """What a bad record's place holds under --on-bad-record emit-error."""
        return error_object(self.errors[i], self.positions[i], self.error_key)


def malformed_json(exc: orjson.JSONDecodeError, data: bytes, one_line: bool) -> str:
    """orjson's complaint with one position, inside the record: `column 13: malformed
    JSON: ...` for a jsonlines record (one line), `character 13: ...` for an instance of a
    JSON document; the record's own place (line, instance) is added to it. orjson's
    message also carries its own "line 1 column 13 (char 12)", which would read as a
    second position; and for invalid UTF-8 it always says char 0."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        at, problem = len(data[: bad.start].decode("utf-8")), "not valid UTF-8"
    else:
        at, problem = exc.pos, exc.msg
    return f"{'column' if one_line else 'character'} {at + 1}: malformed JSON: {problem}"


def _filter_or_none(expr: str) -> Callable[[Any], Any] | None:
    return None if expr.strip() == "$" else compile_filter(expr)


def create_server(model_dir: str, device: str, options: ServingOptions, threads: int) -> Server:
    """The worker factory (protocol.DEFAULT_FACTORY): torch's threads, then the model."""
    torch.set_num_threads(threads)
    return Server(model_dir, device, options)
