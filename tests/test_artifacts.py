"""Model artifacts: save and load round trips, tarballs (and unsafe ones), S3, and the
messages for files that do not match or cannot be read."""

from __future__ import annotations

import io
import itertools
import json
import math
import os
import subprocess
import sys
import tarfile
import tracemalloc
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import assert_same_outputs, build, embed, make_tar, random_rows, saved, tiny

from o2v_batch import artifacts
from o2v_batch.api import load_model
from o2v_batch.artifacts import check_model, load_network, resolve_model, save_model
from o2v_batch.errors import HyperparameterError, ModelFormatError, O2VError, UnsafeArchiveError

SAVED_CONFIGS = {
    "hcnn": {},
    "bilstm-pair": {"enc0_network": "bilstm", "enc1_network": "hcnn", "enc1_vocab_size": 30},
    "pooled-tied": {"enc0_network": "pooled_embedding", "tied_token_embedding_weight": True},
    "regression": {"output_layer": "mean_squared_error", "enc1_network": "bilstm"},
}
saved_configs = pytest.mark.parametrize("values", SAVED_CONFIGS.values(), ids=SAVED_CONFIGS.keys())


@pytest.mark.parametrize(
    "meta_above", [artifacts.META_BUILD_NUMBERS, 0], ids=["cpu-build", "meta-build"]
)
@saved_configs
def test_save_load_round_trip(tmp_path: Path, values: dict, meta_above: int, monkeypatch) -> None:
    # Small models are built on the CPU before their weights are assigned, big ones on meta.
    monkeypatch.setattr(artifacts, "META_BUILD_NUMBERS", meta_above)
    hp, network = saved(tmp_path / "model", **values)
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == [
        "hyperparameters.json",
        "model.safetensors",
    ]
    text = (tmp_path / "model" / "hyperparameters.json").read_text()
    assert text == json.dumps(hp.to_dict(), sort_keys=True, indent=2) + "\n"
    loaded = load_network(tmp_path / "model")
    assert not loaded.training
    for name, tensor in network.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert_same_outputs(str(tmp_path / "model"), network)


def test_save_replaces_a_model_whole_and_leaves_files_shareable(tmp_path: Path) -> None:
    saved(tmp_path, enc0_network="bilstm")
    _, network = saved(tmp_path, enc0_network="hcnn")
    # No temp file is left beside the model, and files follow the umask like any file.
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "hyperparameters.json",
        "model.safetensors",
    ]
    umask = os.umask(0)
    os.umask(umask)
    for path in tmp_path.iterdir():
        assert path.stat().st_mode & 0o777 == 0o666 & ~umask, path.name
    assert_same_outputs(str(tmp_path), network)


def test_tied_embedding_is_saved_once_and_stays_tied(tmp_path: Path) -> None:
    saved(tmp_path, tied_token_embedding_weight=True)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
    assert "enc0.embedding.weight" in names
    assert "enc1.embedding.weight" not in names
    loaded = load_network(tmp_path)
    assert loaded.enc1.embedding is loaded.enc0.embedding


@pytest.mark.parametrize(
    ("archive", "prefix"),
    [("model.tar.gz", ""), ("model.tgz", "./"), ("model.tar.gz", "model/")],
)
def test_round_trip_through_a_tarball(tmp_path: Path, archive: str, prefix: str) -> None:
    _, network = saved(tmp_path / "model", enc0_network="bilstm")
    tar = make_tar(tmp_path / archive, tmp_path / "model", prefix)
    assert_same_outputs(str(tar), network)
    cache = tmp_path / "cache"
    folder = Path(resolve_model(str(tar), cache_dir=str(cache)))
    assert folder.is_relative_to(cache)
    assert (folder / "model.safetensors").is_file()


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


def rewrite_hyperparameters(folder: Path, **changes: object) -> None:
    path = folder / "hyperparameters.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_shape_mismatch_is_reported_clearly(tmp_path: Path) -> None:
    saved(tmp_path, enc0_vocab_size=60)
    rewrite_hyperparameters(tmp_path, enc0_vocab_size=50, mlp_dim=6)
    with pytest.raises(ModelFormatError) as caught:
        load_network(tmp_path)
    assert str(caught.value) == (
        "model.safetensors does not match hyperparameters.json: "
        "enc0.embedding.weight has shape (60, 8), expected (50, 8); "
        "enc1.embedding.weight has shape (60, 8), expected (50, 8); "
        "mlp.layers.0.weight has shape (8, 32), expected (6, 32); "
        "mlp.layers.0.bias has shape (8), expected (6); "
        "mlp.layers.1.weight has shape (8, 8), expected (6, 6); "
        "mlp.layers.1.bias has shape (8), expected (6); "
        "head.weight has shape (2, 8), expected (2, 6)"
    )


