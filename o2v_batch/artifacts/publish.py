"""Where a trained model goes: a folder, or a .tar.gz, local or on S3. Training refuses
to replace a model (it may be the only copy), and a model appears whole or not at all."""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
from typing import TYPE_CHECKING

from o2v_batch.artifacts.tensors import save_model
from o2v_batch.errors import InputError, OutputExistsError
from o2v_batch.io import list_shards, open_write, size, transport_for
from o2v_batch.model.hyperparameters import Hyperparameters

if TYPE_CHECKING:
    from o2v_batch.model.network import Object2Vec


def check_output(output: str) -> None:
    """Refuses an output that is not empty (a folder or S3 prefix holding anything, an
    existing .tar.gz): training takes long, and the model it would replace may be the
    only copy. `o2v-batch train --overwrite` skips this check."""
    if output.endswith(".tar.gz"):
        exists = size(output) is not None
    elif not transport_for(output).REMOTE:
        exists = os.path.exists(output) and (not os.path.isdir(output) or bool(os.listdir(output)))
    else:
        try:
            exists = bool(list_shards(output))
        except InputError:  # nothing under the prefix
            exists = False
    if exists:
        raise OutputExistsError([output], 1, False)  # only the CLI can replace it


def write_model(network: Object2Vec, hp: Hyperparameters, output: str) -> None:
    """Save to a local folder directly; a .tar.gz or an S3 target is built locally
    first and then copied."""
    if not transport_for(output).REMOTE and not output.endswith(".tar.gz"):
        save_model(network, hp, output)
        return
    with tempfile.TemporaryDirectory(prefix="o2v-train-") as tmp:
        folder = os.path.join(tmp, "model")
        save_model(network, hp, folder)
        files = sorted(os.listdir(folder))
        if output.endswith(".tar.gz"):
            archive = os.path.join(tmp, "model.tar.gz")
            with tarfile.open(archive, "w:gz") as tar:
                for name in files:
                    tar.add(os.path.join(folder, name), arcname=name)
            _publish(archive, output)
        else:
            for name in files:
                _publish(os.path.join(folder, name), f"{output.rstrip('/')}/{name}")


def _publish(source: str, target: str) -> None:
    """Copy a local file to `target`, which appears whole or not at all."""
    with open(source, "rb") as src, open_write(target) as dst:
        shutil.copyfileobj(src, dst)
