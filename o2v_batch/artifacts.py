"""Model artifacts on disk and on S3: a folder with hyperparameters.json and
model.safetensors, or a .tar.gz of one. Resolving and safe extraction need no
torch, so the batch parent can fetch a model once without importing it."""

from __future__ import annotations

import atexit
import json
import os
import posixpath
import shutil
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path

from o2v_batch.config import Hyperparameters
from o2v_batch.errors import HyperparameterError, ModelFormatError, UnsafeArchiveError

HYPERPARAMETERS_FILE = "hyperparameters.json"
WEIGHTS_FILE = "model.safetensors"


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


def _escapes(path: str) -> bool:
    """Whether a relative archive path, once normalised, points outside the target folder."""
    normal = posixpath.normpath(path)
    return normal == ".." or normal.startswith("../") or posixpath.isabs(normal)


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name.replace("\\", "/")
    if posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return "it has an absolute path"
    if ".." in name.split("/"):
        return "its path leaves the target folder"
    if member.issym():
        link = member.linkname.replace("\\", "/")
        if posixpath.isabs(link) or _escapes(posixpath.join(posixpath.dirname(name), link)):
            return f"it is a symlink to {member.linkname!r}, outside the target folder"
    elif member.islnk():
        if _escapes(member.linkname.replace("\\", "/")):
            return f"it is a hard link to {member.linkname!r}, outside the target folder"
    elif not (member.isfile() or member.isdir()):
        return "it is a device or other special file"
    return None


def _extract_tarball(archive: Path, target: Path, label: str) -> Path:
    """Extract after checking every member; return the folder holding the model files."""
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                reason = _unsafe_reason(member)
                if reason:
                    raise UnsafeArchiveError(
                        f"{label}: refusing to extract member {member.name!r}: {reason}"
                    )
            # The data filter is a second line of defence where this Python has it.
            options = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
            tar.extractall(target, members=members, **options)
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(f"{label}: refusing to extract: {error}") from error
    except (tarfile.TarError, EOFError, OSError) as error:
        raise ModelFormatError(f"{label} is not a readable .tar.gz archive: {error}") from error
    return _model_root(target)


def _model_root(folder: Path) -> Path:
    """The folder itself, or its single top-level folder when the tar wrapped the files."""
    if (folder / HYPERPARAMETERS_FILE).exists():
        return folder
    entries = list(folder.iterdir())
    if len(entries) == 1 and entries[0].is_dir():
        return entries[0]
    return folder


def _download(uri: str, path: Path) -> None:
    # Lazy: smart_open pulls in boto3, which only S3 models need.
    from botocore.exceptions import BotoCoreError, ClientError
    from smart_open import open as open_uri

    try:
        # compression="disable": a .tar.gz must arrive as the archive, not its gunzipped body.
        with open_uri(uri, "rb", compression="disable") as source, path.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except (OSError, ValueError, BotoCoreError, ClientError) as error:
        raise ModelFormatError(f"cannot download model file {uri}: {error}") from error


def _fill_new_folder(cache_dir: str | None, fill: Callable[[Path], Path]) -> str:
    """Run `fill` on a fresh folder; on failure remove it, so nothing half-made stays."""
    folder = _new_folder(cache_dir)
    try:
        return str(fill(folder))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _fetch_s3(uri: str, folder: Path) -> Path:
    if _is_tarball(uri):
        archive = folder / "model.tar.gz"
        _download(uri, archive)
        root = _extract_tarball(archive, folder / "model", uri)
        archive.unlink()
        return root
    prefix = uri if uri.endswith("/") else uri + "/"
    for name in (HYPERPARAMETERS_FILE, WEIGHTS_FILE):
        _download(prefix + name, folder / name)
    return folder


def resolve_model(uri: str, cache_dir: str | None = None) -> str:
    """A local folder holding the model files, for a folder, a .tar.gz/.tgz or an S3 URI."""
    if uri.startswith("s3://"):
        return _fill_new_folder(cache_dir, lambda folder: _fetch_s3(uri, folder))
    path = Path(uri).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file() and _is_tarball(path.name):
        return _fill_new_folder(cache_dir, lambda folder: _extract_tarball(path, folder, uri))
    what = "is not a folder or a .tar.gz/.tgz file" if path.exists() else "does not exist"
    raise ModelFormatError(
        f"model {uri} {what}: a model is a folder with {HYPERPARAMETERS_FILE} and "
        f"{WEIGHTS_FILE}, or a .tar.gz of one, local or on S3"
    )


def read_hyperparameters(folder: str | os.PathLike[str]) -> Hyperparameters:
    """The validated hyperparameters.json of a model folder."""
    path = Path(folder) / HYPERPARAMETERS_FILE
    if not path.is_file():
        raise ModelFormatError(f"{folder} has no {HYPERPARAMETERS_FILE}")
    try:
        values = json.loads(path.read_text("utf-8"))
    except (ValueError, UnicodeDecodeError) as error:
        raise ModelFormatError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(values, dict):
        raise ModelFormatError(f"{path} must hold a JSON object of hyperparameters")
    try:
        return Hyperparameters.from_dict(values)
    except HyperparameterError as error:
        raise HyperparameterError(f"{path}: {error}") from error
