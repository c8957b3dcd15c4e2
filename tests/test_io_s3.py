"""io/s3.py against a real S3 server (SeaweedFS on loopback)."""

from __future__ import annotations

import concurrent.futures
import gzip
import json
import os
import socket

import pytest

from o2v_batch import io as sources
from o2v_batch.errors import InputError
from o2v_batch.io import Shard

pytestmark = pytest.mark.s3

MiB = 2**20


@pytest.fixture
def s3(s3_server):
    """A boto3 client independent of the code under test."""
    return s3_server.client()


def put_all(s3, bucket: str, objects: dict[str, bytes]) -> None:
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        list(
            pool.map(
                lambda kv: s3.put_object(Bucket=bucket, Key=kv[0], Body=kv[1]), objects.items()
            )
        )


def test_lists_more_than_a_thousand_keys(s3, s3_bucket):
    keys = {f"in/part-{i:05d}.jsonl": str(i).encode() for i in range(1234)}
    put_all(s3, s3_bucket, keys)

    shards = sources.list_shards(f"s3://{s3_bucket}/in/")

    assert len(shards) == 1234
    assert shards == [
        Shard(f"s3://{s3_bucket}/{key}", key.removeprefix("in/"), len(body))
        for key, body in sorted(keys.items())
    ]


TREE = {
    "in/a.jsonl": b"1",
    "in/sub/b.jsonl.gz": b"22",
    "in/sub/": b"",  # folder marker
    "in/_SUCCESS": b"{}",
    "in/.hidden": b"x",
    "in/_temporary/0/part.jsonl": b"x",
    "in/out/a.jsonl": b"x",
    "in/outside.jsonl": b"333",
    "in_old/c.jsonl": b"4444",
    "in2.jsonl": b"x",
}


@pytest.fixture(scope="module")
def tree_bucket(s3_server) -> str:
    """A bucket holding TREE, shared by the read-only listing tests."""
    bucket = "tree-" + os.urandom(6).hex()
    s3_server.client().create_bucket(Bucket=bucket)
    put_all(s3_server.client(), bucket, TREE)
    return bucket


@pytest.mark.parametrize("input_spelling", ["in/", "in"])
@pytest.mark.parametrize("output_spelling", ["in/out/", "in/out", "in/out//"])
def test_folder_semantics(tree_bucket, input_spelling, output_spelling):
    shards = sources.list_shards(
        f"s3://{tree_bucket}/{input_spelling}", f"s3://{tree_bucket}/{output_spelling}"
    )

    assert [(s.rel, s.size) for s in shards] == [
        ("a.jsonl", 1),
        ("outside.jsonl", 3),
        ("sub/b.jsonl.gz", 2),
    ]
    assert shards[0].uri == f"s3://{tree_bucket}/in/a.jsonl"


@pytest.mark.parametrize("output", ["s3://other-bucket/in/out/", "s3://{b}/", "/tmp/in/out", "-"])
def test_output_in_another_bucket_or_outside_excludes_nothing(tree_bucket, output):
    shards = sources.list_shards(f"s3://{tree_bucket}/in/", output.format(b=tree_bucket))
    assert [s.rel for s in shards] == [
        "a.jsonl",
        "out/a.jsonl",
        "outside.jsonl",
        "sub/b.jsonl.gz",
    ]


def test_outputs_of_earlier_jobs_are_never_input(s3, s3_bucket):
    put_all(
        s3,
        s3_bucket,
        {
            "in/_SUCCESS": b"{}",
            "in/a.jsonl": b"1",
            "in/a.jsonl.out": b"x",
            "in/old/_SUCCESS": b"{}",
            "in/old/b.jsonl": b"x",
            "in/old/deeper/c.jsonl": b"x",
            "in/node/_SUCCESS.1-of-2": b"{}",
            "in/node/d.jsonl": b"x",
            "in/keep/e.jsonl": b"22",
            "in/keep/e.jsonl.out": b"x",
            "in/keep/_SUCCESS_notes": b"x",  # not a summary: keep/ is still read
            "in/tables.out/g.jsonl": b"333",
            "in/olden/h.jsonl": b"4444",  # shares a prefix with old/, holds no _SUCCESS
        },
    )
    shards = sources.list_shards(f"s3://{s3_bucket}/in/")
    assert [(s.rel, s.size) for s in shards] == [
        ("a.jsonl", 1),
        ("keep/e.jsonl", 2),
        ("olden/h.jsonl", 4),
        ("tables.out/g.jsonl", 3),
    ]


def test_list_outputs_sees_every_visible_object_below_output(s3, s3_bucket):
    put_all(
        s3,
        s3_bucket,
        {
            "out/": b"",
            "out/_SUCCESS": b"{}",
            "out/a.jsonl.out": b"1",
            "out/sub/_SUCCESS": b"{}",
            "out/sub/b.jsonl.out": b"2",
            "outside/c.jsonl.out": b"3",
        },
    )
    expected = {"a.jsonl.out", "sub/b.jsonl.out"}
    assert sources.list_outputs(f"s3://{s3_bucket}/out/") == expected
    assert sources.list_outputs(f"s3://{s3_bucket}/out") == expected
    assert sources.list_outputs(f"s3://{s3_bucket}/missing/") == set()


