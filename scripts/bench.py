"""The benchmark (its protocol and latest figures: the README's Performance section).

Generates its workloads (seeded), then runs, side by side on the same data and model,
each as its own process: o2v-batch `transform` (defaults, the same records in one file,
then variants), a hand-written json loop, Ray Data, the model-only ceiling and the I/O
floor (every core); plus the start-up time of a tiny job, o2v-batch's peak memory on ten
times the input, and `o2v-batch serve`'s requests/s and latency under concurrent clients
(`--systems serve`). Every o2v-batch row is held against the bound (on CPU
1 / (1/ceiling + 1/io_floor), on a GPU min(ceiling, io_floor)) and reports the parent
process's share of the job's CPU time. Prints a Markdown table, writes it as JSON
(bench.json) and plots records/s (bench.png, when matplotlib is installed).

Usage:
    python scripts/bench.py [--records N] [--heavy-records M] [--out bench-results/]
                            [--quick] [--systems o2v-batch,baseline,...]
    python scripts/bench.py --gpu [--gpu-device cuda]

On a machine with CUDA it adds GPU rows: the ceiling on the GPU and o2v-batch with
--devices cuda (the CPU rows then pass --devices cpu, so they stay CPU figures).

--gpu is the GPU table alone, sized for one H200 and 16 cores (under 6 minutes there, no
Ray, no matplotlib): light embedding, heavy embedding (jsonlines and .npy) and heavy
classification; o2v-batch --devices cuda and --devices cpu, each also after start-up
(a quarter-run difference), the GPU ceiling and the all-cores I/O floor, with the GPU's
mean utilisation per row. Without CUDA it stops with exit status 2; `--gpu-device cpu`
rehearses the same table on the CPU (the device rows then run on the CPU).
"""

from __future__ import annotations

import argparse
import importlib.util
import itertools
import json
import os
import platform
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

try:  # psutil, matplotlib and Ray Data come with the bench extra, not with o2v-batch
    import psutil
