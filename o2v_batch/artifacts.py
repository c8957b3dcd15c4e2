"""Model artifacts on disk and on S3: a folder with hyperparameters.json and
model.safetensors, or a .tar.gz of one; resolve, extract, save and load.

Resolving, safe extraction and checking need no torch, so the batch parent can fetch
and check a model once without importing it: saving and loading import torch when
they run.
"""

from __future__ import annotations

import atexit
import errno
import json
import math
import os
import posixpath
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeVar

import numpy as np

from o2v_batch import io
from o2v_batch.errors import (
    DiskFullError,
    HyperparameterError,
    ModelFormatError,
    O2VError,
    UnsafeArchiveError,
)
from o2v_batch.hyperparameters import Hyperparameters
from o2v_batch.io import describe_error, open_read, transport_for
from o2v_batch.weights import TIED_TENSOR, Shapes, expected_shapes, mismatches

if TYPE_CHECKING:
    import torch

    from o2v_batch.model import Object2Vec

HYPERPARAMETERS_FILE = "hyperparameters.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (HYPERPARAMETERS_FILE, WEIGHTS_FILE)
_T = TypeVar("_T")
# Extraction caps. A model archive needs two members, and the weights' size follows from
# the hyperparameters: float32 numbers plus the safetensors header (names, shapes, offsets).
MAX_MEMBERS = 10_000
MAX_HYPERPARAMETERS_BYTES = 1 << 20
WEIGHTS_HEADER_ALLOWANCE = 1 << 20
_COPY_CHUNK = 1 << 20
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
# Tensors are searched for NaN and infinity this many bytes of rows at a time.
SCAN_BYTES = 4 << 20
# safetensors dtypes numpy reads; a bfloat16 tensor is searched once loaded instead.
_NUMPY_FLOATS = ("F16", "F32", "F64")
# Where each downloaded or extracted folder came from, as (uri, separator before a file
# name), so that messages about its files name what the user gave, not a temp folder.
_ORIGINS: dict[str, tuple[str, str]] = {}
# Token-embedding numbers above which a network is built on the meta device.
META_BUILD_NUMBERS = 2**25
# --precision: the dtype (a torch attribute name) the network runs in.
# tf32 keeps float32 weights but lets a GPU's matmuls and convolutions round their inputs
# to TensorFloat-32 (devices.set_float32_math); fp32 there is IEEE float32, as on CPUs.
PRECISIONS = {"fp32": "float32", "tf32": "float32", "bf16": "bfloat16", "fp16": "float16"}


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


def _key(folder: str | os.PathLike[str]) -> str:
    return os.path.normpath(os.fspath(folder))


def _folder_label(folder: str | os.PathLike[str]) -> str:
    """How messages name a model folder: the archive or S3 prefix it came from, or itself."""
    origin = _ORIGINS.get(_key(folder))
    return origin[0] if origin else io.shown(str(folder))


def _file_label(folder: str | os.PathLike[str], name: str) -> str:
    """How messages name a model file: `archive: name`, `s3://prefix/name` or its path."""
    origin = _ORIGINS.get(_key(folder))
    return origin[0] + origin[1] + name if origin else io.shown(str(Path(folder) / name))


def _unsafe_reason(member: tarfile.TarInfo) -> str | None:
    name = member.name.replace("\\", "/")
    if posixpath.isabs(name) or (len(name) > 1 and name[1] == ":"):
        return "it has an absolute path"
    if ".." in name.split("/"):
        return "its path leaves the target folder"
    # Links are refused wherever they point: a chain of them can resolve elsewhere than
    # its text says, and a model needs none.
    if member.issym():
        return f"it is a symlink to {member.linkname!r}: a model archive holds files only"
    if member.islnk():
        return f"it is a hard link to {member.linkname!r}: a model archive holds files only"
    if not (member.isfile() or member.isdir()):
        return "it is a device or other special file"
    return None


def _model_file(member: tarfile.TarInfo) -> tuple[str, str] | None:
    """(folder, name) of a regular file named as a model file, at the top of the archive
    or in one top-level folder; None for every other member, which is skipped."""
    if not member.isfile():
        return None
    folder, name = posixpath.split(posixpath.normpath(member.name.replace("\\", "/")))
    return (folder, name) if name in MODEL_FILES and "/" not in folder else None


def _create(path: Path) -> IO[bytes]:
    return path.open("xb")


