"""The I/O floor: everything a job does but the model, on every core."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from benchmarks.measure import RUN_TIMEOUT_S
from benchmarks.workloads import shards


def run(data: Path, out: Path, model_dir: str, mode: str, output: str) -> dict:
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
