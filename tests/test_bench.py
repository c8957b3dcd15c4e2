"""scripts/bench.py: a tiny smoke run (no timings asserted) and its workload generator."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

# Runs the benchmark's systems as processes.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench.py"
SYSTEMS = ("o2v-batch", "baseline", "ceiling")
# One workload per model and per mode keeps the run short.
WORKLOADS = ("light-embedding", "heavy-classification")
RECORDS = {"light-embedding": 2000, "heavy-classification": 100}


def _load_bench():
    spec = importlib.util.spec_from_file_location("bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_bench()


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One quick benchmark run: (its stdout, bench.json, the kept work folder, results folder)."""
    root = tmp_path_factory.mktemp("bench")
    work, results = root / "work", root / "results"
    proc = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--quick",
            "--systems",
            ",".join(SYSTEMS),
            "--workloads",
            ",".join(WORKLOADS),
            "--records",
            str(RECORDS["light-embedding"]),
            "--heavy-records",
            str(RECORDS["heavy-classification"]),
            "--work",
            str(work),
            "--out",
            str(results),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout, json.loads((results / "bench.json").read_text()), work, results


def _row(document: dict, workload: str, system: str) -> dict:
    found = [r for r in document["rows"] if (r["workload"], r["system"]) == (workload, system)]
    assert len(found) == 1, f"{len(found)} rows for {system} on {workload}"
    return found[0]


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("system", SYSTEMS)
def test_every_system_has_a_row_with_consistent_figures(run, workload, system):
    _, document, _, _ = run
    row = _row(document, workload, system)
    assert row["error"] is None
    assert row["records"] == RECORDS[workload]
    assert row["records_per_s"] == pytest.approx(row["records"] / row["seconds"])
    assert row["peak_rss_mb"] > 10  # a Python process with numpy holds more than this


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("system", SYSTEMS)
@pytest.mark.parametrize(("ratio", "reference"), [("o2v", "o2v-batch"), ("ceiling", "ceiling")])
def test_ratios_divide_by_the_reference(run, workload, system, ratio, reference):
    _, document, _, _ = run
    row, ref = _row(document, workload, system), _row(document, workload, reference)
    assert row[f"{ratio}_reference"] == reference
    assert row[f"ratio_to_{ratio}"] == pytest.approx(row["records_per_s"] / ref["records_per_s"])


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize(
    ("system", "folder"), [("o2v-batch", "o2v-batch"), ("baseline", "baseline")]
)
def test_outputs_have_one_line_per_input_record(run, workload, system, folder):
    _, document, work, _ = run
    inputs = sorted((work / "data" / workload).glob("*.jsonl"))
    assert len(inputs) == bench.SHARDS
    total = 0
    for shard in inputs:
        expected = len(shard.read_bytes().splitlines())
        output = work / "out" / workload / folder / (shard.name + ".out")
        lines = output.read_bytes().splitlines()
        assert len(lines) == expected, shard.name
        key = "embeddings" if workload.endswith("embedding") else "scores"
        assert all(key in orjson.loads(line) for line in lines)
        total += expected
    assert total == RECORDS[workload] == _row(document, workload, system)["records_out"]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_ceiling_is_its_best_variant_at_its_best_token_budget(run, workload):
    _, document, _, _ = run
    row = _row(document, workload, "ceiling")
    cores = document["machine"]["cores"]
    by_budget = row["extra"]["records_per_s_by_budget"]
    # One process with a thread per core, and one single-threaded process per core.
    assert set(by_budget) == {f"1 process x {cores} threads", f"{cores} processes x 1 thread"}
    assert all(len(rates) == len(bench.CEILING_BUDGETS) for rates in by_budget.values())
    best = max(rate for rates in by_budget.values() for rate in rates.values())
    assert by_budget[row["extra"]["variant"]][str(row["extra"]["token_budget"])] == best
    assert row["records_per_s"] == pytest.approx(best, abs=0.5)  # the rates are rounded


def test_stdout_has_the_machine_and_a_markdown_table(run):
    stdout, document, _, results = run
    assert stdout.startswith(f"machine: {document['machine']['cores']} cores")
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| system | workload | records/s |")
    assert len(table) == 2 + len(SYSTEMS) * len(WORKLOADS)
    assert (results / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pairs", [False, True])
def test_workloads_are_seeded_with_lengths_and_ids_in_range(tmp_path, pairs):
    first, again = tmp_path / "a", tmp_path / "b"
    bench.write_workload(first, 400, pairs, seed=3)
    bench.write_workload(again, 400, pairs, seed=3)
    shards = sorted(p.name for p in first.iterdir())
    assert shards == [f"part-{i:05d}.jsonl" for i in range(bench.SHARDS)]
    assert all((first / s).read_bytes() == (again / s).read_bytes() for s in shards)
    records = [orjson.loads(line) for s in shards for line in (first / s).read_bytes().splitlines()]
    assert len(records) == 400
    names = ["in0", "in1"] if pairs else ["in0"]
    assert all(sorted(r) == names for r in records)
    seqs = [np.array(r[name]) for r in records for name in names]
    lengths = np.array([len(s) for s in seqs])
    assert lengths.min() >= bench.MIN_TOKENS and lengths.max() <= bench.MAX_TOKENS
    assert np.median(lengths) < lengths.mean()  # a long tail to the right
    ids = np.concatenate(seqs)
    assert ids.min() >= 1 and ids.max() < bench.VOCAB
    # Zipf-like: id 1 is the most frequent id.
    assert np.bincount(ids).argmax() == 1


def test_the_serve_rows_give_requests_per_second_and_latency_from_one_run(tmp_path):
    """`--systems serve`: one server, 1-record and 100-record requests from concurrent
    clients; every answer was a 200 with a line per record (else the row has an error)."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--systems", "serve", "--workloads",
         "light-embedding", "--records", "8", "--out", str(results)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((results / "bench.json").read_text())["rows"]
    assert [(r["system"], r["workload"]) for r in rows] == [
        (f"o2v-batch serve ({bench.SERVE_CLIENTS} clients)", f"{size}-record requests")
        for size in bench.SERVE_SIZES
    ]
    for row, size in zip(rows, bench.SERVE_SIZES, strict=True):
        requests = bench.SERVE_REQUESTS[size] // 10
        assert row["error"] is None
        assert row["extra"]["requests"] == requests and row["records"] == requests * size
        assert row["extra"]["requests_per_s"] == pytest.approx(requests / row["seconds"])
        assert 0 < row["extra"]["p50_ms"] <= row["extra"]["p99_ms"]
        assert f"{row['workload']}, {bench.SERVE_CLIENTS} clients: " in proc.stdout
