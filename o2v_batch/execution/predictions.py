"""A mini-batch's predictions turned into its responses: one fragment in the accepted
type, each prediction joined with its input and filtered when the job says so, and each
bad record's error object in its place. No torch: inference.py fills the predictions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from o2v_batch.errors import BadRecordError, O2VError
from o2v_batch.execution.records import ParsedRecords, RecordRules
from o2v_batch.inputs.jsonpath import join_input, json_type
from o2v_batch.outputs.columnar import NPY_PAIRS, OUR_COLUMNS, ColumnarCodec
from o2v_batch.outputs.responses import Codec, TextCodec, error_object


class Predictions(ParsedRecords):
    """A mini-batch's records and, once predicted, an output per record; encode() makes
    them its responses (an output's complaint marks its record bad)."""

    def __init__(
        self,
        rules: RecordRules,
        positions: Sequence[int],
        records: Sequence[bytes],
        error_key: str,
        join: bool,
        output_filter: Callable[[Any], Any] | None,
    ):
        super().__init__(rules, positions, records, error_key)
        self.join = join  # --join-source Input
        self.output_filter = output_filter
        self.outputs: list[Any] = [None] * len(records)
        # When every record is one input's, or every one a pair, in order: their
        # (n, width) embeddings or scores (under `key`), turned into outputs only if the
        # codec needs them one by one.
        self.vectors: np.ndarray | None = None
        self.key = "embeddings"

    def encode(self, codec: Codec) -> bytes:
        """The responses, one per record, as one fragment."""
        plain = not (self.errors or self.sources is not None)
        if self.vectors is not None:
            if plain and isinstance(codec, TextCodec):
                return codec.encode_column(self.key, self.vectors)
            if plain and isinstance(codec, ColumnarCodec) and codec.takes(self.key):
                return codec.encode_column(self.positions, self.key, self.vectors)
            self.outputs = [{self.key: row} for row in self.vectors]
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
        if self.join:
            for i, prediction in enumerate(self.outputs):
                if i not in self.errors and (joined := self._fields(i, prediction)):
                    fields[i] = joined
        return fields

    def _fields(self, i: int, prediction: dict) -> dict | None:
        """The joined input's fields that become columns (the prediction has its own)."""
        out = join_input(self.sources[i], prediction)
        try:
            if self.output_filter is not None:
                out = self.output_filter(out)
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
        for i, prediction in enumerate(self.outputs):
            if i in self.errors:
                yield self._error(i)
                continue
            out = join_input(self.sources[i], prediction) if self.join else prediction
            if self.output_filter is not None:
                try:
                    out = self.output_filter(out)
                except O2VError as exc:
                    self.bad(i, str(exc))
                    yield self._error(i)
                    continue
            yield out

    def _error(self, i: int) -> dict:
        """What a bad record's place holds under --on-bad-record emit-error."""
        return error_object(self.errors[i], self.positions[i], self.error_key)
