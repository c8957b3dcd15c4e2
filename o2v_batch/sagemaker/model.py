"""A model artifact as the SDK's Model: the start of a transformer or an endpoint,
whether the model was trained here, on SageMaker or anywhere else."""

from __future__ import annotations

from typing import Any

from o2v_batch.sagemaker.jobs import ignore, one_instance
from o2v_batch.sagemaker.predictor import Predictor, start_endpoint
from o2v_batch.sagemaker.transformer import Transformer

# The SDK's arguments that only mean something on AWS: accepted and ignored. A model's
# are those of Model and Estimator.create_model; deploy's those of Model.deploy and
# Estimator.deploy, which passes the model's on.
AWS_ONLY = (
    "image_uri",
    "role",
    "predictor_cls",
    "name",
    "vpc_config",
    "vpc_config_override",
    "sagemaker_session",
    "enable_network_isolation",
    "model_kms_key",
    "image_config",
    "source_dir",
    "code_location",
    "entry_point",
    "container_log_level",
    "dependencies",
    "git_config",
    "resources",
    "additional_model_data_sources",
    "model_reference_arn",
)
DEPLOY_AWS_ONLY = (
    *AWS_ONLY,
    "accelerator_type",
    "endpoint_name",
    "use_compiled_model",
    "model_name",
    "tags",
    "kms_key",
    "wait",
    "data_capture_config",
    "async_inference_config",
    "serverless_inference_config",
    "volume_size",
    "model_data_download_timeout",
    "container_startup_health_check_timeout",
    "inference_recommendation_id",
    "explainer_config",
    "accept_eula",
    "endpoint_logging",
    "endpoint_type",
    "managed_instance_scaling",
    "inference_component_name",
    "routing_config",
    "inference_ami_version",
    "update_endpoint",
)


class Object2VecModel:
    """An Object2Vec model artifact: a model.tar.gz or folder, local or s3://."""

    def __init__(
        self,
        model_data: str,
        role: Any = None,
        image_uri: str | None = None,
        sagemaker_session: Any = None,
        env: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        ignore(
            Object2VecModel.__init__,
            AWS_ONLY,
            role=role,
            image_uri=image_uri,
            sagemaker_session=sagemaker_session,
            **kwargs,
        )
        self.model_data = model_data
        self.env = dict(env or {})  # INFERENCE_PREFERRED_MODE sets the mode

    def transformer(
        self, instance_count: int = 1, instance_type: str = "local", **kwargs: Any
    ) -> Transformer:
        """A Transformer of this model; takes the SDK's arguments (strategy,
        assemble_with, output_path, accept, max_concurrent_transforms, max_payload,
        env...)."""
        env = {**self.env, **(kwargs.pop("env", None) or {})}
        return Transformer(self.model_data, instance_count, instance_type, env=env, **kwargs)

    def deploy(
        self,
        initial_instance_count: int = 1,
        instance_type: str = "local",
        serializer: Any = None,
        deserializer: Any = None,
        **kwargs: Any,
    ) -> Predictor:
        """Starts `o2v-batch serve` with this model on a free loopback port and returns
        a Predictor for it (JSON in and out unless told otherwise); the Predictor's
        delete_endpoint() stops it."""
        ignore(Object2VecModel.deploy, DEPLOY_AWS_ONLY, **kwargs)
        one_instance("deploy", initial_instance_count)
        return start_endpoint(self.model_data, instance_type, self.env, serializer, deserializer)
