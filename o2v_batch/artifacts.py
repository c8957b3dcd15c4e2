"""Model artifacts on disk and on S3: a folder with hyperparameters.json and
model.safetensors, or a .tar.gz of one; resolve, extract, save and load.

Resolving, safe extraction and checking need no torch, so the batch parent can fetch
and check a model once without importing it: saving and loading import torch when
they run.
"""

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
from typing import TYPE_CHECKING, Any, TypeVar

from o2v_batch import io
from o2v_batch.errors import HyperparameterError, ModelFormatError, O2VError, UnsafeArchiveError
from o2v_batch.hyperparameters import Hyperparameters
from o2v_batch.io import describe_error, is_local, open_read
from o2v_batch.weights import TIED_TENSOR, Shapes, expected_shapes, mismatches

if TYPE_CHECKING:
    import torch

    from o2v_batch.model import Object2Vec

HYPERPARAMETERS_FILE = "hyperparameters.json"
WEIGHTS_FILE = "model.safetensors"
MODEL_FILES = (HYPERPARAMETERS_FILE, WEIGHTS_FILE)
_T = TypeVar("_T")
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
    try:
        # Not decompressed: a .tar.gz must arrive as the archive, not its gunzipped body.
        with open_read(uri, decompress=False) as source, path.open("wb") as out:
            shutil.copyfileobj(source, out, 1 << 20)
    except Exception as error:  # an S3 client's errors share no base class with OSError
        reason = describe_error(error, uri).removeprefix(f"{uri}: ")
        raise ModelFormatError(f"cannot download model file {uri}: {reason}") from error


def _fill_new_folder(cache_dir: str | None, fill: Callable[[Path], Path]) -> str:
    """Run `fill` on a fresh folder; on failure remove it, so nothing half-made stays."""
    folder = _new_folder(cache_dir)
    try:
        return str(fill(folder))
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _fetch_remote(uri: str, folder: Path) -> Path:
    if _is_tarball(uri):
        if io.size(uri) is None:
            raise _not_a_model(uri, "does not exist")
        archive = folder / "model.tar.gz"
        _download(uri, archive)
        root = _extract_tarball(archive, folder / "model", uri)
        archive.unlink()
        return root
    prefix = uri if uri.endswith("/") else uri + "/"
    missing = [name for name in MODEL_FILES if io.size(prefix + name) is None]
    if len(missing) == len(MODEL_FILES):
        raise _not_a_model(uri, "does not exist")
    if missing:  # worded as for a local folder
        raise ModelFormatError(f"{uri} has no {missing[0]}")
    for name in MODEL_FILES:
        _download(prefix + name, folder / name)
    return folder


def _not_a_model(uri: str, what: str) -> ModelFormatError:
    return ModelFormatError(
        f"model {uri} {what}: a model is a folder with {HYPERPARAMETERS_FILE} and "
        f"{WEIGHTS_FILE}, or a .tar.gz of one, local or on S3"
    )


def resolve_model(uri: str, cache_dir: str | None = None) -> str:
    """A local folder holding the model files, for a folder, a .tar.gz/.tgz or an S3 URI."""
    if not is_local(uri):
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
    """Checks a model folder without torch: valid hyperparameters, and a weights file
    whose header lists exactly the tensors (names and shapes) they need.

    encoders_only checks the enc0./enc1. tensors only, as load_network reads them.
    """
    hp = read_hyperparameters(folder)
    _check_weights(Path(folder) / WEIGHTS_FILE, expected_shapes(hp, encoders_only), encoders_only)
    return hp


def _check_weights(path: Path, expected: Shapes, encoders_only: bool) -> None:
    """Reads the file's header only, which safetensors checks against the file's length
    (so a truncated file fails here too); numpy, so no torch."""
    if not path.is_file():
        raise ModelFormatError(f"{path.parent} has no {WEIGHTS_FILE}")
    found = _from_weights(
        path,
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


def _from_weights(path: Path, framework: str, read: Callable[[Any], _T]) -> _T:
    """`read` applied to the open weights file; a file that cannot be read names itself."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework=framework, device="cpu") as weights:
            return read(weights)
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFormatError(f"{path} is not a readable safetensors file: {error}") from error


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

    hp = check_model(folder, encoders_only)
    with torch.device(_build_device(hp)):
        network = Object2Vec(hp, encoders_only=encoders_only)
    state = _from_weights(
        Path(folder) / WEIGHTS_FILE,
        "pt",
        lambda weights: {name: weights.get_tensor(name).float() for name in _shapes(network)},
    )
    if hp.tied_token_embedding_weight:
        state[TIED_TENSOR] = state["enc0.embedding.weight"]
    network.load_state_dict(state, assign=True)
    set_float32_math(tf32=precision == "tf32")
    return network.to(device=device, dtype=getattr(torch, PRECISIONS[precision])).eval()
