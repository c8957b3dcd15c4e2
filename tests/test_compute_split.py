"""Mini-batches shared by compute: a mini-batch holding more of the model's work than
one worker should do alone goes to the workers as consecutive pieces, written back
as one."""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

import numpy as np
import pytest
from conftest import examples
from helpers import make_model, random_records, write_json, write_jsonl
from hypothesis import given, settings
from hypothesis import strategies as st

from benchmarks.records import VOCAB, record_lines, zipf_cdf
from benchmarks.workloads import HEAVY_HYPERPARAMETERS
from o2v_batch.config import TransformConfig
from o2v_batch.inputs import batching
from o2v_batch.inputs.batching import MIN_PIECE_RECORDS, MiniBatch, split
from o2v_batch.inputs.formats import Lines
from o2v_batch.jobs.transform import transform
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.weights import forward_work

REPO = Path(__file__).resolve().parents[1]
HEAVY = HEAVY_HYPERPARAMETERS  # the benchmark's heavy model
LIGHT = json.loads((REPO / "examples" / "model" / "hyperparameters.json").read_text())


@functools.cache  # drawn once for the tests that share them
def bench_like(n: int, seed: int = 0) -> tuple[bytes, ...]:
    """The benchmark's own records: log-normal lengths (median 24), Zipf-like ids."""
    rng = np.random.default_rng(seed)
    return tuple(record_lines(rng, n, ("in0",), zipf_cdf(VOCAB)).splitlines())


def as_lines(records: list[bytes], first: int = 1) -> MiniBatch:
    data = b"\n".join(records)
    return MiniBatch(
        range(first, first + len(records)), Lines(data, len(records)), len(data) - len(records) + 1
    )


def as_list(records: list[bytes], first: int = 1) -> MiniBatch:
    positions = list(range(first, first + 2 * len(records), 2))  # not consecutive
    return MiniBatch(positions, list(records), sum(map(len, records)))


def check_pieces(
    batch: MiniBatch,
    pieces: list[MiniBatch],
    token_work: float,
    workers: int | None = None,
    tail: bool = False,
) -> None:
    """Every record exactly once, in order, at its position; each piece's bytes right,
    Lines cut at newlines; each piece within its share of the work or one record."""
    records = list(batch.records)
    assert [r for p in pieces for r in p.records] == records
    assert [pos for p in pieces for pos in p.positions] == list(batch.positions)
    for piece in pieces:
        assert piece.nbytes == sum(map(len, piece.records)) and len(piece.records)
        assert len(piece.positions) == len(piece.records)
    if isinstance(batch.records, Lines):
        assert all(isinstance(p.records, Lines) for p in pieces)
        assert all(isinstance(p.positions, range) for p in pieces)
        assert b"\n".join(p.records.data for p in pieces) == batch.records.data
    n = len(records)
    if n < 2 * MIN_PIECE_RECORDS:  # too few to share out
        assert pieces == [batch]
        return
    work = batch.nbytes * batching._tokens_per_byte(batch.records) * token_work
    floor = batching._TAIL_PIECE_WORK if tail else batching._PIECE_WORK
    share = max(floor, work / batching.MAX_PIECES, work * MIN_PIECE_RECORDS / n)
    if workers:
        share = max(share, work / (batching.PIECES_PER_WORKER * workers))
    rate, longest = work / batch.nbytes, max(map(len, records))
    for piece in pieces:
        # Its share of the bytes, up to one record more (the cut is at a record's end).
        assert piece.nbytes <= (share / rate) * (1 + 1e-9) + longest or len(piece.records) == 1
    # As many pieces as shares, fewer only where records longer than a share stand alone.
    assert len(pieces) <= max(1, math.ceil(work / share - 1e-9))
    if longest * rate <= share / 2:
        assert len(pieces) == max(1, math.ceil(work / share - 1e-9))


records_strategy = st.lists(
    st.lists(st.integers(1, 10**6), min_size=1, max_size=300).map(
        lambda ids: json.dumps({"in0": ids}, separators=(",", ":")).encode()
    ),
    min_size=1,
    max_size=150,
)


@settings(max_examples=examples(300), deadline=None)
@given(
    records=records_strategy,
    lines=st.booleans(),
    piece_work=st.sampled_from([1.0, 50.0, 1e3, 3e4, 1e6]),
    token_work=st.sampled_from([1.0, 7.0, 100.0]),
)
def test_pieces_cover_the_mini_batch(
    records: list[bytes], lines: bool, piece_work: float, token_work: float
) -> None:
    batch = as_lines(records, 5) if lines else as_list(records, 3)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(batching, "_PIECE_WORK", piece_work)
        pieces = split(batch, token_work)
        check_pieces(batch, pieces, token_work)


