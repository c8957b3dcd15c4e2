"""sources.py without a server: local listing, output paths, atomic writers, manifests, errors."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import subprocess
import sys
import textwrap

import botocore.exceptions
import pytest
import zstandard

from o2v_batch import io as sources
from o2v_batch.errors import InputError, UnsafePathError
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
        {"a.jsonl": b"1", "out/a.jsonl.out": b"2", "outside.jsonl": b"3", "out2/b.jsonl": b"4"},
    )
    (tmp_path / "in" / "sub").mkdir()
    output = spelling.format(**{"in": tmp_path / "in"})

    shards = sources.list_shards(str(tmp_path / "in"), output)

    assert rels(shards) == ["a.jsonl", "out2/b.jsonl", "outside.jsonl"]


def test_output_folder_reached_through_a_relative_path_is_excluded(tmp_path, monkeypatch):
    make_files(tmp_path / "in", {"a.jsonl": b"1", "out/a.jsonl.out": b"2"})
    monkeypatch.chdir(tmp_path / "in")
    assert rels(sources.list_shards(str(tmp_path / "in"), "out")) == ["a.jsonl"]


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


def test_stdin_is_one_shard_of_unknown_size():
    assert sources.list_shards("-", "-") == [Shard("-", "-", -1)]


# ---------------------------------------------------------------- output paths


@pytest.mark.parametrize(
    ("output", "rel", "expected"),
    [
        ("out", "a.jsonl", "out/a.jsonl.out"),
        ("out/", "a.jsonl", "out/a.jsonl.out"),
        ("out//", "x/y.json", "out/x/y.json.out"),
        ("/abs/out", "a.jsonl.gz", "/abs/out/a.jsonl.gz.out"),
        ("s3://b/p/", "x/y.jsonl", "s3://b/p/x/y.jsonl.out"),
        ("s3://b/p", "x/y.jsonl", "s3://b/p/x/y.jsonl.out"),
        ("s3://b/", "a", "s3://b/a.out"),
        ("out", "a..b/...c", "out/a..b/...c.out"),
        ("out", "-", "out/-.out"),
        ("-", "a.jsonl", "-"),
    ],
)
def test_output_uri_mirrors_the_relative_path(output, rel, expected):
    assert sources.output_uri(output, rel) == expected


@pytest.mark.parametrize(
    ("rel", "reason"),
    [
        ("../a.jsonl", "'..' segment"),
        ("a/../../b", "'..' segment"),
        ("a/..", "'..' segment"),
        ("/etc/passwd", "absolute path"),
        ("C:/x.jsonl", "drive letter"),
        ("c:x.jsonl", "drive letter"),
        ("a\\..\\b", "backslash"),
        ("a\0b", "NUL character"),
        ("", "empty path"),
        ("s3://other/key", "absolute URI"),
    ],
)
def test_output_uri_refuses_paths_that_could_escape(rel, reason):
    with pytest.raises(UnsafePathError) as info:
        sources.output_uri("s3://b/out/", rel)
    assert (
        str(info.value)
        == f"refusing output path for {rel!r} ({reason}): it could escape s3://b/out/"
    )


# ---------------------------------------------------------------- atomic local writer


def all_files(root) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir())


def test_commit_publishes_the_whole_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "new" / "deep" / "a.jsonl.out"
    writer = sources.open_output(str(target))
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
    writer = sources.open_output(str(tmp_path / "a.out"))
    writer.write(b"partial")
    writer.abort()
    writer.abort()  # harmless twice
    assert all_files(tmp_path) == []
    with pytest.raises(InputError) as info:
        writer.commit()
    assert str(info.value) == f"{tmp_path / 'a.out'}: cannot commit an aborted output"


def test_exception_inside_the_with_block_aborts_and_propagates(tmp_path):
    with pytest.raises(ZeroDivisionError), sources.open_output(str(tmp_path / "a.out")) as writer:
        writer.write(b"partial")
        _ = 1 / 0
    assert all_files(tmp_path) == []


def test_clean_with_block_commits_and_later_abort_is_a_no_op(tmp_path):
    with sources.open_output(str(tmp_path / "a.out")) as writer:
        writer.write(b"done")
    writer.abort()
    assert all_files(tmp_path) == ["a.out"]
    assert (tmp_path / "a.out").read_bytes() == b"done"


def test_replacing_an_existing_output_keeps_the_old_one_until_commit(tmp_path):
    target = tmp_path / "a.out"
    target.write_bytes(b"old")
    writer = sources.open_output(str(target))
    writer.write(b"new")
    assert target.read_bytes() == b"old"
    writer.commit()
    assert target.read_bytes() == b"new"
    assert all_files(tmp_path) == ["a.out"]


def test_writing_below_a_regular_file_is_an_input_error(tmp_path):
    (tmp_path / "f").write_bytes(b"")
    target = str(tmp_path / "f" / "a.out")
    with pytest.raises(InputError) as info:
        sources.open_output(target)
    assert str(info.value) == f"cannot write {target}: File exists"


def test_write_atomic_writes_small_files(tmp_path):
    sources.write_atomic(str(tmp_path / "out" / "_SUCCESS"), b'{"ok": true}')
    assert all_files(tmp_path) == ["out/_SUCCESS"]
    assert (tmp_path / "out" / "_SUCCESS").read_bytes() == b'{"ok": true}'


# ---------------------------------------------------------------- stdout


def test_stdout_shows_only_committed_shards(capsysbinary):
    big = b"x" * (sources.STDOUT_SPOOL_BYTES + 123)  # spills to disk
    first = sources.open_output("-")
    first.write(b"one\n")
    assert capsysbinary.readouterr().out == b""
    first.commit()
    with pytest.raises(RuntimeError), sources.open_output("-") as failed:
        failed.write(b"half of a shard\n")
        raise RuntimeError
    sources.write_atomic("-", big)
    assert capsysbinary.readouterr().out == b"one\n" + big


def test_stdout_writer_in_a_real_process():
    script = textwrap.dedent(
        """
        from o2v_batch import io as sources
        w = sources.open_output("-")
        w.write(b"partial")
        w.abort()
        sources.write_atomic("-", b"a\\n")
        w = sources.open_output("-")
        w.write(b"b\\n")
        w.commit()
        w = sources.open_output("-")
        w.write(b"never")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, check=True)
    assert done.stdout == b"a\nb\n"


