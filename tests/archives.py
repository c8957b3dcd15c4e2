"""Model archives built by hand for the archive tests, and the CLI run with the temp
folder models are extracted under."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path


def entry(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, link: str = ""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    if data is not None:
        info.size = len(data)
    return info, data


def write_tar(path: Path, entries: list) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def model_entries(folder: Path, prefix: str = "", weights_first: bool = False) -> list:
    names = ["hyperparameters.json", "model.safetensors"]
    names = names[::-1] if weights_first else names
    return [entry(prefix + name, (folder / name).read_bytes()) for name in names]


def run_cli(model_tmp: Path, *args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(model_tmp)}
    command = [sys.executable, "-m", "o2v_batch", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)