except ModuleNotFoundError as exc:
    sys.exit(f"scripts/bench.py needs {exc.name}: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parent.parent
LIGHT_MODEL = ROOT / "examples" / "model"
TINY_INPUT = ROOT / "examples" / "requests" / "documented.jsonl"

SYSTEMS = (
    "o2v-batch",
    "baseline",
    "ray-data",
    "ceiling",
    "io-floor",
    "startup",
    "scaling",
    "formats",
    "serve",
)
# Ray Data takes tens of seconds to start and run even on tiny inputs: --quick skips it.
QUICK_SYSTEMS = tuple(s for s in SYSTEMS if s != "ray-data")
# Flags worth comparing with the defaults on a few cores; each becomes a labelled row.
VARIANTS = ("--workers 1", "--max-concurrent-transforms 4", "--max-payload 1")
PARQUET, NPY = "application/vnd.apache.parquet", "application/x-npy"
# The output formats the I/O floor writes; each o2v-batch row is held against its own.
OUTPUTS = ("jsonlines", "npy", "parquet", "parquet-float16")
# The columnar outputs beside jsonlines ("formats"); .npy holds embeddings only.
FORMATS = (f"--accept {PARQUET}", f"--accept {PARQUET} --embedding-dtype float16")
EMBEDDING_FORMATS = (f"--accept {NPY}",)
BINARY_SUFFIXES = (".parquet", ".npy")  # outputs that are not one line per record

# The heavy model of issue 6: hcnn, token dim 300, enc_dim 512, 4 layers.
HEAVY_HYPERPARAMETERS = {
    "enc0_network": "hcnn",
    "enc0_layers": 4,
    "enc0_token_embedding_dim": 300,
    "enc0_vocab_size": 10240,
    "enc0_max_seq_len": 200,
    "enc_dim": 512,
}
VOCAB = 10240  # both models' vocab: ids are drawn in 1..VOCAB-1 (0 is padding)
MIN_TOKENS, MAX_TOKENS = 5, 200
# Log-normal lengths: median 24 tokens, a long tail clipped at MAX_TOKENS (about 0.4% hit it).
MEDIAN_TOKENS, LENGTH_SIGMA = 24, 0.8
ZIPF_EXPONENT = 1.1  # word frequencies in text
SHARDS = 8
ONE_FILE = "one-file"  # the same records as the shards, in one file: data/<workload>-one-file
GENERATE_CHUNK = 100_000  # records drawn at a time
BASELINE_BATCH = 256
SAMPLE_S = 0.05  # memory and CPU sampling period
GPU_SAMPLE_S = 0.2  # nvidia-smi sampling period
RUN_TIMEOUT_S = 1800  # a run that has not ended by then is stuck (Ray can hang)
STARTUP_RUNS = 3
STARTUP_GOAL_S = 1.5  # a 3-record job, the whole command
# Issue 19's CPU targets: o2v-batch's whole command against the bound, the parent's share
# of the job's CPU time on light embedding, peak memory on ten times the input.
BOUND_GOAL, PARENT_SHARE_GOAL, MEMORY_GOAL = 0.85, 0.03, 1.2
# Issue 19's GPU targets, after start-up: against the GPU bound (the I/O floor on light
# embedding), and --devices cuda over --devices cpu.
GPU_BOUND_GOAL, GPU_OVER_CPU_GOAL = 0.6, 1.2
# Records per workload. On this project's 2-core machine a default o2v-batch run lasts
# at least 20 s even at 0.85 of the bound (the bounds measured: light embedding
# ~294,000 records/s, light classification ~168,000, heavy embedding ~3,600, heavy
# classification ~1,870), so that start-up is a small part of it.
DEFAULT_RECORDS = {
    "light-embedding": 5_000_000,
    "light-classification": 3_000_000,
    "heavy-embedding": 64_000,
    "heavy-classification": 32_000,
}
QUICK_RECORDS = {"light": 5_000, "heavy": 300}
# --gpu on one H200 and 16 cores, at the rates measured there (o2v-batch light
# 118,000-186,000 records/s, heavy 10,000-18,000 on the GPU, 2,800-5,200 on the cores;
# each process's start-up 6-9 s): about 4.5 minutes at the slow end of each range.
GPU_RECORDS = {
    "light-embedding": 1_000_000,
    "heavy-embedding": 60_000,
    "heavy-classification": 30_000,
}
# Peak memory: o2v-batch on light embedding at SCALING_RECORDS and ten times that
# (--quick: at --records). A smaller input would not fill the pipeline (a 6 MB
# mini-batch holds about 60,000 light records).
SCALING_RECORDS = 500_000
# The ceiling is the best of a few passes: the first pays one-off allocations, and on a
# shared machine a pass can lose its cores for a while.
CEILING_PASSES = 3
# The device-batch shapes the ceiling tries, in multiples of tokens.token_budget: the
# product's own, and a quarter and four times it.
CEILING_BUDGETS = (0.25, 1.0, 4.0)
STARTUP_WORKLOAD = f"{TINY_INPUT.name} (3 records)"
# Ray Data's actors: two with half a Ray CPU and one torch thread each, so one Ray CPU is
# left for the read and write tasks (actors holding every CPU starve them: the job hangs).
# Fastest of those tried on 2 cores: 1 actor x 1 CPU x 2 threads ran at 0.4x, 1 x 1 x 1 at 0.8x.
RAY_ACTORS, RAY_ACTOR_CPUS, RAY_ACTOR_THREADS = 2, 0.5, 1


@dataclass(frozen=True)
class Workload:
    name: str
    model: str  # light | heavy
    mode: str  # embedding | classification
    scale: float = 1.0  # times the model's record count (the memory-scaling run)

    @property
    def pairs(self) -> bool:
        return self.mode == "classification"


WORKLOADS = (
    Workload("light-embedding", "light", "embedding"),
    Workload("light-classification", "light", "classification"),
    Workload("heavy-embedding", "heavy", "embedding"),
    Workload("heavy-classification", "heavy", "classification"),
)
GPU_WORKLOADS = ("light-embedding", "heavy-embedding", "heavy-classification")
# o2v-batch's peak memory only, at SCALING_RECORDS and ten times that.
SCALING = (
    Workload("light-embedding-1x", "light", "embedding"),
    Workload("light-embedding-10x", "light", "embedding", 10.0),
)


@dataclass
class Row:
    """One measured run; ratios are filled in once the workload's references are known."""

    system: str  # what the table shows, with the flags of an o2v-batch variant
    workload: str
    device: str = "cpu"
    output: str = "jsonlines"  # one of OUTPUTS
    command: str = ""
    records: int = 0
    records_out: int | None = None
    seconds: float | None = None  # the timed part (see README: whole process or section)
    process_seconds: float | None = None
    records_per_s: float | None = None
    peak_rss_mb: float | None = None
    others_cores: float | None = None  # CPU used outside the run, in cores: the noise
    parent_cpu_share: float | None = None  # the top process's CPU over its whole tree's
    gpu_busy_percent: float | None = None  # nvidia-smi's utilization.gpu, mean over the run
    bound: float | None = None  # records/s, for o2v-batch rows (README, Performance)
    ratio_to_bound: float | None = None
    ratio_to_o2v: float | None = None
    ratio_to_ceiling: float | None = None
    o2v_reference: str | None = None
    ceiling_reference: str | None = None
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- workloads


def zipf_cdf(vocab: int) -> np.ndarray:
    ranks = np.arange(1, vocab, dtype=np.float64)
    cdf = np.cumsum(ranks**-ZIPF_EXPONENT)
    return cdf / cdf[-1]


def draw_sequences(
    rng: np.random.Generator, n: int, cdf: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """All ids of n sequences as one array, and each sequence's start offset (n + 1 long)."""
    raw = rng.lognormal(np.log(MEDIAN_TOKENS), LENGTH_SIGMA, n)
    lengths = np.clip(raw.astype(np.int64), MIN_TOKENS, MAX_TOKENS)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    # Rank r (0-based) becomes id r + 1: frequent ids are small, like a frequency-sorted vocab.
    ids = np.searchsorted(cdf, rng.random(int(offsets[-1]))) + 1
    return ids.astype(np.int64), offsets


def write_workload(folder: Path, n: int, pairs: bool, seed: int, shards: int = SHARDS) -> None:
    """n records (in0 only, or in0/in1 pairs) as jsonlines shards, drawn chunk by chunk so
    that memory stays small whatever n is."""
    rng = np.random.default_rng(seed)
    cdf = zipf_cdf(VOCAB)
    names = ("in0", "in1") if pairs else ("in0",)
    folder.mkdir(parents=True, exist_ok=True)
    bounds = np.linspace(0, n, shards + 1).astype(np.int64)
    for shard, (lo, hi) in enumerate(itertools.pairwise(bounds)):
        with open(folder / f"part-{shard:05d}.jsonl", "wb") as out:
            for start in range(lo, hi, GENERATE_CHUNK):
                out.write(record_lines(rng, min(GENERATE_CHUNK, hi - start), names, cdf))


def write_one_file(shards_folder: Path, folder: Path) -> None:
    """The shards' records, in order, as one file (the case where work must be split
    inside a file to keep every core busy)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "all.jsonl", "wb") as out:
        for shard in shards(shards_folder):
            with open(shard, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 20)


def record_lines(
    rng: np.random.Generator, count: int, names: tuple[str, ...], cdf: np.ndarray
) -> bytes:
    inputs = [draw_sequences(rng, count, cdf) for _ in names]
    lines = [
        orjson.dumps(
            {
                name: ids[off[i] : off[i + 1]]
                for name, (ids, off) in zip(names, inputs, strict=True)
            },
            option=orjson.OPT_SERIALIZE_NUMPY,
        )
        for i in range(count)
    ]
    return b"\n".join(lines) + b"\n"


def make_heavy_model(folder: Path) -> None:
    """Random weights: the heavy model is about cost, not accuracy."""
    import torch

    from o2v_batch.artifacts import save_model
    from o2v_batch.hyperparameters import Hyperparameters
    from o2v_batch.model import Object2Vec

    torch.manual_seed(0)
    hp = Hyperparameters.from_dict(HEAVY_HYPERPARAMETERS)
    save_model(Object2Vec(hp), hp, folder)


def count_lines(folder: Path) -> int:
    total = 0
    for path in sorted(folder.iterdir()):
        if path.is_file() and not path.name.startswith(("_", ".")):
            with open(path, "rb") as f:
                total += sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    return total


# ---------------------------------------------------------------- measuring


class TreeMonitor(threading.Thread):
    """Samples a process and all its descendants every SAMPLE_S seconds: the peak of their
    summed RSS, their CPU time, the top process's own CPU time, and the CPU time the rest
    of the machine used meanwhile.

    RSS is summed over processes, so pages they share (libraries, Ray's object store)
    count once per process: an upper bound, the same rule for every system. A process's
    CPU time counts its own and that of the children it has waited for, so a worker that
    ended between two samples is still counted, by the process that reaped it. The
    others' CPU says how much a shared machine disturbed the run.
    """

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak = 0
        self.cpu: dict[int, float] = {}  # CPU seconds per live process of the tree, last sample
        self.parent_cpu = 0.0  # the top process's own CPU seconds, last sample
        self.busy_start = busy_seconds()
        self.others = 0.0
        self.done = threading.Event()

    def run(self) -> None:
        while True:
            self._sample()
            if self.done.wait(SAMPLE_S):
                self.others = busy_seconds() - self.busy_start - self.tree_cpu
                return

    @property
    def tree_cpu(self) -> float:
        return sum(self.cpu.values())

    @property
    def parent_share(self) -> float | None:
        """The top process's CPU time over the whole tree's, children included."""
        return self.parent_cpu / self.tree_cpu if self.tree_cpu > 0 else None

    def _sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            return
        rss, cpu = 0, {}
        for proc in procs:
            try:
                with proc.oneshot():
                    rss += proc.memory_info().rss
                    times = proc.cpu_times()
            except psutil.Error:
                continue
            own = times.user + times.system
            cpu[proc.pid] = own + process_children_cpu(times)
            if proc.pid == self.root.pid:
                self.parent_cpu = own
        if cpu:
            self.cpu = cpu
        self.peak = max(self.peak, rss)


def process_children_cpu(times: Any) -> float:
    """CPU seconds of the children a process has waited for (0 where psutil has no field)."""
    return getattr(times, "children_user", 0.0) + getattr(times, "children_system", 0.0)


class GpuMonitor(threading.Thread):
    """The GPUs' mean utilisation (nvidia-smi's utilization.gpu, averaged over GPUs),
    sampled every GPU_SAMPLE_S seconds; no samples where nvidia-smi is missing."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.nvidia_smi = shutil.which("nvidia-smi")
        self.samples: list[float] = []
        self.done = threading.Event()

    def run(self) -> None:
        while self.nvidia_smi is not None:
            query = [
                self.nvidia_smi,
                "--query-gpu=utilization.gpu",
                "--format=csv,noheader,nounits",
            ]
            try:
                answer = subprocess.run(query, capture_output=True, text=True, timeout=10)
                values = [float(v) for v in answer.stdout.split()]
            except (OSError, subprocess.SubprocessError, ValueError):
                values = []
            if values:
                self.samples.append(statistics.fmean(values))
            if self.done.wait(GPU_SAMPLE_S):
                return

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.samples) if self.samples else None


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot."""
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


@dataclass
class Run:
    seconds: float
    peak_rss_mb: float
    others_cores: float  # CPU the rest of the machine used, in cores, over the run
    returncode: int
    first_output_s: float | None = None
    parent_cpu_share: float | None = None
    gpu_busy_percent: float | None = None


def measure(
    cmd: list[str], log: Path, env: dict[str, str], watch: Path | None = None, gpu: bool = False
) -> Run:
    """Runs cmd to its end; wall time, the tree's peak RSS and CPU, if asked when `watch`
    appeared, and with `gpu` the GPUs' mean utilisation meanwhile."""
    gpus = GpuMonitor()
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        monitor = TreeMonitor(proc.pid)
        monitor.start()
        if gpu:
            gpus.start()
        first = None
        while watch is not None and first is None and proc.poll() is None:
            if watch.exists():
                first = time.perf_counter() - start
            else:
                time.sleep(0.002)
        try:
            code = proc.wait(RUN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            code = proc.wait()
        seconds = time.perf_counter() - start
        for thread in (monitor, gpus):
            thread.done.set()
            if thread.is_alive():
                thread.join()
    others = max(0.0, monitor.others) / seconds
    return Run(seconds, monitor.peak / 2**20, others, code, first, monitor.parent_share, gpus.mean)


def kill_tree(pid: int) -> None:
    """A run past its time: the process and what it started (Ray's raylet and workers)."""
    root = psutil.Process(pid)
    for proc in [*root.children(recursive=True), root]:
        try:
            proc.kill()
        except psutil.Error:
            continue


def tail(log: Path, lines: int = 15) -> str:
    return "\n".join(log.read_text("utf-8", "replace").splitlines()[-lines:])


# ---------------------------------------------------------------- the runs


@dataclass
class Bench:
    work: Path
    env: dict[str, str]
    cuda: bool
    keep: bool  # outputs stay for inspection (--work)
    gpu_table: bool = False  # --gpu: every o2v-batch label names its devices
    data: dict[str, Path] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    models: dict[str, Path] = field(default_factory=dict)

    def folder(self, *parts: str) -> Path:
        path = self.work.joinpath(*parts)
        path.mkdir(parents=True, exist_ok=True)
        return path

    def o2v(
        self, workload: Workload, flags: str, device: str = "cpu", one_file: bool = False
    ) -> Row:
        """o2v-batch transform on the workload's shards, or with `one_file` on the same
        records in one file."""
        # With a GPU present the CPU rows say --devices cpu, or the defaults would take the GPU.
        devices = f"--devices {device}" if self.cuda or self.gpu_table or device != "cpu" else ""
        shown = devices if device != "cpu" or self.gpu_table else ""
        label = " ".join(filter(None, ["o2v-batch", flags, shown]))
        label += f" ({ONE_FILE.replace('-', ' ')})" if one_file else ""
        data = self.data[f"{workload.name}-{ONE_FILE}" if one_file else workload.name]
        out = self.work / "out" / workload.name / slug(label)
        cmd = [
            *o2v_command(),
            "transform",
            str(data),
            str(out),
            "--model",
            str(self.models[workload.model]),
            "--mode",
            workload.mode,
            "--no-progress",
            *shlex.split(f"{flags} {devices}"),
        ]
        return self._run(label, workload, cmd, out, device, output_format(flags))

    def child(
        self, system: str, workload: Workload, device: str = "cpu", output: str = "jsonlines"
    ) -> Row:
        label = system if device == "cpu" else f"{system} ({device})"
        label += "" if output == "jsonlines" else f" ({output})"
        out = self.work / "out" / workload.name / slug(label)
        result = self.work / "logs" / f"{workload.name}-{slug(label)}.json"
        cmd = [
            sys.executable,
            str(Path(__file__).resolve()),
            "child",
            system,
            str(self.data[workload.name]),
            str(out),
            str(self.models[workload.model]),
            workload.mode,
            device,
            str(result),
            output,
        ]
        return self._run(label, workload, cmd, out, device, output, result)

    def _run(
        self,
        label: str,
        workload: Workload,
        cmd: list[str],
        out: Path,
        device: str,
        output: str,
        result: Path | None = None,
    ) -> Row:
        log = self.folder("logs") / f"{workload.name}-{slug(label)}.log"
        print(f"  {workload.name}: {label} ...", end="", flush=True, file=sys.stderr)
        run = measure(cmd, log, self.env, gpu=self.cuda)
        row = Row(label, workload.name, device, output, shlex.join(cmd))
        row.records = self.counts[workload.name]
        row.process_seconds, row.peak_rss_mb = run.seconds, run.peak_rss_mb
        row.others_cores, row.gpu_busy_percent = run.others_cores, run.gpu_busy_percent
        if label.startswith("o2v-batch"):
            row.parent_cpu_share = run.parent_cpu_share
        if run.returncode != 0:
            row.error = f"exit status {run.returncode}: {tail(log)}"
            print(f" failed (see {log})", file=sys.stderr)
            return row
        row.seconds = run.seconds
        if result is not None:
            # Systems timed inside (Ray Data, ceiling, I/O floor) report their own seconds.
            timed = json.loads(result.read_text())
            row.seconds = timed.pop("seconds", run.seconds)
            row.extra.update(timed)
        summary = {}
        if (out / "_SUCCESS").exists():  # o2v-batch's job summary
            summary = json.loads((out / "_SUCCESS").read_text())
            row.extra["job_seconds"] = summary["seconds"]
        if out.exists():
            files = [p for p in out.rglob("*") if p.is_file() and p.name[0] not in "._"]
            row.extra["output_bytes_per_record"] = (
                sum(p.stat().st_size for p in files) / row.records
            )
            binary = any(p.suffix in BINARY_SUFFIXES for p in files)
            row.records_out = summary.get("records_out") if binary else count_lines(out)
            if not self.keep:
                shutil.rmtree(out)
        row.records_per_s = row.records / row.seconds
        print(f" {row.records_per_s:,.0f} records/s", file=sys.stderr)
        return row

    def startup(self) -> Row:
        """Launch to first output file on the documented 3-record request (median of runs)."""
        firsts, runs = [], []
        for i in range(STARTUP_RUNS):
            out = self.work / "out" / "startup" / str(i)
            cmd = [*o2v_command(), "transform", str(TINY_INPUT), str(out)]
            cmd += ["--model", str(LIGHT_MODEL), "--no-progress"]
            if self.cuda:
                cmd += ["--devices", "cpu"]
            log = self.folder("logs") / f"startup-{i}.log"
            run = measure(cmd, log, self.env, watch=out / (TINY_INPUT.name + ".out"))
            if run.returncode != 0 or run.first_output_s is None:
                error = f"exit status {run.returncode}: {tail(log)}"
                return Row("o2v-batch start-up", STARTUP_WORKLOAD, error=error)
            firsts.append(run.first_output_s)
            runs.append(run)
        row = Row("o2v-batch start-up", STARTUP_WORKLOAD, command=shlex.join(cmd))
        row.records = row.records_out = 3
        row.seconds = statistics.median(firsts)
        row.process_seconds = statistics.median(r.seconds for r in runs)
        row.peak_rss_mb = max(r.peak_rss_mb for r in runs)
        row.others_cores = statistics.mean(r.others_cores for r in runs)
        row.extra["first_output_s"] = [round(s, 3) for s in firsts]
        return row


def output_format(flags: str) -> str:
    """The OUTPUTS entry an o2v-batch flag set writes."""
    if NPY in flags:
        return "npy"
    if PARQUET in flags:
        return "parquet-float16" if "float16" in flags else "parquet"
    return "jsonlines"


def o2v_command() -> list[str]:
    found = shutil.which("o2v-batch", path=str(Path(sys.executable).parent))
    return [found] if found else [sys.executable, "-m", "o2v_batch"]


def slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label).strip("-").replace("--", "-")


# ---------------------------------------------------------------- serve


# `o2v-batch serve` on the light model, one server run: requests of each size (records per
# request) from SERVE_CLIENTS concurrent clients, each on its own kept-alive connection.
SERVE_SIZES = (1, 100)
SERVE_CLIENTS = 8
SERVE_REQUESTS = {1: 4000, 100: 800}  # per size, all clients together (--quick: a tenth)
SERVE_WARM_UP = 2  # untimed requests per client first: the first forward passes cost more
SERVE_START_S = 120.0


def serve_rows(bench: Bench, quick: bool) -> list[Row]:
    """Requests/s and p50/p99 latency of `o2v-batch serve` for each request size."""
    import signal
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    cmd = [*o2v_command(), "serve", "--model", str(LIGHT_MODEL), "--host", "127.0.0.1"]
    cmd += ["--port", str(port), *(["--devices", "cpu"] if bench.cuda else [])]
    log = bench.folder("logs") / "serve.log"
    rng, cdf = np.random.default_rng(99), zipf_cdf(VOCAB)
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=bench.env, cwd=ROOT)
    try:
        deadline = time.monotonic() + SERVE_START_S
        while _ping(port) != 200:
            if proc.poll() is not None or time.monotonic() > deadline:
                return [Row("o2v-batch serve", "serve", error=f"did not start: {tail(log)}")]
            time.sleep(0.1)
        rows = []
        for size in SERVE_SIZES:
            count = SERVE_REQUESTS[size] // (10 if quick else 1)
            lines = record_lines(rng, 50 * size, ("in0",), cdf).splitlines(keepends=True)
            bodies = [b"".join(lines[i : i + size]) for i in range(0, len(lines), size)]
            print(f"  serve: {count:,} requests of {size} records ...", end="", file=sys.stderr)
            rows.append(_serve_row(proc.pid, port, bodies, count, size, shlex.join(cmd)))
            print(f" {rows[-1].extra.get('requests_per_s', 0):,.0f} requests/s", file=sys.stderr)
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
            proc.wait()


