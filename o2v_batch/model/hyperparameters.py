"""The Object2Vec hyperparameters, validated and frozen: SageMaker's names, ranges and
defaults (each value checked by hyperparameter_checks.py), the checks across them, and
the resolved settings of each encoder."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from o2v_batch.errors import HyperparameterError, did_you_mean
from o2v_batch.model.hyperparameter_checks import (
    Bool,
    Choice,
    Comparators,
    FilePath,
    Float,
    Int,
    Layers,
    show,
)

NETWORKS = ("hcnn", "bilstm", "pooled_embedding")
COMPARATORS = ("hadamard", "concat", "abs_diff")
# What `encX_layers=auto` means for each network (SageMaker's documented choice).
AUTO_LAYERS = {"hcnn": 4, "bilstm": 1, "pooled_embedding": 1}
# Every enc1 setting that `enc1_network=enc0` copies from enc0.
ENCODER_SETTINGS = (
    "max_seq_len",
    "vocab_size",
    "layers",
    "cnn_filter_width",
    "token_embedding_dim",
    "pretrained_embedding_file",
    "freeze_pretrained_embedding",
    "vocab_file",
)


def _same_setting(setting: str, value: Any, encoder: EncoderConfig) -> bool:
    """Whether an enc1 setting agrees with (resolved) enc0 `encoder`: `auto` layers
    resolve by enc0's network."""
    if setting == "layers" and value == "auto":
        value = AUTO_LAYERS[encoder.network]
    return value == getattr(encoder, setting)


def _hp(check: Any, default: Any = None) -> Any:
    return field(default=default, metadata={"check": check})


def _required(check: Any) -> Any:
    return field(metadata={"check": check})


_MAX_SEQ_LEN = Int(1, 5000)
_VOCAB_SIZE = Int(2, 3_000_000)
_FILTER_WIDTH = Int(1, 9)
_TOKEN_DIM = Int(2, 1000)


@dataclass(frozen=True)
class EncoderConfig:
    """One encoder's settings with every default and `auto` resolved."""

    network: str
    layers: int
    cnn_filter_width: int
    token_embedding_dim: int
    max_seq_len: int
    vocab_size: int
    pretrained_embedding_file: str | None
    freeze_pretrained_embedding: bool
    vocab_file: str | None


