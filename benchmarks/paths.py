"""Where the benchmark finds the checkout's files."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LIGHT_MODEL = ROOT / "examples" / "model"
TINY_INPUT = ROOT / "examples" / "requests" / "documented.jsonl"
# The systems timed inside start as `scripts/bench.py child ...`, as the benchmark does.
ENTRY = ROOT / "scripts" / "bench.py"
