"""Bad input in whole transform jobs: every case of the decided behaviour table, under
both --on-bad-record settings, through the CLI.

Every case is one shard of one input folder, so the whole table costs three transform
runs (fail, emit-error and a clean run of the good records), not one run per case.
test_inference.py serves the table's bad records to the Server directly.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import TINY, make_model, random_records, read_predictions, write_json, write_jsonl

# Whole jobs through the CLI.
pytestmark = pytest.mark.slow

V = TINY["enc0_vocab_size"]
# Large enough for the 1000-level nesting case (2 KB), small enough for many mini-batches.
MAX_PAYLOAD = 0.004
CAP = int(MAX_PAYLOAD * 2**20)
RANGE = f"vocab size is {V} (ids must be in 0..{V - 1})"
JSONL, JSON = "application/jsonlines", "application/json"
IN01 = '"in0"/"in1"'


def malformed(line: bytes) -> str:
    """The decided message for a line orjson rejects: its own words, at the column where
    it stopped, with none of its own "line 1 column 14 (char 13)"."""
    try:
        orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        return f"column {exc.pos + 1}: malformed JSON: {exc.msg}"
    raise AssertionError(f"{line!r} is valid JSON")


def sized_record(size: int) -> bytes:
    """A well-formed record of exactly `size` bytes: only its size makes it bad."""
    body = b'{"in0": [' + b", ".join([b"1"] * (size // 4)) + b"]"
    assert len(body) < size
    return body + b" " * (size - len(body) - 1) + b"}"


@dataclass(frozen=True, eq=False)
class OneOf:
    """More than one message is acceptable: any of `exact`, or one starting with a prefix."""

    exact: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()

    def __eq__(self, got: object) -> bool:
        return isinstance(got, str) and (got in self.exact or got.startswith(self.prefixes))


def nested(levels: int) -> bytes:
    return b'{"in0": ' + b"[" * levels + b"1" + b"]" * levels + b"}"


@dataclass(frozen=True)
class Case:
    """One shard. `layout`: "g" is the next good record, "B" the bad one, other strings
    are literal (blank or whitespace-only) lines. JSON cases lay out `instances` instead."""

    id: str
    bad: bytes | None = None
    problem: str | OneOf | None = None
    layout: tuple[str, ...] = ("g", "g", "g", "B", "g", "g")
    eol: bytes = b"\n"
    bom: bool = False
    final_eol: bool = True
    json: bool = False

    @property
    def name(self) -> str:
        return f"{self.id}.json" if self.json else f"{self.id}.jsonl"


CASES = [
    Case("malformed-json", b'{"in0": [1, 2', "column 14: malformed JSON: unexpected end of data"),
    Case("not-an-object", b"[1, 2]", "record is not a JSON object (got an array)"),
    Case("neither-input", b'{"x": 1}', 'record has neither "in0" nor "in1"'),
    Case(
        "pair-in-embedding-mode",
        b'{"in0": [1], "in1": [2]}',
        'record has both "in0" and "in1", but the mode is embedding '
        "(pairs need --mode auto or classification)",
        layout=("B", "g", "g"),
    ),
    Case("float-id", b'{"in0": [1, 2.5]}', "in0 has a token id that is not an integer: 2.5"),
    Case("string-id", b'{"in0": ["a"]}', 'in0 has a token id that is not an integer: "a"'),
    Case("boolean-id", b'{"in0": [true]}', "in0 has a token id that is not an integer: true"),
    Case("nested-id", b'{"in0": [[1]]}', "in0 has a token id that is not an integer: [1]"),
    Case("negative-id", b'{"in1": [-1]}', f"in1 id -1 is out of range: {RANGE}"),
    Case("id-equal-to-vocab", b'{"in0": [%d]}' % V, f"in0 id {V} is out of range: {RANGE}"),
    Case("empty-sequence", b'{"in0": []}', "in0 is empty: it needs at least one token id"),
    Case("sequence-not-a-list", b'{"in0": "abc"}', "in0 must be a list of token ids, got a string"),
    Case(
        "line-over-payload-cap",
        sized_record(5000),
        f"record is 5,000 bytes, over the --max-payload cap of {CAP:,} bytes",
        layout=("g", "g", "B", "g"),
    ),
    Case(
        "blank-and-whitespace-lines",
        b'{"in1": [%d]}' % V,
        f"in1 id {V} is out of range: {RANGE}",
        layout=("", "g", "", "g", "   ", "\t", "g", "B", "g", "\t \r", ""),
    ),
    Case("crlf", layout=("g",) * 8, eol=b"\r\n"),
    Case("crlf-bad-line", b"[1, 2]", "record is not a JSON object (got an array)", eol=b"\r\n"),
    Case("utf8-bom", layout=("g",) * 5, bom=True),
    Case(
        "bom-then-bad-first-line",
        b"[1]",
        "record is not a JSON object (got an array)",
        layout=("B", "g"),
        bom=True,
    ),
    Case("no-trailing-newline", layout=("g",) * 5, final_eol=False),
    Case(
        "no-trailing-newline-bad-last-line",
        b"{}",
        'record has neither "in0" nor "in1"',
        layout=("g", "g", "B"),
        final_eol=False,
    ),
    Case(
        "invalid-utf8",
        b'{"in0": [1, 2], "tag": "\xff\xfe"}',
        "column 25: malformed JSON: not valid UTF-8",
    ),
    Case("empty-file", layout=()),
    Case(
        "very-large-number",
        b'{"in0": [99999999999999999999999]}',
        OneOf(
            exact=(
                "in0 has a token id that is not an integer: 1e+23",
                f"in0 id 99999999999999999999999 is out of range: {RANGE}",
            ),
            prefixes=("column ",),
        ),
    ),
    Case(
        "deeply-nested",
        nested(1000),
        OneOf(prefixes=("column ", "in0 has a token id that is not an integer: [")),
    ),
    Case("nested-beyond-parser-depth", nested(1500), malformed(nested(1500))),
    Case(
        "json-not-an-object",
        b"[1, 2]",
        "record is not a JSON object (got an array)",
        layout=("g", "g", "B", "g"),
        json=True,
    ),
    Case(
        "json-id-out-of-range",
        b'{"in0": [1, %d]}' % (V + 5),
        f"in0 id {V + 5} is out of range: {RANGE}",
        layout=("B", "g", "g"),
        json=True,
    ),
    Case(
        "json-malformed-element",
        b'{"in0": [1,,2]}',
        "character 12: malformed JSON: unexpected character, expected a JSON value",
        layout=("g", "B"),
        json=True,
    ),
    Case(
        "json-element-over-payload-cap",
        sized_record(5000),
        f"record is 5,000 bytes, over the --max-payload cap of {CAP:,} bytes",
        layout=("g", "B", "g"),
        json=True,
    ),
]

# Documents that are broken as a whole: the shard fails under both settings.
EXPECTED = 'not a JSON request: expected {"instances": [...]}, found'
BROKEN_DOCUMENTS = {
    "empty-document.json": (b"", f"{EXPECTED} the end of the document at byte 0"),
    "no-instances.json": (b'{"foo": [{"in0": [1]}]}', f'{EXPECTED} no "instances" key'),
    "instances-not-a-list.json": (b'{"instances": {"in0": [1]}}', f"{EXPECTED} '{{' at byte 14"),
    "truncated-document.json": (
        b'{"instances": [{"in0": [1]}, {"in0": [2',
        "JSON document ends inside instances[1]",
    ),
}


@dataclass
class Shard:
    data: bytes
    good: list[dict]  # the good records, in order
    # What each record's place holds, in order: the index of a good record, or the bad
    # record's position (line number, or index in `instances`).
    places: list[tuple[str, int]]

    @property
    def bad_pos(self) -> int | None:
        return next((pos for kind, pos in self.places if kind == "bad"), None)


def build_shard(case: Case, seed: int) -> Shard:
    good_pool = iter(random_records(len(case.layout), seed=seed, pairs=False))
    parts, good, places = [], [], []
    for token in case.layout:
        if token == "g":
            record = next(good_pool)
            parts.append(json.dumps(record).encode())
            places.append(("good", len(good)))
            good.append(record)
        elif token == "B":
            parts.append(case.bad)
            places.append(("bad", len(parts) - (1 if case.json else 0)))
        else:
            parts.append(token.encode())
    if case.json:
        data = b'{"instances": [' + b", ".join(parts) + b"]}\n"
    else:
        data = case.eol.join(parts) + (case.eol if case.final_eol and parts else b"")
    return Shard(b"\xef\xbb\xbf" + data if case.bom else data, good, places)


SHARDS = {case.name: build_shard(case, seed=i) for i, case in enumerate(CASES)}


def transform(tmp: Path, input_dir: Path, name: str, model: Path, on_bad_record: str):
    out, summary = tmp / f"out-{name}", tmp / f"summary-{name}.json"
    done = subprocess.run(
        [
            *(sys.executable, "-m", "o2v_batch", "transform", str(input_dir), str(out)),
            *("--model", str(model), "--mode", "embedding", "--max-payload", str(MAX_PAYLOAD)),
            *("--on-bad-record", on_bad_record, "--summary", str(summary), "--no-progress"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done, out, json.loads(summary.read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The three runs over the case folder: `fail`, `emit-error`, and `clean` (good records only)."""
    tmp = tmp_path_factory.mktemp("bad-input")
    model = make_model(tmp / "model")
    (tmp / "in").mkdir()
    for name, shard in SHARDS.items():
        (tmp / "in" / name).write_bytes(shard.data)
        (write_json if name.endswith(".json") else write_jsonl)(tmp / "clean" / name, shard.good)
    for name, (data, _) in BROKEN_DOCUMENTS.items():
        (tmp / "in" / name).write_bytes(data)
    results = {"input": tmp / "in"}
    for setting in ("fail", "emit-error"):
        results[setting] = transform(tmp, tmp / "in", setting, model, setting)
    results["clean"] = transform(tmp, tmp / "clean", "clean", model, "fail")
    assert results["clean"][0].returncode == 0, results["clean"][0].stderr
    return results


