"""Where a trained model goes (artifacts/publish.py): a folder, a .tar.gz or S3, and
never over a model that is there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from training import hyperparameters, quiet, topic_pairs, write_jsonl

from o2v_batch.api import load_model
from o2v_batch.artifacts import check_output
from o2v_batch.errors import OutputExistsError
from o2v_batch.training.train import train


def test_output_as_a_tarball_loads(tmp_path: Path) -> None:
    train_file = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=13))
    train(hyperparameters(epochs=1), train_file, str(tmp_path / "folder"), log=quiet)
    train(hyperparameters(epochs=1), train_file, str(tmp_path / "out" / "model.tar.gz"), log=quiet)
    sequences = [p["in0"] for p in topic_pairs(8, seed=14)]
    from_folder = load_model(str(tmp_path / "folder")).embed(sequences)
    from_tarball = load_model(str(tmp_path / "out" / "model.tar.gz")).embed(sequences)
    np.testing.assert_array_equal(from_folder, from_tarball)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model.tar.gz"]


@pytest.mark.s3
@pytest.mark.parametrize("target", ["models/run1/", "models/run1", "models/run1.tar.gz"])
def test_training_data_from_s3_and_model_to_s3(
    tmp_path: Path, s3_server, s3_bucket: str, target: str
) -> None:
    local = write_jsonl(tmp_path / "train.jsonl", topic_pairs(64, seed=21))
    s3_server.client().upload_file(local, s3_bucket, "data/train.jsonl")
    output = f"s3://{s3_bucket}/{target}"
    train(hyperparameters(epochs=1), f"s3://{s3_bucket}/data/train.jsonl", output, log=quiet)
    train(hyperparameters(epochs=1), local, str(tmp_path / "model"), log=quiet)
    sequences = [p["in0"] for p in topic_pairs(8, seed=22)]
    np.testing.assert_array_equal(
        load_model(output).embed(sequences), load_model(str(tmp_path / "model")).embed(sequences)
    )


def test_check_output_refuses_what_is_not_empty(tmp_path: Path) -> None:
    folder, archive, file = tmp_path / "model", tmp_path / "model.tar.gz", tmp_path / "f"
    for fresh in (folder, archive, tmp_path / "new" / "model"):
        check_output(str(fresh))
    folder.mkdir()
    check_output(str(folder))  # an empty folder holds nothing to lose
    (folder / ".hidden").write_text("x")
    archive.write_bytes(b"x")
    file.write_text("x")
    for taken in (folder, archive, file):
        with pytest.raises(OutputExistsError) as caught:
            check_output(str(taken))
        # Only `o2v-batch train --overwrite` replaces it: the CLI names it (test_cli).
        assert str(caught.value) == f"output already exists: {taken}"
        assert str(caught.value.phrased(None, "--overwrite")) == (
            f"output already exists: {taken} (use --overwrite to replace it)"
        )


@pytest.mark.s3
def test_check_output_on_s3(s3_server, s3_bucket: str) -> None:
    check_output(f"s3://{s3_bucket}/models/run1/")
    check_output(f"s3://{s3_bucket}/models/run1.tar.gz")
    for key in ("models/run1/model.safetensors", "models/run1.tar.gz"):
        s3_server.client().put_object(Bucket=s3_bucket, Key=key, Body=b"x")
    for taken in ("models/run1/", "models/run1", "models/run1.tar.gz"):
        with pytest.raises(OutputExistsError, match=r"^output already exists: s3://"):
            check_output(f"s3://{s3_bucket}/{taken}")
    check_output(f"s3://{s3_bucket}/models/run2/")
