"""Model artifacts: save and load round trips (through a tarball too), and the messages
for files that do not match or cannot be read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tiny_models import (
    assert_same_outputs,
    build,
    embed,
    make_tar,
    random_rows,
    rewrite_hyperparameters,
    saved,
    tiny,
)

from o2v_batch.artifacts import load_network, resolve_model, save_model, tensors
from o2v_batch.errors import HyperparameterError, ModelFormatError, O2VError

SAVED_CONFIGS = {
    "hcnn": {},
    "bilstm-pair": {"enc0_network": "bilstm", "enc1_network": "hcnn", "enc1_vocab_size": 30},
    "pooled-tied": {"enc0_network": "pooled_embedding", "tied_token_embedding_weight": True},
    "regression": {"output_layer": "mean_squared_error", "enc1_network": "bilstm"},
}
saved_configs = pytest.mark.parametrize("values", SAVED_CONFIGS.values(), ids=SAVED_CONFIGS.keys())


@pytest.mark.parametrize(
    "meta_above", [tensors.META_BUILD_NUMBERS, 0], ids=["cpu-build", "meta-build"]
)
@saved_configs
def test_save_load_round_trip(tmp_path: Path, values: dict, meta_above: int, monkeypatch) -> None:
    # Small models are built on the CPU before their weights are assigned, big ones on meta.
    monkeypatch.setattr(tensors, "META_BUILD_NUMBERS", meta_above)
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
