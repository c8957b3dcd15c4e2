"""Model archives that cannot be used: a full disk, a file that is no archive, and
model files that are missing, broken or bad, each named by the archive in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from archives import entry, model_entries, run_cli, write_tar
from conftest import REPO
from safetensors.numpy import load_file, save
from tiny_models import saved

from o2v_batch.artifacts import archive as extraction
from o2v_batch.artifacts import check_model, resolve, resolve_model
from o2v_batch.errors import DiskFullError, HyperparameterError, ModelFormatError


def test_a_full_disk_is_named_not_the_archive(tmp_path: Path, model_tmp: Path, monkeypatch) -> None:
    saved(tmp_path / "model")
    archive = write_tar(tmp_path / "model.tar.gz", model_entries(tmp_path / "model"))
    # /dev/full fails every write with ENOSPC, as a full TMPDIR does.
    monkeypatch.setattr(extraction, "_create", lambda path: open("/dev/full", "wb"))  # noqa: SIM115
    with pytest.raises(DiskFullError) as caught:
        resolve_model(str(archive))
    assert str(caught.value) == (
        f"disk full while extracting model {archive} into {model_tmp}: No space left on device"
    )
    assert list(model_tmp.iterdir()) == []


def test_a_full_disk_while_downloading_is_named(tmp_path: Path) -> None:
    source = tmp_path / "model.tar.gz"
    source.write_bytes(b"x" * 100_000)
    with pytest.raises(DiskFullError) as caught:
        resolve._download(str(source), Path("/dev/full"))
    assert str(caught.value) == (
        f"disk full while downloading model {source} into /: No space left on device"
    )


# ---------------------------------------------------------------- messages name the archive


def test_a_text_file_named_tar_gz_is_one_line(tmp_path: Path, model_tmp: Path) -> None:
    archive = tmp_path / "x.tar.gz"
    archive.write_text("hello\n")
    out = tmp_path / "out"
    done = run_cli(model_tmp, "transform", REPO / "examples" / "requests", out, "--model", archive)
    expected = f"Error: {archive} is not a readable .tar.gz archive: not a gzip file\n"
    assert (done.returncode, done.stderr) == (1, expected)
    assert not out.exists()
    assert list(model_tmp.iterdir()) == []


def archive_with(tmp_path: Path, hyperparameters: bytes | None, weights: bytes | None) -> Path:
    entries = []
    if hyperparameters is not None:
        entries.append(entry("model/hyperparameters.json", hyperparameters))
    if weights is not None:
        entries.append(entry("model/model.safetensors", weights))
    return write_tar(tmp_path / "model.tar.gz", entries)


def test_bad_hyperparameters_in_an_archive_name_the_archive(tmp_path: Path, model_tmp: Path):
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
    assert list(model_tmp.iterdir()) == []
    archive = archive_with(tmp_path, b"{oops", weights)
    with pytest.raises(ModelFormatError, match=rf"^{archive}: hyperparameters\.json is not valid"):
        resolve_model(str(archive))
    assert list(model_tmp.iterdir()) == []


def test_missing_or_broken_files_in_an_archive_name_the_archive(tmp_path: Path, model_tmp: Path):
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
        assert str(model_tmp) not in str(caught.value)


def test_nan_weights_in_an_archive_name_the_archive(tmp_path: Path, model_tmp: Path) -> None:
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
