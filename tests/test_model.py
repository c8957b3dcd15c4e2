from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import o2v_batch.model as model_module
from o2v_batch.config import Hyperparameters
from o2v_batch.errors import (
    BadRecordError,
    HyperparameterError,
    ModelFormatError,
    O2VError,
    UnsafeArchiveError,
)
from o2v_batch.model import (
    Comparator,
    Object2Vec,
    check_token_ids,
    count_parameters,
    load_model,
    load_network,
    resolve_model,
    save_model,
    to_batch,
)

VOCAB = 50


def tiny(**values: object) -> Hyperparameters:
    base = {
        "enc0_max_seq_len": 12,
        "enc0_vocab_size": VOCAB,
        "enc0_token_embedding_dim": 8,
        "enc_dim": 8,
        "mlp_dim": 8,
    }
    return Hyperparameters.from_dict({**base, **values})


def build(hp: Hyperparameters, seed: int = 0, encoders_only: bool = False) -> Object2Vec:
    torch.manual_seed(seed)
    return Object2Vec(hp, encoders_only=encoders_only).eval()


def random_rows(count: int, seed: int = 1, max_len: int = 10) -> list[list[int]]:
    rng = np.random.default_rng(seed)
    return [rng.integers(1, VOCAB, rng.integers(1, max_len + 1)).tolist() for _ in range(count)]


def embed(network: Object2Vec, rows: list[list[int]], encoder: int = 0) -> torch.Tensor:
    width = max(len(r) for r in rows)
    tokens = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    with torch.inference_mode():
        return network.encode(tokens, encoder)


ENCODER_CONFIGS = {
    "hcnn": {"enc0_network": "hcnn"},
    "hcnn-1-layer": {"enc0_network": "hcnn", "enc0_layers": 1},
    "hcnn-width-1": {"enc0_network": "hcnn", "enc0_cnn_filter_width": 1, "enc0_layers": 2},
    "hcnn-width-2": {"enc0_network": "hcnn", "enc0_cnn_filter_width": 2, "enc0_layers": 2},
    "hcnn-width-4": {"enc0_network": "hcnn", "enc0_cnn_filter_width": 4},
    "bilstm": {"enc0_network": "bilstm"},
    "bilstm-2-layers-odd-dim": {"enc0_network": "bilstm", "enc0_layers": 2, "enc_dim": 7},
    "pooled_embedding": {"enc0_network": "pooled_embedding"},
}
encoder_configs = pytest.mark.parametrize(
    "values", ENCODER_CONFIGS.values(), ids=ENCODER_CONFIGS.keys()
)


# ---------------------------------------------------------------- encoders


@encoder_configs
def test_encoder_output_shape(values: dict) -> None:
    hp = tiny(**values)
    network = build(hp)
    for encoder in (0, 1):
        assert embed(network, random_rows(5), encoder).shape == (5, hp.enc_dim)


