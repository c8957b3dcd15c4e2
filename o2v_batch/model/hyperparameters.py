"""The Object2Vec hyperparameters, validated and frozen: SageMaker's names and
defaults, and the resolved settings of each encoder."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar

from o2v_batch.errors import HyperparameterError, did_you_mean

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

_INTEGER = re.compile(r"[+-]?\d+")


def _show(value: Any) -> str:
    """A raw value as the user wrote it: strings quoted, so '' and ' 4' stay visible."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _invalid(name: str, value: Any, allowed: str) -> HyperparameterError:
    return HyperparameterError(f"{name}={_show(value)} is not valid: must be {allowed}")


def _out_of_range(name: str, number: float, allowed: str) -> HyperparameterError:
    return HyperparameterError(f"{name}={number} is out of range: must be {allowed}")


def _as_int(value: Any) -> int | None:
    # bool is an int subclass in Python; `true` is never a count.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class _Range:
    """A number in lo..hi; subclasses say which kind and how a value is read."""

    lo: float
    hi: float
    kind: ClassVar[str]
    read: ClassVar[Callable[[Any], float | None]]

    def allowed(self) -> str:
        return f"{self.kind} in {self.lo}..{self.hi}"

    def __call__(self, name: str, value: Any) -> float:
        number = type(self).read(value)
        if number is None:
            raise _invalid(name, value, self.allowed())
        if not self.lo <= number <= self.hi:
            raise _out_of_range(name, number, self.allowed())
        return number


@dataclass(frozen=True)
class _Int(_Range):
    kind = "an integer"
    read = staticmethod(_as_int)


@dataclass(frozen=True)
class _Float(_Range):
    kind = "a number"
    read = staticmethod(_as_float)


@dataclass(frozen=True)
class _Choice:
    options: tuple[str, ...]

    def allowed(self) -> str:
        return "one of " + ", ".join(self.options)

    def __call__(self, name: str, value: Any) -> str:
        if isinstance(value, str) and value.strip() in self.options:
            return value.strip()
        raise _invalid(name, value, self.allowed())


@dataclass(frozen=True)
class _Bool:
    def allowed(self) -> str:
        return "true or false"

    def __call__(self, name: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        # SageMaker passes booleans as the strings "true"/"false" (any case).
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _invalid(name, value, self.allowed())


@dataclass(frozen=True)
class _Layers:
    counts: _Int = _Int(1, 4)

    def allowed(self) -> str:
        return "auto or " + self.counts.allowed()

    def __call__(self, name: str, value: Any) -> int | str:
        if isinstance(value, str) and value.strip() == "auto":
            return "auto"
        number = _as_int(value)
        if number is None:
            raise _invalid(name, value, self.allowed())
        if not self.counts.lo <= number <= self.counts.hi:
            raise _out_of_range(name, number, self.allowed())
        return number


@dataclass(frozen=True)
class _Path:
    def allowed(self) -> str:
        return "a file path"

    def __call__(self, name: str, value: Any) -> str:
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise _invalid(name, value, self.allowed())


@dataclass(frozen=True)
class _Comparators:
    def allowed(self) -> str:
        return "a comma-separated list of " + ", ".join(COMPARATORS) + ", each at most once"

    def __call__(self, name: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            names = [part.strip() for part in value.split(",")]
        elif isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
            names = [part.strip() for part in value]
        else:
            raise _invalid(name, value, self.allowed())
        if not any(names) or len(set(names)) != len(names) or not set(names) <= set(COMPARATORS):
            raise _invalid(name, value, self.allowed())
        return tuple(names)


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


_MAX_SEQ_LEN = _Int(1, 5000)
_VOCAB_SIZE = _Int(2, 3_000_000)
_FILTER_WIDTH = _Int(1, 9)
_TOKEN_DIM = _Int(2, 1000)


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
    enc0_network: str = _hp(_Choice(NETWORKS), "hcnn")
    enc0_layers: int | str = _hp(_Layers(), "auto")
    enc0_cnn_filter_width: int = _hp(_FILTER_WIDTH, 3)
    enc0_token_embedding_dim: int = _hp(_TOKEN_DIM, 300)
    enc0_pretrained_embedding_file: str | None = _hp(_Path())
    enc0_freeze_pretrained_embedding: bool = _hp(_Bool(), True)
    enc0_vocab_file: str | None = _hp(_Path())
    # enc0 (the default) copies every enc0 setting, not the weights, to enc1.
    enc1_network: str = _hp(_Choice((*NETWORKS, "enc0")), "enc0")
    enc1_max_seq_len: int | None = _hp(_MAX_SEQ_LEN)
    enc1_vocab_size: int | None = _hp(_VOCAB_SIZE)
    enc1_layers: int | str | None = _hp(_Layers())
    enc1_cnn_filter_width: int | None = _hp(_FILTER_WIDTH)
    enc1_token_embedding_dim: int | None = _hp(_TOKEN_DIM)
    enc1_pretrained_embedding_file: str | None = _hp(_Path())
    enc1_freeze_pretrained_embedding: bool | None = _hp(_Bool())
    enc1_vocab_file: str | None = _hp(_Path())
    enc_dim: int = _hp(_Int(4, 10000), 4096)
    comparator_list: tuple[str, ...] = _hp(_Comparators(), COMPARATORS)
    mlp_layers: int = _hp(_Int(1, 10), 2)
    mlp_dim: int = _hp(_Int(2, 10000), 512)
    mlp_activation: str = _hp(_Choice(("linear", "tanh", "relu")), "linear")
    output_layer: str = _hp(_Choice(("softmax", "mean_squared_error")), "softmax")
    num_classes: int = _hp(_Int(2, 30), 2)
    dropout: float = _hp(_Float(0.0, 1.0), 0.0)
    tied_token_embedding_weight: bool = _hp(_Bool(), False)
    token_embedding_storage_type: str = _hp(_Choice(("dense", "row_sparse")), "dense")
    optimizer: str = _hp(_Choice(("adam", "adadelta", "adagrad", "sgd", "rmsprop")), "adam")
    learning_rate: float = _hp(_Float(1e-6, 1.0), 0.0004)
    weight_decay: float = _hp(_Float(0.0, 10000.0), 0.0)
    mini_batch_size: int = _hp(_Int(1, 10000), 32)
    epochs: int = _hp(_Int(1, 100), 30)
    early_stopping_patience: int = _hp(_Int(1, 5), 3)
    early_stopping_tolerance: float = _hp(_Float(1e-6, 0.1), 0.01)
    bucket_width: int = _hp(_Int(0, 100), 0)
    negative_sampling_rate: int = _hp(_Int(0, 100), 0)
    # Not a SageMaker hyperparameter: makes training runs reproducible.
    seed: int = _hp(_Int(0, 2**32 - 1), 0)

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
            f"enc1_{s}={_show(given)} differs from enc0_{s}={_show(getattr(enc0, s))}"
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
