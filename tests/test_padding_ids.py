"""Padding ids (0) inside a record's own ids change nothing: every encoder, every path.

A sequence that carries zeros (leading, trailing or inside) must give the embedding,
the scores and the response bytes of the same ids without them: through the Python API,
`transform` (the plain-record reader and the JSON parser's path) and `serve`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest
from helpers import TINY, make_model, write_jsonl
from hypothesis import given
from hypothesis import strategies as st

from o2v_batch import load_model
from o2v_batch.inputs.token_ids import fast_ids, plain_ids
from o2v_batch.model.tokens import TokenIds

V = TINY["enc0_vocab_size"]
# Each row's ids without zeros, and where the zeros go.
ROWS = [[5, 40, 7], [9], [3, 3, 8, 21, 50, 2], [17, 11]]
PLACES = ("leading", "trailing", "inside", "everywhere")
# (enc0, enc1): the three encoders, two models.
NETWORKS = [("hcnn", "bilstm"), ("pooled_embedding", "pooled_embedding")]


def with_zeros(row: list[int], place: str) -> list[int]:
    middle = [*row[:1], 0, 0, *row[1:]]
    return {
        "leading": [0, 0, *row],
        "trailing": [*row, 0, 0, 0],
        "inside": middle,
        "everywhere": [0, *middle, 0],
    }[place]


def padded(place: str) -> list[list[int]]:
    return [with_zeros(row, place) for row in ROWS]


def records(place: str | None, extra: bool = False) -> list[dict]:
    """in0-only, in1-only and pair records of ROWS (with zeros at `place`); `extra` adds a
    key the plain-record reader does not take, so the JSON parser reads them."""
    rows = ROWS if place is None else padded(place)
    out = [{"in0": r} for r in rows] + [{"in1": r} for r in rows]
    out += [{"in0": a, "in1": b} for a, b in zip(rows, reversed(rows), strict=True)]
    return [{**r, "id": i} for i, r in enumerate(out)] if extra else out


@pytest.fixture(scope="module", params=NETWORKS, ids=lambda n: "+".join(n))
def model_dir(request, tmp_path_factory) -> Path:
    enc0, enc1 = request.param
    return make_model(
        tmp_path_factory.mktemp("model"), seed=3, enc0_network=enc0, enc1_network=enc1
    )


# ---------------------------------------------------------------- token ids


@given(
    st.lists(st.lists(st.integers(1, V - 1), min_size=1, max_size=8), min_size=1, max_size=6),
    st.data(),
)
def test_ids_read_with_zeros_are_the_ids_without_them(rows, data):
    with_pad = []
    for row in rows:  # zeros anywhere, the real ids in their order
        row = list(row)
        for _ in range(data.draw(st.integers(0, 3))):
            row.insert(data.draw(st.integers(0, len(row))), 0)
        with_pad.append(row)
    want = fast_ids(rows, V)
    for got in (
        fast_ids(with_pad, V),
        plain_ids([orjson.dumps({"in0": r}) for r in with_pad], [("in0", V)])[0],
    ):
        np.testing.assert_array_equal(got.ids, want.ids)
        np.testing.assert_array_equal(got.lengths, want.lengths)


@pytest.mark.parametrize("place", PLACES)
def test_both_readers_leave_zeros_out_of_pairs_too(place):
    lines = [orjson.dumps(r) for r in records(place)[2 * len(ROWS) :]]
    in0, in1 = plain_ids(lines, [("in0", V), ("in1", V)])
    np.testing.assert_array_equal(in0.ids, np.concatenate(ROWS))
    np.testing.assert_array_equal(in1.lengths, [len(r) for r in reversed(ROWS)])
    assert 0 not in fast_ids(padded(place), V).ids


def test_a_sequence_of_padding_only_has_length_zero_and_still_batches():
    ids = TokenIds.unpadded(np.array([0, 0, 4, 0]), np.array([2, 2]))
    np.testing.assert_array_equal(ids.lengths, [0, 1])
    np.testing.assert_array_equal(ids.ids, [4])
    batches = list(ids.device_batches(token_budget=64, max_rows=8))
    assert sorted(int(r) for rows, _ in batches for r in rows) == [0, 1]
    nothing = TokenIds.unpadded(np.array([0, 0]), np.array([2]))
    np.testing.assert_array_equal(nothing.padded(), [[0]])


# ---------------------------------------------------------------- the Python API


@pytest.mark.parametrize("place", PLACES)
def test_api_embeddings_and_scores_ignore_padding_ids(model_dir, place):
    model = load_model(str(model_dir))
    for encoder in (0, 1):
        np.testing.assert_allclose(
            model.embed(padded(place), encoder), model.embed(ROWS, encoder), atol=1e-6
        )
    np.testing.assert_allclose(
        model.score(padded(place), padded(place)[::-1]), model.score(ROWS, ROWS[::-1]), atol=1e-6
    )


def test_api_matches_the_network_fed_without_zeros(model_dir):
    """The reference: the network's own encode, which aligns ids itself, on rows that
    never had zeros."""
    import torch

    from o2v_batch.artifacts import load_network

    network = load_network(model_dir)
    width = max(map(len, ROWS))
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in ROWS])
    model = load_model(str(model_dir))
    for encoder in (0, 1):
        with torch.inference_mode():
            want = network.encode(tokens, encoder).numpy()
        np.testing.assert_allclose(model.embed(padded("everywhere"), encoder), want, atol=1e-6)


# ---------------------------------------------------------------- transform and serve


@pytest.mark.slow  # a whole job
def test_transform_outputs_ignore_padding_ids_on_both_reading_paths(model_dir, tmp_path):
    inputs = tmp_path / "in"
    write_jsonl(inputs / "clean.jsonl", records(None))
    for place in PLACES:
        write_jsonl(inputs / f"plain-{place}.jsonl", records(place))
        write_jsonl(inputs / f"parsed-{place}.jsonl", records(place, extra=True))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "o2v_batch", "transform", str(inputs), str(out)]
    done = subprocess.run(
        [*command, "--model", str(model_dir), "--workers", "1"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    want = [json.loads(line) for line in (out / "clean.jsonl.out").read_text().splitlines()]
    for place in PLACES:
        for name in (f"plain-{place}", f"parsed-{place}"):
            got = [
                json.loads(line) for line in (out / f"{name}.jsonl.out").read_text().splitlines()
            ]
            assert len(got) == len(want)
            for g, w in zip(got, want, strict=True):
                (key,) = w
                np.testing.assert_allclose(g[key], w[key], atol=1e-6, err_msg=name)
    # And the clean shard is what the API gives.
    model = load_model(str(model_dir))
    n = len(ROWS)
    np.testing.assert_allclose([w["embeddings"] for w in want[:n]], model.embed(ROWS), atol=1e-6)
    np.testing.assert_allclose(
        [w["scores"] for w in want[2 * n :]], model.score(ROWS, ROWS[::-1]), atol=1e-6
    )


@pytest.mark.parametrize(
    "model_dir",
    [NETWORKS[0], pytest.param(NETWORKS[1], marks=pytest.mark.slow)],  # a server each
    ids=lambda n: "+".join(n),
    indirect=True,
)
def test_serve_answers_ignore_padding_ids(model_dir, tmp_path):
    from test_serve import Served, invoke, serve_command

    served = Served(serve_command("--model", str(model_dir), "--workers", "1"), tmp_path / "log")
    try:
        served.wait_ready()
        body = b"".join(orjson.dumps(r) + b"\n" for r in records(None))
        status, _, want = invoke(served.port, body, "application/jsonlines")
        assert status == 200, want
        want_rows = [orjson.loads(line) for line in want.splitlines()]
        for place in PLACES:
            body = b"".join(orjson.dumps(r) + b"\n" for r in records(place))
            status, _, got = invoke(served.port, body, "application/jsonlines")
            assert status == 200, got
            for g, w in zip(map(orjson.loads, got.splitlines()), want_rows, strict=True):
                (key,) = w
                np.testing.assert_allclose(g[key], w[key], atol=1e-6, err_msg=place)
    finally:
        assert served.terminate() == 0, served.log.read_text()