def _ping(port: int) -> int:
    """The status /ping answers; 0 while nothing listens."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/ping")
        return connection.getresponse().status
    except OSError:
        return 0
    finally:
        connection.close()


def _serve_row(pid: int, port: int, bodies: list[bytes], count: int, size: int, cmd: str) -> Row:
    """SERVE_CLIENTS threads send `count` requests in all; every answer must be a 200."""
    import http.client

    latencies: list[float] = []
    failures: list[str] = []
    per_client = count // SERVE_CLIENTS
    start_line = threading.Barrier(SERVE_CLIENTS + 1)

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Content-Type": "application/jsonlines"}
        mine = []
        for j in range(SERVE_WARM_UP + per_client):
            if j == SERVE_WARM_UP:
                start_line.wait()
            sent = time.perf_counter()
            body = bodies[(k + j) % len(bodies)]
            connection.request("POST", "/invocations", body=body, headers=headers)
            response = connection.getresponse()
            answer = response.read()
            if response.status != 200 or answer.count(b"\n") != size:
                failures.append(f"{response.status}: {answer[:200]!r}")
            if j >= SERVE_WARM_UP:
                mine.append(time.perf_counter() - sent)
        connection.close()
        latencies.extend(mine)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(SERVE_CLIENTS)]
    for t in threads:
        t.start()
    start_line.wait()
    monitor = TreeMonitor(pid)
    monitor.start()
    started = time.perf_counter()
    for t in threads:
        t.join()
    seconds = time.perf_counter() - started
    monitor.done.set()
    monitor.join()
    requests = per_client * SERVE_CLIENTS
    row = Row(f"o2v-batch serve ({SERVE_CLIENTS} clients)", f"{size}-record requests", command=cmd)
    row.records = row.records_out = requests * size
    row.seconds, row.records_per_s = seconds, requests * size / seconds
    row.peak_rss_mb = monitor.peak / 2**20
    row.others_cores = max(0.0, monitor.others) / seconds
    p50, p99 = np.percentile(np.array(latencies) * 1000, [50, 99])
    row.extra.update(
        requests=requests,
        clients=SERVE_CLIENTS,
        requests_per_s=requests / seconds,
        p50_ms=float(p50),
        p99_ms=float(p99),
    )
    if failures:
        row.error = f"{len(failures)} requests failed, first: {failures[0]}"
    return row


def serve_notes(rows: list[Row]) -> list[str]:
    """Requests/s and latency of each serve row."""
    return [
        f"- {r.workload}, {r.extra['clients']} clients: {r.extra['requests_per_s']:,.0f} "
        f"requests/s ({r.records_per_s:,.0f} records/s), p50 {r.extra['p50_ms']:.1f} ms, "
        f"p99 {r.extra['p99_ms']:.1f} ms"
        for r in rows
        if r.system.startswith("o2v-batch serve") and r.error is None
    ]


# ---------------------------------------------------------------- child processes


def child_main(argv: list[str]) -> None:
    """`bench.py child SYSTEM INPUT OUTPUT MODEL MODE DEVICE RESULT FORMAT`: one system,
    timed inside; FORMAT (one of OUTPUTS) is the I/O floor's."""
    system, data, out, model, mode, device, result, output = argv
    if system == "io-floor":
        timed = run_io_floor(Path(data), Path(out), model, mode, output)
    else:
        runners = {"baseline": run_baseline, "ray-data": run_ray_data, "ceiling": run_ceiling}
        timed = runners[system](Path(data), Path(out), model, mode, device)
    Path(result).write_text(json.dumps(timed))


