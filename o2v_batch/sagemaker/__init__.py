"""The SageMaker Python SDK's shapes for Object2Vec, run on this machine: notebook
code written for SageMaker runs offline, and a model trained anywhere takes the same
path. See the README's "From a SageMaker notebook"."""

from __future__ import annotations

from o2v_batch.errors import InvocationError, JobFailedError
from o2v_batch.sagemaker.estimator import Estimator
from o2v_batch.sagemaker.model import Object2VecModel
from o2v_batch.sagemaker.predictor import Predictor
from o2v_batch.sagemaker.serializers import (
    JSONDeserializer,
    JSONLinesDeserializer,
    JSONLinesSerializer,
    JSONSerializer,
)
from o2v_batch.sagemaker.transformer import Transformer

__all__ = [
    "Estimator",
    "InvocationError",
    "JSONDeserializer",
    "JSONLinesDeserializer",
    "JSONLinesSerializer",
    "JSONSerializer",
    "JobFailedError",
    "Object2VecModel",
    "Predictor",
    "Transformer",
]
