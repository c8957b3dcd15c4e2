"""A mini-batch's records up to the forward pass: JSON parsing, the input filter,
in0/in1, the mode's rule on pairs and the token-id checks, naming each bad record.

Numpy only: the workers (execution/inference.py) read every mini-batch with it, and
`transform --dry-run` checks records in the batch parent with the very same code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from o2v_batch.errors import BadRecordError, O2VError
from o2v_batch.execution.protocol import BatchResult, ServingOptions
from o2v_batch.inputs.jsonpath import compile_filter, json_type
from o2v_batch.inputs.token_ids import check_sequence, fast_ids, plain_ids
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.tokens import TokenIds

INPUT_NAMES = ("in0", "in1")
PAIR = 2  # record kinds: 0 = in0 only, 1 = in1 only, 2 = both
_MISSING = object()


@dataclass(frozen=True)
class RecordRules:
    """What makes a record good for one model and job."""

    vocab: tuple[int, int]  # per encoder input
    pairs_allowed: bool  # not in --mode embedding
    input_filter: Callable[[Any], Any] | None
    keep_sources: bool  # the parsed records are kept: a join or an output filter needs them
    fail_fast: bool  # --on-bad-record fail: the first bad record fails the mini-batch
    input_filter_text: str = "$"  # as given, for messages

    @classmethod
    def of(cls, hp: Hyperparameters, options: ServingOptions) -> RecordRules:
        return cls(
            vocab=(hp.encoder(0).vocab_size, hp.encoder(1).vocab_size),
            pairs_allowed=options.mode != "embedding",
            input_filter=filter_or_none(options.input_filter),
            keep_sources=options.join_source == "Input" or options.output_filter.strip() != "$",
            fail_fast=options.on_bad_record == "fail",
            input_filter_text=options.input_filter,
        )


class Failed(Exception):
    """A bad record under --on-bad-record fail: the mini-batch stops here."""


class ParsedRecords:
    """One mini-batch's records, read: each record's kind, its sequences by encoder
    input and, once checked, their ids; the bad ones' problems in the order met."""

    def __init__(
        self, rules: RecordRules, positions: Sequence[int], records: Sequence[bytes], error_key: str
    ):
        self.rules = rules
        self.positions = positions
        self.records = records
        self.error_key = error_key  # `line` or `record`: responses.position_key
        self.result = BatchResult(records=len(records))
        self.kinds = [-1] * len(records)
        self.sources: list[Any] | None = [None] * len(records) if rules.keep_sources else None
        self.errors: dict[int, str] = {}
        self.rows: tuple[list[int], list[int]] = ([], [])  # record index per encoder input
        self.seqs: tuple[list[Any], list[Any]] = ([], [])
        self.ids: list[TokenIds | None] = [None, None]  # per encoder input, once read or checked

    def bad(self, i: int, problem: str) -> None:
        """Record i is bad: Failed under --on-bad-record fail, else noted and left out."""
        if self.rules.fail_fast:
            self.result.error_pos, self.result.error = self.positions[i], problem
            raise Failed
        self.errors[i] = problem
        self.kinds[i] = -1
        self.result.bad_records += 1

    def parse(self) -> None:
        if not self._parse_plain():
            self._parse_each()

    def _parse_plain(self) -> bool:
        """Reads a mini-batch whose records are all plain `{"in0":[ids]}`, all
        `{"in1":[ids]}` or all `{"in0":[ids],"in1":[ids]}` pairs (where the mode takes
        pairs) without the JSON parser; False when it is anything else."""
        rules, n = self.rules, len(self.records)
        if self.sources is not None or rules.input_filter is not None or not n:
            return False
        shapes = [(0,), (1,)]
        if rules.pairs_allowed:
            # The first record's key count says which shape to try first.
            shapes.insert(0 if self.records[0].count(b'":') == 2 else 2, (0, 1))
        for encoders in shapes:
            inputs = [(INPUT_NAMES[enc], rules.vocab[enc]) for enc in encoders]
            ids = plain_ids(self.records, inputs)
            if ids is not None:
                self.kinds = [encoders[0] if len(encoders) == 1 else PAIR] * n
                for enc, checked in zip(encoders, ids, strict=True):
                    self.rows[enc].extend(range(n))
                    self.ids[enc] = checked
                return True
        return False

    def _not_an_object(self, obj: Any) -> str:
        """A record (or what the input filter made of it) that is no JSON object."""
        got = json_type(obj)
        if self.rules.input_filter is None:
            return f"record is not a JSON object (got {got})"
        return (
            f"--input-filter '{self.rules.input_filter_text}' gave {got}, "
            'not a JSON object with "in0"/"in1"'
        )

    def _parse_each(self) -> None:
        loads, keep, flt = orjson.loads, self.sources, self.rules.input_filter
        pairs_allowed = self.rules.pairs_allowed
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
                    raise BadRecordError(self._not_an_object(obj))
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

    def check(self) -> None:
        """Checks both encoder inputs' ids (in0 first) and keeps them for checked_ids:
        after it, only the output can still find a bad record."""
        for enc in (0, 1):
            self.ids[enc] = self.checked_ids(enc)

    def checked_ids(self, enc: int) -> TokenIds:
        """One encoder input's ids, in row order, once the bad ones are left out (after
        parse; in0 before in1, so a pair whose in0 is bad loses its in1 too)."""
        checked = self.ids[enc]  # read without the parser (a plain batch), or checked
        if checked is None and self._drop_unpaired(enc):
            checked = fast_ids(self.seqs[enc], self.rules.vocab[enc])
        if checked is None:
            self._drop_bad(enc)
            checked = fast_ids(self.seqs[enc], self.rules.vocab[enc])
        return checked

    def _drop_unpaired(self, enc: int) -> bool:
        """Drops in1 of pairs whose in0 was bad; True when nothing else needs a look."""
        rows, seqs = self.rows[enc], self.seqs[enc]
        if enc == 1 and self.errors:
            keep = [k for k, i in enumerate(rows) if self.kinds[i] != -1]
            rows[:], seqs[:] = [rows[k] for k in keep], [seqs[k] for k in keep]
        return bool(seqs)

    def _drop_bad(self, enc: int) -> None:
        """The slow path, once the batch check failed: record by record, to name the bad one."""
        name, vocab = INPUT_NAMES[enc], self.rules.vocab[enc]
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


def bad_records(
    rules: RecordRules, positions: Sequence[int], records: Sequence[bytes], error_key: str
) -> list[tuple[int, str]]:
    """Every bad record of a mini-batch as (position, problem), in the order a worker
    meets them: the first is the one that fails the mini-batch under --on-bad-record
    fail. What only the forward pass or the output can show (an output filter's
    complaint, a pair in a `.npy` output) is not found here."""
    parsed = ParsedRecords(replace(rules, fail_fast=False), positions, records, error_key)
    parsed.parse()
    parsed.check()
    return [(positions[i], problem) for i, problem in parsed.errors.items()]


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


def filter_or_none(expr: str) -> Callable[[Any], Any] | None:
    """A compiled JSONPath filter, or None for `$` (the whole record: nothing to do)."""
    return None if expr.strip() == "$" else compile_filter(expr)
