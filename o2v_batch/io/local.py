"""Local paths: listing a folder, reading a file, and THE atomic local writer
(a hidden temp file beside the target, renamed over it on commit)."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from o2v_batch.errors import InputError
from o2v_batch.io.base import AtomicWriter, Shard, hidden, is_output, is_summary, scheme_of

_TEMP_GLOB = "[0-9a-f]" * 12  # matches secrets.token_hex(6)


def list_shards(input: str, output: str | None) -> list[Shard]:
    """A file is one shard; a folder is every file below it, without following symlinked
    folders, and without the OUTPUT folder or an earlier job's output when they lie inside."""
    if os.path.isfile(input):
        return [Shard(input, os.path.basename(input), os.path.getsize(input))]
    if not os.path.isdir(input):
        raise InputError(f"input not found: {input}")
    skip = os.path.realpath(output) if output and scheme_of(output) == "" else None
    return _walk(input, skip, inputs=True)


def list_outputs(output: str) -> set[str]:
    """Every visible file below OUTPUT; none when it does not exist yet."""
    return {shard.rel for shard in _walk(output, None, inputs=False)}


def _walk(root: str, skip: str | None, inputs: bool) -> list[Shard]:
    """The visible files below `root`, sorted; `inputs` leaves out outputs (`.out` files,
    folders below `root` holding a `_SUCCESS`), `skip` one folder."""
    shards = []
    # followlinks=False: a symlinked folder shows up in `folders` but is never entered.
    for folder, folders, files in os.walk(root):
        if inputs and folder != root and any(map(is_summary, files)):
            folders[:] = []  # an earlier job's output, inside INPUT
            continue
        folders[:] = [
            name
            for name in folders
            if not hidden(name) and os.path.realpath(os.path.join(folder, name)) != skip
        ]
        for name in files:
            path = os.path.join(folder, name)
            if hidden(name) or (inputs and is_output(name)) or not os.path.isfile(path):
                continue  # also sockets, fifos, broken links
            rel = Path(os.path.relpath(path, root)).as_posix()
            shards.append(Shard(path, rel, os.path.getsize(path)))
    return sorted(shards, key=lambda shard: shard.rel)


def size(uri: str) -> int | None:
    return os.path.getsize(uri) if os.path.isfile(uri) else None


def open_read(uri: str) -> BinaryIO:
    try:
        # "~" is expanded as it always was for single files (a quoted ~/vocab.json, say).
        return open(os.path.expanduser(uri), "rb")
    except FileNotFoundError as exc:
        raise InputError(f"input not found: {uri}") from exc
    except OSError as exc:
        raise InputError(f"cannot read {uri}: {exc.strerror or exc}") from exc


def _temp_name(name: str, token: str) -> str:
    """The hidden temp file a local output is written to before its rename."""
    return f".{name}.{token}.tmp"


class _LocalWriter(AtomicWriter):
    """A hidden temp file beside the target, renamed over it on commit."""

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
            raise InputError(f"cannot write {uri}: {exc.strerror or exc}") from exc

    def write(self, data: bytes) -> None:
        try:
            self._file.write(data)
        except OSError as exc:
            raise InputError(f"cannot write {self.uri}: {exc.strerror or exc}") from exc

    def _commit(self) -> None:
        try:
            self._file.close()
            os.replace(self._temp, self.uri)
        except OSError as exc:
            self._abort()
            raise InputError(f"cannot write {self.uri}: {exc.strerror or exc}") from exc

    def _abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._temp)


def open_write(uri: str) -> AtomicWriter:
    return _LocalWriter(uri)


def discard_partial(uris: Sequence[str]) -> None:
    """Removes the hidden temp files that killed writers of these outputs left."""
    for uri in uris:
        folder, name = os.path.split(os.path.abspath(uri))
        pattern = os.path.join(glob.escape(folder), _temp_name(glob.escape(name), _TEMP_GLOB))
        for path in glob.glob(pattern):
            with contextlib.suppress(OSError):
                os.unlink(path)
