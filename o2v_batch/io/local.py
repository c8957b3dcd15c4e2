"""Local paths: listing a folder, reading a file, and THE atomic local writer
(a hidden temp file beside the target, renamed over it on commit)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import stat
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from o2v_batch.errors import InputError
from o2v_batch.io.base import (
    AtomicWriter,
    Shard,
    described,
    hidden,
    is_output,
    is_summary,
    register_transport,
    scheme_of,
    shown,
)

SCHEME = ""  # a path, with no scheme
REMOTE = False
_TEMP_GLOB = "[0-9a-f]" * 12  # matches secrets.token_hex(6)


def list_shards(input: str, output: str | None) -> list[Shard]:
    """A file is one shard; a folder is every file below it, without following symlinked
    folders, and without the OUTPUT folder or an earlier job's output when they lie inside."""
    if os.path.isfile(input):
        return [Shard(input, os.path.basename(input), os.path.getsize(input))]
    if not os.path.isdir(input):
        raise InputError(_not_listable(input))
    skip = os.path.realpath(output) if output and scheme_of(output) == SCHEME else None
    return _walk(input, skip, inputs=True)


# What stat says a path is, for the inputs that are neither a file nor a folder.
_KINDS = (
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISSOCK, "a socket"),
)


def _not_listable(input: str) -> str:
    """Why INPUT, neither a file nor a folder, has no shards."""
    try:
        mode = os.stat(input).st_mode
    except OSError:
        return f"input not found: {shown(input)}"
    kind = next((name for test, name in _KINDS if test(mode)), "something else")
    return f"input {shown(input)} is not a regular file or a folder (it is {kind})"


def list_outputs(output: str) -> set[str]:
    """Every visible file below OUTPUT, through symlinked folders too (what is written
    there lands behind them); none when OUTPUT does not exist yet."""
    return {shard.rel for shard in _walk(output, None, inputs=False)}


def _walk(root: str, skip: str | None, inputs: bool) -> list[Shard]:
    """The visible files below `root`, sorted; `inputs` leaves out outputs (`.out` files,
    folders below `root` holding a `_SUCCESS`) and symlinked folders, `skip` one folder.
    Outputs are looked for through symlinked folders too, never round a symlink loop."""
    shards = []
    # The real folders on the way down to each folder walked: a link back to one is a loop.
    chains = {root: frozenset([os.path.realpath(root)])}
    for folder, folders, files in os.walk(root, followlinks=not inputs):
        if inputs and folder != root and any(map(is_summary, files)):
            folders[:] = []  # an earlier job's output, inside INPUT
            continue
        folders[:] = [
            name for name in folders if not hidden(name) and _enter(folder, name, skip, chains)
        ]
        for name in files:
            path = os.path.join(folder, name)
            if hidden(name) or (inputs and is_output(name)) or not os.path.isfile(path):
                continue  # also sockets, fifos, broken links
            rel = Path(os.path.relpath(path, root)).as_posix()
            shards.append(Shard(path, rel, os.path.getsize(path)))
    return sorted(shards, key=lambda shard: shard.rel)


def _enter(folder: str, name: str, skip: str | None, chains: dict[str, frozenset[str]]) -> bool:
    """Whether a walk goes into `folder/name`: not the skipped folder, and not a folder
    it is already inside (a symlink loop); records the chain of the folder entered."""
    path = os.path.join(folder, name)
    real = os.path.realpath(path)
    if real == skip or real in chains[folder]:
        return False
    chains[path] = chains[folder] | {real}
    return True


def size(uri: str) -> int | None:
    return os.path.getsize(uri) if os.path.isfile(uri) else None


def open_read(uri: str) -> BinaryIO:
    try:
        # "~" is expanded as it always was for single files (a quoted ~/vocab.json, say).
        return open(os.path.expanduser(uri), "rb")
    except FileNotFoundError as exc:
        raise InputError(f"input not found: {shown(uri)}") from exc
    except OSError as exc:
        raise InputError(f"cannot read {shown(uri)}: {exc.strerror or exc}") from exc


def _temp_name(name: str, token: str) -> str:
    """The hidden temp file a local output is written to before its rename."""
    return f".{name}.{token}.tmp"


class _LocalWriter(AtomicWriter):
    """A hidden temp file beside the target, renamed over it on commit."""

    has_regions = True

    def __init__(self, uri: str) -> None:
        super().__init__(uri)
        folder, name = os.path.split(os.path.abspath(uri))
        self._temp = os.path.join(folder, _temp_name(name, secrets.token_hex(6)))
        try:
            os.makedirs(folder, exist_ok=True)
            # os.open with 0o666 keeps the user's umask, unlike mkstemp's 0o600.
            self._file = os.fdopen(
                os.open(self._temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb"
            )
        except OSError as exc:
            raise InputError(f"cannot write {shown(uri)}: {exc.strerror or exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise InputError(f"cannot write {shown(self.uri)}: {exc.strerror or exc}") from exc

    def region(self, length: int) -> tuple[str, int]:
        try:
            self._file.flush()
            offset = self._file.tell()
            self._file.seek(offset + length)  # the gap is filled by write_at
        except OSError as exc:
            raise InputError(f"cannot write {shown(self.uri)}: {exc.strerror or exc}") from exc
        return self._temp, offset

    def _commit(self) -> None:
        try:
            self._file.close()
            os.replace(self._temp, self.uri)
        except OSError as exc:
            self._abort()
            raise InputError(f"cannot write {shown(self.uri)}: {exc.strerror or exc}") from exc

    def _abort(self) -> None:
        # Never raises: on a folder gone read-only the temp file cannot be removed, and
        # the hidden leftover is for the next run writing this output to clear.
        with contextlib.suppress(OSError):
            self._file.close()
        with contextlib.suppress(OSError):
            os.unlink(self._temp)


def open_write(uri: str) -> AtomicWriter:
    return _LocalWriter(uri)


def write_at(path: str, offset: int, data: bytes | memoryview) -> str | None:
    """Writes `data` into a region (AtomicWriter.region) of an output being written;
    the reason as text if it cannot be. Never creates the file: an output aborted
    meanwhile stays gone."""
    try:
        fd = os.open(path, os.O_WRONLY)
    except OSError as exc:
        return exc.strerror or str(exc)
    try:
        view = memoryview(data)
        while view:
            written = os.pwrite(fd, view, offset)
            view, offset = view[written:], offset + written
    except OSError as exc:
        return exc.strerror or str(exc)
    finally:
        os.close(fd)
    return None


def delete(uri: str) -> None:
    try:
        os.unlink(uri)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise InputError(f"cannot remove {shown(uri)}: {exc.strerror or exc}") from exc


def discard_partial(uris: Sequence[str]) -> None:
    """Removes the hidden temp files that killed writers of these outputs left."""
    for uri in uris:
        folder, name = os.path.split(os.path.abspath(uri))
        pattern = os.path.join(glob.escape(folder), _temp_name(glob.escape(name), _TEMP_GLOB))
        for path in glob.glob(pattern):
            with contextlib.suppress(OSError):
                os.unlink(path)


# Described as they are: an O2VError by its message, an OSError by its type and text.
describe_error = described

register_transport(sys.modules[__name__])
