"""io/local.py: listing folders, reading files and the atomic local writer."""

from __future__ import annotations

import errno
import os

import pytest

from o2v_batch import io as sources
from o2v_batch.errors import InputError
from o2v_batch.io import Shard


def make_files(root, files: dict[str, bytes]) -> None:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)


def rels(shards: list[Shard]) -> list[str]:
    return [shard.rel for shard in shards]


# ---------------------------------------------------------------- listing


def test_folder_lists_every_file_below_sorted_skipping_hidden_and_underscore(tmp_path):
    visible = {
        "b.jsonl": b"1\n",
        "a/z.json": b"22\n",
        "a/b/c.jsonl.gz": b"333\n",
        "a.jsonl": b"",
        "a-b.jsonl": b"4444",
    }
    hidden = {
        ".hidden.jsonl": b"x",
        "_SUCCESS": b"x",
        "a/.part.jsonl.tmp": b"x",
        "_temporary/0/part-0.jsonl": b"x",
        ".git/config": b"x",
        "a/_logs/x.jsonl": b"x",
    }
    make_files(tmp_path / "in", {**visible, **hidden})

    shards = sources.list_shards(str(tmp_path / "in"))

    # Code point order, the order S3 lists keys in ("-" < "." < "/").
    assert rels(shards) == ["a-b.jsonl", "a.jsonl", "a/b/c.jsonl.gz", "a/z.json", "b.jsonl"]
    for shard in shards:
        assert shard.uri == os.path.join(tmp_path / "in", *shard.rel.split("/"))
        assert shard.size == len(visible[shard.rel])


@pytest.mark.parametrize("spelling", ["{in}/out", "{in}/out/", "{in}/./out", "{in}/sub/../out"])
def test_output_folder_inside_input_is_never_listed(tmp_path, spelling):
    make_files(
        tmp_path / "in",
        {"a.jsonl": b"1", "out/a.jsonl": b"2", "outside.jsonl": b"3", "out2/b.jsonl": b"4"},
    )
    (tmp_path / "in" / "sub").mkdir()
    output = spelling.format(**{"in": tmp_path / "in"})

    shards = sources.list_shards(str(tmp_path / "in"), output)

    assert rels(shards) == ["a.jsonl", "out2/b.jsonl", "outside.jsonl"]


def test_output_folder_reached_through_a_relative_path_is_excluded(tmp_path, monkeypatch):
    make_files(tmp_path / "in", {"a.jsonl": b"1", "out/a.jsonl": b"2"})
    monkeypatch.chdir(tmp_path / "in")
    assert rels(sources.list_shards(str(tmp_path / "in"), "out")) == ["a.jsonl"]


def test_outputs_of_earlier_jobs_are_never_input(tmp_path):
    make_files(
        tmp_path / "in",
        {
            "_SUCCESS": b"{}",  # INPUT itself may hold one: its other files are still read
            "a.jsonl": b"1",
            "a.jsonl.out": b"x",
            "a.jsonl.parquet": b"x",
            "a.jsonl.npy": b"x",
            "old/_SUCCESS": b"{}",
            "old/b.jsonl": b"x",
            "old/deeper/c.jsonl": b"x",
            "node/_SUCCESS.1-of-2": b"{}",
            "node/d.jsonl": b"x",
            "keep/e.jsonl": b"22",
            "keep/e.jsonl.out": b"x",
            "keep/_SUCCESS_notes": b"x",  # not a summary: keep/ is still read
            "tables.out/g.jsonl": b"333",
        },
    )
    shards = sources.list_shards(str(tmp_path / "in"))
    assert rels(shards) == ["a.jsonl", "keep/e.jsonl", "tables.out/g.jsonl"]


def test_an_explicitly_named_out_file_is_still_an_input(tmp_path):
    make_files(tmp_path, {"a.jsonl.out": b"1"})
    path = str(tmp_path / "a.jsonl.out")
    assert sources.list_shards(path) == [Shard(path, "a.jsonl.out", 1)]


