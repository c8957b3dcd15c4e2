"""Serve's worker server: a request's infer_max_seqlens caps that request alone, exactly
as transform's --infer-max-seqlens caps a whole job."""

from __future__ import annotations

import json

import pytest
from helpers import make_model, random_records

from o2v_batch.config import ServeConfig
from o2v_batch.execution import worker
from o2v_batch.execution.inference import Server
from o2v_batch.execution.pool import WorkerPool
from o2v_batch.execution.protocol import DEVICE, HOST, Done, ServingOptions
from o2v_batch.serve import server
from o2v_batch.serve.worker import create_server

JSON, JSONLINES = "application/json", "application/jsonlines"


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return str(make_model(tmp_path_factory.mktemp("model") / "model"))


def _batch(n: int = 40) -> tuple[list[int], list[bytes]]:
    records = random_records(n, seed=3)  # some longer than the model's max_seq_len
    return list(range(n)), [json.dumps(r).encode() for r in records]


@pytest.mark.parametrize("content_type", [JSON, JSONLINES])
def test_a_requests_caps_answer_as_transforms_option_does(model, content_type):
    positions, records = _batch()
    server = create_server(model, "cpu", ServingOptions(), 1)
    capped = server.serve(positions, records, f"{content_type};infer_max_seqlens=5,3", JSON)
    job = Server(model, "cpu", ServingOptions(infer_max_seqlens=(5, 3)))
    expected = job.serve(positions, records, content_type, JSON)
    assert capped == expected
    assert capped.truncated > 0


def test_caps_do_not_outlive_their_request(model):
    positions, records = _batch()
    server = create_server(model, "cpu", ServingOptions(), 1)
    server.serve(positions, records, f"{JSONLINES};infer_max_seqlens=2,2", JSONLINES)
    after = server.serve(positions, records, JSONLINES, JSONLINES)
    assert after == Server(model, "cpu", ServingOptions()).serve(
        positions, records, JSONLINES, JSONLINES
    )


def test_caps_above_the_models_lengths_change_nothing(model):
    positions, records = _batch()
    server = create_server(model, "cpu", ServingOptions(), 1)
    wide = server.serve(positions, records, f"{JSONLINES};infer_max_seqlens=5000,5000", JSON)
    assert wide == Server(model, "cpu", ServingOptions()).serve(positions, records, JSONLINES, JSON)


def test_a_gpu_hosts_host_workers_cap_a_request_as_whole_workers_do(model, monkeypatch):
    """On GPUs serve runs host workers and a device process (here on CPU, as tests may):
    the host workers' server is serve's own, so a request's caps hold there too."""
    monkeypatch.setattr(worker, "_split", True)
    specs = server._specs(ServeConfig(model=model, devices="cpu", workers=1), model)
    assert [spec.role for spec in specs] == [DEVICE, HOST]
    positions, records = _batch()
    with WorkerPool(specs, shared_memory=True) as pool:
        pool.submit(0, positions, records, f"{JSONLINES};infer_max_seqlens=5,3", JSON)
        events = []
        for _ in range(240):
            events += pool.poll(0.5)
            if events:
                break
    assert len(events) == 1 and isinstance(events[0], Done)
    job = Server(model, "cpu", ServingOptions(infer_max_seqlens=(5, 3)))
    expected = job.serve(positions, records, JSONLINES, JSON)
    assert events[0].result == expected and expected.truncated > 0
