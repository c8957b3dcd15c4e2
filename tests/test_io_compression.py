"""io/compression.py: compressed inputs read as streams, damage named in words."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma

import pytest
import zstandard

from o2v_batch import io as sources
from o2v_batch.errors import InputError
from o2v_batch.io.compression import decompressed

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