def test_list_outputs_sees_every_visible_file_below_output(tmp_path):
    make_files(
        tmp_path / "out",
        {
            "_SUCCESS": b"{}",
            "a.jsonl.out": b"1",
            "sub/_SUCCESS": b"{}",
            "sub/b.jsonl.out": b"2",
            "sub/.b.jsonl.out.0123456789ab.tmp": b"3",
        },
    )
    assert sources.list_outputs(str(tmp_path / "out")) == {"a.jsonl.out", "sub/b.jsonl.out"}
    assert sources.list_outputs(str(tmp_path / "missing")) == set()
    assert sources.list_outputs("-") == set()


def test_sibling_folder_sharing_a_string_prefix_is_not_included(tmp_path):
    make_files(tmp_path, {"in/a.jsonl": b"1", "in_old/b.jsonl": b"2", "in2.jsonl": b"3"})
    assert rels(sources.list_shards(str(tmp_path / "in"))) == ["a.jsonl"]


def test_single_file_is_one_shard_named_by_its_base_name(tmp_path):
    make_files(tmp_path, {"deep/x/data.jsonl.gz": b"12345"})
    path = str(tmp_path / "deep" / "x" / "data.jsonl.gz")
    assert sources.list_shards(path) == [Shard(path, "data.jsonl.gz", 5)]


def test_an_explicitly_named_hidden_file_is_still_an_input(tmp_path):
    make_files(tmp_path, {"_part.jsonl": b"1"})
    path = str(tmp_path / "_part.jsonl")
    assert sources.list_shards(path) == [Shard(path, "_part.jsonl", 1)]


def test_symlinked_folders_are_not_followed_but_symlinked_files_are_read(tmp_path):
    make_files(
        tmp_path, {"in/a.jsonl": b"1", "elsewhere/secret.jsonl": b"22", "file.jsonl": b"333"}
    )
    (tmp_path / "in" / "link").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "in" / "loop").symlink_to(tmp_path / "in", target_is_directory=True)
    (tmp_path / "in" / "f.jsonl").symlink_to(tmp_path / "file.jsonl")
    (tmp_path / "in" / "broken.jsonl").symlink_to(tmp_path / "missing")
    os.mkfifo(tmp_path / "in" / "fifo.jsonl")

    shards = sources.list_shards(str(tmp_path / "in"))

    assert [(s.rel, s.size) for s in shards] == [("a.jsonl", 1), ("f.jsonl", 3)]


def test_empty_folder_has_no_shards(tmp_path):
    assert sources.list_shards(str(tmp_path)) == []


def test_missing_input_is_an_input_error(tmp_path):
    missing = str(tmp_path / "nope")
    with pytest.raises(InputError) as info:
        sources.list_shards(missing)
    assert str(info.value) == f"input not found: {missing}"


# ---------------------------------------------------------------- atomic writer


def all_files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def test_commit_publishes_the_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "new" / "deep" / "a.jsonl.out"
    writer = sources.open_write(str(target))
    writer.write(b"one\n")
    writer.write(b"two\n")
    # Until commit, only a hidden temp file exists, and listings skip it.
    [temp] = all_files(tmp_path)
    assert temp.startswith("new/deep/.a.jsonl.out.") and temp.endswith(".tmp")
    assert sources.list_shards(str(tmp_path)) == []

    writer.commit()

    assert all_files(tmp_path) == ["new/deep/a.jsonl.out"]
    assert target.read_bytes() == b"one\ntwo\n"


def test_committed_file_gets_the_umask_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        sources.write_atomic(str(tmp_path / "a.out"), b"x")
    finally:
        os.umask(umask)
    assert (tmp_path / "a.out").stat().st_mode & 0o777 == 0o644


def test_abort_leaves_nothing(tmp_path):
    writer = sources.open_write(str(tmp_path / "a.out"))
    writer.write(b"partial")
    writer.abort()
    writer.abort()  # harmless twice
    assert all_files(tmp_path) == []
    with pytest.raises(InputError) as info:
        writer.commit()
    assert str(info.value) == f"{tmp_path / 'a.out'}: cannot commit an aborted output"


def test_exception_inside_the_with_block_aborts_and_propagates(tmp_path):
    with pytest.raises(ZeroDivisionError), sources.open_write(str(tmp_path / "a.out")) as writer:
        writer.write(b"partial")
        _ = 1 / 0
    assert all_files(tmp_path) == []


