"""Runs one system's command as its own process, measured, and makes its row; the
systems timed inside run as `bench.py child ...` (benchmarks.child)."""

from __future__ import annotations

import json
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from benchmarks.measure import measure, tail
from benchmarks.paths import ENTRY
from benchmarks.rows import Row, slug
from benchmarks.workloads import Workload, count_lines

BINARY_SUFFIXES = (".parquet", ".npy")  # outputs that are not one line per record


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

    def child(
        self, system: str, workload: Workload, device: str = "cpu", output: str = "jsonlines"
    ) -> Row:
        """One of the systems timed inside (baseline, ray-data, ceiling, io-floor)."""
        label = system if device == "cpu" else f"{system} ({device})"
        label += "" if output == "jsonlines" else f" ({output})"
        out = self.work / "out" / workload.name / slug(label)
        result = self.work / "logs" / f"{workload.name}-{slug(label)}.json"
        cmd = [
            sys.executable,
            str(ENTRY),
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
        return self.run(label, workload, cmd, out, device, output, result, self.data[workload.name])

    def run(
        self,
        label: str,
        workload: Workload,
        cmd: list[str],
        out: Path,
        device: str,
        output: str,
        result: Path | None = None,
        data: Path | None = None,
    ) -> Row:
        """Runs cmd on the workload, its input `data` read through first (measure); its
        row, with the seconds the system reported in `result` where it times itself."""
        log = self.folder("logs") / f"{workload.name}-{slug(label)}.log"
        print(f"  {workload.name}: {label} ...", end="", flush=True, file=sys.stderr)
        o2v = label.startswith("o2v-batch")
        # On a GPU the job's device processes are the ones that load torch.
        device_processes = o2v and device != "cpu"
        run = measure(
            cmd, log, self.env, gpu=self.cuda, data=data, torch_processes=device_processes
        )
        row = Row(label, workload.name, device, output, shlex.join(cmd))
        row.records = self.counts[workload.name]
        row.process_seconds, row.peak_rss_mb = run.seconds, run.peak_rss_mb
        row.others_cores, row.gpu_busy_percent = run.others_cores, run.gpu_busy_percent
        if o2v:
            row.parent_cpu_share, row.device_process_cores = run.parent_cpu_share, run.torch_cores
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
        self._outputs(row, out)
        row.records_per_s = row.records / row.seconds
        print(f" {row.records_per_s:,.0f} records/s", file=sys.stderr)
        return row

    def _outputs(self, row: Row, out: Path) -> None:
        """The job's seconds, records out and output bytes per record; the outputs go
        unless kept."""
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
