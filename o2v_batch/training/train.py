"""The training loop behind `o2v-batch train`.

Reads jsonlines pairs (`{"label": 1, "in0": [..], "in1": [..]}`), fits an
Object2Vec network with SageMaker's training hyperparameters and saves the
best epoch's weights. Early stopping watches the validation metric (accuracy
for softmax, MSE for mean_squared_error); without a validation file every
epoch runs and the last one is saved.
"""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from o2v_batch.artifacts import write_model
from o2v_batch.errors import HyperparameterError
from o2v_batch.inputs.token_ids import check_ids
from o2v_batch.model.hyperparameters import EncoderConfig, Hyperparameters
from o2v_batch.model.network import Object2Vec
from o2v_batch.training.data import (
    Pair,
    epoch_batches,
    load_pretrained_embeddings,
    negative_pairs,
    read_pairs,
)

# Validation batches need no gradients, so they can be much larger than training ones.
_EVAL_BATCH = 512

OPTIMIZERS: dict[str, type[torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adadelta": torch.optim.Adadelta,
    "adagrad": torch.optim.Adagrad,
    "sgd": torch.optim.SGD,
    "rmsprop": torch.optim.RMSprop,
}


@dataclass(frozen=True)
class EpochStats:
    epoch: int
    loss: float  # mean training loss over the epoch's examples
    metric: float | None  # validation accuracy or MSE; None without validation


@dataclass
class TrainResult:
    metric_name: str  # "accuracy" (higher is better) or "MSE" (lower is better)
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int = 0
    best_metric: float | None = None
    stopped_early: bool = False
    truncated_sequences: int = 0
    seconds: float = 0.0

    @property
    def epochs_run(self) -> int:
        return len(self.history)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def train(
    hp: Hyperparameters,
    train_uri: str,
    output: str,
    validation_uri: str | None = None,
    device: str | None = None,
    progress: bool | None = None,
    log: Callable[[str], None] = _stderr,
) -> TrainResult:
    """Train an Object2Vec network on `train_uri` and save the best epoch to `output`.

    `output` is a folder, a path ending in .tar.gz, or an s3:// folder or .tar.gz.
    `device` None picks cuda when available; `progress` None shows tqdm bars only
    when stderr is a terminal.
    """
    started = time.monotonic()
    check_training_hyperparameters(hp)
    seed_everything(hp.seed)
    torch_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    pairs, truncated = read_pairs(train_uri, hp)
    validation, more = read_pairs(validation_uri, hp) if validation_uri else ([], 0)
    if truncated + more:
        log(f"truncated {truncated + more} sequences longer than max_seq_len")
    network = Object2Vec(hp)
    load_pretrained_embeddings(network, hp)
    network.to(torch_device)
    show = sys.stderr.isatty() if progress is None else progress
    result = fit(network, hp, pairs, validation, torch_device, show, log)
    result.truncated_sequences = truncated + more
    write_model(network, hp, output)
    result.seconds = time.monotonic() - started
    log(f"saved epoch {result.best_epoch} to {output} ({result.seconds:.1f} s)")
    return result


def fit(
    network: Object2Vec,
    hp: Hyperparameters,
    pairs: list[Pair],
    validation: list[Pair],
    device: torch.device,
    progress: bool,
    log: Callable[[str], None],
) -> TrainResult:
    """The epochs; leaves the best epoch's weights in `network` (the last epoch's
    without validation)."""
    optimizer = make_optimizer(network, hp)
    result = TrainResult(metric_name="accuracy" if hp.output_layer == "softmax" else "MSE")
    stopping = EarlyStopping(
        higher_is_better=hp.output_layer == "softmax",
        patience=hp.early_stopping_patience,
        tolerance=hp.early_stopping_tolerance,
    )
    rng = np.random.default_rng(hp.seed)
    best_weights = None
    for epoch in range(1, hp.epochs + 1):
        epoch_pairs = pairs + negative_pairs(pairs, hp.negative_sampling_rate, rng)
        batches = epoch_batches(epoch_pairs, hp.mini_batch_size, hp.bucket_width, rng)
        description = f"epoch {epoch}/{hp.epochs}"
        with tqdm(
            batches, desc=description, file=sys.stderr, disable=not progress, leave=False
        ) as bar:
            loss = train_epoch(network, optimizer, epoch_pairs, bar, hp, device)
        metric = evaluate(network, validation, hp, device) if validation else None
        result.history.append(EpochStats(epoch, loss, metric))
        log(_epoch_line(epoch, hp.epochs, loss, metric, result.metric_name))
        if metric is None:
            continue
        if stopping.update(epoch, metric):
            best_weights = {k: v.detach().clone() for k, v in network.state_dict().items()}
        if stopping.should_stop and epoch < hp.epochs:
            result.stopped_early = True
            log(
                f"early stopping after epoch {epoch}: no improvement above "
                f"{hp.early_stopping_tolerance} for {hp.early_stopping_patience} epochs"
            )
            break
    if best_weights is None:
        result.best_epoch = result.epochs_run
    else:
        network.load_state_dict(best_weights)
        result.best_epoch, result.best_metric = stopping.best_epoch, stopping.best
    return result


def _epoch_line(epoch: int, epochs: int, loss: float, metric: float | None, name: str) -> str:
    line = f"epoch {epoch}/{epochs}: loss {loss:.4f}"
    return line if metric is None else f"{line}, validation {name} {metric:.4f}"


def check_training_hyperparameters(hp: Hyperparameters) -> None:
    """Reject combinations that training cannot honour."""
    if hp.negative_sampling_rate and hp.output_layer != "softmax":
        raise HyperparameterError(
            f"negative_sampling_rate={hp.negative_sampling_rate} needs output_layer=softmax "
            f"(negatives are labelled 0), but output_layer is {hp.output_layer}"
        )
    for index in (0, 1):
        config = hp.encoder(index)
        if config.pretrained_embedding_file and not config.vocab_file:
            raise HyperparameterError(
                f"enc{index}_pretrained_embedding_file is set but enc{index}_vocab_file is not: "
                "the vocab file (JSON word -> token id) says which row each word fills"
            )
    enc0, enc1 = hp.encoder(0), hp.encoder(1)
    tied_files = (enc0.pretrained_embedding_file, enc0.vocab_file)
    if (
        hp.tied_token_embedding_weight
        and enc1.pretrained_embedding_file
        and ((enc1.pretrained_embedding_file, enc1.vocab_file) != tied_files)
    ):
        raise HyperparameterError(
            "tied_token_embedding_weight=true makes enc1 share enc0's token embedding, so "
            "enc1_pretrained_embedding_file and enc1_vocab_file must be unset or equal enc0's"
        )


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python, so a CPU run is reproducible."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---- epochs ----------------------------------------------------------------


def _padded(
    sequences: list[list[int]], config: EncoderConfig, name: str, device: torch.device
) -> torch.Tensor:
    # Checked and truncated when read: only padding is left to do.
    return torch.from_numpy(check_ids(sequences, config.vocab_size, name).padded()).to(device)


def _tensors(
    pairs: Sequence[Pair], hp: Hyperparameters, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    in0 = _padded([p.in0 for p in pairs], hp.encoder(0), "in0", device)
    in1 = _padded([p.in1 for p in pairs], hp.encoder(1), "in1", device)
    dtype = torch.long if hp.output_layer == "softmax" else torch.float32
    labels = torch.tensor([p.label for p in pairs], dtype=dtype, device=device)
    return in0, in1, labels


def _loss(logits: torch.Tensor, labels: torch.Tensor, output_layer: str) -> torch.Tensor:
    if output_layer == "softmax":
        return nn.functional.cross_entropy(logits, labels)
    return nn.functional.mse_loss(logits.squeeze(1), labels)


def train_epoch(
    network: Object2Vec,
    optimizer: torch.optim.Optimizer,
    pairs: Sequence[Pair],
    batches: Sequence[np.ndarray],
    hp: Hyperparameters,
    device: torch.device,
) -> float:
    """One pass over `batches`; returns the mean loss per example."""
    network.train()
    total, count = 0.0, 0
    for batch in batches:
        in0, in1, labels = _tensors([pairs[i] for i in batch.tolist()], hp, device)
        loss = _loss(network.logits(in0, in1), labels, hp.output_layer)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total += loss.item() * len(batch)
        count += len(batch)
    return total / count


@torch.inference_mode()
def evaluate(
    network: Object2Vec, pairs: Sequence[Pair], hp: Hyperparameters, device: torch.device
) -> float:
    """Validation accuracy (softmax) or mean squared error (regression)."""
    network.eval()
    total = 0.0
    for start in range(0, len(pairs), _EVAL_BATCH):
        in0, in1, labels = _tensors(pairs[start : start + _EVAL_BATCH], hp, device)
        logits = network.logits(in0, in1)
        if hp.output_layer == "softmax":
            total += (logits.argmax(dim=1) == labels).sum().item()
        else:
            total += ((logits.squeeze(1) - labels) ** 2).sum().item()
    return total / len(pairs)


@dataclass
class EarlyStopping:
    """Patience counts epochs that do not beat the last improvement by more than
    `tolerance`; the best epoch is simply the one with the best metric."""

    higher_is_better: bool
    patience: int
    tolerance: float
    best: float | None = None
    best_epoch: int = 0
    _reference: float | None = None
    _stale_epochs: int = 0

    def update(self, epoch: int, metric: float) -> bool:
        """Record an epoch's metric; True when it is the best so far."""
        sign = 1.0 if self.higher_is_better else -1.0
        if self._reference is None or sign * (metric - self._reference) > self.tolerance:
            self._reference, self._stale_epochs = metric, 0
        else:
            self._stale_epochs += 1
        if self.best is None or sign * (metric - self.best) > 0:
            self.best, self.best_epoch = metric, epoch
            return True
        return False

    @property
    def should_stop(self) -> bool:
        return self._stale_epochs >= self.patience


def make_optimizer(network: nn.Module, hp: Hyperparameters) -> torch.optim.Optimizer:
    # Frozen pretrained embeddings stay out, so weight decay cannot move them.
    trainable = [p for p in network.parameters() if p.requires_grad]
    return OPTIMIZERS[hp.optimizer](trainable, lr=hp.learning_rate, weight_decay=hp.weight_decay)