@encoder_configs
@pytest.mark.parametrize(
    "padded",
    [
        [3, 4, 5, 0],
        [3, 4, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        [3, 0, 4, 5],
        [0, 0, 3, 4, 0, 0, 5, 0],
    ],
)
def test_padding_never_changes_an_embedding(values: dict, padded: list[int]) -> None:
    network = build(tiny(**values))
    torch.testing.assert_close(
        embed(network, [padded]), embed(network, [[3, 4, 5]]), atol=1e-6, rtol=0
    )


@encoder_configs
def test_batch_mixing_lengths_gives_each_its_embedding_alone(values: dict) -> None:
    network = build(tiny(**values))
    rows = random_rows(16)
    together = embed(network, rows)
    alone = torch.cat([embed(network, [row]) for row in rows])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


@encoder_configs
def test_encoders_are_deterministic(values: dict) -> None:
    rows = random_rows(8)
    first = embed(build(tiny(**values), seed=3), rows)
    assert torch.equal(first, embed(build(tiny(**values), seed=3), rows))
    assert not torch.equal(first, embed(build(tiny(**values), seed=4), rows))


def test_hcnn_is_non_negative_with_exact_zeros() -> None:
    out = embed(build(tiny(enc0_network="hcnn")), random_rows(64))
    assert (out >= 0).all()
    assert (out == 0).any()


def _conv_same(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Reference 'same' conv of one (L, C_in) sequence with zeros outside it."""
    length, width = x.shape[0], weight.shape[2]
    out = np.tile(bias, (length, 1)).astype(np.float64)
    for t in range(length):
        for k in range(width):
            source = t + k - width // 2
            if 0 <= source < length:
                out[t] += weight[:, :, k] @ x[source]
    return out


@pytest.mark.parametrize(("layers", "width"), [(1, 3), (2, 2), (3, 5)])
def test_hcnn_against_a_hand_computation(layers: int, width: int) -> None:
    network = build(tiny(enc0_layers=layers, enc0_cnn_filter_width=width))
    ids = [5, 9, 2, 7, 7]
    x = network.enc0.embedding.weight.detach().numpy()[ids]
    for conv in network.enc0.convs:
        params = conv.weight.detach().numpy(), conv.bias.detach().numpy()
        x = np.maximum(_conv_same(x, *params), 0)
    expected = x.max(axis=0)
    np.testing.assert_allclose(embed(network, [[*ids, 0, 0]])[0].numpy(), expected, atol=1e-5)


def test_pooled_embedding_is_the_mean_of_token_embeddings() -> None:
    network = build(tiny(enc0_network="pooled_embedding"))
    table = network.enc0.embedding.weight.detach().numpy()
    expected = table[[4, 8, 8, 1]].mean(axis=0)
    got = embed(network, [[4, 0, 8, 8, 1, 0, 0]])[0].numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_bilstm_against_an_unpacked_run(layers: int) -> None:
    network = build(tiny(enc0_network="bilstm", enc0_layers=layers))
    ids = [5, 9, 2, 7]
    encoder = network.enc0
    with torch.inference_mode():
        states, _ = encoder.lstm(encoder.embedding(torch.tensor([ids])))  # (1, L, 2H)
        expected = encoder.proj(states[0].amax(dim=0))
    torch.testing.assert_close(embed(network, [[*ids, 0, 0, 0]])[0], expected, atol=1e-6, rtol=0)


# ---------------------------------------------------------------- comparator, MLP, head


U = torch.tensor([[1.0, -2.0], [0.5, 3.0]])
V = torch.tensor([[3.0, 4.0], [-1.0, 3.0]])
BY_HAND = {
    "hadamard": [[3.0, -8.0], [-0.5, 9.0]],
    "concat": [[1.0, -2.0, 3.0, 4.0], [0.5, 3.0, -1.0, 3.0]],
    "abs_diff": [[2.0, 6.0], [1.5, 0.0]],
}


@pytest.mark.parametrize(
    "names",
    [
        ("hadamard", "concat", "abs_diff"),
        ("abs_diff", "hadamard"),
        ("concat",),
        ("concat", "abs_diff", "hadamard"),
    ],
)
def test_comparator_by_hand(names: tuple[str, ...]) -> None:
    expected = torch.cat([torch.tensor(BY_HAND[name]) for name in names], dim=1)
    comparator = Comparator(names)
    assert torch.equal(comparator(U, V), expected)
    assert comparator.output_dim(2) == expected.shape[1]


@pytest.mark.parametrize("activation", ["linear", "tanh", "relu"])
@pytest.mark.parametrize("output_layer", ["softmax", "mean_squared_error"])
def test_predict_against_a_hand_computation(activation: str, output_layer: str) -> None:
    hp = tiny(
        mlp_activation=activation,
        output_layer=output_layer,
        num_classes=3,
        mlp_layers=2,
        comparator_list="abs_diff, hadamard",
    )
    network = build(hp)
    u, v = torch.randn(4, 8), torch.randn(4, 8)
    un, vn = u.numpy(), v.numpy()
    act = {"linear": lambda x: x, "tanh": np.tanh, "relu": lambda x: np.maximum(x, 0)}[activation]
    x = np.concatenate([np.abs(un - vn), un * vn], axis=1)
    for layer in network.mlp.layers:
        x = act(x @ layer.weight.detach().numpy().T + layer.bias.detach().numpy())
    x = x @ network.head.weight.detach().numpy().T + network.head.bias.detach().numpy()
    if output_layer == "softmax":
        x = np.exp(x) / np.exp(x).sum(axis=1, keepdims=True)
    with torch.inference_mode():
        got = network.predict_from_embeddings(u, v)
    assert got.shape == (4, 3 if output_layer == "softmax" else 1)
    np.testing.assert_allclose(got.numpy(), x, atol=1e-5)


def test_predict_is_the_prediction_of_the_two_embeddings() -> None:
    network = build(tiny(enc1_network="bilstm", enc1_vocab_size=30))
    in0, in1 = torch.tensor([[1, 2, 3], [4, 0, 0]]), torch.tensor([[7, 0], [8, 9]])
    with torch.inference_mode():
        direct = network.predict(in0, in1)
        split = network.predict_from_embeddings(network.encode(in0, 0), network.encode(in1, 1))
        logits = network.logits(in0, in1)
    assert torch.equal(direct, split)
    torch.testing.assert_close(logits.softmax(dim=1), direct)
    torch.testing.assert_close(direct.sum(dim=1), torch.ones(2))


def test_encoders_only_builds_no_comparator_mlp_or_head() -> None:
    network = build(tiny(), encoders_only=True)
    assert {name.split(".")[0] for name, _ in network.named_parameters()} == {"enc0", "enc1"}
    with pytest.raises(
        O2VError, match=r"^this network holds the encoders only; it cannot score pairs$"
    ):
        network.predict_from_embeddings(U, V)


def test_dropout_is_active_in_training_mode_only() -> None:
    network = build(tiny(dropout=0.5))
    in0, in1 = torch.tensor([[1, 2, 3]] * 8), torch.tensor([[4, 5]] * 8)
    with torch.no_grad():
        assert torch.equal(network.logits(in0, in1), network.logits(in0, in1))
        network.train()
        assert not torch.equal(network.logits(in0, in1), network.logits(in0, in1))


def test_tied_embedding_is_one_module_counted_once() -> None:
    tied, untied = build(tiny(tied_token_embedding_weight=True)), build(tiny())
    assert tied.enc1.embedding is tied.enc0.embedding
    assert count_parameters(untied) - count_parameters(tied) == VOCAB * 8


def test_count_parameters_by_hand() -> None:
    hp = tiny(
        enc0_network="pooled_embedding", comparator_list="concat", mlp_layers=1, num_classes=3
    )
    # Two embeddings (50 x 8), MLP 16 -> 8, head 8 -> 3.
    assert count_parameters(build(hp)) == 2 * 50 * 8 + (16 * 8 + 8) + (8 * 3 + 3)


# ---------------------------------------------------------------- token batches


def test_to_batch_pads_truncates_and_counts() -> None:
    tokens, truncated = to_batch([[1, 2, 3], (4,), np.array([5, 6, 7, 8, 9])], 4, 10, "in0", "cpu")
    assert tokens.dtype == torch.int64
    assert tokens.tolist() == [[1, 2, 3, 0], [4, 0, 0, 0], [5, 6, 7, 8]]
    assert truncated == 1


def test_to_batch_of_nothing() -> None:
    tokens, truncated = to_batch([], 4, 10, "in0", "cpu")
    assert tokens.shape == (0, 1)
    assert truncated == 0


@pytest.mark.parametrize(
    ("sequences", "message"),
    [
        ([[1], []], "in1 is empty: it needs at least one token id"),
        ([[1, True]], "in1 has a token id that is not an integer: true"),
        ([[1, 2.0]], "in1 has a token id that is not an integer: 2.0"),
        ([[1, "3"]], 'in1 has a token id that is not an integer: "3"'),
        ([[1, None]], "in1 has a token id that is not an integer: null"),
        ([[1, [2]]], "in1 has a token id that is not an integer: [2]"),
        ([np.array([1.5])], "in1 has a token id that is not an integer: 1.5"),
        ([[1, -1]], "in1 id -1 is out of range: vocab size is 10 (ids must be in 0..9)"),
        ([[1], [10]], "in1 id 10 is out of range: vocab size is 10 (ids must be in 0..9)"),
        (
            [[10**30]],
            f"in1 id {10**30} is out of range: vocab size is 10 (ids must be in 0..9)",
        ),
        ([[1], "abc"], "in1 must be a list of token ids, got a string"),
        ([[1], 5], "in1 must be a list of token ids, got a number"),
        ([{"a": 1}], "in1 must be a list of token ids, got an object"),
    ],
)
def test_to_batch_refuses_bad_sequences(sequences: list, message: str) -> None:
    with pytest.raises(BadRecordError) as caught:
        to_batch(sequences, 4, 10, "in1", "cpu")
    assert str(caught.value) == message


def test_check_token_ids() -> None:
    check_token_ids(np.array([0, 5, 10178]), 10179, "in0")
    with pytest.raises(BadRecordError) as caught:
        check_token_ids(np.array([[3, 20000], [-4, 1]]), 10179, "in0")
    assert (
        str(caught.value)
        == "in0 id 20000 is out of range: vocab size is 10179 (ids must be in 0..10178)"
    )


# ---------------------------------------------------------------- artifacts

SAVED_CONFIGS = {
    "hcnn": {},
    "bilstm-pair": {"enc0_network": "bilstm", "enc1_network": "hcnn", "enc1_vocab_size": 30},
    "pooled-tied": {"enc0_network": "pooled_embedding", "tied_token_embedding_weight": True},
    "regression": {"output_layer": "mean_squared_error", "enc1_network": "bilstm"},
}
saved_configs = pytest.mark.parametrize("values", SAVED_CONFIGS.values(), ids=SAVED_CONFIGS.keys())


def saved(folder: Path, **values: object) -> tuple[Hyperparameters, Object2Vec]:
    hp = tiny(**values)
    network = build(hp)
    save_model(network, hp, folder)
    return hp, network


def assert_same_outputs(model_uri: str, network: Object2Vec) -> None:
    rows0, rows1 = random_rows(9, seed=5), random_rows(9, seed=6)
    rows1 = [[t % network.hp.encoder(1).vocab_size or 1 for t in r] for r in rows1]
    model = load_model(model_uri)
    with torch.inference_mode():
        expected = torch.cat(
            [network.predict(*to_pair(a, b)) for a, b in zip(rows0, rows1, strict=True)]
        )
    np.testing.assert_allclose(model.embed(rows0), embed(network, rows0).numpy(), atol=1e-6)
    np.testing.assert_allclose(model.embed(rows1, 1), embed(network, rows1, 1).numpy(), atol=1e-6)
    np.testing.assert_allclose(model.score(rows0, rows1), expected.numpy(), atol=1e-6)


def to_pair(a: list[int], b: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([a]), torch.tensor([b])


@pytest.mark.parametrize(
    "meta_above", [model_module.META_BUILD_NUMBERS, 0], ids=["cpu-build", "meta-build"]
)
@saved_configs
def test_save_load_round_trip(tmp_path: Path, values: dict, meta_above: int, monkeypatch) -> None:
    # Small models are built on the CPU before their weights are assigned, big ones on meta.
    monkeypatch.setattr(model_module, "META_BUILD_NUMBERS", meta_above)
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


def test_tied_embedding_is_saved_once_and_stays_tied(tmp_path: Path) -> None:
    saved(tmp_path, tied_token_embedding_weight=True)
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as weights:
        names = set(weights.keys())
    assert "enc0.embedding.weight" in names
    assert "enc1.embedding.weight" not in names
    loaded = load_network(tmp_path)
    assert loaded.enc1.embedding is loaded.enc0.embedding


def make_tar(path: Path, folder: Path, prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name in ("hyperparameters.json", "model.safetensors"):
            tar.add(folder / name, arcname=prefix + name)
    return path


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
            "'link': it is a symlink to '../../etc/passwd', outside the target folder",
        ),
        (
            member("model/link", tarfile.SYMTYPE, "/etc/passwd"),
            "'model/link': it is a symlink to '/etc/passwd', outside the target folder",
        ),
        (
            member("hard", tarfile.LNKTYPE, "../outside"),
            "'hard': it is a hard link to '../outside', outside the target folder",
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


def test_symlink_inside_the_archive_is_accepted(tmp_path: Path) -> None:
    _, network = saved(tmp_path / "model")
    archive = make_tar(tmp_path / "model.tgz", tmp_path / "model", "real/")
    with tarfile.open(archive, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(archive, "w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data))
        tar.addfile(member("real/alias.json", tarfile.SYMTYPE, "hyperparameters.json"))
    assert_same_outputs(str(archive), network)


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


# ---------------------------------------------------------------- public API


def test_embedding_mode_loads_encoders_only_and_refuses_to_score(tmp_path: Path) -> None:
    _, network = saved(tmp_path)
    model = load_model(str(tmp_path), mode="embedding")
    assert (model.mode, model.device, model.hp) == ("embedding", torch.device("cpu"), network.hp)
    assert count_parameters(model.network) == count_parameters(build(tiny(), encoders_only=True))
    rows = random_rows(3)
    np.testing.assert_allclose(model.embed(rows), embed(network, rows).numpy(), atol=1e-6)
    with pytest.raises(O2VError) as caught:
        model.score(rows, rows)
    assert str(caught.value) == (
        "score needs the whole network, but the model was loaded in embedding mode "
        "(encoders only); load it with mode='classification'"
    )


def test_load_model_refuses_an_unknown_mode(tmp_path: Path) -> None:
    saved(tmp_path)
    with pytest.raises(
        O2VError, match=r"^mode must be one of classification, embedding, got 'auto'$"
    ):
        load_model(str(tmp_path), mode="auto")


def test_model_batches_sorted_by_length_keep_the_input_order(tmp_path: Path) -> None:
    _, network = saved(tmp_path, enc0_network="bilstm")
    model = load_model(str(tmp_path))
    model.batch_size = 4
    rows = random_rows(11, seed=9)
    alone = np.concatenate([embed(network, [row]).numpy() for row in rows])
    np.testing.assert_allclose(model.embed(rows), alone, atol=1e-5)
    assert model.embed([]).shape == (0, 8)
    assert model.score([], []).shape == (0, 2)


def test_model_truncates_to_max_seq_len_and_counts(tmp_path: Path) -> None:
    _, network = saved(tmp_path)
    model = load_model(str(tmp_path))
    long = list(range(1, 21))
    got = model.embed([long, [1, 2], long])
    np.testing.assert_allclose(got[0], embed(network, [long[:12]])[0].numpy(), atol=1e-6)
    assert model.truncated == 2
    model.score([long], [long])
    assert model.truncated == 4


def test_model_names_the_bad_sequence(tmp_path: Path) -> None:
    saved(tmp_path)
    model = load_model(str(tmp_path))
    with pytest.raises(BadRecordError) as caught:
        model.embed([[1, 2], [3], [4, VOCAB, 5]], encoder=1)
    assert (
        str(caught.value)
        == "sequence 2: in1 id 50 is out of range: vocab size is 50 (ids must be in 0..49)"
    )
    with pytest.raises(BadRecordError, match=r"^sequence 0: in1 is empty"):
        model.score([[1]], [[]])
    with pytest.raises(O2VError, match=r"^in0 and in1 must have as many sequences: 2 != 1$"):
        model.score([[1], [2]], [[1]])


def test_package_exposes_load_model() -> None:
    import o2v_batch

    assert o2v_batch.load_model is load_model


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
    with pytest.raises(
        ModelFormatError, match=rf"^cannot download model file s3://{s3_bucket}/nope\.tar\.gz: "
    ):
        resolve_model(f"s3://{s3_bucket}/nope.tar.gz", cache_dir=str(cache))
    assert list(cache.iterdir()) == []