def shards(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.jsonl"))


def run_baseline(data: Path, out: Path, model_dir: str, mode: str, device: str) -> dict:
    """A Friday-afternoon loop: json module, batches of 256 in arrival order, json.dumps."""
    import torch

    import o2v_batch

    torch.set_num_threads(os.cpu_count() or 1)
    model = o2v_batch.load_model(model_dir, device=device, mode=mode)
    out.mkdir(parents=True)
    start = time.perf_counter()
    for shard in shards(data):
        with open(shard) as reader, open(out / (shard.name + ".out"), "w") as writer:
            batch = []
            for line in reader:
                batch.append(json.loads(line))
                if len(batch) == BASELINE_BATCH:
                    writer.write(baseline_predict(model, batch, mode))
                    batch = []
            if batch:
                writer.write(baseline_predict(model, batch, mode))
    # The whole process's wall time is what counts, as for o2v-batch; this is for the record.
    return {"loop_seconds": time.perf_counter() - start}


def baseline_predict(model: Any, batch: list[dict], mode: str) -> str:
    if mode == "embedding":
        vectors = model.embed([r["in0"] for r in batch])
        lines = [json.dumps({"embeddings": v.tolist()}) for v in vectors]
    else:
        scores = model.score([r["in0"] for r in batch], [r["in1"] for r in batch])
        lines = [json.dumps({"scores": s.tolist()}) for s in scores]
    return "\n".join(lines) + "\n"


class RayPredictor:
    """The Ray Data actor: the same model, called on batches of 256."""

    def __init__(self, model_dir: str, mode: str, threads: int):
        import torch

        import o2v_batch

        torch.set_num_threads(threads)
        self.model = o2v_batch.load_model(model_dir, mode=mode)
        self.mode = mode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        in0 = [s.tolist() for s in batch["in0"]]
        if self.mode == "embedding":
            return {"embeddings": list(self.model.embed(in0))}
        scores = self.model.score(in0, [s.tolist() for s in batch["in1"]])
        return {"scores": list(scores)}


def run_ray_data(data: Path, out: Path, model_dir: str, mode: str, device: str) -> dict:
    """read_json -> map_batches(actor) -> write_json, timed from ray.init to the written output."""
    import ray

    cores = os.cpu_count() or 1
    start = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False)
    started = time.perf_counter()
    ray.data.DataContext.get_current().enable_progress_bars = False
    dataset = ray.data.read_json(str(data)).map_batches(
        RayPredictor,
        fn_constructor_args=(model_dir, mode, RAY_ACTOR_THREADS),
        batch_size=BASELINE_BATCH,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=RAY_ACTORS),
        num_cpus=RAY_ACTOR_CPUS,
    )
    dataset.write_json(str(out))
    end = time.perf_counter()
    ray.shutdown()
    return {"seconds": end - start, "ray_init_seconds": started - start}