class _Extraction:
    """Writes an archive's model files into a folder by name, checking every member."""

    def __init__(self, archive: Path, target: Path, label: str) -> None:
        self.archive, self.target, self.label = archive, target, label
        self.folder: str | None = None  # where the model files sit inside the archive
        self.found: set[str] = set()
        self.deferred: int | None = None  # a weights member met before hyperparameters.json
        self.weights_cap: int | None = None

    def run(self) -> None:
        with tarfile.open(self.archive, "r|gz") as tar:
            for index, member in enumerate(tar):
                self._take(tar, index, member)
        if self.deferred is not None and HYPERPARAMETERS_FILE in self.found:
            # Its cap comes from hyperparameters.json: read the archive again up to it.
            with tarfile.open(self.archive, "r|gz") as tar:
                for index, member in enumerate(tar):
                    if index == self.deferred:
                        self._copy(tar, member, WEIGHTS_FILE, *self._weights_cap())
                        break

    def _take(self, tar: tarfile.TarFile, index: int, member: tarfile.TarInfo) -> None:
        if index == MAX_MEMBERS:
            raise UnsafeArchiveError(
                f"{self.label}: refusing to extract: more than {MAX_MEMBERS} members "
                "(a model needs two)"
            )
        reason = _unsafe_reason(member)
        if reason:
            raise self._refusal(member, reason)
        wanted = _model_file(member)
        if wanted is None:
            return
        folder, name = wanted
        if self.folder is not None and folder != self.folder:
            raise self._refusal(
                member, "the model files must sit together, at the top or in one top-level folder"
            )
        if name in self.found:
            raise self._refusal(member, f"it is a second {name}")
        self.folder = folder
        self.found.add(name)
        if name == HYPERPARAMETERS_FILE:
            self._copy(tar, member, name, MAX_HYPERPARAMETERS_BYTES, f"bytes a {name} may hold")
        elif HYPERPARAMETERS_FILE in self.found:
            self._copy(tar, member, name, *self._weights_cap())
        else:
            self.deferred = index

    def _weights_cap(self) -> tuple[int, str]:
        if self.weights_cap is None:
            shapes = expected_shapes(read_hyperparameters(self.target))
            numbers = sum(math.prod(shape) for shape in shapes.values())
            self.weights_cap = 4 * numbers + WEIGHTS_HEADER_ALLOWANCE
        return self.weights_cap, "bytes its hyperparameters' float32 tensors need"

    def _copy(
        self, tar: tarfile.TarFile, member: tarfile.TarInfo, name: str, cap: int, why: str
    ) -> None:
        """The member's bytes into the target folder as `name`, counted as they are
        copied (not only from its header), never more than `cap`."""
        if member.size > cap:
            raise self._too_big(member, member.size, cap, why)
        source = tar.extractfile(member)
        copied = 0
        with _create(self.target / name) as out:
            while chunk := source.read(_COPY_CHUNK):
                copied += len(chunk)
                if copied > cap:
                    raise self._too_big(member, copied, cap, why)
                out.write(chunk)

    def _too_big(self, member: tarfile.TarInfo, size: int, cap: int, why: str) -> O2VError:
        return self._refusal(member, f"it holds {size} bytes, more than the {cap} {why}")

    def _refusal(self, member: tarfile.TarInfo, reason: str) -> UnsafeArchiveError:
        return UnsafeArchiveError(
            f"{self.label}: refusing to extract member {member.name!r}: {reason}"
        )


def _extract_tarball(archive: Path, target: Path, label: str) -> Path:
    """Write the archive's hyperparameters.json and model.safetensors into `target` and
    return it; messages about the files name the archive (`label`).

    Never extract/extractall: links, devices and FIFOs are refused, other files skipped
    unread, and sizes capped. A weights member before hyperparameters.json is written on
    a second read of the archive, once its cap is known.
    """
    label = io.shown(label)
    _ORIGINS[_key(target)] = (label, ": ")
    try:
        _Extraction(archive, target, label).run()
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise _disk_full("extracting", label, target, error) from error
        raise ModelFormatError(f"{label} is not a readable .tar.gz archive: {error}") from error
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ModelFormatError(f"{label} is not a readable .tar.gz archive: {error}") from error
    return target


def _disk_full(doing: str, uri: str, folder: Path, error: OSError) -> DiskFullError:
    return DiskFullError(
        f"disk full while {doing} model {io.shown(uri)} into {io.shown(str(folder.parent))}: "
        f"{error.strerror}"
    )


def _download(uri: str, path: Path) -> None:
    try:
        # Not decompressed: a .tar.gz must arrive as the archive, not its gunzipped body.
        with open_read(uri, decompress=False) as source, path.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except OSError as error:
        if error.errno in _DISK_FULL:
            raise _disk_full("downloading", uri, path.parent, error) from error
        raise _not_downloaded(uri, error) from error
    except Exception as error:  # an S3 client's errors share no base class with OSError
        raise _not_downloaded(uri, error) from error


