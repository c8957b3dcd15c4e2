"""Local storage under a whole job: outputs reached through symlinked folders of
OUTPUT, an OUTPUT that turns read-only, inputs that are not regular files."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import make_model, random_records, write_jsonl

from o2v_batch.cli import main


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return make_model(tmp_path_factory.mktemp("model") / "m")


@pytest.fixture(autouse=True)
def echoing_workers(replace_servers):
    """Storage is what these jobs show: their workers are tests' servers, which answer
    each record with its own bytes and start without torch."""
    replace_servers("fake_servers:Echo")


def invoke(*args: str | Path):
    return CliRunner().invoke(main, [str(a) for a in args])


def visible_files(root: Path) -> list[str]:
    return sorted(
        str(path.relative_to(root))
        for path in root.rglob("*")
        if path.is_file() and not path.name.startswith(".")
    )


# ---------------------------------------------------------------- symlinked folders of OUTPUT


@pytest.fixture
def linked_output(tmp_path) -> tuple[Path, Path, Path]:
    """INPUT with sub/a.jsonl and b.jsonl; OUTPUT/sub a symlink to a folder already
    holding a.jsonl.out."""
    write_jsonl(tmp_path / "in" / "sub" / "a.jsonl", random_records(3, seed=1))
    write_jsonl(tmp_path / "in" / "b.jsonl", random_records(2, seed=2))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.jsonl.out").write_bytes(b"earlier output\n")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").symlink_to(elsewhere, target_is_directory=True)
    return tmp_path / "in", tmp_path / "out", elsewhere


def test_an_output_behind_a_symlinked_folder_is_not_overwritten(linked_output, model_dir):
    input, output, elsewhere = linked_output

    result = invoke("transform", input, output, "--model", model_dir)

    assert result.exit_code == 2
    assert result.stderr.endswith(
        f"Error: output already exists: {output}/sub/a.jsonl.out "
        "(use --resume to skip finished shards or --overwrite to replace them)\n"
    )
    assert (elsewhere / "a.jsonl.out").read_bytes() == b"earlier output\n"
    assert os.listdir(output) == ["sub"]
    assert os.listdir(elsewhere) == ["a.jsonl.out"]


def test_resume_skips_an_output_behind_a_symlinked_folder(linked_output, model_dir):
    input, output, elsewhere = linked_output

    result = invoke("transform", input, output, "--model", model_dir, "--resume")

    assert result.exit_code == 0, result.output
    assert "o2v-batch: shards: 1 ok, 0 failed, 1 skipped" in result.stderr
    assert f"o2v-batch: skipped: {input}/sub/a.jsonl: output exists (--resume)" in result.stderr
    assert (elsewhere / "a.jsonl.out").read_bytes() == b"earlier output\n"
    assert (output / "b.jsonl.out").read_text().count("\n") == 2


# ---------------------------------------------------------------- OUTPUT turns read-only


def test_an_output_folder_turning_read_only_fails_each_shard_in_one_line(
    tmp_path, model_dir, monkeypatch
):
    """The rename of each finished output and the removal of its temp file both fail
    with EROFS, as on a file system remounted read-only mid-job (chmod cannot stop root)."""
    write_jsonl(tmp_path / "in" / "a.jsonl", random_records(3, seed=1))
    write_jsonl(tmp_path / "in" / "b.jsonl", random_records(2, seed=2))
    output = tmp_path / "out"
    replace, unlink = os.replace, os.unlink

    def read_only(real):
        def call(path, *args, **kwargs):
            if str(path).startswith(str(output)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
            return real(path, *args, **kwargs)

        return call

    monkeypatch.setattr(os, "replace", read_only(replace))
    monkeypatch.setattr(os, "unlink", read_only(unlink))

    result = invoke("transform", tmp_path / "in", output, "--model", model_dir)

    assert result.exit_code == 1
    assert "Traceback" not in result.output
    failures = [line for line in result.stderr.splitlines() if "shard failed" in line]
    # One line each, in the order the workers happen to finish them.
    assert sorted(failures) == [
        f"o2v-batch: shard failed: cannot write {output}/{name}.out: Read-only file system"
        for name in ("a.jsonl", "b.jsonl")
    ]
    assert "o2v-batch: shards: 0 ok, 2 failed, 0 skipped" in result.stderr
    assert visible_files(output) == []


# ---------------------------------------------------------------- inputs that are not files


def test_a_character_device_input_says_what_it_is(tmp_path, model_dir):
    result = invoke("transform", "/dev/zero", tmp_path / "out", "--model", model_dir)

    assert result.exit_code == 1
    assert result.stderr.endswith(
        "Error: input /dev/zero is not a regular file or a folder (it is a character device)\n"
    )
    assert not (tmp_path / "out").exists()


def test_a_named_pipe_input_says_what_it_is(tmp_path, model_dir):
    os.mkfifo(tmp_path / "pipe")

    result = invoke("transform", tmp_path / "pipe", tmp_path / "out", "--model", model_dir)

    assert result.exit_code == 1
    assert result.stderr.endswith(
        f"Error: input {tmp_path / 'pipe'} is not a regular file or a folder (it is a named pipe)\n"
    )
