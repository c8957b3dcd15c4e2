"""Measuring a run: wall time, the process tree's peak memory and CPU time, the CPU the
rest of the machine used meanwhile, the GPUs' utilisation; and the machine itself."""

from __future__ import annotations

import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.paths import ROOT

try:  # psutil comes with the bench extra, not with o2v-batch
    import psutil
except ModuleNotFoundError as exc:
    sys.exit(f"scripts/bench.py needs {exc.name}: pip install -e '.[bench]'")

SAMPLE_S = 0.05  # memory and CPU sampling period
GPU_SAMPLE_S = 0.2  # nvidia-smi sampling period
TORCH_LOOK_S = 1.0  # how often a process not known to have loaded torch is looked at
READ_CHUNK = 2**22  # bytes read at a time when an input is read through
RUN_TIMEOUT_S = 1800  # a run that has not ended by then is stuck (Ray can hang)


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

    def __init__(self, pid: int, torch_processes: bool = False):
        """With `torch_processes`, also which of the processes have loaded torch."""
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak = 0
        self.cpu: dict[int, float] = {}  # CPU seconds per live process of the tree, last sample
        self.parent_cpu = 0.0  # the top process's own CPU seconds, last sample
        self.watch_torch = torch_processes
        self.torch: dict[int, float] = {}  # CPU seconds of each process that loaded torch
        self.looked: dict[int, float] = {}  # when each other process was last looked at
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
            elif self.watch_torch and self._loaded_torch(proc.pid):
                self.torch[proc.pid] = own
        if cpu:
            self.cpu = cpu
        self.peak = max(self.peak, rss)

    def _loaded_torch(self, pid: int) -> bool:
        """Whether the process has loaded torch, its memory map read at most once every
        TORCH_LOOK_S (a host worker never does: its map is not read every sample)."""
        if pid in self.torch:
            return True
        now = time.monotonic()
        if now - self.looked.get(pid, -TORCH_LOOK_S) < TORCH_LOOK_S:
            return False
        self.looked[pid] = now
        return loaded_torch(pid)


def loaded_torch(pid: int) -> bool:
    """Whether the process has torch's library mapped (False where that cannot be read)."""
    try:
        with open(f"/proc/{pid}/maps", "rb") as maps:
            return any(b"libtorch" in line for line in maps)
    except OSError:
        return False


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
    # With `torch_processes`: the CPU of the processes below the top one that loaded
    # torch, in cores over the run. In a GPU job these are its device processes (host
    # workers never load torch): near a core, a device process's own work may be what
    # keeps its GPU waiting.
    torch_cores: float | None = None


def measure(
    cmd: list[str],
    log: Path,
    env: dict[str, str],
    watch: Path | None = None,
    gpu: bool = False,
    data: Path | None = None,
    torch_processes: bool = False,
) -> Run:
    """Runs cmd to its end; wall time, the tree's peak RSS and CPU, if asked when `watch`
    appeared, with `gpu` the GPUs' mean utilisation meanwhile, and with `torch_processes`
    the CPU of the processes that loaded torch (Run.torch_cores). The input, `data` (a
    file or a folder), is read once first, so that every run starts with it in memory."""
    gpus = GpuMonitor()
    if data is not None:
        read_through(data)
    # The runs before wrote their outputs (hundreds of MB): to disk with them first, so
    # that their writeback does not take this run's CPU (it showed as others' load).
    os.sync()
    with open(log, "wb") as out:
        start = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        monitor = TreeMonitor(proc.pid, torch_processes)
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
    torch_cores = sum(monitor.torch.values()) / seconds if torch_processes else None
    return Run(
        seconds,
        monitor.peak / 2**20,
        others,
        code,
        first,
        monitor.parent_share,
        gpus.mean,
        torch_cores,
    )


def read_through(data: Path) -> None:
    """Reads a file, or every file under a folder, to its end: into the page cache. A
    run that ends a workload (the ceiling's, at 18-21 GB) pushes the data out of it, and
    the run after it would otherwise read its input from disk where the others do not."""
    for path in sorted(data.rglob("*")) if data.is_dir() else [data]:
        if path.is_file():
            with open(path, "rb") as f:
                while f.read(READ_CHUNK):
                    pass


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
