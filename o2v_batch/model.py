"""The Object2Vec network (two encoders, a comparator, an MLP and an output layer), token
batches for it, and its artifacts: save, resolve (folder, .tar.gz, S3) and load.

Submodule names are the tensor names in model.safetensors, so loading is a direct copy:
enc0.embedding.weight, enc0.convs.0.weight, enc1.lstm.weight_ih_l0, enc1.proj.weight,
mlp.layers.0.weight, head.weight, ...
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from itertools import chain, pairwise
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from o2v_batch.artifacts import (
    HYPERPARAMETERS_FILE,
    WEIGHTS_FILE,
    read_hyperparameters,
    resolve_model,
)
from o2v_batch.config import EncoderConfig, Hyperparameters
from o2v_batch.errors import (
    BadRecordError,
    ModelFormatError,
    O2VError,
)
from o2v_batch.jsonpath import json_type

# With tied_token_embedding_weight enc1 shares enc0's embedding; the file holds it once.
TIED_TENSOR = "enc1.embedding.weight"
MODES = ("classification", "embedding")
SHOWN_CHARS = 40  # of a bad token id quoted in a message


# ---------------------------------------------------------------- network


class PooledEmbedding(nn.Module):
    """Masked mean of the token embeddings (token dim is enc_dim)."""

    def __init__(self, config: EncoderConfig, enc_dim: int, embedding: nn.Embedding) -> None:
        super().__init__()
        assert config.token_embedding_dim == enc_dim, "pooled_embedding needs token dim == enc_dim"
        self.embedding = embedding

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(2)  # (B, T, 1)
        total = (self.embedding(tokens) * mask).sum(dim=1)  # (B, enc_dim)
        return total / lengths.clamp(min=1).unsqueeze(1).to(total.dtype)


class HCNN(nn.Module):
    """Conv1d blocks with ReLU, then a masked max-pool over time.

    Intermediate blocks keep token_embedding_dim channels (AWS never published theirs);
    the last block has enc_dim channels.
    """

    def __init__(self, config: EncoderConfig, enc_dim: int, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        width = config.cnn_filter_width
        channels = [config.token_embedding_dim] * config.layers + [enc_dim]
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, width, padding=width // 2) for c_in, c_out in pairwise(channels)
        )

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        mask = (tokens != 0).unsqueeze(1).to(self.embedding.weight.dtype)  # (B, 1, T)
        x = self.embedding(tokens).transpose(1, 2)  # (B, C, T)
        for conv in self.convs:
            # Masking before each conv makes padding act as the zero 'same' padding of a
            # sequence that ends there; even widths give T + 1 outputs, trimmed to T.
            x = torch.relu(conv(x * mask)[:, :, :T])
        # ReLU output is >= 0, so a max over zeroed padding equals the masked max.
        return (x * mask).amax(dim=2)  # (B, enc_dim)


class BiLSTM(nn.Module):
    """Bidirectional LSTM over packed sequences, masked max-pool, projection to enc_dim.

    Hidden size is ceil(enc_dim / 2) per direction, so both directions together are
    about enc_dim wide before the projection.
    """

    def __init__(self, config: EncoderConfig, enc_dim: int, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        hidden = (enc_dim + 1) // 2
        self.lstm = nn.LSTM(
            config.token_embedding_dim,
            hidden,
            num_layers=config.layers,
            batch_first=True,
            bidirectional=True,
        )
        self.proj = nn.Linear(2 * hidden, enc_dim)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        # An empty row cannot be packed; to_batch rejects them, this only keeps shapes valid.
        lengths = lengths.clamp(min=1)
        packed = pack_padded_sequence(
            self.embedding(tokens), lengths.cpu(), batch_first=True, enforce_sorted=False
        )
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, 2H)
        padding = torch.arange(T, device=tokens.device).unsqueeze(0) >= lengths.unsqueeze(1)
        out = out.masked_fill(padding.unsqueeze(2), float("-inf"))
        return self.proj(out.amax(dim=1))  # (B, enc_dim)


ENCODERS: dict[str, type[nn.Module]] = {
    "hcnn": HCNN,
    "bilstm": BiLSTM,
    "pooled_embedding": PooledEmbedding,
}


def build_encoder(
    config: EncoderConfig, enc_dim: int, embedding: nn.Embedding | None = None
) -> nn.Module:
    """One encoder; `embedding` shares an existing token embedding (tied weights)."""
    if embedding is None:
        embedding = nn.Embedding(config.vocab_size, config.token_embedding_dim, padding_idx=0)
    return ENCODERS[config.network](config, enc_dim, embedding)


_COMPARE: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "hadamard": lambda u, v: u * v,
    "concat": lambda u, v: torch.cat([u, v], dim=1),
    "abs_diff": lambda u, v: (u - v).abs(),
}
_COMPARE_WIDTH = {"hadamard": 1, "concat": 2, "abs_diff": 1}


class Comparator(nn.Module):
    """Concatenates the listed comparisons of u = enc0(in0) and v = enc1(in1)."""

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = tuple(names)

    def output_dim(self, enc_dim: int) -> int:
        return enc_dim * sum(_COMPARE_WIDTH[name] for name in self.names)

    def forward(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return torch.cat([_COMPARE[name](u, v) for name in self.names], dim=1)


_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear": lambda x: x,
    "tanh": torch.tanh,
    "relu": torch.relu,
}


class MLP(nn.Module):
    """mlp_layers x (Linear to mlp_dim, activation, dropout)."""

    def __init__(self, in_dim: int, hp: Hyperparameters) -> None:
        super().__init__()
        dims = [in_dim] + [hp.mlp_dim] * hp.mlp_layers
        self.layers = nn.ModuleList(nn.Linear(d_in, d_out) for d_in, d_out in pairwise(dims))
        self.activation = _ACTIVATIONS[hp.mlp_activation]
        self.dropout = nn.Dropout(hp.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = self.dropout(self.activation(layer(x)))
        return x


def _left_align(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Move every row's non-zero ids to the left (order kept) and cut the columns that are
    padding in every row, so a padding id anywhere cannot change an embedding."""
    present = tokens != 0
    lengths = present.sum(dim=1)
    # A padding id followed by a real id: only then is the (stable) sort needed.
    if bool((present[:, 1:] & ~present[:, :-1]).any()):
        order = torch.argsort((~present).to(torch.int8), dim=1, stable=True)
        tokens = tokens.gather(1, order)
    width = max(int(lengths.max()), 1)
    return tokens[:, :width], lengths


