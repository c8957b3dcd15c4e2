"""Model archives: only the model files are written, by name, into a fresh folder; links,
special files, oversized members and full disks are refused in one line that names the
archive, and nothing is left behind, inside the temp folder or outside it."""

from __future__ import annotations

import io
import json
import os
import posixpath
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from safetensors.numpy import load_file, save
from tiny_models import assert_same_outputs, saved

from o2v_batch import artifacts
from o2v_batch.artifacts import check_model, resolve_model
from o2v_batch.cli import main
from o2v_batch.errors import (
    DiskFullError,
    HyperparameterError,
    ModelFormatError,
    UnsafeArchiveError,
)

REPO = Path(__file__).resolve().parents[1]
HOLDS_FILES_ONLY = "a model archive holds files only"


@pytest.fixture
def tmpdir(tmp_path: Path, monkeypatch) -> Path:
    """The temp folder models are extracted under, inside this test's folder."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


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


def realpath_trick_entries(dest: Path) -> tuple[list, str]:
    """The CVE-2025-4517 construction: a chain of long folders and one-letter symlinks
    whose expansion passes PATH_MAX, a link whose text stays inside the target but whose
    target is its parent, then a regular file written through it. Also the first symlink
    member's target, which the refusal names."""
    steps = "abcdefghijklmnop"
    room = os.pathconf("/", "PC_PATH_MAX") - len(str(dest)) - 1
    component = "d" * min(255, room // (len(steps) + 1))
    entries, folder = [], ""
    for step in steps:
        entries.append(entry(posixpath.join(folder, component), kind=tarfile.DIRTYPE))
        entries.append(entry(posixpath.join(folder, step), kind=tarfile.SYMTYPE, link=component))
        folder = posixpath.join(folder, component)
    link = posixpath.join(*steps, "l" * 254)
    entries.append(entry(link, kind=tarfile.SYMTYPE, link=posixpath.join(*[".."] * len(steps))))
    entries.append(entry("escape", kind=tarfile.SYMTYPE, link=posixpath.join(link, "..")))
    entries.append(entry("escape/newfile", b"new"))
    return entries, component


def escaping_archive(tmp_path: Path, tmpdir: Path) -> tuple[Path, str]:
    """The trick aimed at the parent of the folder resolve_model extracts into, and the
    one-line refusal expected."""
    dest = tmpdir / ("o2v-model-" + "x" * 8)  # mkdtemp's name length
    entries, component = realpath_trick_entries(dest)
    saved(tmp_path / "model")
    archive = write_tar(tmp_path / "model.tar.gz", model_entries(tmp_path / "model") + entries)
    message = (
        f"{archive}: refusing to extract member 'a': it is a symlink to {component!r}: "
        f"{HOLDS_FILES_ONLY}"
    )
    return archive, message


def assert_nothing_written(tmp_path: Path, tmpdir: Path) -> None:
    assert not [p for p in tmp_path.rglob("*") if p.name == "newfile"]
    assert not (tmp_path.parent / "newfile").exists()
    assert list(tmpdir.iterdir()) == []


def test_a_symlink_chain_past_path_max_is_refused(tmp_path: Path, tmpdir: Path) -> None:
    archive, message = escaping_archive(tmp_path, tmpdir)
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == message
    assert_nothing_written(tmp_path, tmpdir)


def test_a_symlink_then_a_file_through_it_is_refused(tmp_path: Path, tmpdir: Path) -> None:
    saved(tmp_path / "model")
    (tmp_path / "elsewhere").mkdir()
    entries = [
        entry("model", kind=tarfile.DIRTYPE),
        entry("model/out", kind=tarfile.SYMTYPE, link="."),
        *model_entries(tmp_path / "model", "model/out/"),
    ]
    archive = write_tar(tmp_path / "model.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == (
        f"{archive}: refusing to extract member 'model/out': it is a symlink to '.': "
        f"{HOLDS_FILES_ONLY}"
    )
    assert list(tmpdir.iterdir()) == []


def run_cli(tmpdir: Path, *args: str | Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    command = [sys.executable, "-m", "o2v_batch", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_transform_refuses_the_escaping_archive_in_one_line(tmp_path: Path, tmpdir: Path) -> None:
    archive, message = escaping_archive(tmp_path, tmpdir)
    out = tmp_path / "out"
    done = run_cli(tmpdir, "transform", REPO / "examples" / "requests", out, "--model", archive)
    assert (done.returncode, done.stderr, done.stdout) == (1, f"Error: {message}\n", "")
    assert not out.exists()
    assert_nothing_written(tmp_path, tmpdir)


def test_inspect_refuses_the_escaping_archive_in_one_line(tmp_path: Path, tmpdir: Path) -> None:
    archive, message = escaping_archive(tmp_path, tmpdir)
    result = CliRunner().invoke(main, ["inspect", str(archive)])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    assert_nothing_written(tmp_path, tmpdir)


def test_other_files_are_skipped_unwritten(tmp_path: Path, tmpdir: Path) -> None:
    _, network = saved(tmp_path / "model")
    entries = [
        entry("model", kind=tarfile.DIRTYPE),
        entry("model/README.md", b"# my model\n"),
        entry("model/code/inference.py", b"print('hi')\n"),
        entry("model/code/deeper/hyperparameters.json", b"{}"),
        *model_entries(tmp_path / "model", "model/"),
    ]
    archive = write_tar(tmp_path / "model.tar.gz", entries)
    folder = Path(resolve_model(str(archive)))
    assert sorted(p.relative_to(tmpdir) for p in tmpdir.rglob("*")) == [
        Path(folder.name),
        Path(folder.name) / "hyperparameters.json",
        Path(folder.name) / "model.safetensors",
    ]
    assert_same_outputs(str(archive), network)


@pytest.mark.parametrize("prefix", ["", "./", "model/", "./model/"])
def test_weights_before_hyperparameters_are_read_on_a_second_pass(
    tmp_path: Path, tmpdir: Path, prefix: str
) -> None:
    _, network = saved(tmp_path / "model", enc0_network="bilstm")
    entries = model_entries(tmp_path / "model", prefix, weights_first=True)
    archive = write_tar(tmp_path / "model.tar.gz", entries)
    folder = Path(resolve_model(str(archive)))
    assert sorted(p.name for p in folder.iterdir()) == ["hyperparameters.json", "model.safetensors"]
    for name in ("hyperparameters.json", "model.safetensors"):
        assert (folder / name).read_bytes() == (tmp_path / "model" / name).read_bytes()
    assert_same_outputs(str(archive), network)


@pytest.mark.parametrize(
    ("names", "refused", "reason"),
    [
        (
            ["hyperparameters.json", "model.safetensors", "./hyperparameters.json"],
            "./hyperparameters.json",
            "it is a second hyperparameters.json",
        ),
        (
            ["a/hyperparameters.json", "b/model.safetensors"],
            "b/model.safetensors",
            "the model files must sit together, at the top or in one top-level folder",
        ),
        (
            ["model.safetensors", "m/hyperparameters.json"],
            "m/hyperparameters.json",
            "the model files must sit together, at the top or in one top-level folder",
        ),
    ],
)
def test_model_files_twice_or_apart_are_refused(
    tmp_path: Path, tmpdir: Path, names: list[str], refused: str, reason: str
) -> None:
    saved(tmp_path / "model")
    entries = [entry(n, (tmp_path / "model" / posixpath.basename(n)).read_bytes()) for n in names]
    archive = write_tar(tmp_path / "model.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == f"{archive}: refusing to extract member {refused!r}: {reason}"
    assert list(tmpdir.iterdir()) == []


def spy_on_writes(monkeypatch) -> list[int]:
    """Bytes written to each extracted file, recorded as the real files are written."""
    written: list[int] = []
    create = artifacts._create

    class Counting:
        def __init__(self, path: Path) -> None:
            self.file = create(path)
            written.append(0)

        def write(self, data: bytes) -> int:
            written[-1] += len(data)
            return self.file.write(data)

        def __enter__(self):
            return self

        def __exit__(self, *exc) -> None:
            self.file.close()

    monkeypatch.setattr(artifacts, "_create", Counting)
    return written


@pytest.mark.parametrize("weights_first", [False, True], ids=["hp-first", "weights-first"])
def test_a_weights_bomb_is_refused_before_it_is_written(
    tmp_path: Path, tmpdir: Path, monkeypatch, weights_first: bool
) -> None:
    saved(tmp_path / "model")
    numbers = sum(a.size for a in load_file(tmp_path / "model" / "model.safetensors").values())
    cap = 4 * numbers + 2**20
    bomb = bytes(8 * 2**20)  # zeros, several times the cap: a few KB once compressed
    entries = model_entries(tmp_path / "model", weights_first=weights_first)
    weights = next(i for i, (info, _) in enumerate(entries) if info.name == "model.safetensors")
    entries[weights] = entry("model.safetensors", bomb)
    archive = write_tar(tmp_path / "model.tar.gz", entries)
    assert archive.stat().st_size < 2**20
    written = spy_on_writes(monkeypatch)
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == (
        f"{archive}: refusing to extract member 'model.safetensors': it holds {len(bomb)} "
        f"bytes, more than the {cap} bytes its hyperparameters' float32 tensors need"
    )
    assert max(written) < 2**20 and len(written) == 1  # hyperparameters.json only
    assert list(tmpdir.iterdir()) == []


def test_an_oversized_hyperparameters_file_is_refused(tmp_path: Path, tmpdir: Path) -> None:
    saved(tmp_path / "model")
    text = (tmp_path / "model" / "hyperparameters.json").read_bytes()
    padded = text + b" " * (2**20 + 1 - len(text))
    archive = write_tar(tmp_path / "model.tar.gz", [entry("hyperparameters.json", padded)])
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == (
        f"{archive}: refusing to extract member 'hyperparameters.json': it holds 1048577 "
        "bytes, more than the 1048576 bytes a hyperparameters.json may hold"
    )
    assert list(tmpdir.iterdir()) == []


# The cap's own value, and a small one for the quick run: the same count either way.
@pytest.mark.parametrize("cap", [100, pytest.param(10_000, marks=pytest.mark.slow)])
@pytest.mark.parametrize(("extra", "refused"), [(-2, False), (-1, True)])
def test_members_are_capped(
    tmp_path: Path, tmpdir: Path, monkeypatch, cap: int, extra: int, refused: bool
) -> None:
    assert artifacts.MAX_MEMBERS == 10_000
    monkeypatch.setattr(artifacts, "MAX_MEMBERS", cap)
    saved(tmp_path / "model")
    entries = [entry(f"extra{i}/", kind=tarfile.DIRTYPE) for i in range(cap + extra)]
    archive = write_tar(tmp_path / "model.tar.gz", model_entries(tmp_path / "model") + entries)
    if not refused:  # `cap` members in all
        assert check_model(resolve_model(str(archive))).enc0_vocab_size == 50
        return
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == (
        f"{archive}: refusing to extract: more than {cap} members (a model needs two)"
    )
    assert list(tmpdir.iterdir()) == []


def test_a_full_disk_is_named_not_the_archive(tmp_path: Path, tmpdir: Path, monkeypatch) -> None:
    saved(tmp_path / "model")
    archive = write_tar(tmp_path / "model.tar.gz", model_entries(tmp_path / "model"))
    # /dev/full fails every write with ENOSPC, as a full TMPDIR does.
    monkeypatch.setattr(artifacts, "_create", lambda path: open("/dev/full", "wb"))  # noqa: SIM115
    with pytest.raises(DiskFullError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == (
        f"disk full while extracting model {archive} into {tmpdir}: No space left on device"
    )
    assert list(tmpdir.iterdir()) == []


def test_a_full_disk_while_downloading_is_named(tmp_path: Path) -> None:
    source = tmp_path / "model.tar.gz"
    source.write_bytes(b"x" * 100_000)
    with pytest.raises(DiskFullError) as caught:
        artifacts._download(str(source), Path("/dev/full"))
    assert str(caught.value) == (
        f"disk full while downloading model {source} into /: No space left on device"
    )


# ---------------------------------------------------------------- messages name the archive


def test_a_text_file_named_tar_gz_is_one_line(tmp_path: Path, tmpdir: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    archive.write_text("hello\n")
    out = tmp_path / "out"
    done = run_cli(tmpdir, "transform", REPO / "examples" / "requests", out, "--model", archive)
    expected = f"Error: {archive} is not a readable .tar.gz archive: not a gzip file\n"
    assert (done.returncode, done.stderr) == (1, expected)
    assert not out.exists()
    assert list(tmpdir.iterdir()) == []


def archive_with(tmp_path: Path, hyperparameters: bytes | None, weights: bytes | None) -> Path:
    entries = []
    if hyperparameters is not None:
        entries.append(entry("model/hyperparameters.json", hyperparameters))
    if weights is not None:
        entries.append(entry("model/model.safetensors", weights))
    return write_tar(tmp_path / "model.tar.gz", entries)


def test_bad_hyperparameters_in_an_archive_name_the_archive(tmp_path: Path, tmpdir: Path):
    saved(tmp_path / "model")
    values = json.loads((tmp_path / "model" / "hyperparameters.json").read_text())
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    archive = archive_with(tmp_path, json.dumps({**values, "enc_dim": 2}).encode(), weights)
    with pytest.raises(HyperparameterError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == (
        f"{archive}: hyperparameters.json: enc_dim=2 is out of range: "
        "must be an integer in 4..10000"
    )
    assert list(tmpdir.iterdir()) == []
    archive = archive_with(tmp_path, b"{oops", weights)
    with pytest.raises(ModelFormatError, match=rf"^{archive}: hyperparameters\.json is not valid"):
        resolve_model(str(archive))
    assert list(tmpdir.iterdir()) == []


def test_missing_or_broken_files_in_an_archive_name_the_archive(tmp_path: Path, tmpdir: Path):
    saved(tmp_path / "model")
    text = (tmp_path / "model" / "hyperparameters.json").read_bytes()
    weights = (tmp_path / "model" / "model.safetensors").read_bytes()
    archive = tmp_path / "model.tar.gz"
    for hyperparameters, data, expected in [
        (None, weights, f"{archive} has no hyperparameters.json"),
        (text, None, f"{archive} has no model.safetensors"),
        (
            text,
            weights[: len(weights) // 2],
            f"{archive}: model.safetensors is not a readable safetensors file: ",
        ),
    ]:
        archive_with(tmp_path, hyperparameters, data)
        with pytest.raises(ModelFormatError) as caught:
            check_model(resolve_model(str(archive)))
        assert str(caught.value).startswith(expected) and "\n" not in str(caught.value)
        assert str(tmpdir) not in str(caught.value)


def test_nan_weights_in_an_archive_name_the_archive(tmp_path: Path, tmpdir: Path) -> None:
    saved(tmp_path / "model")
    tensors = load_file(tmp_path / "model" / "model.safetensors")
    tensors["head.bias"] = np.array([np.nan, 1.0], dtype=np.float32)
    text = (tmp_path / "model" / "hyperparameters.json").read_bytes()
    archive = archive_with(tmp_path, text, save(tensors))
    with pytest.raises(ModelFormatError) as caught:
        check_model(resolve_model(str(archive)))
    assert str(caught.value) == (
        f"{archive}: model.safetensors: tensor head.bias holds NaN or infinity (1 value): "
        "the model cannot give finite outputs"
    )
