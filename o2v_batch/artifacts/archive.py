"""Safe extraction of a model .tar.gz: only its two model files are written, by name and
capped in size; links, devices and paths that leave the folder are refused."""

from __future__ import annotations

import math
import posixpath
import tarfile
import zlib
from pathlib import Path
from typing import IO

from o2v_batch import io
from o2v_batch.artifacts.files import (
    DISK_FULL,
    HYPERPARAMETERS_FILE,
    MODEL_FILES,
    WEIGHTS_FILE,
    disk_full,
    note_origin,
    read_hyperparameters,
)
from o2v_batch.errors import ModelFormatError, O2VError, UnsafeArchiveError
from o2v_batch.model.weights import expected_shapes

# Extraction caps. A model archive needs two members, and the weights' size follows from
# the hyperparameters: float32 numbers plus the safetensors header (names, shapes, offsets).
MAX_MEMBERS = 10_000
MAX_HYPERPARAMETERS_BYTES = 1 << 20
WEIGHTS_HEADER_ALLOWANCE = 1 << 20
_COPY_CHUNK = 1 << 20


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


def extract_tarball(archive: Path, target: Path, label: str) -> Path:
    """Write the archive's hyperparameters.json and model.safetensors into `target` and
    return it; messages about the files name the archive (`label`).

    Never extract/extractall: links, devices and FIFOs are refused, other files skipped
    unread, and sizes capped. A weights member before hyperparameters.json is written on
    a second read of the archive, once its cap is known.
    """
    label = io.shown(label)
    note_origin(target, label, ": ")
    try:
        _Extraction(archive, target, label).run()
    except OSError as error:
        if error.errno in DISK_FULL:
            raise disk_full("extracting", label, target, error) from error
        raise ModelFormatError(f"{label} is not a readable .tar.gz archive: {error}") from error
    except (tarfile.TarError, EOFError, zlib.error) as error:
        raise ModelFormatError(f"{label} is not a readable .tar.gz archive: {error}") from error
    return target