def test_the_heavy_model_shares_a_large_mini_batch() -> None:
    work = forward_work(Hyperparameters.from_dict(HEAVY), encoders_only=True)
    records = bench_like(40_000)
    for batch in (as_lines(records), as_list(records)):
        pieces = split(batch, work.per_token, work.per_record)
        # About 1 s of one core each (the bench's heavy model runs ~1,100 records/s).
        assert 20 <= len(pieces) <= 60
        assert 700 <= len(records) / len(pieces) <= 2000
        check_pieces(batch, pieces, work.per_token)


@pytest.mark.parametrize("workers", [1, 2, 3, 8, 64])
def test_few_workers_share_a_mini_batch_in_fewer_larger_pieces(workers: int) -> None:
    work = forward_work(Hyperparameters.from_dict(HEAVY), encoders_only=True)
    records = bench_like(40_000)
    alone = split(as_lines(records), work.per_token, work.per_record)
    for batch in (as_lines(records), as_list(records)):
        pieces = split(batch, work.per_token, work.per_record, workers)
        check_pieces(batch, pieces, work.per_token, workers)
        # A few pieces per worker, so that every worker has its share of this mini-batch,
        # and never more pieces than without knowing the workers.
        assert len(pieces) <= len(alone)
        expected = min(len(alone), batching.PIECES_PER_WORKER * workers)
        assert expected - 1 <= len(pieces) <= expected + 1


@pytest.mark.parametrize("mode", ["embedding", "classification"])
def test_the_light_model_keeps_a_full_mini_batch_whole(mode: str) -> None:
    work = forward_work(Hyperparameters.from_dict(LIGHT), encoders_only=mode == "embedding")
    records, size = [], 0
    for record in bench_like(80_000):  # what a 6 MB mini-batch (the default cap) holds
        if size + len(record) > 6 * 2**20:
            break
        records.append(record)
        size += len(record)
    for batch in (as_lines(records), as_list(records)):
        assert split(batch, work.per_token, work.per_record)[0] is batch
        # Among a job's last mini-batches it is shared, so no worker waits long for it:
        # in a few pieces per worker, or in pieces of the tail's smaller floor.
        for workers in (2, 16):
            pieces = split(batch, work.per_token, work.per_record, workers, tail=True)
            check_pieces(batch, pieces, work.per_token, workers, tail=True)
            assert 2 <= len(pieces) <= batching.PIECES_PER_WORKER * workers + 1


def test_a_line_longer_than_a_share_is_a_piece_alone(monkeypatch) -> None:
    monkeypatch.setattr(batching, "_PIECE_WORK", 100.0)
    records = [b'{"in0":[1]}'] * 40
    records[20] = b'{"in0":[' + b",".join([b"7"] * 500) + b"]}"
    pieces = split(as_lines(records), 1.0)
    assert [list(p.records) for p in pieces if records[20] in list(p.records)] == [[records[20]]]
    check_pieces(as_lines(records), pieces, 1.0)


def test_forward_work_from_the_shapes() -> None:
    heavy = forward_work(Hyperparameters.from_dict(HEAVY), encoders_only=True)
    # Token embedding, then 3 convs of 300 -> 300 and one 300 -> 512, width 3 (with biases).
    assert heavy.per_token == 300 + 3 * (300 * 300 * 3 + 300) + 512 * 300 * 3 + 512
    assert heavy.per_record == 0
    light = forward_work(Hyperparameters.from_dict(LIGHT))
    # The MLP over the three comparators (4 x enc_dim wide) and the 2-class output.
    assert light.per_record == 64 * 32 + 32 + 32 * 2 + 2
    bilstm = forward_work(
        Hyperparameters.from_dict(
            {"enc0_network": "bilstm", "enc0_vocab_size": 9, "enc0_max_seq_len": 4, "enc_dim": 8}
        ),
        encoders_only=True,
    )
    # Both directions' input and recurrent weights (hidden 4, token dim 300), twice.
    assert bilstm.per_token == 300 + 2 * 2 * (16 * 300 + 16 * 4)


# -- whole jobs: two workers share one file's one mini-batch -----------------

SPY = '''"""The real server, noting each request it serves; it serves none before both
workers have loaded the model, so that both are there to share the pieces."""

import os
import time
from pathlib import Path

import torch

from o2v_batch.execution.inference import Server as _Server

FOLDER = Path({folder!r})


class Server(_Server):
    def __init__(self, model_dir, device, options, threads):
        torch.set_num_threads(threads)
        super().__init__(model_dir, device, options)
        (FOLDER / f"up-{{os.getpid()}}").touch()

    def serve(self, positions, records, content_type, accept):
        deadline = time.monotonic() + 60
        while len(list(FOLDER.glob("up-*"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        with open(FOLDER / "requests", "a") as log:
            log.write(f"{{os.getpid()}} {{positions[0]}} {{len(records)}}\\n")
        return super().serve(positions, records, content_type, accept)
'''
RECORDS = 2000
PARQUET, NPY = "application/vnd.apache.parquet", "application/x-npy"
BAD_LINE = 1001  # a record in the middle of the file


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "model")


