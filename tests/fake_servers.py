"""Stand-in per-worker servers for pool tests: they answer, crash, hang or fail on
purpose. Loaded in the worker processes by "module:function" name; they import no
torch, so a worker starts in a fraction of a second."""

from __future__ import annotations

import os
import sys
import time

from o2v_batch.execution.protocol import BatchResult


class Echo:
    """Answers each record with its own bytes, upper-cased, one per line."""

    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        self.model_dir = model_dir

    def serve(self, positions, records, content_type, accept) -> BatchResult:
        return BatchResult(
            payload=b"".join(r.upper() + b"\n" for r in records), records=len(records)
        )


class _Once(Echo):
    """Misbehaves on a record containing b"boom" the first time only (a marker file remembers)."""

    def serve(self, positions, records, content_type, accept) -> BatchResult:
        marker = os.path.join(self.model_dir, "misbehaved")
        if any(b"boom" in r for r in records) and not os.path.exists(marker):
            open(marker, "w").close()
            self.misbehave()
        return super().serve(positions, records, content_type, accept)


class CrashOnce(_Once):
    def misbehave(self) -> None:
        os._exit(3)


class HangOnce(_Once):
    def misbehave(self) -> None:
        time.sleep(3600)


class CrashOnLoadOnce(Echo):
    """Dies as it loads, the first time only (a marker file in the model folder remembers)."""

    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        marker = os.path.join(model_dir, "crashed")
        if not os.path.exists(marker):
            open(marker, "w").close()
            os._exit(3)
        super().__init__(model_dir, device, options, threads)


class AlwaysRaise(Echo):
    def serve(self, positions, records, content_type, accept) -> BatchResult:
        if any(b"boom" in r for r in records):
            raise RuntimeError("the model broke")
        return super().serve(positions, records, content_type, accept)


class SaysIfTorch(Echo):
    """Answers each record with whether its worker process has imported torch."""

    def serve(self, positions, records, content_type, accept) -> BatchResult:
        answer = b"torch\n" if "torch" in sys.modules else b"no torch\n"
        return BatchResult(payload=answer * len(records), records=len(records))


class FailToLoad(Echo):
    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        raise ValueError("no such model")


class SlowStart(Echo):
    """Takes SLOW_START_S over its first mini-batch and SLOW_SERVE_S over each later one,
    and appends the time each was served (time.time()) to `served` in the model folder:
    a job whose first result comes late and whose last ones come one by one."""

    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        super().__init__(model_dir, device, options, threads)
        self.first = True

    def serve(self, positions, records, content_type, accept) -> BatchResult:
        time.sleep(SLOW_START_S if self.first else SLOW_SERVE_S)
        self.first = False
        result = super().serve(positions, records, content_type, accept)
        with open(os.path.join(self.model_dir, "served"), "a") as log:
            log.write(f"{time.time()}\n")
        return result


SLOW_START_S, SLOW_SERVE_S = 2.5, 0.25
