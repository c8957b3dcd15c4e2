"""The face of o2v_batch.io: the registry, output paths, decompression, error
descriptions, and the S3 transport's parts that need no server."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma

import botocore.exceptions
import pytest
import zstandard

from o2v_batch import io as sources
from o2v_batch.errors import InputError, UnsafePathError
from o2v_batch.io import s3
from o2v_batch.io.compression import decompressed

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
    ("uri", "local"),
    [
        ("model", True),
        ("/abs/model.tar.gz", True),
        ("~/model", True),
        ("a/b://c", True),
        ("-", True),
        ("s3://b/model/", False),
        ("gs://b/model/", False),
    ],
)
def test_is_local(uri, local):
    assert sources.is_local(uri) is local


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


# ---------------------------------------------------------------- decompression


LINES = b"".join(b'{"in0": [%d, %d, 3]}\n' % (i, i * 7 % 1000) for i in range(20000))


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("a.jsonl", lambda data: data),
        ("a.jsonl.gz", gzip.compress),
        ("a.jsonl.bz2", bz2.compress),
        ("a.jsonl.xz", lzma.compress),
        ("A.JSONL.GZ", gzip.compress),
        ("a.jsonl.zst", lambda data: zstandard.ZstdCompressor().compress(data)),
    ],
)
def test_compressed_inputs_read_back_as_the_original_bytes(tmp_path, name, compress):
    (tmp_path / name).write_bytes(compress(LINES))
    with sources.open_read(str(tmp_path / name)) as stream:
        chunks = iter(lambda: stream.read(65536), b"")
        assert b"".join(chunks) == LINES


def test_decompress_false_reads_the_stored_bytes(tmp_path):
    stored = gzip.compress(LINES)
    (tmp_path / "model.tar.gz").write_bytes(stored)
    with sources.open_read(str(tmp_path / "model.tar.gz"), decompress=False) as stream:
        assert stream.read() == stored


def test_closing_a_decompressed_stream_closes_the_compressed_one():
    compressed = io.BytesIO(gzip.compress(b"x\n"))
    stream = decompressed(compressed, "s3://b/a.jsonl.gz")
    assert stream.readline() == b"x\n"
    stream.close()
    assert compressed.closed


COMPRESSORS = {
    "gzip": (".gz", gzip.compress),
    "bz2": (".bz2", bz2.compress),
    "xz": (".xz", lzma.compress),
    # With its checksum, as the zstd command writes it: without one zstd may not notice.
    "zstd": (".zst", lambda data: zstandard.ZstdCompressor(write_checksum=True).compress(data)),
}


def read_all(data: bytes | io.BytesIO, uri: str) -> bytes:
    source = data if isinstance(data, io.BytesIO) else io.BytesIO(data)
    with decompressed(source, uri) as stream:
        return b"".join(iter(lambda: stream.read(65536), b""))


@pytest.mark.parametrize("kind", sorted(COMPRESSORS))
def test_damaged_compressed_input_is_named_in_words(kind):
    extension, compress = COMPRESSORS[kind]
    uri = f"s3://b/in/a.jsonl{extension}"
    packed = compress(LINES)
    middle = len(packed) // 2
    with pytest.raises(InputError) as caught:
        read_all(packed[:middle], uri)
    assert str(caught.value) == f"{uri}: {kind} stream ends early"
    flipped = packed[:middle] + bytes(b ^ 0x55 for b in packed[middle : middle + 64])
    with pytest.raises(InputError) as caught:
        read_all(flipped + packed[middle + 64 :], uri)
    assert str(caught.value) == f"{uri}: corrupt {kind} data"
    with pytest.raises(InputError) as caught:
        read_all(LINES, uri)  # not compressed at all
    assert str(caught.value) == f"{uri}: corrupt {kind} data"


def test_zstd_frames_one_after_another_read_as_one_stream():
    """As pzstd and `cat a.zst b.zst` write them; a frame cut short is still caught."""
    compressor = zstandard.ZstdCompressor()
    frames = [compressor.compress(LINES[i : i + 70000]) for i in range(0, len(LINES), 70000)]
    assert len(frames) > 3
    assert read_all(b"".join(frames), "a.jsonl.zst") == LINES
    with pytest.raises(InputError, match=r"^a\.jsonl\.zst: zstd stream ends early$"):
        read_all(b"".join(frames)[:-3], "a.jsonl.zst")


def test_a_failing_read_of_the_compressed_stream_is_not_called_corrupt():
    class Failing(io.BytesIO):
        def read(self, size=-1):
            raise ConnectionResetError(104, "Connection reset by peer")

    for extension, _ in COMPRESSORS.values():
        with pytest.raises(ConnectionResetError):
            read_all(Failing(), f"a.jsonl{extension}")


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
    assert s3.is_s3(uri)
    assert s3.split_s3(uri) == expected


@pytest.mark.parametrize("uri", ["s3://", "s3:///key", "/local/path", "S3://b/k"])
def test_split_s3_refuses_non_s3_uris(uri):
    with pytest.raises(InputError) as info:
        s3.split_s3(uri)
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
def test_describe_error(exc, message):
    assert sources.describe_error(exc, "s3://b/k") == message


def test_describe_error_sees_through_smart_open_wrappers():
    inner = client_error("NoSuchKey", 404)
    try:
        try:
            raise inner
        except botocore.exceptions.ClientError as error:
            raise ValueError("the bucket 'b' does not exist, or is forbidden") from error
    except ValueError as wrapped:
        assert sources.describe_error(wrapped, "s3://b/k") == "s3://b/k: not found (404)"


def test_describe_error_never_shows_secrets(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDSECRETID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "verysecretkey")
    exc = botocore.exceptions.ParamValidationError(
        report=f"key AKIDSECRETID secret verysecretkey url {SIGNED}"
    )
    assert sources.describe_error(exc, "s3://b/k") == (
        "s3://b/k: ParamValidationError: Parameter validation failed: "
        "key *** secret *** url http://127.0.0.1:9/b/k"
    )


def test_s3_client_is_cached_and_follows_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "7")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    client = s3.s3_client()
    assert s3.s3_client() is client
    assert client.meta.endpoint_url == "http://127.0.0.1:1"
    assert client.meta.config.retries["total_max_attempts"] == 7
    assert client.meta.config.retries["mode"] == "standard"
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:2")
    assert s3.s3_client().meta.endpoint_url == "http://127.0.0.1:2"


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
        sources.open_write("s3://b/k.out")
    assert str(info.value) == message