def assert_same_predictions(got: dict, expected: dict) -> None:
    assert got.keys() == expected.keys() == {"embeddings"}
    np.testing.assert_allclose(got["embeddings"], expected["embeddings"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_fail_setting(runs, case):
    """The shard with the bad record fails alone, with `<shard>: <where>: <problem>`."""
    done, out, summary = runs["fail"]
    shard, shard_uri = SHARDS[case.name], str(runs["input"] / case.name)
    reasons = {f["shard"]: f["reason"] for f in summary["failed"]}
    if shard.bad_pos is None:
        assert shard_uri not in reasons
        # Served normally: the same bytes as the clean LF run of the same records.
        clean_out = runs["clean"][1] / f"{case.name}.out"
        assert (out / f"{case.name}.out").read_bytes() == clean_out.read_bytes()
        return
    where = f"instances[{shard.bad_pos}]" if case.json else f"line {shard.bad_pos}"
    reason = reasons[shard_uri]
    # One position: a problem placed inside the record joins the record's place.
    inside = reason.startswith(f"{shard_uri}: {where}, ")
    prefix = f"{shard_uri}: {where}{', ' if inside else ': '}"
    assert reason.startswith(prefix)
    assert reason[len(prefix) :] == case.problem
    assert inside == reason[len(prefix) :].startswith(("column ", "character "))
    assert f"o2v-batch: shard failed: {reason}" in done.stderr
    assert not (out / f"{case.name}.out").exists()


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_emit_error_setting(runs, case):
    """The bad record's place holds the error object; every good one the clean run's prediction."""
    _, out, summary = runs["emit-error"]
    shard, shard_uri = SHARDS[case.name], str(runs["input"] / case.name)
    assert shard_uri not in {f["shard"] for f in summary["failed"]}
    text = (out / f"{case.name}.out").read_text()
    if case.json:
        got = json.loads(text)["predictions"]
    else:
        lines = text.split("\n")
        assert lines.pop() == ""  # the output ends with a newline, or is empty
        got = [json.loads(line) for line in lines]
    clean = read_predictions(runs["clean"][1] / f"{case.name}.out") if shard.good else []
    assert len(got) == len(shard.places)
    for prediction, (kind, index) in zip(got, shard.places, strict=True):
        if kind == "good":
            assert_same_predictions(prediction, clean[index])
        else:
            key = "record" if case.json else "line"
            assert prediction.keys() == {"error"}
            assert prediction["error"].keys() == {"message", key}
            assert prediction["error"][key] == index
            assert prediction["error"]["message"] == case.problem
    expected_bad = 0 if shard.bad_pos is None else 1
    assert summary["bad_records_by_shard"].get(shard_uri, 0) == expected_bad


@pytest.mark.parametrize("setting", ["fail", "emit-error"])
@pytest.mark.parametrize("name", sorted(BROKEN_DOCUMENTS))
def test_broken_json_document_fails_its_shard_under_both_settings(runs, setting, name):
    done, out, summary = runs[setting]
    shard_uri = str(runs["input"] / name)
    reason = f"{shard_uri}: {BROKEN_DOCUMENTS[name][1]}"
    assert {"shard": shard_uri, "reason": reason} in summary["failed"]
    assert f"o2v-batch: shard failed: {reason}" in done.stderr
    assert not (out / f"{name}.out").exists()


@pytest.mark.parametrize("setting", ["fail", "emit-error"])
def test_job_summary_and_exit_status(runs, setting):
    done, out, summary = runs[setting]
    bad = {str(runs["input"] / c.name) for c in CASES if SHARDS[c.name].bad_pos is not None}
    failed = {str(runs["input"] / name) for name in BROKEN_DOCUMENTS}
    if setting == "fail":
        failed |= bad
    assert done.returncode == 1
    assert {f["shard"] for f in summary["failed"]} == failed
    assert summary["shards_failed"] == len(failed)
    assert summary["shards_ok"] == len(CASES) + len(BROKEN_DOCUMENTS) - len(failed)
    expected_by_shard = {} if setting == "fail" else dict.fromkeys(bad, 1)
    assert summary["bad_records_by_shard"] == expected_by_shard
    assert summary["bad_records"] == len(expected_by_shard)
    # A job with a failed shard writes no _SUCCESS, and no shard leaves debris: only
    # the outputs, and the progress a --resume counts the finished shards from.
    written = sorted(p.name for p in out.iterdir())
    expected = sorted(f"{c.name}.out" for c in CASES if str(runs["input"] / c.name) not in failed)
    assert written == ["_PROGRESS", *expected]
    progress = json.loads((out / "_PROGRESS").read_text())
    assert progress["shards_failed"] == summary["shards_failed"]