def read_requests(data: Path, mode: str) -> list[list[list[int]]]:
    """Per encoder input, every record's sequence (pairs have both)."""
    names = ("in0", "in1") if mode == "classification" else ("in0",)
    seqs: list[list[list[int]]] = [[] for _ in names]
    for shard in shards(data):
        with open(shard, "rb") as f:
            for line in f:
                record = orjson.loads(line)
                for k, name in enumerate(names):
                    seqs[k].append(record[name])
    return seqs


def run_ceiling(data: Path, out: Path, model_dir: str, mode: str, device: str) -> dict:
    """The model-only ceiling: encoder (and head) forward passes on pre-built,
    length-sorted, zero-padded tensors, no JSON, no I/O, every core busy. The better of
    one process with a torch thread per core and, on CPU, one single-threaded process
    per core side by side (records/s added up); each at its best token budget."""
    cores = os.cpu_count() or 1
    n = len(read_requests(data, mode)[0])
    variants = {f"1 process x {cores} threads": ceiling_rates(data, model_dir, mode, device, cores)}
    if device == "cpu":
        variants[f"{cores} processes x 1 thread"] = side_by_side_rates(data, model_dir, mode, cores)
    rate, variant, budget = max(
        (rate, variant, budget)
        for variant, rates in variants.items()
        for budget, rate in rates.items()
    )
    return {
        "seconds": n / rate,
        "variant": variant,
        "token_budget": budget,
        "records_per_s_by_budget": {
            variant: {str(budget): round(rate) for budget, rate in rates.items()}
            for variant, rates in variants.items()
        },
    }


def ceiling_rates(
    data: Path, model_dir: str, mode: str, device: str, threads: int, barrier: Any = None
) -> dict[int, float]:
    """Records/s of forward passes alone at each of CEILING_BUDGETS' token budgets: the
    best of CEILING_PASSES passes. `barrier` starts each budget's passes together with
    the processes running beside this one."""
    import torch

    from o2v_batch.artifacts import load_network
    from o2v_batch.tokens import MAX_ROWS, check_ids, device_kind, token_budget

    torch.set_num_threads(threads)
    kind = device_kind(device)
    network = load_network(model_dir, device, encoders_only=mode == "embedding")
    hp = network.hp
    ids = []
    for enc, seqs in enumerate(read_requests(data, mode)):
        # The product's checks, truncation, order and cuts: only the budget varies.
        config = hp.encoder(enc)
        ids.append(check_ids(seqs, config.vocab_size, f"in{enc}").truncate(config.max_seq_len)[0])
    rates = {}
    for factor in CEILING_BUDGETS:
        budget = max(1, int(factor * token_budget(hp, kind)))
        batches = [
            [
                (
                    torch.from_numpy(rows).to(device),
                    torch.from_numpy(tokens).to(device),
                    torch.from_numpy(encoder_ids.lengths[rows]),
                )
                for rows, tokens in encoder_ids.device_batches(budget, MAX_ROWS[kind])
            ]
            for encoder_ids in ids
        ]
        if barrier is not None:
            barrier.wait()
        passes = []
        with torch.inference_mode():
            for _ in range(CEILING_PASSES):
                start = time.perf_counter()
                forward(network, batches, len(ids[0]), MAX_ROWS[kind])
                synchronize(device)
                passes.append(time.perf_counter() - start)
        rates[budget] = len(ids[0]) / min(passes)
    return rates


def _ceiling_process(data: Path, model_dir: str, mode: str, barrier: Any, results: Any) -> None:
    results.put(ceiling_rates(data, model_dir, mode, "cpu", 1, barrier))