def test_missing_and_unexpected_tensors_are_listed(tmp_path: Path) -> None:
    saved(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    del tensors["head.bias"]
    tensors["extra.weight"] = torch.zeros(2)
    save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(ModelFormatError) as caught:
        load_network(tmp_path)
    assert str(caught.value) == (
        "model.safetensors does not match hyperparameters.json: "
        "head.bias is missing; extra.weight is not expected"
    )


def test_encoders_only_never_reads_the_mlp_tensors(tmp_path: Path) -> None:
    _, network = saved(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["mlp.layers.0.weight"] = torch.zeros(3, 3)
    del tensors["head.weight"]
    save_file(tensors, tmp_path / "model.safetensors")
    encoders = load_network(tmp_path, encoders_only=True)
    assert {name.split(".")[0] for name in encoders.state_dict()} == {"enc0", "enc1"}
    rows = random_rows(4)
    torch.testing.assert_close(embed(encoders, rows), embed(network, rows), atol=1e-6, rtol=0)
    with pytest.raises(ModelFormatError, match=r"mlp\.layers\.0\.weight has shape \(3, 3\)"):
        load_network(tmp_path)


@pytest.mark.parametrize("keep", [0.5, 0.99, 8 / 100_000])
def test_truncated_safetensors_file(tmp_path: Path, keep: float) -> None:
    saved(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: max(int(len(data) * keep), 1)])
    with pytest.raises(ModelFormatError, match=rf"^{path} is not a readable safetensors file: "):
        load_network(tmp_path)


def test_not_a_safetensors_file(tmp_path: Path) -> None:
    saved(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"PK\x03\x04 a pickle zip, say" * 10)
    with pytest.raises(ModelFormatError, match="is not a readable safetensors file"):
        load_network(tmp_path)


@pytest.mark.parametrize("missing", ["hyperparameters.json", "model.safetensors"])
def test_missing_model_file(tmp_path: Path, missing: str) -> None:
    saved(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(ModelFormatError) as caught:
        load_network(tmp_path)
    assert str(caught.value) == f"{tmp_path} has no {missing}"


def test_bad_hyperparameters_name_the_file(tmp_path: Path) -> None:
    saved(tmp_path)
    rewrite_hyperparameters(tmp_path, enc_dim=2)
    with pytest.raises(HyperparameterError) as caught:
        load_network(tmp_path)
    assert str(caught.value) == (
        f"{tmp_path / 'hyperparameters.json'}: enc_dim=2 is out of range: "
        "must be an integer in 4..10000"
    )


@pytest.mark.parametrize(
    ("text", "problem"), [("{oops", "is not valid JSON"), ("[1]", "must hold a JSON object")]
)
def test_malformed_hyperparameters_file(tmp_path: Path, text: str, problem: str) -> None:
    saved(tmp_path)
    (tmp_path / "hyperparameters.json").write_text(text)
    with pytest.raises(ModelFormatError, match=problem):
        load_network(tmp_path)


def test_save_refuses_a_network_that_does_not_match(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError) as caught:
        save_model(build(tiny()), tiny(mlp_dim=6, enc0_token_embedding_dim=8), tmp_path)
    assert str(caught.value).startswith(
        "network does not match the hyperparameters: mlp.layers.0.weight has shape (8, 32), "
        "expected (6, 32)"
    )
    with pytest.raises(O2VError, match="cannot save an encoders-only network"):
        save_model(build(tiny(), encoders_only=True), tiny(), tmp_path)
    assert not list(tmp_path.iterdir())


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


# ---------------------------------------------------------------- checking without torch


def test_check_model_needs_no_torch(tmp_path: Path) -> None:
    saved(tmp_path, enc1_network="bilstm")
    code = (
        "import sys; from o2v_batch.artifacts import check_model; "
        f"hp = check_model({str(tmp_path)!r}); "
        "print(hp.enc1_network, 'torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["bilstm", "False"]


@pytest.mark.parametrize("keep", [0.5, 0.99, 8 / 100_000])
def test_check_model_finds_a_truncated_file(tmp_path: Path, keep: float) -> None:
    saved(tmp_path)
    path = tmp_path / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: max(int(len(data) * keep), 1)])
    with pytest.raises(ModelFormatError, match=rf"^{path} is not a readable safetensors file: "):
        check_model(tmp_path)


def test_check_model_says_what_load_network_says(tmp_path: Path) -> None:
    saved(tmp_path, enc0_vocab_size=60)
    rewrite_hyperparameters(tmp_path, enc0_vocab_size=50, mlp_dim=6)
    with pytest.raises(ModelFormatError) as checked:
        check_model(tmp_path)
    with pytest.raises(ModelFormatError) as loaded:
        load_network(tmp_path)
    assert str(checked.value) == str(loaded.value)
    assert str(checked.value).startswith(
        "model.safetensors does not match hyperparameters.json: "
        "enc0.embedding.weight has shape (60, 8), expected (50, 8); "
    )


def test_check_model_of_the_encoders_only_ignores_the_rest(tmp_path: Path) -> None:
    saved(tmp_path)
    rewrite_hyperparameters(tmp_path, mlp_dim=6)
    assert check_model(tmp_path, encoders_only=True).mlp_dim == 6
    with pytest.raises(ModelFormatError, match=r"mlp\.layers\.0\.weight has shape \(8, 32\)"):
        check_model(tmp_path)


# ---------------------------------------------------------------- NaN and infinity


def poison(folder: Path, name: str, *positions: int, dtype: torch.dtype = torch.float32) -> None:
    """NaN, infinity and minus infinity in turn at these flat positions of a tensor."""
    tensors = load_file(folder / "model.safetensors")
    flat = tensors[name].view(-1)
    for position, value in zip(positions, itertools.cycle([math.nan, math.inf, -math.inf])):
        flat[position] = value
    save_file({n: t.to(dtype) for n, t in tensors.items()}, folder / "model.safetensors")


def not_finite(folder: Path, name: str, count: int) -> str:
    values = "value" if count == 1 else "values"
    return (
        f"{folder / 'model.safetensors'}: tensor {name} holds NaN or infinity "
        f"({count} {values}): the model cannot give finite outputs"
    )


def test_nan_or_infinity_in_the_weights_is_refused_naming_the_tensor(tmp_path: Path) -> None:
    saved(tmp_path)
    poison(tmp_path, "enc0.embedding.weight", 0, 17, 399)
    expected = not_finite(tmp_path, "enc0.embedding.weight", 3)
    for load in (check_model, load_network, load_model):
        with pytest.raises(ModelFormatError) as caught:
            load(str(tmp_path))
        assert str(caught.value) == expected, load


def test_a_bfloat16_file_is_searched_once_loaded(tmp_path: Path) -> None:
    saved(tmp_path)
    poison(tmp_path, "mlp.layers.1.weight", 5, 6, dtype=torch.bfloat16)
    with pytest.raises(ModelFormatError) as caught:
        load_network(tmp_path)
    assert str(caught.value) == not_finite(tmp_path, "mlp.layers.1.weight", 2)


def test_only_the_tensors_that_will_be_loaded_are_searched(tmp_path: Path) -> None:
    saved(tmp_path)
    poison(tmp_path, "head.weight", 3)
    assert check_model(tmp_path, encoders_only=True).enc_dim == 8
    assert load_model(str(tmp_path), mode="embedding").embed([[1, 2, 3]]).shape == (1, 8)
    with pytest.raises(ModelFormatError) as caught:
        check_model(tmp_path)
    assert str(caught.value) == not_finite(tmp_path, "head.weight", 1)


@pytest.mark.parametrize("scan_bytes", [64, 96, 4 << 20])
def test_large_tensors_are_searched_a_few_rows_at_a_time(tmp_path, monkeypatch, scan_bytes):
    # 64 bytes are two rows of eight float32 numbers, 96 three: the last slice is short.
    monkeypatch.setattr(artifacts, "SCAN_BYTES", scan_bytes)
    saved(tmp_path)
    poison(tmp_path, "enc0.embedding.weight", 0, 8 * 49 + 7, 8 * 25)
    expected = not_finite(tmp_path, "enc0.embedding.weight", 3)
    for load in (check_model, load_network):
        with pytest.raises(ModelFormatError) as caught:
            load(tmp_path)
        assert str(caught.value) == expected


def test_searching_a_large_embedding_keeps_memory_flat(tmp_path: Path) -> None:
    saved(tmp_path, enc0_vocab_size=400_000)  # two 12.8 MB embeddings
    poison(tmp_path, "enc1.embedding.weight", 8 * 400_000 - 1)
    tracemalloc.start()
    try:
        with pytest.raises(ModelFormatError) as caught:
            check_model(tmp_path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(caught.value) == not_finite(tmp_path, "enc1.embedding.weight", 1)
    assert peak < artifacts.SCAN_BYTES * 2, peak


def test_transform_refuses_nan_weights_before_reading_input(tmp_path: Path) -> None:
    saved(tmp_path / "model")
    poison(tmp_path / "model", "enc1.convs.0.bias", 1)
    out = tmp_path / "out"
    missing = tmp_path / "never-read"  # a missing INPUT would say so if it were read first
    command = [sys.executable, "-m", "o2v_batch", "transform", missing, out, "--model"]
    done = subprocess.run(
        [*map(str, command), str(tmp_path / "model")], capture_output=True, text=True
    )
    expected = not_finite(tmp_path / "model", "enc1.convs.0.bias", 1)
    assert (done.returncode, done.stderr, done.stdout) == (1, f"Error: {expected}\n", "")
    assert not out.exists()
