"""Outputs on a GPU against the CPU's, for each --precision and encoder.

Loads each model twice through the public API (`load_model`), once on the CPU in fp32
(the reference) and once on DEVICE in each precision, embeds and scores the same
sequences (some carrying padding ids), and prints a Markdown table of the largest
difference relative to the largest reference value. fp32 must stay within 1e-5 of the
CPU; tf32, bf16 and fp16 are shown for what they cost. Then runs the whole command,
`transform --devices DEVICE` against `--devices cpu`, on the example model.

Usage:
    python scripts/gpu_check.py [--devices cuda] [--records 4000] [--out gpu-check/]

`--devices cpu` runs the same script on a machine without a GPU (every difference 0).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

# Run as a script from anywhere: the checkout's root holds the benchmarks package, whose
# records and heavy model this check uses.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.paths import LIGHT_MODEL
from benchmarks.records import draw_sequences, zipf_cdf
from benchmarks.workloads import HEAVY_HYPERPARAMETERS
from o2v_batch import load_model
from o2v_batch.artifacts import save_model
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.network import Object2Vec

FP32_BOUND = 1e-5  # largest |GPU - CPU| over the largest |CPU| value, fp32
PRECISIONS = ("fp32", "tf32", "bf16", "fp16")
MODELS = {
    "heavy-hcnn": HEAVY_HYPERPARAMETERS,
    "bilstm": {
        "enc0_network": "bilstm",
        "enc0_token_embedding_dim": 128,
        "enc0_vocab_size": 10240,
        "enc0_max_seq_len": 200,
        "enc_dim": 256,
    },
    "pooled": {
        "enc0_network": "pooled_embedding",
        "enc0_token_embedding_dim": 256,
        "enc0_vocab_size": 10240,
        "enc0_max_seq_len": 200,
        "enc_dim": 256,
    },
}


def sequences(n: int, seed: int) -> list[list[int]]:
    ids, offsets = draw_sequences(np.random.default_rng(seed), n, zipf_cdf(10240))
    return [ids[offsets[i] : offsets[i + 1]].tolist() for i in range(n)]


def with_zeros(rows: list[list[int]]) -> list[list[int]]:
    """Every third row with padding ids before, inside and after its ids."""
    return [[0, *r[:2], 0, *r[2:], 0, 0] if i % 3 == 0 else r for i, r in enumerate(rows)]


def model_dirs(work: Path) -> dict[str, str]:
    dirs = {"light-example": str(LIGHT_MODEL)}
    for name, values in MODELS.items():
        torch.manual_seed(0)
        hp = Hyperparameters.from_dict(values)
        save_model(Object2Vec(hp), hp, work / name)
        dirs[name] = str(work / name)
    return dirs


def outputs(model_dir: str, device: str, precision: str, rows0, rows1) -> dict[str, np.ndarray]:
    model = load_model(model_dir, device=device, precision=precision)
    return {
        "embed in0": model.embed(rows0),
        "embed in0 with zeros": model.embed(with_zeros(rows0)),
        "embed in1": model.embed(rows1, 1),
        "score": model.score(rows0, rows1),
    }


def relative(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / max(np.abs(want).max(), 1e-30))


def api_rows(dirs: dict[str, str], device: str, n: int) -> list[dict]:
    rows0, rows1 = sequences(n, 1), sequences(n, 2)
    table = []
    for name, folder in dirs.items():
        reference = outputs(folder, "cpu", "fp32", rows0, rows1)
        for precision in PRECISIONS:
            got = outputs(folder, device, precision, rows0, rows1)
            for what in reference:
                # "with zeros" is held against the reference without them.
                base = reference[what.removesuffix(" with zeros")]
                table.append(
                    {
                        "model": name,
                        "precision": precision,
                        "output": what,
                        "max |ref|": float(np.abs(base).max()),
                        "relative": relative(got[what], base),
                    }
                )
    return table


def transform_rows(device: str, work: Path, n: int) -> list[dict]:
    data = work / "in"
    data.mkdir()
    rows0, rows1 = sequences(n, 3), sequences(n, 4)
    lines = [{"in0": a} for a in rows0] + [
        {"in0": a, "in1": b} for a, b in zip(rows0, rows1, strict=True)
    ]
    (data / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    found = {}
    for label, dev in (("cpu", "cpu"), ("device", device)):
        out = work / f"out-{label}"
        cmd = [sys.executable, "-m", "o2v_batch", "transform", str(data), str(out)]
        subprocess.run([*cmd, "--model", str(LIGHT_MODEL), "--devices", dev], check=True)
        found[label] = [json.loads(x) for x in (out / "a.jsonl.out").read_text().splitlines()]
    table = []
    for key in ("embeddings", "scores"):
        cpu = np.array([r[key] for r in found["cpu"] if key in r])
        dev = np.array([r[key] for r in found["device"] if key in r])
        table.append(
            {
                "model": "light-example",
                "precision": "fp32",
                "output": f"transform {key}",
                "max |ref|": float(np.abs(cpu).max()),
                "relative": relative(dev, cpu),
            }
        )
    return table


def markdown(table: list[dict], device: str) -> str:
    head = (
        f"| model | precision | output | max abs CPU value | max diff {device} vs CPU, relative |"
    )
    lines = [head, "|---|---|---|---:|---:|"]
    for r in table:
        flag = " FAIL" if r["precision"] == "fp32" and r["relative"] > FP32_BOUND else ""
        lines.append(
            f"| {r['model']} | {r['precision']} | {r['output']} | {r['max |ref|']:.3g} "
            f"| {r['relative']:.2e}{flag} |"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", default="cuda")
    parser.add_argument("--records", type=int, default=4000)
    parser.add_argument("--out", type=Path, default=Path("gpu-check"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        table = api_rows(model_dirs(work), args.devices, args.records)
        table += transform_rows(args.devices, work, args.records)
    text = markdown(table, args.devices)
    print(text)
    (args.out / "gpu_check.md").write_text(text + "\n")
    (args.out / "gpu_check.json").write_text(json.dumps(table, indent=1))
    failed = [r for r in table if r["precision"] == "fp32" and r["relative"] > FP32_BOUND]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
