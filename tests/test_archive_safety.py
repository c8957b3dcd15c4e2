"""Model archives: only the model files are written, by name, into a fresh folder; links,
special files and oversized members are refused in one line that names the archive,
and nothing is left behind, inside the temp folder or outside it."""

from __future__ import annotations

import os
import posixpath
import tarfile
from pathlib import Path

import pytest
from archives import entry, model_entries, run_cli, write_tar
from click.testing import CliRunner
from conftest import REPO
from safetensors.numpy import load_file
from tiny_models import assert_same_outputs, saved

from o2v_batch.artifacts import archive as extraction
from o2v_batch.artifacts import check_model, resolve_model
from o2v_batch.cli import main
from o2v_batch.errors import UnsafeArchiveError

HOLDS_FILES_ONLY = "a model archive holds files only"


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


def escaping_archive(tmp_path: Path, model_tmp: Path) -> tuple[Path, str]:
    """The trick aimed at the parent of the folder resolve_model extracts into, and the
    one-line refusal expected."""
    dest = model_tmp / ("o2v-model-" + "x" * 8)  # mkdtemp's name length
    entries, component = realpath_trick_entries(dest)
    saved(tmp_path / "model")
    archive = write_tar(tmp_path / "model.tar.gz", model_entries(tmp_path / "model") + entries)
    message = (
        f"{archive}: refusing to extract member 'a': it is a symlink to {component!r}: "
        f"{HOLDS_FILES_ONLY}"
    )
    return archive, message


def assert_nothing_written(tmp_path: Path, model_tmp: Path) -> None:
    assert not [p for p in tmp_path.rglob("*") if p.name == "newfile"]
    assert not (tmp_path.parent / "newfile").exists()
    assert list(model_tmp.iterdir()) == []


def test_a_symlink_chain_past_path_max_is_refused(tmp_path: Path, model_tmp: Path) -> None:
    archive, message = escaping_archive(tmp_path, model_tmp)
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == message
    assert_nothing_written(tmp_path, model_tmp)


def test_a_symlink_then_a_file_through_it_is_refused(tmp_path: Path, model_tmp: Path) -> None:
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
    assert list(model_tmp.iterdir()) == []


def test_transform_refuses_the_escaping_archive_in_one_line(
    tmp_path: Path, model_tmp: Path
) -> None:
    archive, message = escaping_archive(tmp_path, model_tmp)
    out = tmp_path / "out"
    done = run_cli(model_tmp, "transform", REPO / "examples" / "requests", out, "--model", archive)
    assert (done.returncode, done.stderr, done.stdout) == (1, f"Error: {message}\n", "")
    assert not out.exists()
    assert_nothing_written(tmp_path, model_tmp)


def test_inspect_refuses_the_escaping_archive_in_one_line(tmp_path: Path, model_tmp: Path) -> None:
    archive, message = escaping_archive(tmp_path, model_tmp)
    result = CliRunner().invoke(main, ["inspect", str(archive)])
    assert (result.exit_code, result.output) == (1, f"Error: {message}\n")
    assert_nothing_written(tmp_path, model_tmp)


def test_other_files_are_skipped_unwritten(tmp_path: Path, model_tmp: Path) -> None:
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
    assert sorted(p.relative_to(model_tmp) for p in model_tmp.rglob("*")) == [
        Path(folder.name),
        Path(folder.name) / "hyperparameters.json",
        Path(folder.name) / "model.safetensors",
    ]
    assert_same_outputs(str(archive), network)


@pytest.mark.parametrize("prefix", ["", "./", "model/", "./model/"])
def test_weights_before_hyperparameters_are_read_on_a_second_pass(
    tmp_path: Path, model_tmp: Path, prefix: str
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
    tmp_path: Path, model_tmp: Path, names: list[str], refused: str, reason: str
) -> None:
    saved(tmp_path / "model")
    entries = [entry(n, (tmp_path / "model" / posixpath.basename(n)).read_bytes()) for n in names]
    archive = write_tar(tmp_path / "model.tar.gz", entries)
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == f"{archive}: refusing to extract member {refused!r}: {reason}"
    assert list(model_tmp.iterdir()) == []


def spy_on_writes(monkeypatch) -> list[int]:
    """Bytes written to each extracted file, recorded as the real files are written."""
    written: list[int] = []
    create = extraction._create

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

    monkeypatch.setattr(extraction, "_create", Counting)
    return written


@pytest.mark.parametrize("weights_first", [False, True], ids=["hp-first", "weights-first"])
def test_a_weights_bomb_is_refused_before_it_is_written(
    tmp_path: Path, model_tmp: Path, monkeypatch, weights_first: bool
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
    assert list(model_tmp.iterdir()) == []


def test_an_oversized_hyperparameters_file_is_refused(tmp_path: Path, model_tmp: Path) -> None:
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
    assert list(model_tmp.iterdir()) == []


# The cap's own value, and a small one for the quick run: the same count either way.
@pytest.mark.parametrize("cap", [100, pytest.param(10_000, marks=pytest.mark.slow)])
@pytest.mark.parametrize(("extra", "refused"), [(-2, False), (-1, True)])
def test_members_are_capped(
    tmp_path: Path, model_tmp: Path, monkeypatch, cap: int, extra: int, refused: bool
) -> None:
    assert extraction.MAX_MEMBERS == 10_000
    monkeypatch.setattr(extraction, "MAX_MEMBERS", cap)
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
    assert list(model_tmp.iterdir()) == []
