"""Show that a transform job's memory stays flat as its input grows, and that one
enormous line is rejected without being read into memory.

Runs `o2v-batch transform` as a subprocess on 1x and 10x the same data (the same
shards, each ten times longer), then on a shard holding one 200 MB line, and
prints the peak RSS of the whole process tree (parent + workers), sampled every
50 ms. RSS of the workers counts the pages they share with each other (torch's
libraries) once per worker, so the figures are upper bounds.

With --parquet-mb N it checks Parquet output instead: one jsonlines shard of about
N MB, then one ten times longer (100 gives 100 MB and 1 GB), written
with --accept application/vnd.apache.parquet; it exits 1 when the larger job's peak is
more than 20% above the smaller one's.

Usage: python scripts/memory_check.py [--records 200000] [--shards 4] [--model examples/model]
       python scripts/memory_check.py --parquet-mb 100
"""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

try:  # psutil comes with the bench (or test) extra, not with o2v-batch
    import psutil
except ModuleNotFoundError as exc:
    sys.exit(f"scripts/memory_check.py needs {exc.name}: pip install -e '.[bench]'")

ROOT = Path(__file__).resolve().parent.parent
# Run as a script from anywhere: the checkout's root holds the benchmarks package.
sys.path.insert(0, str(ROOT))

from benchmarks.records import random_records, write_jsonl  # noqa: E402

SAMPLE_S = 0.05
GIANT_LINE_BYTES = 200 * 2**20
PARQUET = "application/vnd.apache.parquet"
SAMPLE_RECORDS = 20_000  # repeated to make the Parquet check's shards
FLAT = 1.2  # the larger job's peak RSS may be at most 20% above the smaller one's
LENGTHS = range(1, 51)  # token ids per sequence


def write_records(path: Path, n: int, vocab: int, seed: int) -> None:
    """n jsonlines records: in0, in1 and pairs, 1 to 50 token ids each."""
    write_jsonl(path, random_records(n, seed, vocab=vocab, lengths=LENGTHS))


def repeat_file(source: Path, target: Path, times: int) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    data = source.read_bytes()
    with target.open("wb") as f:
        for _ in range(times):
            f.write(data)


