"""Exceptions. Every one is picklable, so it can cross a worker boundary."""

from __future__ import annotations


class O2VError(Exception):
    """Base class of every error o2v-batch reports to its user."""


class HyperparameterError(O2VError, ValueError):
    """A hyperparameter is unknown, malformed or out of range."""


class ModelFormatError(O2VError):
    """A model artifact is missing, malformed or does not match its hyperparameters."""


class UnsafeArchiveError(ModelFormatError):
    """An archive member would extract outside the target folder."""


class BadRecordError(O2VError):
    """One input record cannot be served (bad JSON, wrong fields, ids out of range...)."""


class TrainingDataError(O2VError):
    """A line of a training or validation file is malformed."""


class InputError(O2VError):
    """An input, output or manifest path cannot be used."""


class UnsafePathError(InputError):
    """An input would be written outside the output prefix."""


class OutputExistsError(InputError):
    """An output already exists and neither --resume nor --overwrite was given."""


class WorkerError(O2VError):
    """A worker process died, hung or failed beyond its retries."""


class RequestFormatError(BadRecordError):
    """An application/json request is not {"instances": [...]}, is truncated or has trailing data."""


class JsonlinesAsJsonError(RequestFormatError):
    """An application/json shard holds jsonlines records (an object a line), not a request."""


class FilterError(O2VError):
    """A JSONPath filter is malformed or unsupported, or a record lacks the part it selects."""


class ConfigError(O2VError, ValueError):
    """A transform option is invalid or conflicts with another."""


class DiskFullError(O2VError):
    """The disk filled up while a model was downloaded or extracted."""
