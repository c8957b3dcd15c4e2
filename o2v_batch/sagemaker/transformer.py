"""A Transformer shaped like the SDK's: its arguments mapped onto a TransformConfig and
run by `o2v_batch.jobs.transform.transform`, the very call behind `o2v-batch transform`."""

from __future__ import annotations

from typing import Any

from o2v_batch.config import TransformConfig, preferred_mode
from o2v_batch.errors import ConfigError, JobFailedError
from o2v_batch.jobs import transform as job
from o2v_batch.reporting.progress import stderr_line
from o2v_batch.reporting.report import JobSummary
from o2v_batch.sagemaker.jobs import (
    LocalJob,
    devices_for,
    ignore,
    logger,
    name_from_base,
    one_instance,
)

MODE_VARIABLE = "INFERENCE_PREFERRED_MODE"
# The SDK's arguments that only mean something on AWS: accepted and ignored. A
# transformer's are those of Transformer, Model.transformer and Estimator.transformer.
AWS_ONLY = (
    "output_kms_key",
    "tags",
    "volume_kms_key",
    "sagemaker_session",
    "role",
    "vpc_config_override",
    "enable_network_isolation",
    "model_name",
)
TRANSFORM_AWS_ONLY = ("experiment_config", "model_client_config", "batch_data_capture_config")
# SageMaker's values, and what each means here. Object2Vec reads JSON only: records
# are lines or JSON instances whatever the split, and each response is its own line.
DATA_TYPES = {"S3Prefix": False, "ManifestFile": True}  # -> TransformConfig.manifest
SPLIT_TYPES = ("Line", "None", None)
ASSEMBLE_WITH = ("Line", "None", None)
# Decompression follows the file's extension (.gz, .zst, .bz2) whatever this says.
COMPRESSION_TYPES = ("Gzip", "None", None)


def _one_of(name: str, value: Any, allowed: tuple) -> None:
    if value not in allowed:
        shown = ", ".join(str(v) for v in allowed)
        raise ConfigError(f"{name} must be one of {shown}; got {value!r}")


class Transformer:
    """Batch Transform of one model on this machine (`engine="ray"`: on a Ray cluster)."""

    def __init__(
        self,
        model_data: str,
        instance_count: int = 1,
        instance_type: str = "local",
        strategy: str | None = None,
        assemble_with: str | None = None,
        output_path: str | None = None,
        accept: str | None = None,
        max_concurrent_transforms: int | None = None,
        max_payload: float | None = None,
        env: dict[str, str] | None = None,
        base_transform_job_name: str | None = None,
        engine: str = "local",
        **kwargs: Any,
    ) -> None:
        ignore(Transformer.__init__, AWS_ONLY, **kwargs)
        one_instance("Transformer", instance_count)
        _one_of("assemble_with", assemble_with, ASSEMBLE_WITH)
        self.model_data = model_data
        self.instance_count = instance_count
        self.instance_type = instance_type
        self.devices = devices_for(instance_type)
        self.strategy = strategy or "MultiRecord"
        self.output_path = output_path
        self.accept = accept
        self.max_concurrent_transforms = max_concurrent_transforms
        self.max_payload = max_payload
        self.env = dict(env or {})
        self.mode = preferred_mode({MODE_VARIABLE: self.env.pop(MODE_VARIABLE, "")})
        if self.env:
            logger.info("Transformer: env ignored on this machine: %s", ", ".join(sorted(self.env)))
        self.base_transform_job_name = base_transform_job_name or "object2vec"
        self.engine = engine
        self.latest_transform_job: LocalJob[JobSummary] | None = None

    def transform(
        self,
        data: str,
        data_type: str = "S3Prefix",
        content_type: str | None = None,
        compression_type: str | None = None,
        split_type: str | None = None,
        job_name: str | None = None,
        input_filter: str | None = None,
        output_filter: str | None = None,
        join_source: str | None = None,
        wait: bool = True,
        logs: bool = True,
        resume: bool = False,
        overwrite: bool = False,
        **kwargs: Any,
    ) -> None:
        """Transforms every record under `data` (a file, folder or s3:// prefix, or a
        manifest) into `output_path`, as `o2v-batch transform` does. With wait=True,
        JobFailedError when a shard failed (the others are written).

        Outputs that exist already are refused (OutputExistsError) unless `resume=True`
        skips their shards or `overwrite=True` replaces them (o2v-batch's arguments)."""
        ignore(Transformer.transform, TRANSFORM_AWS_ONLY, **kwargs)
        _one_of("data_type", data_type, tuple(DATA_TYPES))
        _one_of("split_type", split_type, SPLIT_TYPES)
        _one_of("compression_type", compression_type, COMPRESSION_TYPES)
        name = job_name or name_from_base(self.base_transform_job_name)
        if self.output_path is None:
            self.output_path = name  # SageMaker's default is a prefix named after the job
        config = self._config(
            data,
            DATA_TYPES[data_type],
            resume,
            overwrite,
            content_type=content_type,
            join_source=join_source,
            input_filter=input_filter,
            output_filter=output_filter,
        )
        self.latest_transform_job = LocalJob(name, lambda: _run(config, logs), wait)
        if wait:
            self.wait()

    def _config(
        self, data: str, manifest: bool, resume: bool, overwrite: bool, **options: Any
    ) -> TransformConfig:
        """The job's TransformConfig, from the transformer's settings and the job's."""
        options.update(
            accept=self.accept,
            max_payload=self.max_payload,
            max_concurrent_transforms=self.max_concurrent_transforms,
        )
        return TransformConfig(
            input=data,
            output=self.output_path,
            model=self.model_data,
            strategy=self.strategy,
            mode=self.mode,
            devices=self.devices,
            manifest=manifest,
            engine=self.engine,
            resume=resume,
            overwrite=overwrite,
            # What is not given keeps transform's default.
            **{option: value for option, value in options.items() if value is not None},
        )

    def wait(self, logs: bool = True) -> None:
        """Returns once the latest job has ended; JobFailedError if a shard failed."""
        summary = self.summary
        if summary.shards_failed:
            reasons = "; ".join(f["reason"] for f in summary.failed)
            raise JobFailedError(
                f"transform job {self.latest_transform_job.name} failed: "
                f"{summary.shards_failed} of {summary.shards_failed + summary.shards_ok} "
                f"shards failed: {reasons}"
            )

    @property
    def summary(self) -> JobSummary:
        """The latest job's summary (what its `_SUCCESS` holds), once it has ended."""
        if self.latest_transform_job is None:
            raise JobFailedError("no transform job has started: call transform() first")
        return self.latest_transform_job.wait()


def _run(config: TransformConfig, logs: bool) -> JobSummary:
    return job.transform(config, log=stderr_line if logs else lambda line: None)
