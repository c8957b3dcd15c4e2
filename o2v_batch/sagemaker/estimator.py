"""An Estimator shaped like the SDK's, for Object2Vec: `fit` trains on this machine
with `o2v_batch.training.train.train`, the very call behind `o2v-batch train`."""

from __future__ import annotations

import posixpath
from collections.abc import Mapping
from typing import Any

from o2v_batch import io
from o2v_batch.errors import ConfigError, O2VError
from o2v_batch.model.devices import parse_device
from o2v_batch.model.hyperparameters import Hyperparameters
from o2v_batch.sagemaker.jobs import (
    LocalJob,
    devices_for,
    ignore,
    logger,
    name_from_base,
    one_instance,
)
from o2v_batch.sagemaker.model import Object2VecModel
from o2v_batch.sagemaker.predictor import Predictor
from o2v_batch.sagemaker.transformer import Transformer

# The SDK's arguments that only mean something on AWS: accepted and ignored.
AWS_ONLY = (
    "image_uri",
    "role",
    "sagemaker_session",
    "keep_alive_period_in_seconds",
    "volume_size",
    "volume_kms_key",
    "max_run",
    "input_mode",
    "output_kms_key",
    "tags",
    "subnets",
    "security_group_ids",
    "model_uri",
    "model_channel_name",
    "metric_definitions",
    "encrypt_inter_container_traffic",
    "use_spot_instances",
    "max_wait",
    "checkpoint_s3_uri",
    "checkpoint_local_path",
    "enable_network_isolation",
    "rules",
    "debugger_hook_config",
    "tensorboard_output_config",
    "enable_sagemaker_metrics",
    "profiler_config",
    "disable_profiler",
    "environment",
    "max_retry_attempts",
    "source_dir",
    "git_config",
    "container_log_level",
    "code_location",
    "entry_point",
    "dependencies",
    "instance_groups",
    "training_repository_access_mode",
    "training_repository_credentials_provider_arn",
    "container_entry_point",
    "container_arguments",
    "disable_output_compression",
    "enable_infra_check",
    "enable_remote_debug",
    "enable_session_tag_chaining",
    "training_plan",
)
FIT_AWS_ONLY = ("experiment_config",)
CHANNELS = ("train", "validation")
# Object2Vec's auxiliary channel holds the files these hyperparameters name.
AUXILIARY_FILES = tuple(
    f"enc{i}_{name}" for i in (0, 1) for name in ("vocab_file", "pretrained_embedding_file")
)