def test_prefix_without_slash_naming_an_object_is_that_object(s3, s3_bucket):
    put_all(s3, s3_bucket, {"data": b"12", "data/inner.jsonl": b"x", "in_old/c.jsonl": b"4444"})
    assert sources.list_shards(f"s3://{s3_bucket}/data") == [
        Shard(f"s3://{s3_bucket}/data", "data", 2)
    ]
    assert sources.list_shards(f"s3://{s3_bucket}/in_old/c.jsonl") == [
        Shard(f"s3://{s3_bucket}/in_old/c.jsonl", "c.jsonl", 4)
    ]


def test_folder_with_only_a_marker_is_empty_and_a_missing_one_is_an_error(s3, s3_bucket):
    put_all(s3, s3_bucket, {"empty/": b"", "in_old/c.jsonl": b"1"})
    assert sources.list_shards(f"s3://{s3_bucket}/empty") == []
    with pytest.raises(InputError) as info:
        sources.list_shards(f"s3://{s3_bucket}/in")
    assert str(info.value) == f"input not found: s3://{s3_bucket}/in"


def test_missing_bucket_is_named(s3_server):
    with pytest.raises(InputError) as info:
        sources.list_shards("s3://no-such-bucket-o2v/in/")
    assert (
        str(info.value)
        == "s3://no-such-bucket-o2v/in/: bucket no-such-bucket-o2v does not exist (404)"
    )


def test_multipart_write_reads_back_equal(s3, s3_bucket, monkeypatch):
    monkeypatch.setenv("O2V_S3_PART_SIZE", str(5 * MiB))
    data = os.urandom(11 * MiB + 12345)
    uri = f"s3://{s3_bucket}/out/big.jsonl.out"

    with sources.open_write(uri) as writer:
        for start in range(0, len(data), MiB - 1):
            writer.write(data[start : start + MiB - 1])
            assert sources.size(uri) is None  # nothing visible before commit

    head = s3.head_object(Bucket=s3_bucket, Key="out/big.jsonl.out")
    assert head["ContentLength"] == len(data)
    assert head["ETag"].strip('"').endswith("-3")  # three parts: 5 + 5 + 1 MiB
    assert s3.get_object(Bucket=s3_bucket, Key="out/big.jsonl.out")["Body"].read() == data
    with sources.open_read(uri) as stream:
        assert stream.read() == data


@pytest.mark.parametrize("how", ["abort", "exception"])
def test_aborted_write_leaves_no_object_and_no_upload(s3, s3_bucket, monkeypatch, how):
    monkeypatch.setenv("O2V_S3_PART_SIZE", str(5 * MiB))
    uri = f"s3://{s3_bucket}/out/a.jsonl.out"
    writer = sources.open_write(uri)
    writer.write(os.urandom(6 * MiB))  # one part is already uploaded
    assert s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    if how == "abort":
        writer.abort()
    else:
        with pytest.raises(KeyError), writer:
            raise KeyError("boom")

    assert not s3.list_multipart_uploads(Bucket=s3_bucket).get("Uploads")
    assert sources.size(uri) is None
    assert "Contents" not in s3.list_objects_v2(Bucket=s3_bucket)


def test_discard_partial_says_what_it_could_not_abort(s3_server, caplog):
    """Best effort, so no job fails on it; but a leftover upload's parts stay billed."""
    sources.discard_partial(["s3://no-such-bucket-o2v/out/a.jsonl.out"])

    (record,) = caplog.records
    assert record.levelname == "WARNING"
    assert record.getMessage() == (
        "o2v-batch: could not abort the uploads a stopped run may have left open, whose "
        "parts stay stored (and billed) until a later run or an S3 lifecycle rule aborts "
        "them: s3://no-such-bucket-o2v/out/a.jsonl.out: bucket no-such-bucket-o2v does "
        "not exist (404)"
    )
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in record.getMessage()


def test_empty_output_and_small_files(s3, s3_bucket):
    with sources.open_write(f"s3://{s3_bucket}/out/empty.jsonl.out"):
        pass
    sources.write_atomic(f"s3://{s3_bucket}/out/_SUCCESS", b'{"shards_ok": 1}')
    assert s3.get_object(Bucket=s3_bucket, Key="out/empty.jsonl.out")["Body"].read() == b""
    assert s3.get_object(Bucket=s3_bucket, Key="out/_SUCCESS")["Body"].read() == b'{"shards_ok": 1}'


