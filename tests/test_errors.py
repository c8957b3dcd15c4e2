"""o2v_batch.errors: every exception of o2v-batch, one base class, each picklable."""

from __future__ import annotations

import inspect
import pickle

import pytest

from o2v_batch import errors

# One of each exception, with arguments as its raisers give them.
EXAMPLES = [
    errors.O2VError("something failed"),
    errors.HyperparameterError("epochs must be at least 1, got 0"),
    errors.ModelFormatError("model/ has no model.safetensors"),
    errors.UnsafeArchiveError("m.tar.gz: refusing to extract member '../x'"),
    errors.BadRecordError("line 3: in0 must be a list"),
    errors.TrainingDataError("train.jsonl, line 2: not valid JSON"),
    errors.InputError("input not found: in/"),
    errors.UnsafePathError("refusing output path for '../a'"),
    errors.OutputExistsError(["out/a.out", "out/b.out"], 5, True, "--resume", "--overwrite"),
    errors.WorkerError("worker on cpu died while loading the model"),
    errors.RequestFormatError('expected {"instances": [...]}'),
    errors.JsonlinesAsJsonError("a.json holds jsonlines records"),
    errors.FilterError("unsupported filter $..x"),
    errors.ConfigError("--workers must be at least 1, got 0"),
    errors.DiskFullError("disk full while extracting model m.tar.gz"),
    errors.MissingExtraError("--engine ray needs Ray"),
    errors.ShardFailed("in/a.jsonl: line 3: malformed JSON"),
    errors.RequestError(413, "the request is larger than 6 MB"),
    errors.JobFailedError("the transform job failed: 1 shard failed"),
    errors.InvocationError("the endpoint answered 400: bad record"),
    errors.StdoutClosed(),
]

CLASSES = [
    value
    for value in vars(errors).values()
    if inspect.isclass(value)
    and issubclass(value, BaseException)
    and value.__module__ == errors.__name__
]


def test_every_exception_has_an_example():
    assert sorted(c.__name__ for c in CLASSES) == sorted(type(e).__name__ for e in EXAMPLES)


@pytest.mark.parametrize("error", EXAMPLES, ids=lambda e: type(e).__name__)
def test_pickles_round_trip_with_their_arguments(error):
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is type(error)
    assert (copy.args, str(copy), vars(copy)) == (error.args, str(error), vars(error))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_one_base_class_and_a_one_line_docstring(cls):
    # StdoutClosed alone is no Exception: it stops the whole job, as Ctrl-C does.
    assert issubclass(cls, errors.O2VError) != (cls is errors.StdoutClosed)
    assert cls.__doc__ and cls.__doc__.strip().splitlines()[0].endswith(".")


def test_a_request_error_keeps_its_status():
    copy = pickle.loads(pickle.dumps(errors.RequestError(413, "too big")))
    assert (copy.status, str(copy)) == (413, "too big")


def test_output_exists_keeps_its_facts_and_remedies():
    error = errors.OutputExistsError(["out/a.out"], 3, True, "resume=True", "overwrite=True")
    copy = pickle.loads(pickle.dumps(error))
    assert str(copy) == (
        "output already exists: out/a.out and 2 more "
        "(use resume=True to skip finished shards or overwrite=True to replace them)"
    )
