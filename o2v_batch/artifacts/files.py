"""The files of a model folder: their names, how messages name them (the archive or S3
prefix the folder came from), its hyperparameters, and a disk that filled up."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

from o2v_batch import io
from o2v_batch.errors import DiskFullError, HyperparameterError, ModelFormatError
from o2v_batch.model.hyperparameters import Hyperparameters

HYPERPARAMETERS_FILE = "hyperparameters.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (HYPERPARAMETERS_FILE, WEIGHTS_FILE)
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Where each downloaded or extracted folder came from, as (uri, separator before a file
# name), so that messages about its files name what the user gave, not a temp folder.
_ORIGINS: dict[str, tuple[str, str]] = {}


def _key(folder: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.fspath(folder))


def note_origin(folder: str | os.PathLike[str], label: str, separator: str) -> None:
    """Messages name `folder`'s files `label` + `separator` + name from now on."""
    _ORIGINS[_key(folder)] = (label, separator)


def forget_origin(folder: str | os.PathLike[str]) -> None:
    _ORIGINS.pop(_key(folder), None)


def folder_label(folder: str | os.PathLike[str]) -> str:
    """How messages name a model folder: the archive or S3 prefix it came from, or itself."""
    origin = _ORIGINS.get(_key(folder))
    return origin[0] if origin else io.shown(str(folder))


def file_label(folder: str | os.PathLike[str], name: str) -> str:
    """How messages name a model file: `archive: name`, `s3://prefix/name` or its path."""
    origin = _ORIGINS.get(_key(folder))
    return origin[0] + origin[1] + name if origin else io.shown(str(Path(folder) / name))


def read_hyperparameters(folder: str | os.PathLike[str]) -> Hyperparameters:
    """The validated hyperparameters.json of a model folder."""
    path = Path(folder) / HYPERPARAMETERS_FILE
    label = file_label(folder, HYPERPARAMETERS_FILE)
    if not path.is_file():
        raise ModelFormatError(f"{folder_label(folder)} has no {HYPERPARAMETERS_FILE}")
    try:
        values = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"{label} is not valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise ModelFormatError(f"{label} must hold a JSON object of hyperparameters")
    try:
        return Hyperparameters.from_dict(values)
    except HyperparameterError as error:
        raise HyperparameterError(f"{label}: {error}") from error


def disk_full(doing: str, uri: str, folder: Path, error: OSError) -> DiskFullError:
    return DiskFullError(
        f"disk full while {doing} model {io.shown(uri)} into {io.shown(str(folder.parent))}: "
        f"{error.strerror}"
    )