def test_clean_with_block_commits_and_later_abort_is_a_no_op(tmp_path):
    with sources.open_write(str(tmp_path / "a.out")) as writer:
        writer.write(b"done")
    writer.abort()
    assert all_files(tmp_path) == ["a.out"]
    assert (tmp_path / "a.out").read_bytes() == b"done"


def test_replacing_an_existing_output_keeps_the_old_one_until_commit(tmp_path):
    target = tmp_path / "a.out"
    target.write_bytes(b"old")
    writer = sources.open_write(str(target))
    writer.write(b"new")
    assert target.read_bytes() == b"old"
    writer.commit()
    assert target.read_bytes() == b"new"
    assert all_files(tmp_path) == ["a.out"]


def test_writing_below_a_regular_file_is_an_input_error(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    target = str(tmp_path / "f" / "a.out")
    with pytest.raises(InputError) as info:
        sources.open_write(target)
    assert str(info.value) == f"cannot write {target}: File exists"


def test_write_atomic_writes_small_files(tmp_path):
    sources.write_atomic(str(tmp_path / "out" / "_SUCCESS"), b'{"ok": true}')
    assert all_files(tmp_path) == ["out/_SUCCESS"]
    assert (tmp_path / "out" / "_SUCCESS").read_bytes() == b'{"ok": true}'


# ---------------------------------------------------------------- reading and sizes


def test_opening_a_missing_input_is_an_input_error(tmp_path):
    missing = str(tmp_path / "nope.jsonl.gz")
    with pytest.raises(InputError) as info:
        sources.open_read(missing)
    assert str(info.value) == f"input not found: {missing}"


def test_size_of_a_file_and_of_what_is_not_one(tmp_path):
    (tmp_path / "a.out").write_bytes(b"")
    (tmp_path / "b.out").write_bytes(b"123")
    assert sources.size(str(tmp_path / "a.out")) == 0
    assert sources.size(str(tmp_path / "b.out")) == 3
    assert sources.size(str(tmp_path / "c.out")) is None
    assert sources.size(str(tmp_path)) is None


def test_unreadable_input_is_an_input_error(tmp_path):
    with pytest.raises(InputError) as info:
        sources.open_read(str(tmp_path))
    assert str(info.value) == f"cannot read {tmp_path}: Is a directory"


def test_a_quoted_home_folder_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "a.jsonl").write_bytes(b"1\n")
    with sources.open_read("~/a.jsonl") as stream:
        assert stream.read() == b"1\n"


def test_list_outputs_looks_through_symlinked_folders_and_survives_loops(tmp_path):
    make_files(tmp_path / "elsewhere", {"a.jsonl.out": b"1", "deep/b.jsonl.out": b"2"})
    make_files(tmp_path / "out", {"c.jsonl.out": b"3"})
    (tmp_path / "out" / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "out" / "twin").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "out", target_is_directory=True)
    (tmp_path / "out" / "self").symlink_to(".", target_is_directory=True)

    assert sources.list_outputs(str(tmp_path / "out")) == {
        "c.jsonl.out",
        "sub/a.jsonl.out",
        "sub/deep/b.jsonl.out",
        "twin/a.jsonl.out",
        "twin/deep/b.jsonl.out",
    }


def test_abort_never_raises_when_the_temp_file_cannot_be_removed(tmp_path, monkeypatch):
    writer = sources.open_write(str(tmp_path / "a.out"))
    writer.write(b"partial")

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)

    monkeypatch.setattr(os, "unlink", read_only)
    writer.abort()

    assert not (tmp_path / "a.out").exists()


def test_delete_removes_a_file_and_a_missing_one_is_no_error(tmp_path):
    path = tmp_path / "_PROGRESS"
    path.write_text("{}")
    sources.delete(str(path))
    assert not path.exists()
    sources.delete(str(path))  # already gone
    assert sorted(os.listdir(tmp_path)) == []


def test_delete_of_a_folder_names_it(tmp_path):
    with pytest.raises(InputError, match=rf"^cannot remove {tmp_path}: Is a directory$"):
        sources.delete(str(tmp_path))
