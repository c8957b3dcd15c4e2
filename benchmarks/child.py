"""`bench.py child SYSTEM INPUT OUTPUT MODEL MODE DEVICE RESULT FORMAT`: one of the
systems timed inside, in its own process; its figures go to RESULT as JSON."""

from __future__ import annotations

import json
from pathlib import Path

from benchmarks.systems import baseline, ceiling, io_floor, ray_data


def main(argv: list[str]) -> None:
    """One system, timed inside; FORMAT (one of rows.OUTPUTS) is the I/O floor's."""
    system, data, out, model, mode, device, result, output = argv
    if system == "io-floor":
        timed = io_floor.run(Path(data), Path(out), model, mode, output)
    else:
        runners = {"baseline": baseline.run, "ray-data": ray_data.run, "ceiling": ceiling.run}
        timed = runners[system](Path(data), Path(out), model, mode, device)
    Path(result).write_text(json.dumps(timed))
