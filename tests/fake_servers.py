"""Stand-in per-worker servers for runtime tests: they answer, crash, hang or fail
on purpose. Loaded in the worker processes by "module:function" name."""

from __future__ import annotations

import os
import time

from o2v_batch.protocol import BatchResult
from o2v_batch.serving import Server


class Echo:
    """Answers each record with its own bytes, upper-cased, one per line."""

    def __init__(self, model_dir: str, device: str, options) -> None:
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


class AlwaysRaise(Echo):
    def serve(self, positions, records, content_type, accept) -> BatchResult:
        if any(b"boom" in r for r in records):
            raise RuntimeError("the model broke")
        return super().serve(positions, records, content_type, accept)


class FailToLoad(Echo):
    def __init__(self, model_dir: str, device: str, options) -> None:
        raise ValueError("no such model")


# -- the real server, misbehaving on a marked record ------------------------

MARKER = b"boom"


class HangOnceServer(Server):
    """The real server, except that its forward hangs the first time a mini-batch holds
    a record containing MARKER (a file in the model folder remembers, across workers)."""

    def __init__(self, model_dir: str, device: str, options) -> None:
        super().__init__(model_dir, device, options)
        self.model_dir = model_dir

    def serve(self, positions, records, content_type, accept) -> BatchResult:
        marker = os.path.join(self.model_dir, "hung-once")
        if any(MARKER in r for r in records) and not os.path.exists(marker):
            open(marker, "w").close()
            time.sleep(3600)
        return super().serve(positions, records, content_type, accept)


class AlwaysFailServer(Server):
    """The real server, except that it raises on every mini-batch holding MARKER."""

    def serve(self, positions, records, content_type, accept) -> BatchResult:
        if any(MARKER in r for r in records):
            raise RuntimeError("the model broke on a marked record")
        return super().serve(positions, records, content_type, accept)