# ---------------------------------------------------------------- reading


LINES = b"".join(b'{"in0": [%d, %d, 3]}\n' % (i, i * 7 % 1000) for i in range(20000))


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("a.jsonl", lambda data: data),
        ("a.jsonl.gz", gzip.compress),
        ("a.jsonl.bz2", bz2.compress),
        ("a.jsonl.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
    ],
)
def test_compressed_inputs_read_back_as_the_original_bytes(tmp_path, name, compress):
    (tmp_path / name).write_bytes(compress(LINES))
    with sources.open_input(str(tmp_path / name)) as stream:
        chunks = iter(lambda: stream.read(65536), b"")
        assert b"".join(chunks) == LINES


def test_stdin_is_read_as_bytes(monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b'{"in0": [1]}\n')))
    assert sources.open_input("-").read() == b'{"in0": [1]}\n'


def test_opening_a_missing_input_is_an_input_error(tmp_path):
    missing = str(tmp_path / "nope.jsonl.gz")
    with pytest.raises(InputError) as info:
        sources.open_input(missing)
    assert str(info.value) == f"input not found: {missing}"


def test_exists_locally(tmp_path):
    (tmp_path / "a.out").write_bytes(b"")
    assert sources.exists(str(tmp_path / "a.out"))
    assert not sources.exists(str(tmp_path / "b.out"))
    assert not sources.exists("-")


# ---------------------------------------------------------------- manifests


def write_manifest(tmp_path, document) -> str:
    path = tmp_path / "input.manifest"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


@pytest.mark.parametrize("slash", ["/", ""])
def test_manifest_lists_its_entries_in_its_own_order(tmp_path, slash):
    make_files(tmp_path / "data", {"z.jsonl": b"1", "sub/a.jsonl": b"22", "other.jsonl": b"x"})
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
    make_files(tmp_path, {"a.jsonl": b"1"})
    manifest = write_manifest(tmp_path, [{"prefix": str(tmp_path)}, "a.jsonl", "a.jsonl"])
    with pytest.raises(InputError) as info:
        sources.list_shards(manifest, manifest=True)
    assert str(info.value) == f"{manifest}: duplicate manifest entry 'a.jsonl'"


def test_manifest_entry_that_does_not_exist_is_named(tmp_path):
    make_files(tmp_path, {"a.jsonl": b"1"})
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


