"""How a SageMaker job maps onto this machine: instance types as devices, job names,
the arguments that only mean something on AWS, and jobs run at once or in the
background (`wait=False`)."""

from __future__ import annotations

import inspect
import logging
import re
import threading
import time
from collections.abc import Callable, Collection
from typing import Any, Generic, TypeVar

from o2v_batch.errors import ConfigError, did_you_mean

logger = logging.getLogger("o2v_batch.sagemaker")
_T = TypeVar("_T")
# ml.<family>.<size>; families whose name starts with p or g carry NVIDIA GPUs, except
# g4ad (AMD Radeon), which o2v-batch cannot use.
_INSTANCE_TYPE = re.compile(r"ml\.([a-z0-9-]+)\.[a-z0-9-]+")
_NOT_CUDA = ("g4ad",)


def devices_for(instance_type: str) -> str:
    """The --devices value of an instance type: a GPU family uses every visible GPU (the
    CPU where none is visible, so the documentation's ml.p2 calls run on a laptop);
    `local_gpu` insists on GPUs; CPU families and `local` use the CPU."""
    if instance_type == "local":
        return "cpu"
    if instance_type == "local_gpu":
        return "cuda"
    match = _INSTANCE_TYPE.fullmatch(instance_type or "")
    if match is None:
        raise ConfigError(
            f"instance_type {instance_type!r} is not local, local_gpu or ml.<family>.<size>"
        )
    family = match.group(1)
    return "auto" if family[0] in "pg" and family not in _NOT_CUDA else "cpu"


def ignore(call: Callable, aws_only: Collection[str], **arguments: Any) -> None:
    """Accepts the arguments of `call` that the SDK knows and that only mean something
    on AWS (`aws_only`), with one INFO line naming those given; refuses any other name,
    as Python would (TypeError), saying which known name was meant."""
    for name in arguments:
        if name not in aws_only:
            known = [*inspect.signature(call).parameters, *aws_only]
            raise TypeError(
                f"{_owner(call)}() got an unexpected keyword argument {name!r}"
                f"{did_you_mean(name, known)}"
            )
    given = sorted(name for name, value in arguments.items() if value is not None)
    if given:
        logger.info("%s: ignored on this machine (AWS only): %s", _owner(call), ", ".join(given))


def _owner(call: Callable) -> str:
    """How Python names a call in its own TypeError: `Transformer`, `transform`."""
    owner, _, name = call.__qualname__.rpartition(".")
    return owner if name == "__init__" else name


def one_instance(owner: str, instance_count: int) -> None:
    """A job on this machine runs as one instance: this machine, every device it has."""
    if instance_count != 1:
        logger.debug(
            "%s: instance_count=%d runs as one instance here: this machine's devices",
            owner,
            instance_count,
        )


def name_from_base(base: str) -> str:
    """A job name as the SDK makes one: the base and the time, to the millisecond."""
    now = time.time()
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(now))
    return f"{base}-{stamp}-{int(now * 1000) % 1000:03d}"


class LocalJob(Generic[_T]):
    """A job on this machine: run now, or in a background thread when `wait` is False."""

    def __init__(self, name: str, run: Callable[[], _T], wait: bool = True) -> None:
        self.name = name
        self._run = run
        self._result: _T | None = None
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None
        if wait:
            self._result = run()
        else:
            self._thread = threading.Thread(target=self._background, name=name, daemon=True)
            self._thread.start()

    def _background(self) -> None:
        try:
            self._result = self._run()
        except BaseException as exc:  # handed to whoever waits for the job
            self._error = exc

    def wait(self) -> _T:
        """The job's result once it has ended; its error, if it failed."""
        if self._thread is not None:
            self._thread.join()
        if self._error is not None:
            raise self._error
        return self._result