class Estimator:
    """Trains an Object2Vec model on this machine; `model_data` is then its model.tar.gz
    under `output_path` (`<output_path>/<job name>/output/model.tar.gz`, as SageMaker
    lays it out; `output_path` defaults to the current folder)."""

    def __init__(
        self,
        image_uri: str | None = None,
        role: Any = None,
        instance_count: int = 1,
        instance_type: str = "local",
        output_path: str | None = None,
        sagemaker_session: Any = None,
        hyperparameters: Mapping[str, Any] | None = None,
        base_job_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        ignore(
            Estimator.__init__,
            AWS_ONLY,
            image_uri=image_uri,
            role=role,
            sagemaker_session=sagemaker_session,
            **kwargs,
        )
        one_instance("Estimator", instance_count)
        self.instance_type = instance_type
        self.device = devices_for(instance_type)  # checked now, not after the data is read
        self.output_path = output_path or "."
        self.base_job_name = base_job_name or "object2vec"
        self._hyperparameters = dict(hyperparameters or {})
        self.latest_training_job: LocalJob[str] | None = None

    def set_hyperparameters(self, **hyperparameters: Any) -> None:
        """SageMaker's Object2Vec hyperparameters; values may be strings."""
        self._hyperparameters.update(hyperparameters)

    def hyperparameters(self) -> dict[str, Any]:
        return dict(self._hyperparameters)

    def fit(
        self,
        inputs: str | Mapping[str, Any] | None = None,
        wait: bool = True,
        logs: bool = True,
        job_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        """Trains on the `train` channel (early stopping on `validation`, if given): each
        a jsonlines file, or a folder or s3:// prefix holding one. A line per epoch is
        printed when `logs` is true."""
        from o2v_batch.artifacts import check_output
        from o2v_batch.training.train import train  # torch, only when training

        ignore(Estimator.fit, FIT_AWS_ONLY, **kwargs)
        channels = _channels(inputs)
        hp = Hyperparameters.from_dict(_with_auxiliary(self._hyperparameters, channels))
        name = job_name or name_from_base(self.base_job_name)
        model_data = posixpath.join(self.output_path, name, "output", "model.tar.gz")
        device = parse_device(self.device)

        def log(line: str) -> None:
            if logs:
                print(line, flush=True)

        def run() -> str:
            check_output(model_data)
            train(
                hp,
                channels["train"],
                model_data,
                validation_uri=channels.get("validation"),
                device=device,
                progress=False,
                log=log,
            )
            return model_data

        self.latest_training_job = LocalJob(name, run, wait)

    @property
    def model_data(self) -> str:
        """The trained model.tar.gz, once the latest fit has ended."""
        if self.latest_training_job is None:
            raise O2VError("no model yet: call fit() first")
        return self.latest_training_job.wait()

    def create_model(self, **kwargs: Any) -> Object2VecModel:
        return Object2VecModel(self.model_data, **kwargs)

    def transformer(
        self, instance_count: int = 1, instance_type: str = "local", **kwargs: Any
    ) -> Transformer:
        """A Transformer of the trained model, with the SDK's arguments."""
        return self.create_model().transformer(instance_count, instance_type, **kwargs)

    def deploy(
        self, initial_instance_count: int = 1, instance_type: str = "local", **kwargs: Any
    ) -> Predictor:
        """Serves the trained model on this machine; see Object2VecModel.deploy."""
        env = kwargs.pop("env", None)
        model = self.create_model(env=env)
        return model.deploy(initial_instance_count, instance_type, **kwargs)


def _channels(inputs: str | Mapping[str, Any] | None) -> dict[str, str]:
    """Channel name -> the one file it names. A bare string is the train channel, as
    the SDK's `fit("s3://...")` is."""
    if inputs is None:
        raise ConfigError('fit needs a "train" channel: fit({"train": uri, "validation": uri})')
    named = {"train": inputs} if isinstance(inputs, str) else dict(inputs)
    if "train" not in named:
        raise ConfigError(f'fit needs a "train" channel; got {", ".join(named) or "none"}')
    channels = {}
    for name, channel in named.items():
        uri = _uri(channel)
        if name in CHANNELS:
            channels[name] = _one_file(name, uri)
        elif name == "auxiliary":
            channels[name] = uri
        else:
            logger.debug("fit: channel %r ignored (o2v-batch trains on train and validation)", name)
    return channels


def _uri(channel: Any) -> str:
    """A channel's URI: a string (file:// as the SDK's local mode writes it), or the
    SDK's TrainingInput."""
    if not isinstance(channel, str):
        channel = channel.config["DataSource"]["S3DataSource"]["S3Uri"]
    return channel.removeprefix("file://")


def _one_file(name: str, uri: str) -> str:
    """The file a channel names: the URI itself, or the one file under a folder or prefix."""
    shards = io.list_shards(uri)
    if len(shards) != 1:
        raise ConfigError(
            f"channel {name!r}: {uri} holds {len(shards)} files; o2v-batch trains on one "
            "jsonlines file per channel"
        )
    return shards[0].uri


def _with_auxiliary(hyperparameters: dict[str, Any], channels: dict[str, str]) -> dict:
    """The hyperparameters with the files they name found in the auxiliary channel."""
    folder = channels.get("auxiliary")
    if folder is None:
        return hyperparameters
    found = {
        name: posixpath.join(folder, str(hyperparameters[name]))
        for name in AUXILIARY_FILES
        if hyperparameters.get(name)
    }
    return {**hyperparameters, **found}