def test_size(s3, s3_bucket):
    put_all(s3, s3_bucket, {"out/a.jsonl.out": b"x"})
    assert sources.size(f"s3://{s3_bucket}/out/a.jsonl.out") == 1
    assert sources.size(f"s3://{s3_bucket}/out/b.jsonl.out") is None
    assert sources.size(f"s3://{s3_bucket}/out/a.jsonl") is None
    assert sources.size(f"s3://{s3_bucket}/") is None  # a bucket is no object


def test_compressed_object_is_streamed_back(s3, s3_bucket):
    lines = b"".join(b'{"in0": [%d]}\n' % i for i in range(50000))
    put_all(s3, s3_bucket, {"in/a.jsonl.gz": gzip.compress(lines)})
    with sources.open_read(f"s3://{s3_bucket}/in/a.jsonl.gz") as stream:
        assert stream.readline() == b'{"in0": [0]}\n'
        assert stream.read() == lines[len(b'{"in0": [0]}\n') :]


def test_missing_object_is_input_not_found(s3_bucket):
    with pytest.raises(InputError) as info:
        sources.open_read(f"s3://{s3_bucket}/nope.jsonl")
    assert str(info.value) == f"input not found: s3://{s3_bucket}/nope.jsonl"


def test_manifest_on_s3(s3, s3_bucket):
    data = {"data/z.jsonl": b"1", "data/sub/a.jsonl": b"22", "data/unlisted.jsonl": b"x"}
    manifest = [{"prefix": f"s3://{s3_bucket}/data/"}, "z.jsonl", "sub/a.jsonl"]
    put_all(s3, s3_bucket, {**data, "m/input.manifest": json.dumps(manifest).encode()})

    shards = sources.list_shards(f"s3://{s3_bucket}/m/input.manifest", manifest=True)

    assert shards == [
        Shard(f"s3://{s3_bucket}/data/z.jsonl", "z.jsonl", 1),
        Shard(f"s3://{s3_bucket}/data/sub/a.jsonl", "sub/a.jsonl", 2),
    ]


def test_manifest_entry_missing_on_s3_is_named(s3, s3_bucket):
    manifest = [{"prefix": f"s3://{s3_bucket}/data/"}, "gone.jsonl"]
    put_all(s3, s3_bucket, {"m.json": json.dumps(manifest).encode()})
    with pytest.raises(InputError) as info:
        sources.list_shards(f"s3://{s3_bucket}/m.json", manifest=True)
    assert str(info.value) == (
        f"s3://{s3_bucket}/m.json: manifest entry 'gone.jsonl' not found: "
        f"s3://{s3_bucket}/data/gone.jsonl"
    )


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    "call",
    [
        lambda uri: sources.list_shards(uri + "in/"),
        lambda uri: sources.list_shards(uri + "in"),
        lambda uri: sources.open_read(uri + "in/a.jsonl"),
        lambda uri: sources.open_write(uri + "out/a.jsonl.out"),
        lambda uri: sources.size(uri + "out/a.jsonl.out"),
    ],
    ids=["list-folder", "list-prefix", "open_read", "open_write", "size"],
)
def test_unreachable_endpoint_names_it_without_credentials(s3_bucket, monkeypatch, call):
    port = closed_port()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")

    with pytest.raises(InputError) as info:
        call(f"s3://{s3_bucket}/")

    message = str(info.value)
    assert message == f"cannot reach the S3 endpoint http://127.0.0.1:{port} (connection refused)"
    assert os.environ["AWS_ACCESS_KEY_ID"] not in message
    assert os.environ["AWS_SECRET_ACCESS_KEY"] not in message


@pytest.mark.parametrize(
    ("call", "key"),
    [
        (sources.list_shards, "in/"),
        (sources.list_shards, "in/a.jsonl"),
        (sources.size, "in/a.jsonl"),
        (sources.open_read, "in/a.jsonl"),
        (sources.open_write, "out/a.jsonl.out"),
    ],
)
def test_wrong_secret_is_access_denied_without_credentials(s3, s3_bucket, monkeypatch, call, key):
    put_all(s3, s3_bucket, {"in/a.jsonl": b"1"})
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    uri = f"s3://{s3_bucket}/{key}"

    with pytest.raises(InputError) as info:
        call(uri)

    message = str(info.value)
    # SeaweedFS says SignatureDoesNotMatch, AWS may say AccessDenied: both are a 403.
    assert message.startswith(f"{uri}: access denied (403"), message
    assert "not-the-secret" not in message
    assert os.environ["AWS_ACCESS_KEY_ID"] not in message


def test_delete_removes_an_object_and_a_missing_one_is_no_error(s3, s3_bucket):
    put_all(s3, s3_bucket, {"out/_PROGRESS": b"{}", "out/a.out": b"1\n"})
    sources.delete(f"s3://{s3_bucket}/out/_PROGRESS")
    assert sources.size(f"s3://{s3_bucket}/out/_PROGRESS") is None
    sources.delete(f"s3://{s3_bucket}/out/_PROGRESS")  # already gone
    assert sources.size(f"s3://{s3_bucket}/out/a.out") == 2