class Object2Vec(nn.Module):
    """Two encoders, then (unless encoders_only) the comparator, the MLP and the head."""

    def __init__(self, hp: Hyperparameters, encoders_only: bool = False) -> None:
        super().__init__()
        self.hp = hp
        self.encoders_only = encoders_only
        self.enc0 = build_encoder(hp.encoder(0), hp.enc_dim)
        shared = self.enc0.embedding if hp.tied_token_embedding_weight else None
        self.enc1 = build_encoder(hp.encoder(1), hp.enc_dim, shared)
        if encoders_only:
            return
        self.comparator = Comparator(hp.comparator_list)
        self.mlp = MLP(self.comparator.output_dim(hp.enc_dim), hp)
        outputs = hp.num_classes if hp.output_layer == "softmax" else 1
        self.head = nn.Linear(hp.mlp_dim, outputs)

    def encode(self, tokens: torch.Tensor, encoder: int) -> torch.Tensor:
        """(B, T) token ids, 0 = padding anywhere -> (B, enc_dim) embeddings."""
        assert encoder in (0, 1), f"encoder must be 0 or 1, got {encoder}"
        assert tokens.dim() == 2 and tokens.numel() > 0, "encode needs a non-empty (B, T) batch"
        tokens, lengths = _left_align(tokens)
        return (self.enc0 if encoder == 0 else self.enc1)(tokens, lengths)

    def logits(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """(B, C) pre-softmax scores (C = 1 for regression); the training objective."""
        return self.logits_from_embeddings(self.encode(in0, 0), self.encode(in1, 1))

    def logits_from_embeddings(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.encoders_only:
            raise O2VError("this network holds the encoders only; it cannot score pairs")
        return self.head(self.mlp(self.comparator(u, v)))

    def predict(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) probabilities, or (B, 1) values for mean_squared_error."""
        return self.predict_from_embeddings(self.encode(in0, 0), self.encode(in1, 1))

    def predict_from_embeddings(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        logits = self.logits_from_embeddings(u, v)
        return logits.softmax(dim=1) if self.hp.output_layer == "softmax" else logits


def count_parameters(network: nn.Module) -> int:
    """Trainable numbers in the network; a tied embedding counts once."""
    return sum(p.numel() for p in network.parameters())


# ---------------------------------------------------------------- token batches


def check_token_ids(ids: np.ndarray, vocab_size: int, input_name: str) -> None:
    """Raise BadRecordError naming the first id outside [0, vocab_size)."""
    bad = (ids < 0) | (ids >= vocab_size)
    if bad.any():
        raise BadRecordError(_out_of_range(int(ids[bad][0]), vocab_size, input_name))


def _out_of_range(token: int, vocab_size: int, input_name: str) -> str:
    return (
        f"{input_name} id {token} is out of range: vocab size is {vocab_size} "
        f"(ids must be in 0..{vocab_size - 1})"
    )


def _is_token(value: Any) -> bool:
    # bool is an int subclass; `true` is never a token id.
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


def _show_token(token: Any) -> str:
    """A token as it was written in the JSON record, cut short when long."""
    if isinstance(token, np.generic):
        token = token.item()
    try:
        text = json.dumps(token)
    except (RecursionError, TypeError, ValueError):  # nested deeper than Python recurses
        text = ""
        while isinstance(token, list) and token and len(text) < SHOWN_CHARS:
            text, token = text + "[", token[0]
        return (text + "...") if text else json_type(token)
    return text if len(text) <= SHOWN_CHARS else text[: SHOWN_CHARS - 3] + "..."


def check_sequence(sequence: Any, vocab_size: int, input_name: str) -> None:
    """The slow, exact check of one sequence, run only once a batch is known to be bad."""
    if not isinstance(sequence, list | tuple | np.ndarray):
        raise BadRecordError(f"{input_name} must be a list of token ids, got {json_type(sequence)}")
    if len(sequence) == 0:
        raise BadRecordError(f"{input_name} is empty: it needs at least one token id")
    for token in sequence:
        if not _is_token(token):
            raise BadRecordError(
                f"{input_name} has a token id that is not an integer: {_show_token(token)}"
            )
        if not 0 <= token < vocab_size:
            raise BadRecordError(_out_of_range(int(token), vocab_size, input_name))


def fast_ids(sequences: Sequence[Any], vocab_size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """All ids as one int64 array plus each sequence's length, or None when anything is
    wrong (then check_sequence finds what). Vectorised: this runs for every mini-batch."""
    if not all(isinstance(s, list | tuple | np.ndarray) for s in sequences):
        return None
    lengths = np.fromiter(map(len, sequences), dtype=np.int64, count=len(sequences))
    flat = list(chain.from_iterable(sequences))
    if not lengths.all() or not all(
        t is int or issubclass(t, np.integer) for t in set(map(type, flat))
    ):
        return None
    try:
        ids = np.array(flat, dtype=np.int64)
    except OverflowError:
        return None
    if ((ids < 0) | (ids >= vocab_size)).any():
        return None
    return ids, lengths


def to_batch(
    sequences: Sequence[Sequence[int]],
    max_len: int,
    vocab_size: int,
    input_name: str,
    device: torch.device | str,
) -> tuple[torch.Tensor, int]:
    """Validate, truncate to max_len and zero-pad sequences of token ids.

    Returns the (B, T) LongTensor on `device` and how many sequences were truncated.
    """
    checked = fast_ids(sequences, vocab_size)
    if checked is None:
        for sequence in sequences:
            check_sequence(sequence, vocab_size, input_name)
        raise AssertionError("fast_ids refused sequences that check_sequence accepts")
    ids, lengths = checked
    kept = np.minimum(lengths, max_len)
    width = max(int(kept.max(initial=0)), 1)
    # Position of every id inside its own sequence; ids at max_len or later are cut.
    position = np.arange(ids.size) - np.repeat(np.cumsum(lengths) - lengths, lengths)
    batch = np.zeros((len(sequences), width), dtype=np.int64)
    batch[np.arange(width) < kept[:, None]] = ids[position < max_len]
    return torch.from_numpy(batch).to(device), int((lengths > max_len).sum())


# ---------------------------------------------------------------- artifacts


def _saved_tensors(network: Object2Vec) -> dict[str, torch.Tensor]:
    """The tensors a model file holds: the state dict with a tied embedding once."""
    state = network.state_dict()
    if network.hp.tied_token_embedding_weight:
        del state[TIED_TENSOR]
    return state


def _shape_text(shape: Sequence[int]) -> str:
    return "(" + ", ".join(str(n) for n in shape) + ")"


def _mismatches(
    found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]
) -> list[str]:
    problems = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"{name} is missing")
        elif found[name] != shape:
            problems.append(
                f"{name} has shape {_shape_text(found[name])}, expected {_shape_text(shape)}"
            )
    problems += [f"{name} is not expected" for name in sorted(found) if name not in expected]
    return problems


def _shapes(network: Object2Vec) -> dict[str, tuple[int, ...]]:
    return {name: tuple(t.shape) for name, t in _saved_tensors(network).items()}


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temp file and rename, so a crash never leaves half a file."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(temp)
        # safetensors creates its file 0600; a model is meant to be shared like any file.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)


def save_model(network: Object2Vec, hp: Hyperparameters, folder: str | os.PathLike[str]) -> None:
    """Write hyperparameters.json and model.safetensors into `folder` (created if needed)."""
    if network.encoders_only:
        raise O2VError("cannot save an encoders-only network: it has no comparator, MLP or head")
    with torch.device("meta"):
        expected = _shapes(Object2Vec(hp))
    problems = _mismatches(_shapes(network), expected)
    if problems:
        raise ModelFormatError("network does not match the hyperparameters: " + "; ".join(problems))
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        name: t.detach().to("cpu", torch.float32).contiguous()
        for name, t in _saved_tensors(network).items()
    }
    text = json.dumps(hp.to_dict(), sort_keys=True, indent=2) + "\n"
    _write_atomic(folder / WEIGHTS_FILE, lambda temp: save_file(tensors, str(temp)))
    _write_atomic(folder / HYPERPARAMETERS_FILE, lambda temp: temp.write_text(text, "utf-8"))


def _read_tensors(
    path: Path, expected: dict[str, tuple[int, ...]], wanted: Callable[[str], bool]
) -> dict[str, torch.Tensor]:
    """Read only the `wanted` tensors, after checking every one against `expected`."""
    if not path.is_file():
        raise ModelFormatError(f"{path.parent} has no {WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as weights:
            found = {
                name: tuple(weights.get_slice(name).get_shape())
                for name in weights.keys()  # noqa: SIM118 (safe_open is not a dict)
                if wanted(name)
            }
            problems = _mismatches(found, expected)
            if problems:
                raise ModelFormatError(
                    f"{WEIGHTS_FILE} does not match {HYPERPARAMETERS_FILE}: " + "; ".join(problems)
                )
            return {name: weights.get_tensor(name).float() for name in expected}
    except (SafetensorError, OSError, ValueError) as error:
        raise ModelFormatError(f"{path} is not a readable safetensors file: {error}") from error


# Token-embedding numbers above which a network is built on the meta device.
META_BUILD_NUMBERS = 2**25


def _build_device(hp: Hyperparameters) -> str:
    """Where to build a network whose random init is about to be replaced.

    The meta device skips the init, but its first use imports sympy: about 1 s per
    worker. A small model's init on the CPU takes milliseconds; a large vocabulary's
    would take seconds and gigabytes, so those still go to the meta device.
    """
    numbers = sum(hp.encoder(i).vocab_size * hp.encoder(i).token_embedding_dim for i in (0, 1))
    return "meta" if numbers > META_BUILD_NUMBERS else "cpu"


def load_network(
    folder: str | os.PathLike[str], device: torch.device | str = "cpu", encoders_only: bool = False
) -> Object2Vec:
    """The network of a model folder, in eval mode on `device`.

    encoders_only builds and reads only the enc0./enc1. tensors: the comparator, MLP and
    head weights are never read.
    """
    hp = read_hyperparameters(folder)
    with torch.device(_build_device(hp)):
        network = Object2Vec(hp, encoders_only=encoders_only)
    expected = _shapes(network)
    state = _read_tensors(
        Path(folder) / WEIGHTS_FILE,
        expected,
        lambda name: not encoders_only or name.startswith(("enc0.", "enc1.")),
    )
    if hp.tied_token_embedding_weight:
        state[TIED_TENSOR] = state["enc0.embedding.weight"]
    network.load_state_dict(state, assign=True)
    return network.to(device).eval()


# ---------------------------------------------------------------- public API


class Model:
    """A loaded model for Python callers: lists of token ids in, numpy arrays out."""

    # Records per forward pass; big enough to amortise overhead, small enough for any device.
    batch_size = 1024

    def __init__(self, network: Object2Vec, device: torch.device | str, mode: str) -> None:
        self.network = network
        self.hp = network.hp
        self.device = torch.device(device)
        self.mode = mode
        self.truncated = 0

    def embed(self, sequences: Sequence[Sequence[int]], encoder: int = 0) -> np.ndarray:
        """(n, enc_dim) float32 embeddings of token-id sequences by encoder 0 or 1."""
        config = self.hp.encoder(encoder)
        out = np.zeros((len(sequences), self.hp.enc_dim), dtype=np.float32)
        with torch.inference_mode():
            for rows in self._batches(sequences):
                tokens = self._tokens(sequences, rows, config, f"in{encoder}")
                out[rows] = self.network.encode(tokens, encoder).float().cpu().numpy()
        return out

    def score(
        self, in0_sequences: Sequence[Sequence[int]], in1_sequences: Sequence[Sequence[int]]
    ) -> np.ndarray:
        """(n, num_classes) probabilities, or (n, 1) values for a regression model."""
        if self.mode == "embedding":
            raise O2VError(
                "score needs the whole network, but the model was loaded in embedding mode "
                "(encoders only); load it with mode='classification'"
            )
        if len(in0_sequences) != len(in1_sequences):
            raise O2VError(
                f"in0 and in1 must have as many sequences: {len(in0_sequences)} != "
                f"{len(in1_sequences)}"
            )
        width = self.hp.num_classes if self.hp.output_layer == "softmax" else 1
        out = np.zeros((len(in0_sequences), width), dtype=np.float32)
        with torch.inference_mode():
            for rows in self._batches(in0_sequences, in1_sequences):
                in0 = self._tokens(in0_sequences, rows, self.hp.encoder(0), "in0")
                in1 = self._tokens(in1_sequences, rows, self.hp.encoder(1), "in1")
                out[rows] = self.network.predict(in0, in1).float().cpu().numpy()
        return out

    def _batches(self, *inputs: Sequence[Sequence[int]]) -> list[np.ndarray]:
        """Row indices per forward pass, similar lengths together to cut padding."""
        lengths = np.array(
            [
                max(len(s) if hasattr(s, "__len__") else 0 for s in row)
                for row in zip(*inputs, strict=True)
            ],
            dtype=np.int64,
        )
        order = np.argsort(lengths, kind="stable")
        return [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]

    def _tokens(
        self, sequences: Sequence[Sequence[int]], rows: np.ndarray, config: EncoderConfig, name: str
    ) -> torch.Tensor:
        chosen = [sequences[i] for i in rows]
        try:
            tokens, truncated = to_batch(
                chosen, config.max_seq_len, config.vocab_size, name, self.device
            )
        except BadRecordError:
            # Say which sequence: find it among this batch's, one by one (error path only).
            for row, sequence in zip(rows, chosen, strict=True):
                try:
                    check_sequence(sequence, config.vocab_size, name)
                except BadRecordError as error:
                    raise BadRecordError(f"sequence {row}: {error}") from error
            raise
        self.truncated += truncated
        return tokens


def load_model(uri: str, device: str = "cpu", mode: str = "classification") -> Model:
    """Load a model folder or .tar.gz, local or on S3.

    mode "embedding" loads only the encoders (embed only); "classification" loads the
    whole network (embed and score).
    """
    if mode not in MODES:
        raise O2VError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    network = load_network(resolve_model(uri), device, encoders_only=mode == "embedding")
    return Model(network, device, mode)
