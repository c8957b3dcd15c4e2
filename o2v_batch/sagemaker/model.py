"""A model artifact as the SDK's Model: the start of a transformer or an endpoint,
whether the model was trained here, on SageMaker or anywhere else."""

from __future__ import annotations

from typing import Any

from o2v_batch.sagemaker.jobs import ignore, one_instance
from o2v_batch.sagemaker.predictor import Predictor, start_endpoint
from o2v_batch.sagemaker.transformer import Transformer


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
            "Object2VecModel",
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
        ignore("deploy", **kwargs)
        one_instance("deploy", initial_instance_count)
        return start_endpoint(self.model_data, instance_type, self.env, serializer, deserializer)
