"""io/manifest.py: SageMaker manifests, read through any transport."""

from __future__ import annotations

import gzip
import json
import posixpath

import pytest

from o2v_batch import io as sources
from o2v_batch.errors import InputError, UnsafePathError
from o2v_batch.io import Shard


def write_manifest(tmp_path, document) -> str:
    path = tmp_path / "input.manifest"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


@pytest.mark.parametrize("slash", ["/", ""])
def test_manifest_lists_its_entries_in_its_own_order(tmp_path, slash):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    for rel, data in {"z.jsonl": b"1", "sub/a.jsonl": b"22", "other.jsonl": b"x"}.items():
        (tmp_path / "data" / rel).write_bytes(data)
    prefix = str(tmp_path / "data") + slash
    manifest = write_manifest(tmp_path, [{"prefix": prefix}, "z.jsonl", "sub/a.jsonl"])

    shards = sources.list_shards(manifest, manifest=True)

    data = str(tmp_path / "data")
    assert shards == [
        Shard(f"{data}/z.jsonl", "z.jsonl", 1),
        Shard(f"{data}/sub/a.jsonl", "sub/a.jsonl", 2),
    ]


def test_manifest_with_only_a_prefix_has_no_shards(tmp_path):
    assert (
        sources.list_shards(write_manifest(tmp_path, [{"prefix": "s3://b/p/"}]), manifest=True)
        == []
    )


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        ("../secret.jsonl", "'..' segment"),
        ("a/../../b.jsonl", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("s3://other/key.jsonl", "absolute URI"),
        ("C:/x.jsonl", "drive letter"),
        ("a\\b.jsonl", "backslash"),
        ("", "empty path"),
    ],
)
def test_manifest_refuses_unsafe_entries(tmp_path, entry, reason):
    manifest = write_manifest(tmp_path, [{"prefix": str(tmp_path) + "/"}, "ok.jsonl", entry])
    with pytest.raises(UnsafePathError) as info:
        sources.list_shards(manifest, manifest=True)
    assert str(info.value) == f"{manifest}: unsafe manifest entry {entry!r} ({reason})"


NOT_A_LIST = 'expected a JSON list [{"prefix": "s3://bucket/prefix/"}, "relative/path", ...]'
BAD_HEAD = 'the first element must be {"prefix": "<folder or s3://bucket/prefix/>"}'


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "invalid JSON (Expecting value: line 1 column 1 (char 0))"),
        (
            '[{"prefix": "p/"} "a"]',
            "invalid JSON (Expecting ',' delimiter: line 1 column 19 (char 18))",
        ),
        ("{}", NOT_A_LIST),
        ("[]", NOT_A_LIST),
        ('"s3://b/p/a.jsonl"', NOT_A_LIST),
        ('["a.jsonl"]', BAD_HEAD),
        ('[{"prefix": 5}]', BAD_HEAD),
        ('[{"prefix": ""}]', BAD_HEAD),
        ('[{"prefix": "p/", "other": 1}]', BAD_HEAD),
        ('[{"prefix": "p/"}, "a", 5]', "element 2 is not a string: 5"),
        ('[{"prefix": "p/"}, null]', "element 1 is not a string: null"),
        ('[{"prefix": "p/"}, {"prefix": "q/"}]', 'element 1 is not a string: {"prefix": "q/"}'),
    ],
)
def test_malformed_manifest_is_an_input_error(tmp_path, text, problem):
    manifest = write_manifest(tmp_path, text)
    with pytest.raises(InputError) as info:
        sources.list_shards(manifest, manifest=True)
    assert type(info.value) is InputError
    assert str(info.value) == f"{manifest}: not a valid manifest: {problem}"


def test_manifest_refuses_duplicate_entries(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"1")
    manifest = write_manifest(tmp_path, [{"prefix": str(tmp_path)}, "a.jsonl", "a.jsonl"])
    with pytest.raises(InputError) as info:
        sources.list_shards(manifest, manifest=True)
    assert str(info.value) == f"{manifest}: duplicate manifest entry 'a.jsonl'"


def test_manifest_entry_that_does_not_exist_is_named(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"1")
    manifest = write_manifest(tmp_path, [{"prefix": str(tmp_path)}, "a.jsonl", "gone/b.jsonl"])
    with pytest.raises(InputError) as info:
        sources.list_shards(manifest, manifest=True)
    missing = f"{tmp_path}/gone/b.jsonl"
    assert str(info.value) == f"{manifest}: manifest entry 'gone/b.jsonl' not found: {missing}"


def test_missing_manifest_is_an_input_error(tmp_path):
    missing = str(tmp_path / "nope.manifest")
    with pytest.raises(InputError) as info:
        sources.list_shards(missing, manifest=True)
    assert str(info.value) == f"input not found: {missing}"


def test_compressed_manifest_is_read_like_any_input(tmp_path):
    (tmp_path / "a.jsonl").write_bytes(b"1")
    path = tmp_path / "input.manifest.gz"
    path.write_bytes(gzip.compress(json.dumps([{"prefix": str(tmp_path)}, "a.jsonl"]).encode()))
    shards = sources.list_shards(str(path), manifest=True)
    assert shards == [Shard(f"{tmp_path}/a.jsonl", "a.jsonl", 1)]


@pytest.mark.parametrize(
    ("spellings", "shard"),
    [(["sub/./a.jsonl"], "sub/a.jsonl"), (["./sub//a.jsonl", "b.jsonl"], "sub/a.jsonl")],
)
def test_manifest_entries_are_normalised(tmp_path, spellings, shard):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_bytes(b"12")
    (tmp_path / "b.jsonl").write_bytes(b"3")
    manifest = write_manifest(tmp_path, [{"prefix": str(tmp_path)}, *spellings])

    shards = sources.list_shards(manifest, manifest=True)

    assert shards[0] == Shard(f"{tmp_path}/{shard}", shard, 2)
    assert [s.rel for s in shards] == [posixpath.normpath(s) for s in spellings]


@pytest.mark.parametrize("other", ["sub/./a.jsonl", "sub//a.jsonl", "./sub/a.jsonl"])
def test_manifest_refuses_two_spellings_of_one_shard(tmp_path, other):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.jsonl").write_bytes(b"1")
    manifest = write_manifest(tmp_path, [{"prefix": str(tmp_path)}, "sub/a.jsonl", other])
    with pytest.raises(InputError) as info:
        sources.list_shards(manifest, manifest=True)
    assert str(info.value) == (
        f"{manifest}: manifest entries 'sub/a.jsonl' and {other!r} name the same shard"
    )
