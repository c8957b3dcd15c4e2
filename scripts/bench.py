"""The benchmark: `python scripts/bench.py --help`; its code is the benchmarks package."""

import sys
from pathlib import Path

# Run as a script from anywhere: the checkout's root holds the benchmarks package.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
