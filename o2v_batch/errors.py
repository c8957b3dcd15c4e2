"""Exceptions. Every one is picklable, so it can cross a worker boundary."""

from __future__ import annotations

import difflib
import importlib.util
from collections.abc import Iterable


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
    """Outputs already exist, and the caller said neither to skip nor to replace them.

    It carries the facts; the remedy is said in the caller's words (`resume=True` in
    Python, `--resume` in a shell): see `phrased`.
    """

    def __init__(
        self,
        outputs: list[str],
        total: int,
        resumable: bool,
        resume: str | None = None,
        overwrite: str | None = None,
    ) -> None:
        super().__init__(outputs, total, resumable, resume, overwrite)
        self.outputs = outputs  # the first few, as messages show them
        self.total = total
        self.resumable = resumable  # shards a job can skip, not one model
        self.resume, self.overwrite = resume, overwrite

    def __str__(self) -> str:
        shown = ", ".join(self.outputs)
        if self.total > len(self.outputs):
            shown += f" and {self.total - len(self.outputs)} more"
        if self.resumable and self.resume and self.overwrite:
            remedy = (
                f" (use {self.resume} to skip finished shards or {self.overwrite} to replace them)"
            )
        elif self.overwrite:
            remedy = f" (use {self.overwrite} to replace {'them' if self.total > 1 else 'it'})"
        else:
            remedy = ""
        return f"output already exists: {shown}{remedy}"

    def phrased(self, resume: str | None, overwrite: str | None) -> OutputExistsError:
        """The same facts, with the remedies in another caller's words (None: it has none)."""
        return OutputExistsError(self.outputs, self.total, self.resumable, resume, overwrite)


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


class MissingExtraError(ConfigError):
    """An optional dependency is not installed: a usage error naming the extra to install."""


class ShardFailed(O2VError):
    """A shard fails for a reason retrying cannot change; the message is the reason reported."""


class RequestError(O2VError):
    """A request `o2v-batch serve` refuses as a whole; `status` is its HTTP status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    def __reduce__(self):  # picklable like every O2VError, status included
        return (type(self), (self.status, str(self)))


class JobFailedError(O2VError):
    """A local training or transform job ended without its whole output."""


class InvocationError(O2VError):
    """The endpoint answered a request with an error status."""


# Not an O2VError, nor even an Exception: no shard reports it as its failure, and it
# unwinds the whole job like Ctrl-C, aborting every open output.
class StdoutClosed(BaseException):
    """Whoever read stdout has gone (`... | head -2`): the job stops as a Unix tool does."""


def describe(exc: BaseException) -> str:
    """An exception as one line of text: our own errors carry their message."""
    return str(exc) if isinstance(exc, O2VError) else f"{type(exc).__name__}: {exc}"


def missing_extra(feature: str, package: str, extra: str) -> str:
    """What `feature` needs and how to install the extra that brings it. o2v-batch is on
    no public index: the extra installs from a checkout or a built wheel."""
    return (
        f"{feature} needs {package}: pip install -e '.[{extra}]' in a checkout, "
        f'or pip install "$(ls dist/o2v_batch-*.whl)[{extra}]" for a built wheel'
    )


def require_extra(module: str, feature: str, package: str, extra: str) -> None:
    """MissingExtraError when `module` cannot be found: `feature` needs it."""
    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(missing_extra(feature, package, extra))


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """` (did you mean X?)` for a misspelt name, the closest known one; else empty."""
    close = difflib.get_close_matches(name, list(known), n=1)
    return f" (did you mean {close[0]}?)" if close else ""
