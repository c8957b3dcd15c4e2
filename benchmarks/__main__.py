"""`python -m benchmarks`: the benchmark, as `python scripts/bench.py` runs it."""

import sys

from benchmarks.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