def _not_downloaded(uri: str, error: Exception) -> ModelFormatError:
    shown = io.shown(uri)
    reason = describe_error(error, uri).removeprefix(f"{shown}: ")
    return ModelFormatError(f"cannot download model file {shown}: {reason}")


def _fill_new_folder(cache_dir: str | None, fill: Callable[[Path], Path]) -> str:
    """Run `fill` on a fresh folder; on failure remove it, so nothing half-made stays."""
    folder = _new_folder(cache_dir)
    try:
        return str(fill(folder))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        _ORIGINS.pop(_key(folder), None)
        raise


def _fetch_remote(uri: str, folder: Path) -> Path:
    if _is_tarball(uri):
        if io.size(uri) is None:
            raise _not_a_model(uri, "does not exist")
        archive = folder / "model.tar.gz"  # never a model file's name
        _download(uri, archive)
        _extract_tarball(archive, folder, uri)
        archive.unlink()
        return folder
    prefix = uri if uri.endswith("/") else uri + "/"
    missing = [name for name in MODEL_FILES if io.size(prefix + name) is None]
    if len(missing) == len(MODEL_FILES):
        raise _not_a_model(uri, "does not exist")
    if missing:  # worded as for a local folder
        raise ModelFormatError(f"{io.shown(uri)} has no {missing[0]}")
    _ORIGINS[_key(folder)] = (io.shown(prefix), "")
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
    if transport_for(uri).REMOTE:
        return _fill_new_folder(cache_dir, lambda folder: _fetch_remote(uri, folder))
    path = Path(uri).expanduser()
    if path.is_dir():
        return str(path)
    if path.is_file() and _is_tarball(path.name):
        return _fill_new_folder(cache_dir, lambda folder: _extract_tarball(path, folder, uri))
    what = "is not a folder or a .tar.gz/.tgz file" if path.exists() else "does not exist"
    raise _not_a_model(uri, what)


def read_hyperparameters(folder: str | os.PathLike[str]) -> Hyperparameters:
    """The validated hyperparameters.json of a model folder."""
    path = Path(folder) / HYPERPARAMETERS_FILE
    label = _file_label(folder, HYPERPARAMETERS_FILE)
    if not path.is_file():
        raise ModelFormatError(f"{_folder_label(folder)} has no {HYPERPARAMETERS_FILE}")
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


# ---------------------------------------------------------------- save and load


def _saved_tensors(network: Object2Vec) -> dict[str, torch.Tensor]:
    """The tensors a model file holds: the state dict with a tied embedding once."""
    state = network.state_dict()
    if network.hp.tied_token_embedding_weight:
        del state[TIED_TENSOR]
    return state


def _shapes(network: Object2Vec) -> Shapes:
    return {name: tuple(t.shape) for name, t in _saved_tensors(network).items()}


def save_model(network: Object2Vec, hp: Hyperparameters, folder: str | os.PathLike[str]) -> None:
    """Write hyperparameters.json and model.safetensors into `folder` (created if needed)."""
    import torch
    from safetensors.torch import save

    if network.encoders_only:
        raise O2VError("cannot save an encoders-only network: it has no comparator, MLP or head")
    problems = mismatches(_shapes(network), expected_shapes(hp))
    if problems:
        raise ModelFormatError("network does not match the hyperparameters: " + "; ".join(problems))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous()
        for name, t in _saved_tensors(network).items()
    }
    text = json.dumps(hp.to_dict(), sort_keys=True, indent=2) + "\n"
    # Atomic writes: a crash never leaves half a file where a model is expected.
    io.write_atomic(str(folder / WEIGHTS_FILE), save(tensors))
    io.write_atomic(str(folder / HYPERPARAMETERS_FILE), text.encode("utf-8"))


def check_model(folder: str | os.PathLike[str], encoders_only: bool = False) -> Hyperparameters:
    """Checks a model folder without torch: valid hyperparameters, a weights file whose
    header lists exactly the tensors (names and shapes) they need, and no NaN or
    infinity in those tensors (read a few MB at a time, so memory stays flat).

    encoders_only checks the enc0./enc1. tensors only, as load_network reads them.
    """
    hp = _check_header(folder, encoders_only)
    names = list(expected_shapes(hp, encoders_only))
    _from_weights(folder, "numpy", lambda weights: _check_finite_in_file(folder, weights, names))
    return hp


