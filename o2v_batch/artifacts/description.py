"""What `o2v-batch inspect` tells of a model, as plain JSON values: its encoders,
embedding length, output layer, parameter count and hyperparameters. Worked out from
the model's files without torch (the weights file is checked, not loaded)."""

from __future__ import annotations

from o2v_batch.artifacts import check_model, resolve_model
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.model.weights import parameter_count

# What each encoder's description holds: its EncoderConfig's fields of these names.
ENCODER_FIELDS = (
    "network",
    "layers",
    "cnn_filter_width",
    "token_embedding_dim",
    "vocab_size",
    "max_seq_len",
)


def describe_model(uri: str) -> dict:
    """The model at `uri` (a folder or .tar.gz, local or on S3), described; O2VError
    when it is not a valid model."""
    hp = check_model(resolve_model(uri))
    values = hp.to_dict()
    required = {"enc0_max_seq_len": hp.enc0_max_seq_len, "enc0_vocab_size": hp.enc0_vocab_size}
    defaults = Hyperparameters.from_dict(required).to_dict()
    return {
        "model": uri,
        "parameters": parameter_count(hp),
        "enc_dim": hp.enc_dim,
        "output_layer": hp.output_layer,
        "num_classes": hp.num_classes if hp.output_layer == "softmax" else None,
        "encoders": [
            {name: getattr(hp.encoder(index), name) for name in ENCODER_FIELDS} for index in (0, 1)
        ],
        "tied_token_embedding_weight": hp.tied_token_embedding_weight,
        "enc1_copies_enc0": hp.enc1_network == "enc0",
        "hyperparameters": values,
        # Required ones count as set: they have no default.
        "non_default": sorted(
            k for k, v in values.items() if k in required or defaults.get(k) != v
        ),
    }