def write_giant_line(path: Path, good: Path) -> None:
    """A few good records, one line of 200 MB of digits, a few more good records."""
    with good.open("rb") as f:
        lines = list(itertools.islice(f, 6))
    chunk = b"1" * 2**20
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as f:
        f.writelines(lines[:3])
        for _ in range(GIANT_LINE_BYTES // len(chunk)):
            f.write(chunk)
        f.write(b"\n")
        f.writelines(lines[3:6])


def rss(process: psutil.Process) -> tuple[int, int]:
    """RSS of the process alone and of its whole tree, in bytes."""
    own = process.memory_info().rss
    total = own
    for child in process.children(recursive=True):
        try:
            total += child.memory_info().rss
        except psutil.Error:  # it exited between listing and reading
            continue
    return own, total


def run_job(input_dir: Path, output_dir: Path, model: str, *options: str) -> tuple[int, int, float]:
    """Runs a transform job; returns its peak RSS (parent alone, whole tree) and its seconds."""
    command = [sys.executable, "-m", "o2v_batch", "transform", str(input_dir), str(output_dir)]
    command += ["--model", model, "--no-progress", *options]
    started = time.monotonic()
    child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    # Read stderr on a thread, so a chatty job can never block on a full pipe.
    stderr: list[bytes] = []
    reader = threading.Thread(target=lambda: stderr.append(child.stderr.read()))
    reader.start()
    process, parent_peak, tree_peak = psutil.Process(child.pid), 0, 0
    while child.poll() is None:
        try:
            own, total = rss(process)
        except psutil.NoSuchProcess:
            break
        parent_peak, tree_peak = max(parent_peak, own), max(tree_peak, total)
        time.sleep(SAMPLE_S)
    child.wait(timeout=3600)
    reader.join()
    seconds = time.monotonic() - started
    text = b"".join(stderr).decode(errors="replace")
    if child.returncode != 0:
        raise SystemExit(f"job failed ({child.returncode}): {' '.join(command)}\n{text}")
    return parent_peak, tree_peak, seconds


def mib(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB"


def check_parquet(work: Path, args: argparse.Namespace) -> bool:
    """One jsonlines shard of about --parquet-mb MB and one ten times longer, written as
    Parquet; True when the peak RSS stays flat."""
    sample = work / "sample.jsonl"
    write_records(sample, SAMPLE_RECORDS, args.vocab, seed=0)
    times = max(1, round(args.parquet_mb * 2**20 / sample.stat().st_size))
    peaks = {}
    for name, scale in (("1x", 1), ("10x", 10)):
        shard = work / f"parquet-{name}" / "shard.jsonl"
        repeat_file(sample, shard, scale * times)
        parent, tree, seconds = run_job(
            shard.parent, work / f"out-parquet-{name}", args.model, "--accept", PARQUET,
            *args.transform_options,
        )  # fmt: skip
        peaks[name] = tree
        n = scale * times * SAMPLE_RECORDS
        written = (work / f"out-parquet-{name}" / "shard.jsonl.parquet").stat().st_size
        print(
            f"Parquet {name:>3}: one shard of {mib(shard.stat().st_size)} ({n:,} records) -> "
            f"{mib(written)}: peak RSS {mib(tree)} (parent alone {mib(parent)}), "
            f"{seconds:.1f} s, {n / seconds:,.0f} records/s"
        )
        shard.unlink()  # the disk holds one of them at a time
    ratio = peaks["10x"] / peaks["1x"]
    flat = ratio <= FLAT
    print(f"Parquet, 10x / 1x peak RSS: {ratio:.2f} ({'within' if flat else 'OVER'} 20%)")
    return flat


def check_jsonlines(work: Path, args: argparse.Namespace) -> None:
    """The records over --shards shards, then each shard ten times longer, then one
    enormous line among a few records: each job's peak RSS."""
    per_shard = args.records // args.shards
    for i in range(args.shards):
        write_records(work / "1x" / f"part-{i}.jsonl", per_shard, args.vocab, seed=i)
        repeat_file(work / "1x" / f"part-{i}.jsonl", work / "10x" / f"part-{i}.jsonl", 10)
    write_giant_line(work / "giant" / "giant.jsonl", work / "1x" / "part-0.jsonl")
    records = per_shard * args.shards
    print(f"model: {args.model}; {args.shards} shards; options: {args.transform_options}")
    peaks = {}
    for name, n in (("1x", records), ("10x", 10 * records)):
        size = sum(p.stat().st_size for p in (work / name).iterdir())
        parent, tree, seconds = run_job(
            work / name, work / f"out-{name}", args.model, *args.transform_options
        )
        peaks[name] = tree
        print(
            f"{name:>4}: {n:>10,} records, {mib(size):>8} of input: peak RSS {mib(tree)}"
            f" (parent + workers; parent alone {mib(parent)}), {seconds:.1f} s,"
            f" {n / seconds:,.0f} records/s"
        )
    print(f"10x / 1x peak RSS: {peaks['10x'] / peaks['1x']:.2f}")
    parent, tree, seconds = run_job(
        work / "giant",
        work / "out-giant",
        args.model,
        "--on-bad-record",
        "emit-error",
        *args.transform_options,
    )
    out = (work / "out-giant" / "giant.jsonl.out").read_text().splitlines()
    print(
        f"one {mib(GIANT_LINE_BYTES)} line among 6 records: peak RSS {mib(tree)} "
        f"(parent alone {mib(parent)}), {seconds:.1f} s; its output line: {out[3]}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000, help="records in the 1x data")
    parser.add_argument("--shards", type=int, default=4, help="shards the records are spread over")
    parser.add_argument("--model", default=str(ROOT / "examples" / "model"))
    parser.add_argument("--vocab", type=int, default=10240, help="the model's vocab size")
    parser.add_argument("--workdir", help="where the data goes [default: a temporary folder]")
    parser.add_argument(
        "--parquet-mb",
        type=int,
        help="instead: a Parquet job on one shard of this many MB, then 10x",
    )
    parser.add_argument("transform_options", nargs="*", help="more transform options, after --")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        work = Path(tmp)
        if args.parquet_mb:
            print(f"model: {args.model}; options: {args.transform_options}")
            sys.exit(0 if check_parquet(work, args) else 1)
        check_jsonlines(work, args)


if __name__ == "__main__":
    main()
