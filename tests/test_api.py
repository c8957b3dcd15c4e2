"""The public Python API: load_model and Model's embed and score."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_model, random_records
from tiny_models import VOCAB, build, embed, random_rows, saved, score_pair, tiny

from o2v_batch.api import load_model
from o2v_batch.errors import BadRecordError, O2VError
from o2v_batch.execution.device_loop import DeviceLoop
from o2v_batch.execution.inference import Server
from o2v_batch.execution.protocol import ServingOptions
from o2v_batch.model.network import count_parameters


def test_embedding_mode_loads_encoders_only_and_refuses_to_score(tmp_path: Path) -> None:
    _, network = saved(tmp_path)
    model = load_model(str(tmp_path), mode="embedding")
    assert (model.mode, model.device, model.hp) == ("embedding", torch.device("cpu"), network.hp)
    assert count_parameters(model.network) == count_parameters(build(tiny(), encoders_only=True))
    rows = random_rows(3)
    np.testing.assert_allclose(model.embed(rows), embed(network, rows).numpy(), atol=1e-6)
    with pytest.raises(O2VError) as caught:
        model.score(rows, rows)
    assert str(caught.value) == (
        "score needs the whole network, but the model was loaded in embedding mode "
        "(encoders only); load it with mode='classification'"
    )


def test_load_model_refuses_an_unknown_mode(tmp_path: Path) -> None:
    saved(tmp_path)
    with pytest.raises(
        O2VError, match=r"^mode must be one of classification, embedding, got 'auto'$"
    ):
        load_model(str(tmp_path), mode="auto")


@pytest.mark.parametrize("buckets", [False, True])
@pytest.mark.parametrize(("budget", "max_rows"), [(12, 512), (10_000, 3), (1, 512)])
def test_model_batches_sorted_by_length_keep_the_input_order(
    tmp_path: Path, budget: int, max_rows: int, buckets: bool
) -> None:
    _, network = saved(tmp_path, enc0_network="bilstm")
    model = load_model(str(tmp_path))
    # Small device batches: the 11 rows take several, cut by tokens or by rows.
    model.loop = DeviceLoop(model.network, "cpu", budget, max_rows, buckets=buckets)
    rows = random_rows(11, seed=9)
    alone = np.concatenate([embed(network, [row]).numpy() for row in rows])
    np.testing.assert_allclose(model.embed(rows), alone, atol=1e-5)
    others = random_rows(11, seed=10)
    with torch.inference_mode():
        pairs = [score_pair(network, a, b) for a, b in zip(rows, others, strict=True)]
    np.testing.assert_allclose(model.score(rows, others), torch.cat(pairs).numpy(), atol=1e-5)
    assert model.embed([]).shape == (0, 8)
    assert model.score([], []).shape == (0, 2)


def test_model_takes_the_device_batch_limits_of_serving(tmp_path: Path, monkeypatch) -> None:
    saved(tmp_path)
    model = load_model(str(tmp_path))
    server = Server(str(tmp_path), "cpu", ServingOptions())
    limits = model.loop.planner.token_budget, model.loop.planner.max_rows
    assert (
        limits
        == (server.loop.planner.token_budget, server.loop.planner.max_rows)
        == (2**18 // 8, 8192)
    )
    monkeypatch.setenv("O2V_DEVICE_BATCH_TOKENS", "300")
    assert load_model(str(tmp_path)).loop.planner.token_budget == 300


def test_model_truncates_to_max_seq_len_and_counts(tmp_path: Path) -> None:
    _, network = saved(tmp_path)
    model = load_model(str(tmp_path))
    long = list(range(1, 21))
    got = model.embed([long, [1, 2], long])
    np.testing.assert_allclose(got[0], embed(network, [long[:12]])[0].numpy(), atol=1e-6)
    assert model.truncated == 2
    model.score([long], [long])
    assert model.truncated == 4


def test_model_names_the_bad_sequence(tmp_path: Path) -> None:
    saved(tmp_path)
    model = load_model(str(tmp_path))
    with pytest.raises(BadRecordError) as caught:
        model.embed([[1, 2], [3], [4, VOCAB, 5]], encoder=1)
    assert (
        str(caught.value)
        == "sequence 2: in1 id 50 is out of range: vocab size is 50 (ids must be in 0..49)"
    )
    with pytest.raises(BadRecordError, match=r"^sequence 0: in1 is empty"):
        model.score([[1]], [[]])
    with pytest.raises(O2VError, match=r"^in0 and in1 must have as many sequences: 2 != 1$"):
        model.score([[1], [2]], [[1]])


def test_package_exposes_load_model() -> None:
    import o2v_batch

    assert o2v_batch.load_model is load_model


# Measured on these tiny models (200 random records): bf16's largest error was 0.9% of the
# largest embedding entry and 0.0017 on a score; fp16's 0.2% and 0.0002. The bounds leave
# room for other seeds.
PRECISION_BOUNDS = {"bf16": (0.02, 0.005), "fp16": (0.005, 0.001)}


@pytest.mark.parametrize("network_type", ["hcnn", "bilstm", "pooled_embedding"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_lower_precision_stays_close_to_fp32(
    tmp_path: Path, network_type: str, precision: str
) -> None:
    folder = make_model(tmp_path, enc0_network=network_type, enc1_network=network_type)
    records = random_records(200, seed=3)
    in0 = [r.get("in0", [1]) for r in records]
    in1 = [r.get("in1", [2]) for r in records]
    exact, low = load_model(str(folder)), load_model(str(folder), precision=precision)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    assert {p.dtype for p in low.network.parameters()} == {dtype}
    embedding_bound, score_bound = PRECISION_BOUNDS[precision]
    for encoder, sequences in enumerate((in0, in1)):
        want, got = exact.embed(sequences, encoder), low.embed(sequences, encoder)
        assert got.dtype == np.float32
        assert not np.array_equal(got, want)  # it really ran in the lower precision
        assert np.abs(got - want).max() <= embedding_bound * np.abs(want).max()
    got = low.score(in0, in1)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, exact.score(in0, in1), rtol=0, atol=score_bound)


def test_load_model_refuses_an_unknown_precision(tmp_path: Path) -> None:
    saved(tmp_path)
    with pytest.raises(
        O2VError, match=r"^precision must be one of fp32, tf32, bf16, fp16, got 'fp64'$"
    ):
        load_model(str(tmp_path), precision="fp64")