@dataclass(frozen=True)
class Hyperparameters:
    """Object2Vec hyperparameters under their SageMaker names, with SageMaker's defaults.

    Every field accepts its real type or SageMaker's string form ("4", "true", "auto");
    values are checked and normalised on construction. An enc1 setting left as None is
    not given: enc1 then uses enc0's value (enc1_network=enc0) or SageMaker's default.
    """

    enc0_max_seq_len: int = _required(_MAX_SEQ_LEN)
    enc0_vocab_size: int = _required(_VOCAB_SIZE)
    enc0_network: str = _hp(Choice(NETWORKS), "hcnn")
    enc0_layers: int | str = _hp(Layers(), "auto")
    enc0_cnn_filter_width: int = _hp(_FILTER_WIDTH, 3)
    enc0_token_embedding_dim: int = _hp(_TOKEN_DIM, 300)
    enc0_pretrained_embedding_file: str | None = _hp(FilePath())
    enc0_freeze_pretrained_embedding: bool = _hp(Bool(), True)
    enc0_vocab_file: str | None = _hp(FilePath())
    # enc0 (the default) copies every enc0 setting, not the weights, to enc1.
    enc1_network: str = _hp(Choice((*NETWORKS, "enc0")), "enc0")
    enc1_max_seq_len: int | None = _hp(_MAX_SEQ_LEN)
    enc1_vocab_size: int | None = _hp(_VOCAB_SIZE)
    enc1_layers: int | str | None = _hp(Layers())
    enc1_cnn_filter_width: int | None = _hp(_FILTER_WIDTH)
    enc1_token_embedding_dim: int | None = _hp(_TOKEN_DIM)
    enc1_pretrained_embedding_file: str | None = _hp(FilePath())
    enc1_freeze_pretrained_embedding: bool | None = _hp(Bool())
    enc1_vocab_file: str | None = _hp(FilePath())
    enc_dim: int = _hp(Int(4, 10000), 4096)
    comparator_list: tuple[str, ...] = _hp(Comparators(COMPARATORS), COMPARATORS)
    mlp_layers: int = _hp(Int(1, 10), 2)
    mlp_dim: int = _hp(Int(2, 10000), 512)
    mlp_activation: str = _hp(Choice(("linear", "tanh", "relu")), "linear")
    output_layer: str = _hp(Choice(("softmax", "mean_squared_error")), "softmax")
    num_classes: int = _hp(Int(2, 30), 2)
    dropout: float = _hp(Float(0.0, 1.0), 0.0)
    tied_token_embedding_weight: bool = _hp(Bool(), False)
    token_embedding_storage_type: str = _hp(Choice(("dense", "row_sparse")), "dense")
    optimizer: str = _hp(Choice(("adam", "adadelta", "adagrad", "sgd", "rmsprop")), "adam")
    learning_rate: float = _hp(Float(1e-6, 1.0), 0.0004)
    weight_decay: float = _hp(Float(0.0, 10000.0), 0.0)
    mini_batch_size: int = _hp(Int(1, 10000), 32)
    epochs: int = _hp(Int(1, 100), 30)
    early_stopping_patience: int = _hp(Int(1, 5), 3)
    early_stopping_tolerance: float = _hp(Float(1e-6, 0.1), 0.01)
    bucket_width: int = _hp(Int(0, 100), 0)
    negative_sampling_rate: int = _hp(Int(0, 100), 0)
    # Not a SageMaker hyperparameter: makes training runs reproducible.
    seed: int = _hp(Int(0, 2**32 - 1), 0)

    def __post_init__(self) -> None:
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is None and spec.default is None:
                continue
            object.__setattr__(self, spec.name, spec.metadata["check"](spec.name, value))
        self._check_enc1_copy()
        self._check_tied_embedding()

    def _check_enc1_copy(self) -> None:
        """enc1_network=enc0 copies enc0's settings: enc1 settings that agree with enc0's
        are accepted (SageMaker's own examples pass them); only a real conflict is refused."""
        if self.enc1_network != "enc0":
            return
        enc0 = self.encoder(0)
        conflicts = [
            f"enc1_{s}={show(given)} differs from enc0_{s}={show(getattr(enc0, s))}"
            for s in ENCODER_SETTINGS
            if (given := getattr(self, f"enc1_{s}")) is not None
            and not _same_setting(s, given, enc0)
        ]
        if conflicts:
            raise HyperparameterError(
                f"{'; '.join(conflicts)}, but enc1_network=enc0 copies enc0's settings "
                "to enc1; set enc1_network to hcnn, bilstm or pooled_embedding to configure "
                "enc1 separately"
            )

    def _check_tied_embedding(self) -> None:
        if not self.tied_token_embedding_weight:
            return
        enc0, enc1 = self.encoder(0), self.encoder(1)
        shape0 = (enc0.vocab_size, enc0.token_embedding_dim)
        shape1 = (enc1.vocab_size, enc1.token_embedding_dim)
        if shape0 != shape1:
            raise HyperparameterError(
                "tied_token_embedding_weight=true needs both encoders to have the same vocab "
                f"size and token embedding dim: enc0 has {shape0[0]} x {shape0[1]}, "
                f"enc1 has {shape1[0]} x {shape1[1]}"
            )

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """Build from JSON values or SageMaker's all-string hyperparameter map."""
        known = [spec.name for spec in fields(cls)]
        for name in values:
            if name not in known:
                raise HyperparameterError(
                    f"unknown hyperparameter {name}{did_you_mean(name, known)}"
                )
        for spec in fields(cls):
            if spec.name not in values and spec.default is MISSING:
                allowed = spec.metadata["check"].allowed()
                raise HyperparameterError(f"{spec.name} is required: must be {allowed}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON values; settings left unset (None) are omitted."""
        out: dict[str, Any] = {}
        for spec in fields(self):
            value = getattr(self, spec.name)
            if value is not None:
                out[spec.name] = list(value) if isinstance(value, tuple) else value
        return out

    def encoder(self, index: int) -> EncoderConfig:
        """Encoder `index` (0 or 1) with every default, copy and `auto` resolved."""
        if index not in (0, 1):
            raise ValueError(f"encoder must be 0 or 1, got {index}")
        if index == 1 and self.enc1_network == "enc0":
            return self.encoder(0)
        network = getattr(self, f"enc{index}_network")
        layers = self._enc_setting(index, "layers", "auto")
        token_dim = self._enc_setting(index, "token_embedding_dim", 300)
        return EncoderConfig(
            network=network,
            layers=AUTO_LAYERS[network] if layers == "auto" else layers,
            cnn_filter_width=self._enc_setting(index, "cnn_filter_width", 3),
            # The hosted algorithm forces this too: the mean of token embeddings is the output.
            token_embedding_dim=self.enc_dim if network == "pooled_embedding" else token_dim,
            # Not given for a separately configured enc1: same lengths and ids as enc0.
            max_seq_len=self._enc_setting(index, "max_seq_len", self.enc0_max_seq_len),
            vocab_size=self._enc_setting(index, "vocab_size", self.enc0_vocab_size),
            pretrained_embedding_file=getattr(self, f"enc{index}_pretrained_embedding_file"),
            freeze_pretrained_embedding=self._enc_setting(
                index, "freeze_pretrained_embedding", True
            ),
            vocab_file=getattr(self, f"enc{index}_vocab_file"),
        )

    def _enc_setting(self, index: int, setting: str, default: Any) -> Any:
        value = getattr(self, f"enc{index}_{setting}")
        return default if value is None else value
