"""The real server, misbehaving on purpose on a mini-batch holding a marked record
(one containing MARKER): for the transform engines' fault tests. Loaded in worker
processes and Ray actors by "module:function" name."""

from __future__ import annotations

import os
import time
from pathlib import Path

from o2v_batch.execution.device_link import DeviceServer
from o2v_batch.execution.inference import Server

MARKER = b"boom"
# Left in the model folder by a server that misbehaves once: it outlives the process,
# so the retried worker behaves.
MISBEHAVED = "misbehaved"


class _Faulty(Server):
    def __init__(self, model_dir: str, device: str, options, threads: int) -> None:
        super().__init__(model_dir, device, options)
        self.marker = Path(model_dir) / MISBEHAVED

    def serve(self, positions, records, content_type, accept):
        if any(MARKER in r for r in records):
            self.misbehave()
        return super().serve(positions, records, content_type, accept)


class CrashOnce(_Faulty):
    """Dies the first time only."""

    def misbehave(self) -> None:
        if not self.marker.exists():
            self.marker.touch()
            os._exit(3)


class HangOnce(_Faulty):
    def misbehave(self) -> None:
        if not self.marker.exists():
            self.marker.touch()
            time.sleep(3600)


class AlwaysCrash(_Faulty):
    def misbehave(self) -> None:
        os._exit(3)


class AlwaysHang(_Faulty):
    def misbehave(self) -> None:
        time.sleep(3600)


class AlwaysRaise(_Faulty):
    def misbehave(self) -> None:
        raise RuntimeError("the model broke on a marked record")


# A token id that makes a misbehaving device process's forward pass misbehave (below
# the example model's vocabulary).
MARKED_ID = 4242


class _MarkedForward:
    """A forward that misbehaves on a mini-batch whose in0 ids hold MARKED_ID: hangs the
    first time (`hang`), or raises every time."""

    def __init__(self, forward, marker: Path, hang: bool) -> None:
        self.forward, self.hp, self.marker, self.hang = forward, forward.hp, marker, hang
        self.planner = forward.planner

    def __call__(self, work):
        ids = work.ids[0]  # as the host worker prepared them
        if ids is not None and (ids.tokens == MARKED_ID).any():
            if not self.hang:
                raise RuntimeError("the device broke on a marked record")
            if not self.marker.exists():
                self.marker.touch()
                time.sleep(3600)
        return self.forward(work)


def _marked_device(model_dir: str, device: str, options, hang: bool) -> DeviceServer:
    from o2v_batch.execution.forward import LocalForward

    forward = LocalForward.load(model_dir, device, options)
    return DeviceServer([_MarkedForward(forward, Path(model_dir) / MISBEHAVED, hang)])


def hang_once_device(model_dir: str, device: str, options, threads: int) -> DeviceServer:
    """A device process whose forward pass hangs once, on a mini-batch holding MARKED_ID."""
    return _marked_device(model_dir, device, options, hang=True)


def raising_device(model_dir: str, device: str, options, threads: int) -> DeviceServer:
    """A device process whose forward pass raises on every mini-batch holding MARKED_ID."""
    return _marked_device(model_dir, device, options, hang=False)
