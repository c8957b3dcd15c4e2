"""The face of o2v_batch.io: the registry of transports, and output paths."""

from __future__ import annotations

import io
import subprocess
import sys
import textwrap
import types

import pytest

from o2v_batch import io as sources
from o2v_batch.errors import InputError, UnsafePathError
from o2v_batch.io import base

# ---------------------------------------------------------------- the registry


@pytest.mark.parametrize(
    "call",
    [
        lambda uri: sources.list_shards(uri),
        sources.size,
        sources.open_read,
        sources.open_write,
        lambda uri: sources.discard_partial([uri]),
    ],
    ids=["list_shards", "size", "open_read", "open_write", "discard_partial"],
)
def test_an_unknown_scheme_is_refused_by_name(call):
    with pytest.raises(InputError) as info:
        call("gs://bucket/a.jsonl")
    assert str(info.value) == (
        "gs://bucket/a.jsonl: unsupported scheme gs:// (use a local path, - or s3://)"
    )


@pytest.mark.parametrize(
    ("uri", "scheme", "remote"),
    [
        ("model", "", False),
        ("/abs/model.tar.gz", "", False),
        ("~/model", "", False),
        ("a/b://c", "", False),
        ("-", "-", False),
        ("s3://b/model/", "s3", True),
        ("gs://b/model/", "gs", True),  # nothing on this machine reaches it either
    ],
)
def test_each_uri_has_the_transport_of_its_scheme(uri, scheme, remote):
    transport = sources.transport_for(uri)
    assert (scheme, remote) == (transport.SCHEME, transport.REMOTE)


def test_a_registered_transport_serves_its_scheme(monkeypatch):
    """A transport is a module with the face of io.base.Transport; registering it routes
    its scheme to it, and it describes its own errors."""
    memory = types.ModuleType("memory")
    memory.SCHEME, memory.REMOTE = "mem", True
    memory.open_read = lambda uri: io.BytesIO(uri.encode())
    memory.describe_error = lambda exc, uri: f"{uri}: lost in memory"
    monkeypatch.setattr(base, "_TRANSPORTS", dict(base._TRANSPORTS))
    base.register_transport(memory)

    assert sources.open_read("mem://a/b").read() == b"mem://a/b"
    assert sources.describe_error(OSError(), "mem://a/b") == "mem://a/b: lost in memory"
    with pytest.raises(InputError, match=r"\(use a local path, - or mem://, s3://\)$"):
        sources.size("gs://bucket/a.jsonl")


def test_describing_a_local_failure_never_loads_botocore(tmp_path):
    """Each transport describes its own errors: a local one needs nothing of S3's."""
    code = textwrap.dedent(
        f"""
        import sys
        from o2v_batch import io
        from o2v_batch.errors import InputError
        print(io.describe_error(OSError(28, "No space left on device"), {str(tmp_path)!r}))
        try:
            io.open_read({str(tmp_path / "missing.jsonl")!r})
        except InputError as error:
            print(io.describe_error(error, {str(tmp_path / "missing.jsonl")!r}))
        print(io.describe_error(ValueError("bad"), "-"))
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("botocore", "boto3", "smart_open")))
        """
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.splitlines() == [
        f"{tmp_path}: OSError: [Errno 28] No space left on device",
        f"input not found: {tmp_path / 'missing.jsonl'}",
        "-: ValueError: bad",
        "[]",
    ]


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


def test_output_uri_takes_another_suffix():
    assert sources.output_uri("s3://b/p/", "x/y.jsonl", suffix=".err") == "s3://b/p/x/y.jsonl.err"
    assert sources.output_uri("out", "a.jsonl", suffix="") == "out/a.jsonl"
    assert sources.output_uri("-", "a.jsonl", suffix=".err") == "-"