# ---------------------------------------------------------------- S3 helpers that need no server


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://b/k", ("b", "k")),
        ("s3://b/p/k.jsonl", ("b", "p/k.jsonl")),
        ("s3://b/p/", ("b", "p/")),
        ("s3://b", ("b", "")),
    ],
)
def test_split_s3(uri, expected):
    assert sources.is_s3(uri)
    assert sources.split_s3(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "/local/path", "S3://b/k"])
def test_split_s3_refuses_non_s3_uris(uri):
    with pytest.raises(InputError) as info:
        sources.split_s3(uri)
    assert str(info.value) == f"not an s3://bucket/key URI: {uri}"


def client_error(code: str, status: int) -> botocore.exceptions.ClientError:
    response = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, "GetObject")


SIGNED = "http://user:pw@127.0.0.1:9/b/k?X-Amz-Credential=AKIDEXAMPLE&X-Amz-Signature=abc"


@pytest.mark.parametrize(
    ("exc", "message"),
    [
        (client_error("NoSuchKey", 404), "s3://b/k: not found (404)"),
        (client_error("404", 404), "s3://b/k: not found (404)"),
        (client_error("NoSuchBucket", 404), "s3://b/k: bucket b does not exist (404)"),
        (client_error("AccessDenied", 403), "s3://b/k: access denied (403)"),
        (
            client_error("InvalidAccessKeyId", 403),
            "s3://b/k: access denied (403, InvalidAccessKeyId)",
        ),
        (client_error("SlowDown", 503), "s3://b/k: S3 error SlowDown (503)"),
        (
            botocore.exceptions.EndpointConnectionError(
                endpoint_url=SIGNED, error=ConnectionRefusedError(111, "Connection refused")
            ),
            "cannot reach the S3 endpoint http://127.0.0.1:9 (connection refused)",
        ),
        (
            botocore.exceptions.ReadTimeoutError(endpoint_url=SIGNED, error=TimeoutError()),
            "cannot reach the S3 endpoint http://127.0.0.1:9 (read timed out)",
        ),
        (
            botocore.exceptions.ProxyConnectionError(
                proxy_url="http://user:secret@proxy:3128", error=ConnectionRefusedError()
            ),
            "cannot reach the proxy http://proxy:3128 (connection refused)",
        ),
        (
            botocore.exceptions.NoCredentialsError(),
            "s3://b/k: no AWS credentials found (set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or use an instance role)",
        ),
        # Not a botocore error: described as it is.
        (OSError("unable to access bucket"), "s3://b/k: OSError: unable to access bucket"),
        # Already one of ours, with its own message.
        (InputError("s3://b/k: access denied (403)"), "s3://b/k: access denied (403)"),
    ],
)
def test_describe_s3_error(exc, message):
    assert sources.describe_s3_error(exc, "s3://b/k") == message


def test_describe_s3_error_sees_through_smart_open_wrappers():
    inner = client_error("NoSuchKey", 404)
    try:
        try:
            raise inner
        except botocore.exceptions.ClientError as error:
            raise ValueError("the bucket 'b' does not exist, or is forbidden") from error
    except ValueError as wrapped:
        assert sources.describe_s3_error(wrapped, "s3://b/k") == "s3://b/k: not found (404)"


def test_describe_s3_error_never_shows_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecretkey")
    exc = botocore.exceptions.ParamValidationError(
        report=f"key AKIDSECRETID secret verysecretkey url {SIGNED}"
    )
    assert sources.describe_s3_error(exc, "s3://b/k") == (
        "s3://b/k: ParamValidationError: Parameter validation failed: "
        "key *** secret *** url http://127.0.0.1:9/b/k"
    )


def test_s3_client_is_cached_and_follows_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = sources.s3_client()
    assert sources.s3_client() is client
    assert client.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.meta.config.retries["total_max_attempts"] == 7
    assert client.meta.config.retries["mode"] == "standard"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert sources.s3_client().meta.endpoint_url == "http://127.0.0.1:2"


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("AWS_MAX_ATTEMPTS", "many", "AWS_MAX_ATTEMPTS must be a whole number, not 'many'"),
        ("O2V_S3_PART_SIZE", "5MB", "O2V_S3_PART_SIZE must be a number of bytes, not '5MB'"),
    ],
)
def test_bad_settings_are_input_errors(monkeypatch, name, value, message):
    monkeypatch.setenv(name, value)
    with pytest.raises(InputError) as info:
        sources.open_output("s3://b/k.out")
    assert str(info.value) == message
