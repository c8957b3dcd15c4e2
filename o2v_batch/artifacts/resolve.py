"""Where a model comes from: a local folder is used as it is; a .tar.gz, and a folder or
archive on S3, are fetched and extracted into a fresh folder, kept in a cache folder or
removed when the process exits."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from o2v_batch import io
from o2v_batch.artifacts.archive import extract_tarball
from o2v_batch.artifacts.files import (
    DISK_FULL,
    HYPERPARAMETERS_FILE,
    MODEL_FILES,
    WEIGHTS_FILE,
    disk_full,
    forget_origin,
    note_origin,
)
from o2v_batch.errors import ModelFormatError


def _is_tarball(name: str) -> bool:
    return name.endswith((".tar.gz", ".tgz"))


def _new_folder(cache_dir: str | None) -> Path:
    """A fresh folder for a downloaded or extracted model: inside cache_dir (kept), or a
    temp folder removed when the process exits."""
    if cache_dir is not None:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix="o2v-model-", dir=cache_dir))
    folder = tempfile.mkdtemp(prefix="o2v-model-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return Path(folder)


def _download(uri: str, path: Path) -> None:
    try:
        # Not decompressed: a .tar.gz must arrive as the archive, not its gunzipped body.
        with io.open_read(uri, decompress=False) as source, path.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except OSError as error:
        if error.errno in DISK_FULL:
            raise disk_full("downloading", uri, path.parent, error) from error
        raise _not_downloaded(uri, error) from error
    except Exception as error:  # an S3 client's errors share no base class with OSError
        raise _not_downloaded(uri, error) from error


def _not_downloaded(uri: str, error: Exception) -> ModelFormatError:
    shown = io.shown(uri)
    reason = io.describe_error(error, uri).removeprefix(f"{shown}: ")
    return ModelFormatError(f"cannot download model file {shown}: {reason}")


def _fill_new_folder(cache_dir: str | None, fill: Callable[[Path], Path]) -> str:
    """Run `fill` on a fresh folder; on failure remove it, so nothing half-made stays."""
    folder = _new_folder(cache_dir)
    try:
        return str(fill(folder))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        forget_origin(folder)
        raise


def _fetch_remote(uri: str, folder: Path) -> Path:
    if _is_tarball(uri):
        if io.size(uri) is None:
            raise _not_a_model(uri, "does not exist")
        archive = folder / "model.tar.gz"  # never a model file's name
        _download(uri, archive)
        extract_tarball(archive, folder, uri)
        archive.unlink()
        return folder
    prefix = uri if uri.endswith("/") else uri + "/"
    missing = [name for name in MODEL_FILES if io.size(prefix + name) is None]
    if len(missing) == len(MODEL_FILES):
        raise _not_a_model(uri, "does not exist")
    if missing:  # worded as for a local folder
        raise ModelFormatError(f"{io.shown(uri)} has no {missing[0]}")
    note_origin(folder, io.shown(prefix), "")
    for name in MODEL_FILES:
        _download(prefix + name, folder / name)
    return folder


def _not_a_model(uri: str, what: str) -> ModelFormatError:
    return ModelFormatError(
        f"model {io.shown(uri)} {what}: a model is a folder with {HYPERPARAMETERS_FILE} and "
        f"{WEIGHTS_FILE}, or a .tar.gz of one, local or on S3"
    )


def resolve_model(uri: str, cache_dir: str | None = None) -> str:
    """A local folder holding the model files, for a folder, a .tar.gz/.tgz or an S3 URI."""
    if io.transport_for(uri).REMOTE:
        return _fill_new_folder(cache_dir, lambda folder: _fetch_remote(uri, folder))
    path = Path(uri).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file() and _is_tarball(path.name):
        return _fill_new_folder(cache_dir, lambda folder: extract_tarball(path, folder, uri))
    what = "is not a folder or a .tar.gz/.tgz file" if path.exists() else "does not exist"
    raise _not_a_model(uri, what)