def side_by_side_rates(data: Path, model_dir: str, mode: str, cores: int) -> dict[int, float]:
    """One single-threaded CPU process per core, each budget's passes run at once: their
    records/s added up, per token budget."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(cores), context.Queue()
    processes = [
        context.Process(target=_ceiling_process, args=(data, model_dir, mode, barrier, results))
        for _ in range(cores)
    ]
    for process in processes:
        process.start()
    rates = [results.get(timeout=RUN_TIMEOUT_S) for _ in processes]
    for process in processes:
        process.join()
    return {budget: sum(r[budget] for r in rates) for budget in rates[0]}


def forward(network: Any, batches: list, n: int, head_rows: int) -> None:
    import torch

    embeddings = []
    for enc, encoder_batches in enumerate(batches):
        device = encoder_batches[0][1].device
        out = torch.empty((n, network.hp.enc_dim), device=device)
        for rows, tokens, lengths in encoder_batches:
            out[rows] = network.encode(tokens, enc, lengths)
        embeddings.append(out)
    if len(embeddings) == 2:
        u, v = embeddings
        for lo in range(0, n, head_rows):
            network.predict_from_embeddings(u[lo : lo + head_rows], v[lo : lo + head_rows])


def synchronize(device: str) -> None:
    if device != "cpu":
        import torch

        torch.cuda.synchronize()


def run_io_floor(data: Path, out: Path, model_dir: str, mode: str, output: str) -> dict:
    """Everything a job does but the model, on every core: one process per core over
    disjoint parts of the input (line-aligned byte ranges of about equal size across the
    shards, so one file or fewer shards than cores still keep every core busy), each
    reading its records, parsing them with orjson and writing outputs of the same width
    and format; records/s added up (all of them over the wall time of the slowest)."""
    import multiprocessing

    hp = json.loads((Path(model_dir) / "hyperparameters.json").read_text())
    rng = np.random.default_rng(0)
    if mode == "embedding":
        pool = rng.random((4096, hp["enc_dim"]), dtype=np.float32)
    else:
        pool = rng.dirichlet(np.ones(hp.get("num_classes", 2)), 4096).astype(np.float32)
    if output.startswith("parquet"):
        import pyarrow.parquet  # noqa: F401  (once, before the processes fork)
    cores = os.cpu_count() or 1
    parts = split_input(data if data.is_file() else shards(data), cores)
    out.mkdir(parents=True)
    # Forked after the pool is drawn: the processes start at once with nothing to import.
    context = multiprocessing.get_context("fork")
    counts = context.Queue()
    args = [
        (ranges, out / f"part-{k:03d}", pool, mode, output, counts)
        for k, ranges in enumerate(parts)
    ]
    start = time.perf_counter()
    processes = [context.Process(target=_floor_part, args=a) for a in args]
    for process in processes:
        process.start()
    records = sum(counts.get(timeout=RUN_TIMEOUT_S) for _ in processes)
    for process in processes:
        process.join()
    return {"seconds": time.perf_counter() - start, "processes": len(parts), "parsed": records}


def split_input(files: Path | list[Path], parts: int) -> list[list[tuple[Path, int, int]]]:
    """The input cut into `parts` disjoint lists of (file, start, end) byte ranges of about
    equal size, every cut at a line start; empty lists are dropped."""
    files = [files] if isinstance(files, Path) else files
    sizes = [f.stat().st_size for f in files]
    total = sum(sizes)
    cuts = [total * k // parts for k in range(parts + 1)]
    pieces: list[list[tuple[Path, int, int]]] = [[] for _ in range(parts)]
    offset = 0
    for path, size in zip(files, sizes, strict=True):
        for k in range(parts):
            lo = line_start(path, max(cuts[k], offset) - offset, size)
            hi = line_start(path, min(cuts[k + 1], offset + size) - offset, size)
            if lo < hi:
                pieces[k].append((path, lo, hi))
        offset += size
    return [piece for piece in pieces if piece]


def line_start(path: Path, pos: int, size: int) -> int:
    """The first line start at or after byte `pos` (0 and `size` stay as they are)."""
    if pos <= 0 or pos >= size:
        return min(max(pos, 0), size)
    with open(path, "rb") as f:
        f.seek(pos - 1)
        f.readline()  # the rest of the line that byte pos - 1 is in
        return f.tell()


def _floor_part(
    ranges: list[tuple[Path, int, int]],
    stem: Path,
    pool: np.ndarray,
    mode: str,
    output: str,
    counts: Any,
) -> None:
    """One I/O-floor process: its ranges parsed, one output file per range."""
    loads, dumps, numpy = orjson.loads, orjson.dumps, orjson.OPT_SERIALIZE_NUMPY
    key = "embeddings" if mode == "embedding" else "scores"
    records = 0
    for k, (path, lo, hi) in enumerate(ranges):
        name = stem.parent / f"{stem.name}-{k}"
        n = 0
        if output == "jsonlines":
            with open(f"{name}.out", "wb") as writer:
                parts = []
                for line in range_lines(path, lo, hi):
                    loads(line)
                    parts.append(dumps({key: pool[n % len(pool)]}, option=numpy))
                    n += 1
                    if len(parts) == 4096:
                        writer.write(b"\n".join(parts) + b"\n")
                        parts = []
                if parts:
                    writer.write(b"\n".join(parts) + b"\n")
        else:
            for line in range_lines(path, lo, hi):
                loads(line)
                n += 1
            write_columnar(name, pool[np.arange(n) % len(pool)], key, output)
        records += n
    counts.put(records)


def range_lines(path: Path, lo: int, hi: int) -> Iterator[bytes]:
    """The lines of bytes lo to hi of a file (both at line starts)."""
    with open(path, "rb") as reader:
        reader.seek(lo)
        position = lo
        for line in reader:
            yield line
            position += len(line)
            if position >= hi:
                return


def write_columnar(stem: Path, vectors: np.ndarray, key: str, output: str) -> None:
    """The rows as o2v-batch's .npy (float32 embeddings) or Parquet (position, the
    vectors as fixed-size lists, a null error column; dictionaries only off the vectors)."""
    if output == "npy":
        np.save(stem.with_suffix(".npy"), vectors)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    if output == "parquet-float16":
        vectors = vectors.astype(np.float16)
    n, width = vectors.shape
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)
    table = pa.table(
        {
            "position": pa.array(np.arange(n)),
            key: column,
            "error": pa.nulls(n, pa.string()),
        }
    )
    plain = ["position", "error"]
    pq.write_table(
        table, stem.with_suffix(".parquet"), use_dictionary=plain, write_statistics=plain
    )


# ---------------------------------------------------------------- reporting


def bound(ceiling: float, io_floor: float, device: str) -> float:
    """The records/s o2v-batch is held against (README, Performance). On CPU the model and
    the host work share the cores, so their times add up; on a GPU the device and the
    cores work side by side, so the slower of the two decides."""
    if device == "cpu":
        return 1 / (1 / ceiling + 1 / io_floor)
    return min(ceiling, io_floor)


def ceiling_label(device: str) -> str:
    return "ceiling" if device == "cpu" else f"ceiling ({device})"


def floor_label(output: str) -> str:
    return "io-floor" if output == "jsonlines" else f"io-floor ({output})"


def fill_ratios(rows: list[Row]) -> None:
    """Each row against the o2v-batch default (on CPU) and the ceiling on its own device;
    each o2v-batch row against the bound of its device and output format."""
    by_key = {(r.workload, r.system): r for r in rows if r.records_per_s}
    for row in rows:
        if not row.records_per_s or row.workload not in {w.name for w in WORKLOADS}:
            continue
        o2v = "o2v-batch" if (row.workload, "o2v-batch") in by_key else "o2v-batch --devices cpu"
        for attr, ref_name in (("o2v", o2v), ("ceiling", ceiling_label(row.device))):
            ref = by_key.get((row.workload, ref_name))
            if ref is not None:
                setattr(row, f"{attr}_reference", ref_name)
                setattr(row, f"ratio_to_{attr}", row.records_per_s / ref.records_per_s)
        ceiling = by_key.get((row.workload, ceiling_label(row.device)))
        floor = by_key.get((row.workload, floor_label(row.output)))
        if not row.system.startswith("o2v-batch") or ceiling is None or floor is None:
            continue
        row.bound = bound(ceiling.records_per_s, floor.records_per_s, row.device)
        row.ratio_to_bound = row.records_per_s / row.bound
        if "after_startup_records_per_s" in row.extra:
            ratio = row.extra["after_startup_records_per_s"] / row.bound
            row.extra["after_startup_ratio_to_bound"] = round(ratio, 3)


def machine() -> dict[str, Any]:
    import torch

    info = {
        "cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "cpu": cpu_model(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    return info


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fmt(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


COLUMNS = (
    "system", "workload", "records/s", "after start-up", "start-up s", "bound", "x bound",
    "x bound after start-up", "x o2v-batch", "x ceiling", "parent's CPU", "GPU busy",
    "seconds", "peak MB", "others' CPU", "output B/record",
)  # fmt: skip


def markdown(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|---|---|" + "---:|" * (len(COLUMNS) - 2),
    ]
    for r in rows:
        rate = "failed" if r.error else fmt(r.records_per_s, ",.0f")
        if r.system == "o2v-batch start-up":
            rate = "(time to first output)"
        cells = [
            r.system,
            r.workload,
            rate,
            fmt(r.extra.get("after_startup_records_per_s"), ",.0f"),
            fmt(r.extra.get("startup_seconds"), ".1f"),
            fmt(r.bound, ",.0f"),
            fmt(r.ratio_to_bound, ".2f"),
            fmt(r.extra.get("after_startup_ratio_to_bound"), ".2f"),
            fmt(r.ratio_to_o2v, ".2f"),
            fmt(r.ratio_to_ceiling, ".2f"),
            fmt(r.parent_cpu_share, ".1%"),
            "" if r.gpu_busy_percent is None else f"{r.gpu_busy_percent:.1f}%",
            fmt(r.seconds, ".2f"),
            fmt(r.peak_rss_mb, ",.0f"),
            fmt(r.others_cores, ".2f"),
            fmt(r.extra.get("output_bytes_per_record"), ",.1f"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def format_notes(rows: list[Row]) -> list[str]:
    """Each columnar output against jsonlines (the o2v-batch default) on its workload."""
    get = {(r.workload, r.system): r for r in rows if r.error is None}
    notes = []
    for row in rows:
        text = get.get((row.workload, "o2v-batch"))
        if row.error or "--accept" not in row.system or text is None:
            continue
        smaller = text.extra["output_bytes_per_record"] / row.extra["output_bytes_per_record"]
        notes.append(
            f"- {row.workload}: {row.system.removeprefix('o2v-batch ')}: {smaller:.1f}x smaller "
            f"than jsonlines ({row.extra['output_bytes_per_record']:,.1f} vs "
            f"{text.extra['output_bytes_per_record']:,.1f} B/record), "
            f"{row.records_per_s / text.records_per_s:.2f}x its records/s"
        )
    return notes


# The o2v-batch rows issue 19 holds against the bound on CPU: the defaults on the shards
# and on one file, every workload; .npy and Parquet on heavy embedding.
BOUND_ROWS = ("o2v-batch", "o2v-batch (one file)")
BOUND_FORMAT_ROWS = {
    "heavy-embedding": (f"o2v-batch --accept {NPY}", f"o2v-batch --accept {PARQUET}")
}


def targets(rows: list[Row]) -> list[str]:
    """Issue 19's targets on CPU (whole commands) and, where there are GPU rows, on the
    GPU (after start-up); the start-up of a 3-record job; the speed-ups over the
    hand-written loop and Ray Data."""
    get = {(r.workload, r.system): r for r in rows if r.error is None}
    notes = []
    for w in WORKLOADS:
        for system in (*BOUND_ROWS, *BOUND_FORMAT_ROWS.get(w.name, ())):
            row = get.get((w.name, system))
            if row and row.ratio_to_bound is not None and row.device == "cpu":
                after = row.extra.get("after_startup_ratio_to_bound")
                value = f"{row.ratio_to_bound:.2f}" + (
                    f" ({after:.2f} after start-up)" if after else ""
                )
                met = row.ratio_to_bound >= BOUND_GOAL
                notes.append(
                    verdict(f"{w.name}, {system} >= {BOUND_GOAL} of the bound", value, met)
                )
    for system in BOUND_ROWS:
        row = get.get(("light-embedding", system))
        if row and row.parent_cpu_share is not None:
            share = row.parent_cpu_share
            notes.append(
                verdict(
                    f"light-embedding, {system}: the parent's CPU <= {PARENT_SHARE_GOAL:.0%}",
                    f"{share:.1%}",
                    share <= PARENT_SHARE_GOAL,
                )
            )
    small, big = (get.get((w.name, "o2v-batch")) for w in SCALING)
    if small and big:
        growth = big.peak_rss_mb / small.peak_rss_mb
        notes.append(
            verdict(
                f"peak memory, 10x input, <= {MEMORY_GOAL}x",
                f"{growth:.2f}x",
                growth <= MEMORY_GOAL,
            )
        )
    start = get.get((STARTUP_WORKLOAD, "o2v-batch start-up"))
    if start:
        first, whole = start.seconds, start.process_seconds
        notes.append(
            verdict(
                f"3-record job <= {STARTUP_GOAL_S} s",
                f"first output {first:.2f} s, whole command {whole:.2f} s",
                whole <= STARTUP_GOAL_S,
            )
        )
    for w in WORKLOADS:
        row = get.get((w.name, "o2v-batch"))
        for other in ("baseline", "ray-data"):
            ref = get.get((w.name, other))
            if row and ref:
                x = row.records_per_s / ref.records_per_s
                notes.append(verdict(f"{w.name} >= 5x {other}", f"{x:.2f}x", x >= 5))
    return notes + gpu_targets(rows)


def gpu_targets(rows: list[Row]) -> list[str]:
    """After start-up: each o2v-batch row on a GPU against the GPU bound (light embedding:
    against the I/O floor) and against the same command with --devices cpu."""
    get = {(r.workload, r.system): r for r in rows if r.error is None}
    notes = []
    for row in rows:
        rate = row.extra.get("after_startup_records_per_s")
        if row.error or row.device == "cpu" or not row.system.startswith("o2v-batch") or not rate:
            continue
        name = f"{row.workload}, {row.system}"
        if row.workload == "light-embedding":
            floor = get.get((row.workload, floor_label(row.output)))
            if floor:
                x = rate / floor.records_per_s
                notes.append(
                    verdict(
                        f"{name} >= {GPU_BOUND_GOAL} of the I/O floor",
                        f"{x:.2f}",
                        x >= GPU_BOUND_GOAL,
                    )
                )
        elif row.bound:
            x = rate / row.bound
            notes.append(
                verdict(f"{name} >= {GPU_BOUND_GOAL} of the bound", f"{x:.2f}", x >= GPU_BOUND_GOAL)
            )
        cpu = get.get(
            (row.workload, row.system.replace(f"--devices {row.device}", "--devices cpu"))
        )
        cpu_rate = cpu.extra.get("after_startup_records_per_s") if cpu else None
        if cpu_rate:
            x = rate / cpu_rate
            notes.append(
                verdict(
                    f"{name} >= {GPU_OVER_CPU_GOAL}x --devices cpu",
                    f"{x:.2f}x",
                    x >= GPU_OVER_CPU_GOAL,
                )
            )
    return notes


def verdict(target: str, value: str, met: bool) -> str:
    return f"- {target}: {value} ({'met' if met else 'MISSED'})"


def plot(rows: list[Row], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    workloads = [w.name for w in WORKLOADS if any(r.workload == w.name for r in rows)]
    systems = list(dict.fromkeys(r.system for r in rows if r.workload in workloads))
    fig, ax = plt.subplots(figsize=(max(8, 2.2 * len(workloads)), 5))
    width = 0.8 / max(1, len(systems))
    for k, system in enumerate(systems):
        values = [
            next((r.records_per_s or 0 for r in rows if (r.workload, r.system) == (w, system)), 0)
            for w in workloads
        ]
        xs = [i + (k - (len(systems) - 1) / 2) * width for i in range(len(workloads))]
        ax.bar(xs, values, width, label=system)
    ax.set_xticks(range(len(workloads)), workloads)
    ax.set_yscale("log")
    ax.set_ylabel("records/s (log scale)")
    ax.set_title("o2v-batch benchmark: records/s per system")
    ax.legend(fontsize="small", ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.08))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--records",
        type=int,
        help="records of each light-model workload (default: light embedding 5,000,000, "
        "light classification 3,000,000; --gpu 1,000,000; --quick 5,000)",
    )
    p.add_argument(
        "--heavy-records",
        type=int,
        help="records of each heavy-model workload (default: embedding 64,000, "
        "classification 32,000; --gpu 60,000 and 30,000; --quick 300)",
    )
    p.add_argument("--out", type=Path, default=ROOT / "bench-results", help="results folder")
    p.add_argument("--quick", action="store_true", help="tiny sizes, no Ray Data unless asked")
    p.add_argument("--systems", help=f"comma-separated subset of {','.join(SYSTEMS)}")
    p.add_argument(
        "--workloads", help=f"comma-separated subset of {','.join(w.name for w in WORKLOADS)}"
    )
    p.add_argument(
        "--variants",
        help=f"o2v-batch flag sets beside the defaults, ';'-separated (default: {';'.join(VARIANTS)}; --quick: none)",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help=f"the GPU table only ({', '.join(GPU_WORKLOADS)}; o2v-batch on the GPU and "
        "on the CPU, the GPU ceiling, the I/O floor); exits 2 without CUDA",
    )
    p.add_argument(
        "--gpu-device",
        default="cuda",
        help="the device of --gpu's device rows (default cuda; cpu rehearses the table "
        "on a machine without a GPU)",
    )
    p.add_argument(
        "--work", type=Path, help="keep data and outputs here (default: a temp folder, removed)"
    )
    args = p.parse_args(argv)
    if args.gpu and (args.systems or args.variants):
        p.error("--gpu runs its own systems: leave out --systems and --variants")
    default_systems = QUICK_SYSTEMS if args.quick else SYSTEMS
    args.systems = split_list(args.systems, SYSTEMS, "--systems") or list(default_systems)
    offered = list(GPU_WORKLOADS) if args.gpu else [w.name for w in WORKLOADS]
    chosen = split_list(args.workloads, offered, "--workloads") or offered
    args.workloads = [w for w in WORKLOADS if w.name in chosen]
    args.counts = {w.name: record_count(w, args) for w in (*WORKLOADS, *SCALING)}
    if args.variants is None:
        args.variants = "" if args.quick or args.gpu else ";".join(VARIANTS)
    args.variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    return args


def record_count(w: Workload, args: argparse.Namespace) -> int:
    """The workload's records: --records or --heavy-records, else the mode's default."""
    given = args.records if w.model == "light" else args.heavy_records
    if w in SCALING:
        base = given or (QUICK_RECORDS["light"] if args.quick else SCALING_RECORDS)
    elif given:
        base = given
    elif args.quick:
        base = QUICK_RECORDS[w.model]
    else:
        base = GPU_RECORDS.get(w.name, 0) if args.gpu else DEFAULT_RECORDS[w.name]
    return max(SHARDS, int(base * w.scale))


def split_list(text: str | None, allowed: tuple[str, ...] | list[str], option: str) -> list[str]:
    if not text:
        return []
    items = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in items if s not in allowed]
    if unknown:
        sys.exit(f"{option}: unknown {', '.join(unknown)} (choose from {', '.join(allowed)})")
    return items


def prepare(bench: Bench, args: argparse.Namespace) -> list[Workload]:
    """Writes the data and the heavy model; returns the workloads to run."""
    workloads = list(args.workloads)
    if "scaling" in args.systems and not args.gpu:
        workloads += SCALING
    bench.models["light"] = LIGHT_MODEL
    if any(w.model == "heavy" for w in workloads):
        bench.models["heavy"] = bench.folder("heavy-model")
        make_heavy_model(bench.models["heavy"])
    one_file = "o2v-batch" in args.systems and not args.gpu
    for w in workloads:
        seed = [*WORKLOADS, *SCALING].index(w)  # the same data whichever workloads run
        n = args.counts[w.name]
        bench.data[w.name], bench.counts[w.name] = bench.work / "data" / w.name, n
        print(f"writing {w.name}: {n:,} records", file=sys.stderr)
        write_workload(bench.data[w.name], n, w.pairs, seed)
        if one_file and w in WORKLOADS:
            folder = bench.work / "data" / f"{w.name}-{ONE_FILE}"
            write_one_file(bench.data[w.name], folder)
            bench.data[f"{w.name}-{ONE_FILE}"] = folder / "all.jsonl"
    # The freshly written data goes to disk now, not during the first timed run.
    os.sync()
    return workloads


def run_workload(bench: Bench, w: Workload, args: argparse.Namespace) -> list[Row]:
    if w in SCALING:
        return [bench.o2v(w, "")]
    rows = []
    if "o2v-batch" in args.systems:
        rows += [bench.o2v(w, ""), bench.o2v(w, "", one_file=True)]
        after_startup(bench, w, rows[0])
        rows += [bench.o2v(w, flags) for flags in args.variants]
    formats = FORMATS + (EMBEDDING_FORMATS if w.mode == "embedding" else ())
    if "formats" in args.systems:
        rows += [bench.o2v(w, flags) for flags in formats]
    for system in ("baseline", "ray-data", "ceiling", "io-floor"):
        if system in args.systems:
            rows.append(bench.child(system, w))
    if "io-floor" in args.systems and "formats" in args.systems:
        rows += [bench.child("io-floor", w, output=output_format(flags)) for flags in formats]
    if bench.cuda:
        if "ceiling" in args.systems:
            rows.append(bench.child("ceiling", w, "cuda"))
        if "o2v-batch" in args.systems:
            rows.append(bench.o2v(w, "", "cuda"))
            after_startup(bench, w, rows[-1], device="cuda")
    return rows


def run_gpu_workload(bench: Bench, w: Workload, device: str) -> list[Row]:
    """--gpu: o2v-batch on `device` and on the CPU (jsonlines; heavy embedding also .npy),
    each also after start-up; the ceiling on `device`; the all-cores I/O floor."""
    flag_sets = ["", f"--accept {NPY}"] if w.name == "heavy-embedding" else [""]
    devices = list(dict.fromkeys([device, "cpu"]))  # --gpu-device cpu: its rows once
    rows = []
    for flags in flag_sets:
        for on in devices:
            rows.append(bench.o2v(w, flags, on))
            after_startup(bench, w, rows[-1], flags, on)
    rows.append(bench.child("ceiling", w, device))
    rows += [bench.child("io-floor", w, output=output_format(flags)) for flags in flag_sets]
    return rows


def after_startup(
    bench: Bench, w: Workload, row: Row, flags: str = "", device: str = "cpu"
) -> None:
    """o2v-batch's records/s once started: the same command on a quarter of the shards,
    and the records/s of the difference, (N - n) / (t - t_quarter). Start-up (spawning
    workers, importing torch, loading the model) is in both runs and cancels out; what
    is left of the whole run's seconds beside N / that rate is the start-up."""
    if row.error:
        return
    quarter = Workload(f"{w.name}-quarter", w.model, w.mode, w.scale)
    if quarter.name not in bench.data:
        folder = bench.folder("data", quarter.name)
        for shard in shards(bench.data[w.name])[: SHARDS // 4]:
            os.link(shard, folder / shard.name)
        bench.data[quarter.name], bench.counts[quarter.name] = folder, count_lines(folder)
    small = bench.o2v(quarter, flags, device)
    if small.error or row.seconds <= small.seconds:
        return
    rate = (row.records - small.records) / (row.seconds - small.seconds)
    row.extra["after_startup_records_per_s"] = round(rate)
    row.extra["startup_seconds"] = round(max(0.0, row.seconds - row.records / rate), 2)
    row.extra["quarter_seconds"] = small.seconds


def main(argv: list[str]) -> int:
    if argv[:1] == ["child"]:
        child_main(argv[1:])
        return 0
    started = time.perf_counter()
    args = parse_args(argv)
    # Checked before the runs, not when the plot or the Ray Data row needs them.
    needed = [] if args.gpu else ["matplotlib"]
    needed += ["ray", "pyarrow"] if "ray-data" in args.systems and not args.gpu else []
    needed += ["uvicorn"] if "serve" in args.systems and not args.gpu else []
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        sys.exit(f"scripts/bench.py needs {' and '.join(missing)}: pip install -e '.[bench]'")
    info = machine()
    print(
        f"machine: {info['cores']} cores ({info['cpu']}), {info['memory_gb']} GB, "
        f"Python {info['python']}, torch {info['torch']}, GPU: {info['gpu'] or 'none'}"
    )
    if args.gpu and args.gpu_device != "cpu" and info["gpu"] is None:
        print(
            "bench.py: error: --gpu: no CUDA device here (torch.cuda.is_available() is "
            "False); --gpu --gpu-device cpu rehearses the GPU table on the CPU",
            file=sys.stderr,
        )
        return 2
    work = args.work or Path(tempfile.mkdtemp(prefix="o2v-bench-"))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    # Every system runs as an installed program does, from Python's bytecode cache, even
    # where the environment turns writing it off (each start would compile from source).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    cuda = info["gpu"] is not None
    bench = Bench(work, env, cuda=cuda, keep=args.work is not None, gpu_table=args.gpu)
    try:
        workloads = prepare(bench, args)
        rows: list[Row] = []
        for w in workloads:
            if args.gpu:
                rows += run_gpu_workload(bench, w, args.gpu_device)
            else:
                rows += run_workload(bench, w, args)
        if "startup" in args.systems and not args.gpu:
            rows.append(bench.startup())
        if "serve" in args.systems and not args.gpu:
            rows += serve_rows(bench, args.quick)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    fill_ratios(rows)
    report(rows, info, args)
    print(f"bench: {time.perf_counter() - started:.0f} s in all")
    return 1 if any(r.error for r in rows) else 0


def report(rows: list[Row], info: dict[str, Any], args: argparse.Namespace) -> None:
    args.out.mkdir(parents=True, exist_ok=True)
    notes = targets(rows)
    print()
    print(markdown(rows))
    if notes:
        print("\nTargets (issue 19):")
        print("\n".join(notes))
    formats = format_notes(rows)
    if formats:
        print("\nOutput formats against jsonlines (this run):")
        print("\n".join(formats))
    served = serve_notes(rows)
    if served:
        print("\nServe (one server run, light model, embeddings):")
        print("\n".join(served))
    for r in rows:
        if r.error:
            print(f"\n{r.system} on {r.workload} failed: {r.error}")
    document = {
        "machine": info,
        "records": {w.name: args.counts[w.name] for w in (*WORKLOADS, *SCALING)},
        "gpu": args.gpu,
        "systems": args.systems,
        "variants": args.variants,
        "rows": [asdict(r) for r in rows],
        "targets": notes,
        "formats": formats,
    }
    (args.out / "bench.json").write_text(json.dumps(document, indent=2) + "\n")
    written = [args.out / "bench.json"]
    if importlib.util.find_spec("matplotlib") is not None:
        plot(rows, args.out / "bench.png")
        written.append(args.out / "bench.png")
    print(f"\nwrote {' and '.join(map(str, written))}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