def _check_header(folder: str | os.PathLike[str], encoders_only: bool) -> Hyperparameters:
    hp = read_hyperparameters(folder)
    _check_weights(Path(folder), expected_shapes(hp, encoders_only), encoders_only)
    return hp


def _check_weights(folder: Path, expected: Shapes, encoders_only: bool) -> None:
    """Reads the file's header only, which safetensors checks against the file's length
    (so a truncated file fails here too); numpy, so no torch."""
    if not (folder / WEIGHTS_FILE).is_file():
        raise ModelFormatError(f"{_folder_label(folder)} has no {WEIGHTS_FILE}")
    found = _from_weights(
        folder,
        "numpy",
        lambda weights: {
            name: tuple(weights.get_slice(name).get_shape())
            for name in weights.keys()  # noqa: SIM118 (safe_open is not a dict)
            if not encoders_only or name.startswith(("enc0.", "enc1."))
        },
    )
    problems = mismatches(found, expected)
    if problems:
        raise ModelFormatError(
            f"{WEIGHTS_FILE} does not match {HYPERPARAMETERS_FILE}: " + "; ".join(problems)
        )


def _check_finite_in_file(folder: str | os.PathLike[str], weights: Any, names: list[str]) -> None:
    for name in names:
        tensor = weights.get_slice(name)
        if tensor.get_dtype() in _NUMPY_FLOATS:
            _check_finite(folder, name, tensor, tensor.get_shape())


def _check_finite(
    folder: str | os.PathLike[str], name: str, rows: Any, shape: Sequence[int]
) -> None:
    """Refuses a tensor holding NaN or infinity. `rows` is an array or a safetensors
    slice: either gives a few MB of rows at a time."""
    step = max(1, SCAN_BYTES // (4 * math.prod(shape[1:])))
    count = sum(
        int(np.count_nonzero(~np.isfinite(rows[start : min(start + step, shape[0])])))
        for start in range(0, shape[0], step)
    )
    if count:
        values = "value" if count == 1 else "values"
        raise ModelFormatError(
            f"{_file_label(folder, WEIGHTS_FILE)}: tensor {name} holds NaN or infinity "
            f"({count} {values}): the model cannot give finite outputs"
        )


def _from_weights(folder: str | os.PathLike[str], framework: str, read: Callable[[Any], _T]) -> _T:
    """`read` applied to the open weights file; a file that cannot be read names itself."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(
            str(Path(folder) / WEIGHTS_FILE), framework=framework, device="cpu"
        ) as weights:
            return read(weights)
    except (SafetensorError, OSError, ValueError) as error:
        label = _file_label(folder, WEIGHTS_FILE)
        raise ModelFormatError(f"{label} is not a readable safetensors file: {error}") from error


def _build_device(hp: Hyperparameters) -> str:
    """Where to build a network whose random init is about to be replaced.

    The meta device skips the init, but its first use imports sympy: about 1 s per
    worker. A small model's init on the CPU takes milliseconds; a large vocabulary's
    would take seconds and gigabytes, so those still go to the meta device.
    """
    numbers = sum(hp.encoder(i).vocab_size * hp.encoder(i).token_embedding_dim for i in (0, 1))
    return "meta" if numbers > META_BUILD_NUMBERS else "cpu"


def load_network(
    folder: str | os.PathLike[str],
    device: torch.device | str = "cpu",
    encoders_only: bool = False,
    precision: str = "fp32",
) -> Object2Vec:
    """The network of a model folder, in eval mode on `device`, in the dtype of
    `precision` (a key of PRECISIONS).

    encoders_only builds and reads only the enc0./enc1. tensors: the comparator, MLP and
    head weights are never read.
    """
    import torch

    from o2v_batch.devices import set_float32_math
    from o2v_batch.model import Object2Vec

    hp = _check_header(folder, encoders_only)
    with torch.device(_build_device(hp)):
        network = Object2Vec(hp, encoders_only=encoders_only)
    state = _from_weights(
        folder,
        "pt",
        lambda weights: {name: weights.get_tensor(name).float() for name in _shapes(network)},
    )
    for name, tensor in state.items():  # as loaded, so a bfloat16 file is searched too
        _check_finite(folder, name, tensor.numpy(), tensor.shape)
    if hp.tied_token_embedding_weight:
        state[TIED_TENSOR] = state["enc0.embedding.weight"]
    network.load_state_dict(state, assign=True)
    set_float32_math(tf32=precision == "tf32")
    return network.to(device=device, dtype=getattr(torch, PRECISIONS[precision])).eval()
