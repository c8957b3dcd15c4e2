"""Resolving models: tarballs that cannot be extracted or read, paths that are not
models, and models on S3, each named as the user gave it."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from tiny_models import (
    assert_same_outputs,
    make_tar,
    rewrite_hyperparameters,
    saved,
)

from o2v_batch.artifacts import check_model, load_network, resolve_model
from o2v_batch.errors import HyperparameterError, ModelFormatError, UnsafeArchiveError


def evil_tar(path: Path, member: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        data = b"x" if member.isfile() else None
        if data:
            member.size = len(data)
        tar.addfile(member, io.BytesIO(data) if data else None)
    return path


def member(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (member("../evil.txt"), "'../evil.txt': its path leaves the target folder"),
        (
            member("model/../../evil.txt"),
            "'model/../../evil.txt': its path leaves the target folder",
        ),
        (member("/tmp/evil.txt"), "'/tmp/evil.txt': it has an absolute path"),
        (
            member("link", tarfile.SYMTYPE, "../../etc/passwd"),
            "'link': it is a symlink to '../../etc/passwd': a model archive holds files only",
        ),
        (
            member("model/link", tarfile.SYMTYPE, "/etc/passwd"),
            "'model/link': it is a symlink to '/etc/passwd': a model archive holds files only",
        ),
        (
            member("hard", tarfile.LNKTYPE, "../outside"),
            "'hard': it is a hard link to '../outside': a model archive holds files only",
        ),
        (member("tty", tarfile.CHRTYPE), "'tty': it is a device or other special file"),
        (member("pipe", tarfile.FIFOTYPE), "'pipe': it is a device or other special file"),
    ],
)
def test_unsafe_tarball_is_refused(tmp_path: Path, entry: tarfile.TarInfo, reason: str) -> None:
    archive = evil_tar(tmp_path / "model.tar.gz", entry)
    cache = tmp_path / "deep" / "cache"
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive), cache_dir=str(cache))
    assert str(caught.value) == f"{archive}: refusing to extract member {reason}"
    assert not list(tmp_path.rglob("evil.txt"))
    assert list(cache.iterdir()) == []


def test_a_link_inside_the_archive_is_refused_too(tmp_path: Path) -> None:
    # A model needs no links, and a chain of them can resolve elsewhere than its text says.
    saved(tmp_path / "model")
    archive = make_tar(tmp_path / "model.tgz", tmp_path / "model", "real/")
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(member("real/alias.json", tarfile.SYMTYPE, "hyperparameters.json"))
    cache = tmp_path / "cache"
    with pytest.raises(UnsafeArchiveError) as caught:
        resolve_model(str(archive), cache_dir=str(cache))
    assert str(caught.value) == (
        f"{archive}: refusing to extract member 'real/alias.json': it is a symlink to "
        "'hyperparameters.json': a model archive holds files only"
    )
    assert list(cache.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"not a tarball at all", b"\x1f\x8b\x08\x00garbage"])
def test_unreadable_tarball(tmp_path: Path, content: bytes) -> None:
    archive = tmp_path / "model.tar.gz"
    archive.write_bytes(content)
    with pytest.raises(
        ModelFormatError, match=rf"^{archive} is not a readable \.tar\.gz archive: "
    ):
        resolve_model(str(archive))


@pytest.mark.parametrize(
    ("name", "what"),
    [("missing", "does not exist"), ("weights.bin", "is not a folder or a .tar.gz/.tgz file")],
)
def test_resolve_model_of_something_else(tmp_path: Path, name: str, what: str) -> None:
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelFormatError) as caught:
        resolve_model(str(tmp_path / name))
    assert str(caught.value) == (
        f"model {tmp_path / name} {what}: a model is a folder with hyperparameters.json and "
        "model.safetensors, or a .tar.gz of one, local or on S3"
    )


@pytest.mark.s3
def test_models_on_s3(tmp_path: Path, s3_server, s3_bucket: str) -> None:
    _, network = saved(tmp_path / "model", enc1_network="bilstm")
    archive = make_tar(tmp_path / "model.tar.gz", tmp_path / "model")
    client = s3_server.client()
    client.upload_file(str(archive), s3_bucket, "models/model.tar.gz")
    for name in ("hyperparameters.json", "model.safetensors"):
        client.upload_file(str(tmp_path / "model" / name), s3_bucket, f"models/v1/{name}")
    for uri in ("models/model.tar.gz", "models/v1/", "models/v1"):
        assert_same_outputs(f"s3://{s3_bucket}/{uri}", network)
    cache = tmp_path / "cache"
    with pytest.raises(ModelFormatError):
        resolve_model(f"s3://{s3_bucket}/nope.tar.gz", cache_dir=str(cache))
    assert list(cache.iterdir()) == []


@pytest.mark.s3
@pytest.mark.parametrize("name", ["nope.tar.gz", "nope/", "nope"])
def test_a_missing_s3_model_reads_like_a_missing_local_one(tmp_path, s3_server, s3_bucket, name):
    with pytest.raises(ModelFormatError) as local:
        resolve_model(str(tmp_path / name))
    with pytest.raises(ModelFormatError) as remote:
        resolve_model(f"s3://{s3_bucket}/models/{name}")
    assert str(remote.value) == str(local.value).replace(
        str(tmp_path / name), f"s3://{s3_bucket}/models/{name}"
    )
    assert str(remote.value).startswith(f"model s3://{s3_bucket}/models/{name} does not exist: ")


@pytest.mark.s3
def test_an_s3_folder_missing_one_file_names_it(tmp_path, s3_server, s3_bucket):
    saved(tmp_path / "model")
    (tmp_path / "model" / "model.safetensors").unlink()
    s3_server.client().upload_file(
        str(tmp_path / "model" / "hyperparameters.json"), s3_bucket, "v2/hyperparameters.json"
    )
    with pytest.raises(ModelFormatError) as remote:
        resolve_model(f"s3://{s3_bucket}/v2/")
    with pytest.raises(ModelFormatError) as local:
        load_network(tmp_path / "model")
    assert str(remote.value) == f"s3://{s3_bucket}/v2/ has no model.safetensors"
    assert str(local.value) == f"{tmp_path / 'model'} has no model.safetensors"


@pytest.mark.s3
def test_a_downloaded_model_is_named_by_where_it_came_from(tmp_path, s3_server, s3_bucket):
    saved(tmp_path / "model")
    rewrite_hyperparameters(tmp_path / "model", enc_dim=2)
    archive = make_tar(tmp_path / "model.tar.gz", tmp_path / "model")
    client = s3_server.client()
    client.upload_file(str(archive), s3_bucket, "bad/model.tar.gz")
    for name in ("hyperparameters.json", "model.safetensors"):
        client.upload_file(str(tmp_path / "model" / name), s3_bucket, f"bad/v1/{name}")
    reason = "enc_dim=2 is out of range: must be an integer in 4..10000"
    for uri, label in [
        (f"s3://{s3_bucket}/bad/model.tar.gz", f"s3://{s3_bucket}/bad/model.tar.gz: "),
        (f"s3://{s3_bucket}/bad/v1", f"s3://{s3_bucket}/bad/v1/"),
    ]:
        with pytest.raises(HyperparameterError) as caught:
            check_model(resolve_model(uri))
        assert str(caught.value) == f"{label}hyperparameters.json: {reason}"
