"""How each kind of hyperparameter value is read and checked: integers and numbers
in a range, choices, booleans, encoder layers, file paths and the comparator list, in
their real types or SageMaker's string forms. Each check names what it allows in its
message."""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from o2v_batch.errors import HyperparameterError

_INTEGER = re.compile(r"[+-]?\d+")


def show(value: Any) -> str:
    """A raw value as the user wrote it: strings quoted, so '' and ' 4' stay visible."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, str) else str(value)


def _invalid(name: str, value: Any, allowed: str) -> HyperparameterError:
    return HyperparameterError(f"{name}={show(value)} is not valid: must be {allowed}")


def _out_of_range(name: str, number: float, allowed: str) -> HyperparameterError:
    return HyperparameterError(f"{name}={number} is out of range: must be {allowed}")


def _as_int(value: Any) -> int | None:
    # bool is an int subclass in Python; `true` is never a count.
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and _INTEGER.fullmatch(value.strip()):
        return int(value)
    return None


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True)
class _Range:
    """A number in lo..hi; subclasses say which kind and how a value is read."""

    lo: float
    hi: float
    kind: ClassVar[str]
    read: ClassVar[Callable[[Any], float | None]]

    def allowed(self) -> str:
        return f"{self.kind} in {self.lo}..{self.hi}"

    def __call__(self, name: str, value: Any) -> float:
        number = type(self).read(value)
        if number is None:
            raise _invalid(name, value, self.allowed())
        if not self.lo <= number <= self.hi:
            raise _out_of_range(name, number, self.allowed())
        return number


@dataclass(frozen=True)
class Int(_Range):
    kind = "an integer"
    read = staticmethod(_as_int)


@dataclass(frozen=True)
class Float(_Range):
    kind = "a number"
    read = staticmethod(_as_float)


@dataclass(frozen=True)
class Choice:
    options: tuple[str, ...]

    def allowed(self) -> str:
        return "one of " + ", ".join(self.options)

    def __call__(self, name: str, value: Any) -> str:
        if isinstance(value, str) and value.strip() in self.options:
            return value.strip()
        raise _invalid(name, value, self.allowed())


@dataclass(frozen=True)
class Bool:
    def allowed(self) -> str:
        return "true or false"

    def __call__(self, name: str, value: Any) -> bool:
        if isinstance(value, bool):
            return value
        # SageMaker passes booleans as the strings "true"/"false" (any case).
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _invalid(name, value, self.allowed())


@dataclass(frozen=True)
class Layers:
    counts: Int = Int(1, 4)

    def allowed(self) -> str:
        return "auto or " + self.counts.allowed()

    def __call__(self, name: str, value: Any) -> int | str:
        if isinstance(value, str) and value.strip() == "auto":
            return "auto"
        number = _as_int(value)
        if number is None:
            raise _invalid(name, value, self.allowed())
        if not self.counts.lo <= number <= self.counts.hi:
            raise _out_of_range(name, number, self.allowed())
        return number


@dataclass(frozen=True)
class FilePath:
    def allowed(self) -> str:
        return "a file path"

    def __call__(self, name: str, value: Any) -> str:
        if isinstance(value, str) and value.strip():
            return value.strip()
        raise _invalid(name, value, self.allowed())


@dataclass(frozen=True)
class Comparators:
    options: tuple[str, ...]

    def allowed(self) -> str:
        return "a comma-separated list of " + ", ".join(self.options) + ", each at most once"

    def __call__(self, name: str, value: Any) -> tuple[str, ...]:
        if isinstance(value, str):
            names = [part.strip() for part in value.split(",")]
        elif isinstance(value, Sequence) and all(isinstance(part, str) for part in value):
            names = [part.strip() for part in value]
        else:
            raise _invalid(name, value, self.allowed())
        if not any(names) or len(set(names)) != len(names) or not set(names) <= set(self.options):
            raise _invalid(name, value, self.allowed())
        return tuple(names)
