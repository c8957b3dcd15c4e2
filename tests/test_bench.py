"""scripts/bench.py (the benchmarks package): a tiny smoke run (no timings asserted) and
its workload generator."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pytest

from benchmarks import measure as bench_measure
from benchmarks import workloads
from benchmarks.cli import parse_args
from benchmarks.measure import measure
from benchmarks.paths import LIGHT_MODEL
from benchmarks.records import MAX_TOKENS, MIN_TOKENS, VOCAB
from benchmarks.rows import NPY, Row, slug
from benchmarks.systems.ceiling import CEILING_BUDGETS, read_ids, side_by_side_rates
from benchmarks.systems.io_floor import range_lines, split_input
from benchmarks.systems.serve import SERVE_CLIENTS, SERVE_REQUESTS, SERVE_SIZES
from benchmarks.targets import bound, fill_ratios, targets
from o2v_batch.artifacts import read_hyperparameters

# Runs the benchmark's systems as processes.
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "bench.py"
SYSTEMS = ("o2v-batch", "baseline", "ceiling", "io-floor")
# One workload per model and per mode keeps the run short.
WORKLOADS = ("light-embedding", "heavy-classification")
RECORDS = {"light-embedding": 2000, "heavy-classification": 100}


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
    assert len(inputs) == workloads.SHARDS
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
    assert all(len(rates) == len(CEILING_BUDGETS) for rates in by_budget.values())
    best = max(rate for rates in by_budget.values() for rate in rates.values())
    assert by_budget[row["extra"]["variant"]][str(row["extra"]["token_budget"])] == best
    assert row["records_per_s"] == pytest.approx(best, abs=0.5)  # the rates are rounded


def test_the_ceiling_reads_every_shards_ids_as_the_product_checks_and_cuts_them(tmp_path):
    hp = read_hyperparameters(str(LIGHT_MODEL))
    longest = max(hp.encoder(enc).max_seq_len for enc in (0, 1))
    shards = [[[5, 3], [7] * (longest + 4)], [[1], [2, 9, 4]]]  # one over max_seq_len
    for k, records in enumerate(shards):
        lines = b"".join(orjson.dumps({"in0": seq, "in1": seq[::-1]}) + b"\n" for seq in records)
        (tmp_path / f"part-{k:05d}.jsonl").write_bytes(lines)
    every = [seq for records in shards for seq in records]
    for enc, ids in enumerate(read_ids(tmp_path, "classification", hp)):
        cut = hp.encoder(enc).max_seq_len
        seqs = [(seq if enc == 0 else seq[::-1])[:cut] for seq in every]
        assert ids.lengths.tolist() == [len(seq) for seq in seqs]
        assert ids.ids.tolist() == [token for seq in seqs for token in seq]


def test_a_side_by_side_ceiling_process_that_dies_fails_the_ceiling(tmp_path):
    # Without the model the processes raise before the barrier; the survivors of a
    # process killed for memory would otherwise wait there for it until the run's end.
    workloads.write_workload(tmp_path / "data", 20, False, 0, shards=1)
    with pytest.raises(RuntimeError, match="a ceiling process exited with status 1"):
        side_by_side_rates(tmp_path / "data", str(tmp_path / "no-model"), "embedding", 2)


def test_stdout_has_the_machine_and_a_markdown_table(run):
    stdout, document, _, results = run
    assert stdout.startswith(f"machine: {document['machine']['cores']} cores")
    table = [line for line in stdout.splitlines() if line.startswith("|")]
    assert table[0].startswith("| system | workload | records/s |")
    # A row per system and workload, and o2v-batch on each workload's records in one file.
    assert len(table) == 2 + (len(SYSTEMS) + 1) * len(WORKLOADS)
    assert "| bound | x bound |" in table[0] and "| parent's CPU | GPU busy |" in table[0]
    assert (results / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("pairs", [False, True])
def test_workloads_are_seeded_with_lengths_and_ids_in_range(tmp_path, pairs):
    first, again = tmp_path / "a", tmp_path / "b"
    workloads.write_workload(first, 400, pairs, seed=3)
    workloads.write_workload(again, 400, pairs, seed=3)
    shards = sorted(p.name for p in first.iterdir())
    assert shards == [f"part-{i:05d}.jsonl" for i in range(workloads.SHARDS)]
    assert all((first / s).read_bytes() == (again / s).read_bytes() for s in shards)
    records = [orjson.loads(line) for s in shards for line in (first / s).read_bytes().splitlines()]
    assert len(records) == 400
    names = ["in0", "in1"] if pairs else ["in0"]
    assert all(sorted(r) == names for r in records)
    seqs = [np.array(r[name]) for r in records for name in names]
    lengths = np.array([len(s) for s in seqs])
    assert lengths.min() >= MIN_TOKENS and lengths.max() <= MAX_TOKENS
    assert np.median(lengths) < lengths.mean()  # a long tail to the right
    ids = np.concatenate(seqs)
    assert ids.min() >= 1 and ids.max() < VOCAB
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
        (f"o2v-batch serve ({SERVE_CLIENTS} clients)", f"{size}-record requests")
        for size in SERVE_SIZES
    ]
    for row, size in zip(rows, SERVE_SIZES, strict=True):
        requests = SERVE_REQUESTS[size] // 10
        assert row["error"] is None
        assert row["extra"]["requests"] == requests and row["records"] == requests * size
        assert row["extra"]["requests_per_s"] == pytest.approx(requests / row["seconds"])
        assert 0 < row["extra"]["p50_ms"] <= row["extra"]["p99_ms"]
        assert f"{row['workload']}, {SERVE_CLIENTS} clients: " in proc.stdout


@pytest.mark.parametrize(
    ("ceiling", "io_floor", "device", "expected"),
    [
        (200.0, 300.0, "cpu", 120.0),  # the times add up: 1 / (1/200 + 1/300)
        (2400.0, 30600.0, "cpu", 1 / (1 / 2400 + 1 / 30600)),
        (761_000.0, 320_000.0, "cuda", 320_000.0),  # side by side: the slower decides
        (1000.0, 5000.0, "cuda:0", 1000.0),
    ],
)
def test_the_bound_adds_times_on_cpu_and_takes_the_slower_on_a_gpu(
    ceiling, io_floor, device, expected
):
    assert bound(ceiling, io_floor, device) == pytest.approx(expected)


def _rate_row(system, rate, device="cpu", output="jsonlines", **extra):
    row = Row(system, "heavy-embedding", device, output, records=1000)
    row.records_per_s, row.extra = rate, extra
    return row


def test_each_o2v_batch_row_is_held_against_the_bound_of_its_device_and_format():
    rows = [
        _rate_row("o2v-batch", 60.0, after_startup_records_per_s=90),
        _rate_row("o2v-batch (one file)", 30.0),
        _rate_row(f"o2v-batch --accept {NPY}", 75.0, output="npy"),
        _rate_row("o2v-batch --devices cuda", 150.0, "cuda", after_startup_records_per_s=240),
        _rate_row("ceiling", 200.0),
        _rate_row("ceiling (cuda)", 1000.0, "cuda"),
        _rate_row("io-floor", 300.0),
        _rate_row("io-floor (npy)", 600.0, output="npy"),
    ]
    fill_ratios(rows)
    got = {r.system: (r.bound, r.ratio_to_bound) for r in rows}
    assert got["o2v-batch"] == pytest.approx((120.0, 0.5))
    assert got["o2v-batch (one file)"] == pytest.approx((120.0, 0.25))
    assert got[f"o2v-batch --accept {NPY}"] == pytest.approx((150.0, 0.5))
    assert got["o2v-batch --devices cuda"] == pytest.approx((300.0, 0.5))
    assert rows[0].extra["after_startup_ratio_to_bound"] == 0.75
    assert rows[3].extra["after_startup_ratio_to_bound"] == 0.8
    assert all(got[s] == (None, None) for s in ("ceiling", "io-floor", "io-floor (npy)"))
    notes = targets(rows)
    assert (
        "- heavy-embedding, o2v-batch >= 0.85 of the bound: 0.50 (0.75 after start-up) (MISSED)"
        in notes
    )
    assert "- heavy-embedding, o2v-batch --devices cuda >= 0.6 of the bound: 0.80 (met)" in notes


_BURN = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.6: pass\n"


@pytest.mark.parametrize(
    ("script", "low", "high"),
    [
        # The parent waits while its child burns CPU and is reaped before the parent ends.
        (f"import subprocess, sys; subprocess.run([sys.executable, '-c', {_BURN!r}])", 0.0, 0.35),
        # The parent burns while its child sleeps.
        (
            f"import subprocess, sys\np = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(1.5)'])\n{_BURN}p.wait()",
            0.6,
            1.0,
        ),
    ],
    ids=["child-works", "parent-works"],
)
def test_the_parents_share_is_its_cpu_time_over_the_whole_trees(tmp_path, script, low, high):
    run = measure([sys.executable, "-c", script], tmp_path / "log", dict(os.environ))
    assert run.returncode == 0
    assert low <= run.parent_cpu_share <= high


def test_the_gpu_busy_figure_is_the_mean_of_nvidia_smi_samples(tmp_path, monkeypatch):
    fake = tmp_path / "bin" / "nvidia-smi"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\nprintf '40\\n60\\n'\n")  # two GPUs: their mean, 50
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    sleep = [sys.executable, "-c", "import time; time.sleep(0.6)"]
    assert measure(sleep, tmp_path / "log", dict(os.environ), gpu=True).gpu_busy_percent == 50
    assert measure(sleep, tmp_path / "log", dict(os.environ)).gpu_busy_percent is None


def test_device_process_cores_are_the_cpu_of_the_processes_that_loaded_torch(tmp_path):
    """One child loads torch and burns, another burns without it: only the first
    counts, as much as it says it used itself."""
    said = tmp_path / "torch-cpu"
    with_torch = (
        "import time, torch\n"
        "end = time.process_time() + 1.0\n"
        "while time.process_time() < end: pass\n"
        f"open({str(said)!r}, 'w').write(str(time.process_time()))\n"
        "time.sleep(0.4)\n"  # sampled once more before it ends
        # No interpreter teardown (torch's takes CPU of its own, sampled or not): the
        # process uses nothing after it has said what it used.
        "import os; os._exit(0)\n"
    )
    script = (
        "import subprocess, sys\n"
        f"a = subprocess.Popen([sys.executable, '-c', {with_torch!r}])\n"
        f"b = subprocess.Popen([sys.executable, '-c', {_BURN!r}])\n"
        "a.wait(); b.wait()\n"
    )
    cmd = [sys.executable, "-c", script]
    run = measure(cmd, tmp_path / "log", dict(os.environ), torch_processes=True)
    assert run.returncode == 0
    assert abs(run.torch_cores * run.seconds - float(said.read_text())) < 0.25
    assert measure(cmd, tmp_path / "log", dict(os.environ)).torch_cores is None


@pytest.mark.parametrize("nested", [True, False], ids=["folder", "file"])
def test_a_run_reads_its_input_through_before_it_starts(tmp_path, monkeypatch, nested):
    data = tmp_path / "data"
    (data / "inner").mkdir(parents=True)
    for name in ("part-0.jsonl", "inner/part-1.jsonl"):
        (data / name).write_bytes(b'{"in0":[1]}\n' * 1000)
    read: list[str] = []  # the files opened for reading before the command ran
    started = tmp_path / "started"

    def spying_open(path, mode="r", *args, **kwargs):
        if "r" in mode and not started.exists():
            read.append(Path(path).relative_to(data).as_posix())
        return open(path, mode, *args, **kwargs)

    monkeypatch.setattr(bench_measure, "open", spying_open, raising=False)
    given = data if nested else data / "part-0.jsonl"
    command = [sys.executable, "-c", f"open({str(started)!r}, 'w')"]
    assert measure(command, tmp_path / "log", dict(os.environ), data=given).returncode == 0
    expected = ["inner/part-1.jsonl", "part-0.jsonl"] if nested else ["part-0.jsonl"]
    assert read == expected
    assert started.exists()


@pytest.mark.parametrize(("files", "parts"), [(1, 4), (1, 2), (8, 2), (3, 16), (2, 1)])
def test_the_io_floor_cuts_the_input_into_disjoint_line_aligned_parts(tmp_path, files, parts):
    workloads.write_workload(tmp_path, 300, pairs=False, seed=1, shards=files)
    paths = workloads.shards(tmp_path)
    pieces = split_input(paths, parts)
    assert len(pieces) == min(parts, 300)
    lines = [
        line for piece in pieces for path, lo, hi in piece for line in range_lines(path, lo, hi)
    ]
    assert lines == [line for path in paths for line in path.read_bytes().splitlines(keepends=True)]
    # About equal bytes each, whatever the shards' sizes: off by less than a line.
    total, longest = sum(p.stat().st_size for p in paths), max(map(len, lines))
    for piece in pieces:
        assert abs(sum(hi - lo for _, lo, hi in piece) - total / len(pieces)) < longest + 1


@pytest.mark.parametrize("workload", WORKLOADS)
def test_the_io_floor_uses_every_core(run, workload):
    _, document, _, _ = run
    row = _row(document, workload, "io-floor")
    assert row["extra"]["processes"] == document["machine"]["cores"]
    assert row["extra"]["parsed"] == RECORDS[workload]


@pytest.mark.parametrize("workload", WORKLOADS)
def test_one_file_rows_run_the_same_records_against_the_same_bound(run, workload):
    _, document, work, _ = run
    one, shards = (
        _row(document, workload, "o2v-batch (one file)"),
        _row(document, workload, "o2v-batch"),
    )
    data = work / "data" / workload
    single = work / "data" / f"{workload}-one-file" / "all.jsonl"
    assert single.read_bytes() == b"".join(p.read_bytes() for p in sorted(data.glob("*.jsonl")))
    assert one["error"] is None and one["records_out"] == one["records"] == RECORDS[workload]
    assert one["bound"] == shards["bound"] > 0
    assert one["ratio_to_bound"] == pytest.approx(one["records_per_s"] / one["bound"])
    output = work / "out" / workload / "o2v-batch-one-file" / "all.jsonl.out"
    assert len(output.read_bytes().splitlines()) == RECORDS[workload]


@pytest.mark.parametrize("workload", WORKLOADS)
@pytest.mark.parametrize("system", ["o2v-batch", "o2v-batch (one file)"])
def test_o2v_batch_rows_report_the_parents_share_of_the_cpu(run, workload, system):
    _, document, _, _ = run
    assert 0 < _row(document, workload, system)["parent_cpu_share"] < 1


def test_gpu_mode_has_its_own_workloads_sizes_and_systems():
    args = parse_args(["--gpu"])
    assert [w.name for w in args.workloads] == list(workloads.GPU_WORKLOADS)
    assert args.counts["heavy-embedding"] == workloads.GPU_RECORDS["heavy-embedding"]
    assert args.variants == [] and args.gpu_device == "cuda"
    assert parse_args(["--gpu", "--quick"]).counts["light-embedding"] == 5000
    assert parse_args([]).counts == {
        **workloads.DEFAULT_RECORDS, "light-embedding-1x": 500_000, "light-embedding-10x": 5_000_000
    }  # fmt: skip


@pytest.mark.parametrize(
    "argv", [["--gpu", "--systems", "baseline"], ["--gpu", "--variants", "--workers 1"]]
)
def test_gpu_mode_refuses_systems_and_variants(argv, capsys):
    with pytest.raises(SystemExit) as stopped:
        parse_args(argv)
    assert stopped.value.code == 2
    assert "--gpu runs its own systems" in capsys.readouterr().err


def test_gpu_mode_without_cuda_is_a_usage_error(tmp_path):
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--gpu", "--quick", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "--gpu: no CUDA device here" in proc.stderr
    assert not (tmp_path / "bench.json").exists()


def test_gpu_mode_rehearsed_on_the_cpu_prints_one_table(tmp_path):
    """--gpu --gpu-device cpu: the GPU table's rows, each o2v-batch row with its bound,
    its quarter run and the parent's share; no GPU busy figure without nvidia-smi."""
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--gpu", "--gpu-device", "cpu", "--quick",
         "--workloads", "heavy-embedding", "--heavy-records", "40", "--work",
         str(tmp_path / "work"), "--out", str(results)],
        capture_output=True, text=True, timeout=300, cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = json.loads((results / "bench.json").read_text())["rows"]
    npy = f"o2v-batch --accept {NPY} --devices cpu"
    assert [r["system"] for r in rows] == [
        "o2v-batch --devices cpu", npy, "ceiling", "io-floor", "io-floor (npy)"
    ]  # fmt: skip
    for row in rows[:2]:
        assert row["bound"] > 0 and 0 < row["parent_cpu_share"] < 1
        assert row["gpu_busy_percent"] is None
        quarter = tmp_path / "work" / "out" / "heavy-embedding-quarter" / slug(row["system"])
        assert quarter.is_dir()  # the quarter run, for the figures after start-up
    assert rows[1]["bound"] == pytest.approx(
        bound(rows[2]["records_per_s"], rows[4]["records_per_s"], "cpu")
    )
    assert sum(line.startswith("| system |") for line in proc.stdout.splitlines()) == 1
