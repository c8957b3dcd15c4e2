"""The Object2Vec network: two encoders, a comparator, an MLP and an output layer.

Submodule names are the tensor names in model.safetensors, so loading is a direct copy:
enc0.embedding.weight, enc0.convs.0.weight, enc1.lstm.weight_ih_l0, enc1.proj.weight,
mlp.layers.0.weight, head.weight, ...
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from o2v_batch.errors import O2VError
from o2v_batch.model.hyperparameters import EncoderConfig, Hyperparameters


class PooledEmbedding(nn.Module):
    """Masked mean of the token embeddings (token dim is enc_dim)."""

    def __init__(self, config: EncoderConfig, enc_dim: int, embedding: nn.Embedding) -> None:
        super().__init__()
        assert config.token_embedding_dim == enc_dim, "pooled_embedding needs token dim == enc_dim"
        self.embedding = embedding

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        mask = (tokens != 0).unsqueeze(2)  # (B, T, 1)
        total = (self.embedding(tokens) * mask).sum(dim=1)  # (B, enc_dim)
        lengths = lengths.to(total.device, non_blocking=True)
        return total / lengths.clamp(min=1).unsqueeze(1).to(total.dtype)


class HCNN(nn.Module):
    """Conv1d blocks with ReLU, then a masked max-pool over time.

    Intermediate blocks keep token_embedding_dim channels (AWS never published theirs);
    the last block has enc_dim channels.

    The convolutions run as 2-D ones over (B, C, 1, T) in channels-last memory: each
    token's channels side by side, as the embedding lays them out, so nothing is
    transposed, and the CPU's kernels for that layout are faster: forward passes over the
    benchmark's records took 20-30% less CPU time than Conv1d over (B, C, T), light and
    heavy models alike. The weights are kept in the matching layout (_channels_last).
    """

    def __init__(self, config: EncoderConfig, enc_dim: int, embedding: nn.Embedding) -> None:
        super().__init__()
        self.embedding = embedding
        width = config.cnn_filter_width
        channels = [config.token_embedding_dim] * config.layers + [enc_dim]
        self.convs = nn.ModuleList(
            nn.Conv1d(c_in, c_out, width, padding=width // 2) for c_in, c_out in pairwise(channels)
        )
        self._channels_last()
        # Loading assigns the file's contiguous tensors: they are laid out again after.
        self.register_load_state_dict_post_hook(HCNN._channels_last)

    def _channels_last(self, *_: object) -> None:
        """Each (C_out, C_in, W) weight stored as its (C_out, C_in, 1, W) view wants it
        in channels-last memory, so that the kernels read it without a reorder. Values,
        shapes and names are unchanged (the saved file is the same); moves and dtype
        changes keep the layout. (As a load hook it is also given the keys' report.)"""
        for conv in self.convs:
            weight = conv.weight.data.unsqueeze(2)
            conv.weight.data = weight.contiguous(memory_format=torch.channels_last).squeeze(2)

    def forward(self, tokens: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        T = tokens.shape[1]
        dtype = self.embedding.weight.dtype
        mask = (tokens != 0).to(dtype)[:, None, None, :]  # (B, 1, 1, T)
        x = self.embedding(tokens).permute(0, 2, 1).unsqueeze(2)  # (B, C, 1, T)
        # Serving works in place; training keeps every tensor autograd saved.
        in_place = not torch.is_grad_enabled()
        x = x.mul_(mask) if in_place else x * mask
        for conv in self.convs:
            # Masking before each conv makes padding act as the zero 'same' padding of a
            # sequence that ends there; even widths give T + 1 outputs, trimmed to T.
            weight, padding = conv.weight.unsqueeze(2), (0, conv.padding[0])
            x = F.conv2d(x, weight, conv.bias, padding=padding)[..., :T]
            x = x.relu_().mul_(mask) if in_place else torch.relu(x) * mask
        # ReLU output is >= 0, so a max over zeroed padding equals the masked max. As a
        # pooling window over all T columns, not amax: on the CPU, amax over this layout's
        # strided T axis runs unvectorised unless a token's channels fill whole vectors
        # (multiples of 128 bytes): 4-8x slower on the light model's 16 channels.
        return F.max_pool2d(x, (1, T)).flatten(1)  # (B, enc_dim)


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
        # An empty row cannot be packed; token checks reject them, this only keeps shapes valid.
        lengths = lengths.clamp(min=1).cpu()
        # Rows longest first (as the device loop stages them) need no sort: unsorted, the
        # packing moves its order to the device and reads it back, waiting on it twice.
        ordered = bool((lengths[:-1] >= lengths[1:]).all())
        packed = pack_padded_sequence(
            self.embedding(tokens), lengths, batch_first=True, enforce_sorted=ordered
        )
        out, _ = self.lstm(packed)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=T)  # (B, T, 2H)
        lengths = lengths.to(tokens.device, non_blocking=True)
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

    def encode(
        self, tokens: torch.Tensor, encoder: int, lengths: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, T) token ids, 0 = padding anywhere -> (B, enc_dim) embeddings.

        `lengths` (B,) int64 on the CPU, given when every row's ids are already
        left-aligned (as tokens.TokenIds pads them), skips the alignment pass: nothing
        then waits for the device, so on a GPU the next batch's copy overlaps this one's
        kernels. Columns past every row's end and rows of length 0 are padding that
        changes no other row's embedding, so batches may come in fixed shapes.
        """
        assert encoder in (0, 1), f"encoder must be 0 or 1, got {encoder}"
        assert tokens.dim() == 2 and tokens.numel() > 0, "encode needs a non-empty (B, T) batch"
        if lengths is None:
            tokens, lengths = _left_align(tokens)
        return (self.enc0 if encoder == 0 else self.enc1)(tokens, lengths)

    def logits(self, in0: torch.Tensor, in1: torch.Tensor) -> torch.Tensor:
        """(B, C) pre-softmax scores (C = 1 for regression); the training objective."""
        return self.logits_from_embeddings(self.encode(in0, 0), self.encode(in1, 1))

    def logits_from_embeddings(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        if self.encoders_only:
            raise O2VError("this network holds the encoders only; it cannot score pairs")
        return self.head(self.mlp(self.comparator(u, v)))

    def predict_from_embeddings(self, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, num_classes) probabilities, or (B, 1) values for mean_squared_error."""
        logits = self.logits_from_embeddings(u, v)
        return logits.softmax(dim=1) if self.hp.output_layer == "softmax" else logits


def count_parameters(network: nn.Module) -> int:
    """Trainable numbers in the network; a tied embedding counts once."""
    return sum(p.numel() for p in network.parameters())