def job(
    tmp_path: Path,
    model: Path,
    name: str,
    out: str,
    split: bool,
    monkeypatch,
    replace_servers,
    **options,
):
    """Runs one job over tmp_path/in/<name> with two workers; with `split`, a piece's
    work is lowered (and its pieces per worker raised) so the file's one mini-batch goes
    out as many pieces."""
    spy = tmp_path / f"spy-{out}"
    spy.mkdir()
    (spy / f"piece_spy_{out}.py").write_text(SPY.format(folder=str(spy)))
    monkeypatch.syspath_prepend(str(spy))
    monkeypatch.setattr(batching, "_PIECE_WORK", 1e6 if split else batching._PIECE_WORK)
    monkeypatch.setattr(batching, "_TAIL_PIECE_WORK", 1e6 if split else batching._PIECE_WORK)
    if split:  # many pieces, though two workers would share it in a few
        monkeypatch.setattr(batching, "PIECES_PER_WORKER", 64)
    replace_servers(f"piece_spy_{out}:Server")
    config = TransformConfig(
        input=str(tmp_path / "in" / name),
        output=str(tmp_path / out),
        model=str(model),
        workers=2,
        progress=False,
        **options,
    )
    summary = transform(config, log=lambda line: None)
    requests = [
        tuple(map(int, line.split())) for line in (spy / "requests").read_text().splitlines()
    ]
    return summary, requests


def assert_close(a, b) -> None:
    """Equal, numbers within 1e-6 relative (1e-7 absolute near zero)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and list(a) == list(b)
        for key in a:
            assert_close(a[key], b[key])
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple) and len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_close(x, y)
    elif isinstance(a, float) and not isinstance(b, bool):
        assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-7) or (math.isnan(a) and math.isnan(b))
    else:
        assert a == b


def read_output(path: Path, kind: str):
    if kind == "parquet":
        import pyarrow.parquet as pq

        return pq.read_table(path).to_pylist()
    if kind == "npy":
        return np.load(path).tolist()
    text = path.read_text()
    if kind == "json":
        return json.loads(text)["predictions"]
    return [json.loads(line) for line in text.splitlines()]


VARIANTS = {
    "jsonlines": ("a.jsonl", "jsonl", {}),
    "json-accept": ("a.jsonl", "json", {"accept": "application/json"}),
    "json-input": ("a.json", "json", {}),
    "parquet": ("a.jsonl", "parquet", {"accept": PARQUET}),
    "npy": ("a.jsonl", "npy", {"accept": NPY, "mode": "embedding"}),
    "join-input": ("a.jsonl", "jsonl", {"join_source": "Input"}),
    "emit-error": ("a.jsonl", "jsonl", {"on_bad_record": "emit-error"}),
}


def write_input(tmp_path: Path, name: str, variant: str) -> list:
    records = random_records(RECORDS, seed=3, pairs=variant != "npy")
    if variant == "join-input":
        records = [{**r, "id": i} for i, r in enumerate(records)]
    if name.endswith(".json"):
        write_json(tmp_path / "in" / name, records)
    else:
        write_jsonl(tmp_path / "in" / name, records)
    if variant == "emit-error":
        lines = (tmp_path / "in" / name).read_bytes().split(b"\n")
        lines[BAD_LINE - 1] = b'{"in0": [1, 2'
        (tmp_path / "in" / name).write_bytes(b"\n".join(lines))
    return records


@pytest.mark.slow
@pytest.mark.parametrize("variant", list(VARIANTS))
def test_both_workers_serve_one_mini_batch_and_the_output_is_unchanged(
    tmp_path, model, monkeypatch, replace_servers, variant: str
) -> None:
    name, kind, options = VARIANTS[variant]
    write_input(tmp_path, name, variant)
    whole, whole_requests = job(
        tmp_path, model, name, "whole", False, monkeypatch, replace_servers, **options
    )
    shared, requests = job(
        tmp_path, model, name, "shared", True, monkeypatch, replace_servers, **options
    )

    # One mini-batch in the summary, as before; the pool got it as several requests,
    # and both worker processes served some of them.
    for summary in (whole, shared):
        assert summary.shards_ok == 1 and summary.mini_batches == 1
        assert summary.records_in == RECORDS
        assert summary.largest_mini_batch_bytes == whole.largest_mini_batch_bytes
    assert (shared.records_out, shared.bad_records) == (whole.records_out, whole.bad_records)
    assert len(whole_requests) == 1
    assert len(requests) >= 8 and len({pid for pid, _, _ in requests}) == 2
    first = 0 if name.endswith(".json") else 1
    for start, count in sorted((pos, count) for _, pos, count in requests):  # each record once
        assert start == first
        first += count
    assert first == RECORDS + (0 if name.endswith(".json") else 1)

    out = f"{name}.out" if kind in ("jsonl", "json") else None
    out = out or next(p.name for p in (tmp_path / "whole").iterdir() if not p.name.startswith("_"))
    a, b = (tmp_path / "whole" / out), (tmp_path / "shared" / out)
    assert_close(read_output(b, kind), read_output(a, kind))
    if variant == "emit-error":
        errors = [r for r in read_output(b, kind) if "error" in r]
        assert [e["error"]["line"] for e in errors] == [BAD_LINE]
        assert shared.bad_records == 1


@pytest.mark.slow
def test_the_first_bad_record_of_a_shared_mini_batch_fails_the_shard(
    tmp_path, model, monkeypatch, replace_servers
) -> None:
    write_input(tmp_path, "a.jsonl", "jsonlines")
    lines = (tmp_path / "in" / "a.jsonl").read_bytes().split(b"\n")
    for line in (700, 1800):  # in different pieces: the later may well be served first
        lines[line - 1] = b'{"in0": [1, 2'
    (tmp_path / "in" / "a.jsonl").write_bytes(b"\n".join(lines))
    reasons = []
    for out, shared in (("whole", False), ("shared", True)):
        summary, requests = job(
            tmp_path, model, "a.jsonl", out, shared, monkeypatch, replace_servers
        )
        assert summary.shards_failed == 1 and summary.mini_batches == 1
        assert not (tmp_path / out / "a.jsonl.out").exists()
        reasons.append(summary.failed[0]["reason"])
    assert len(requests) > 1
    assert reasons[0] == reasons[1]
    assert "line 700, column 14: malformed JSON" in reasons[1]


# -- the reader: whole mini-batches while the input after them keeps the workers busy --


def read_parts(tmp_path: Path, model: Path, sizes: list[int], stdin: bool = False) -> list[int]:
    """The parts (requests) each shard's one mini-batch goes to two workers in, every
    mini-batch worth sharing; `stdin`: the first shard's size unknown, as stdin's is."""
    from o2v_batch import io
    from o2v_batch.engines.reader import DONE, Item, Reader
    from o2v_batch.engines.shard import shard_task

    for k, n in enumerate(sizes):
        write_jsonl(tmp_path / "in" / f"part-{k}.jsonl", random_records(n, seed=k))
    config = TransformConfig(
        input=str(tmp_path / "in"), output=str(tmp_path / "out"), model=str(model), workers=2
    )
    hp = Hyperparameters.from_dict(json.loads((model / "hyperparameters.json").read_text()))
    shards = io.list_shards(config.input, config.output)
    if stdin:
        shards[0] = io.Shard(shards[0].uri, shards[0].rel, -1)
    reader = Reader(config, [shard_task(shard, config, hp) for shard in shards], set())
    reader.start(maxsize=1000, workers=2)
    parts = [0] * len(sizes)
    while (message := reader.messages.get(timeout=60)) is not DONE:
        if isinstance(message, Item):
            parts[message.idx] += 1
    return parts


def test_mini_batches_go_whole_while_the_input_after_them_feeds_the_workers(
    tmp_path, model, monkeypatch
) -> None:
    # Every mini-batch is worth sharing, the last ones in smaller pieces.
    monkeypatch.setattr(batching, "_PIECE_WORK", 1e6)
    monkeypatch.setattr(batching, "_TAIL_PIECE_WORK", 1e5)
    # Two workers: a mini-batch with two like it still to read goes whole; the last two
    # are shared in pieces, so that neither worker idles at the end.
    parts = read_parts(tmp_path, model, [400, 400, 400, 400])
    assert parts[:2] == [1, 1] and min(parts[2:]) > 1
    # A large last shard is the tail: the small ones before it go whole, and it is shared.
    parts = read_parts(tmp_path / "big-last", model, [200, 200, 1600])
    assert parts[:2] == [1, 1] and parts[2] > 1


def test_mini_batches_of_an_input_of_unknown_size_are_shared(tmp_path, model, monkeypatch) -> None:
    monkeypatch.setattr(batching, "_PIECE_WORK", 1e6)
    monkeypatch.setattr(batching, "_TAIL_PIECE_WORK", 1e5)
    parts = read_parts(tmp_path, model, [400, 400, 400, 400], stdin=True)
    assert parts[0] > 1 and parts[1] == 1
