"""SageMaker's InputFilter/OutputFilter (a JSONPath subset) and its join of input
and prediction (`--join-source Input`)."""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from typing import Any

from o2v_batch.errors import FilterError


def _arrays() -> tuple[type, ...]:
    """What counts as a JSON array: lists, and the numpy vectors predictions carry
    (embeddings, scores), so output filters index them. Without numpy loaded, no such
    vector exists, and the CLI parent need not import it to check a filter."""
    numpy = sys.modules.get("numpy")
    return (list, tuple) if numpy is None else (list, tuple, numpy.ndarray)


_QUOTED = r"""'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*\""""
_STEP = re.compile(
    rf"""
      \.(?P<name>[A-Za-z_][A-Za-z0-9_-]*)
    | \.(?P<dot_star>\*)
    | \[\s*(?:
          (?P<star>\*)
        | (?P<keys>(?:{_QUOTED})(?:\s*,\s*(?:{_QUOTED}))*)
        | (?P<start>-?\d+)?\s*:\s*(?P<stop>-?\d+)?
        | (?P<index>-?\d+)
      )\s*\]
    """,
    re.X,
)
_KEY = re.compile(r"""'((?:[^'\\]|\\.)*)'|"((?:[^"\\]|\\.)*)\"""")
_ESCAPE = re.compile(r"\\(.)")
_SUPPORTED = "supported: $, .name, ['a','b'], [i], [i:j], *, [*]"

# A step maps one node to one node, or (a multi step) to a list of nodes.
_Step = Callable[[Any], Any]


def compile_filter(expr: str) -> Callable[[Any], Any]:
    """Compile a SageMaker InputFilter/OutputFilter (a JSONPath subset) into a function.

    A path through a wildcard or slice gives the list of its matches; `['a','b']` gives
    an object with those of the keys that exist. A missing key or index, or a value of
    the wrong type on the path, raises FilterError.
    """
    steps = _parse_filter(expr)
    if not steps:
        return _identity
    if not any(multi for _, multi in steps):
        functions = [step for step, _ in steps]

        def select(obj: Any) -> Any:
            for step in functions:
                obj = step(obj)
            return obj

        return select

    def select_all(obj: Any) -> list:
        nodes = [obj]
        for step, multi in steps:
            if multi:
                nodes = [match for node in nodes for match in step(node)]
            else:
                nodes = [step(node) for node in nodes]
        return nodes

    return select_all


def _identity(obj: Any) -> Any:
    return obj


def _parse_filter(expr: str) -> list[tuple[_Step, bool]]:
    if not expr.startswith("$"):
        raise FilterError(f"bad filter {expr!r}: it must start with '$' ({_SUPPORTED})")
    steps = []
    pos = 1
    while pos < len(expr):
        m = _STEP.match(expr, pos)
        if m is None:
            raise FilterError(
                f"bad filter {expr!r}: cannot read {expr[pos:]!r} at position {pos} ({_SUPPORTED})"
            )
        steps.append(_make_step(m, f"filter {expr!r}", expr[:pos]))
        pos = m.end()
    return steps


def _make_step(m: re.Match, name: str, at: str) -> tuple[_Step, bool]:
    """The step a _STEP match describes; `at` is the path before it, for messages."""
    if m["name"] is not None:
        return _key_step(m["name"], name, at), False
    if m["dot_star"] is not None or m["star"] is not None:
        return _star_step(name, at), True
    if m["keys"] is not None:
        keys = [
            _ESCAPE.sub(r"\1", k[1] if k[1] is not None else k[2]) for k in _KEY.finditer(m["keys"])
        ]
        if len(keys) == 1:
            return _key_step(keys[0], name, at), False
        return _keys_step(keys, name, at), False
    if m["index"] is not None:
        return _index_step(int(m["index"]), name, at), False
    start, stop = (None if v is None else int(v) for v in (m["start"], m["stop"]))
    return _slice_step(slice(start, stop), name, at), True


def json_type(value: Any) -> str:
    """What kind of JSON value this is, for messages: `an object`, `a string`..."""
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, _arrays()):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    return "null" if value is None else "a number"


def _expect(node: Any, kinds: type | tuple[type, ...], what: str, name: str, at: str) -> None:
    if not isinstance(node, kinds):
        raise FilterError(f"{name}: expected {what} at {at}, found {json_type(node)}")


def _key_step(key: str, name: str, at: str) -> _Step:
    def step(node: Any) -> Any:
        _expect(node, dict, "an object", name, at)
        try:
            return node[key]
        except KeyError:
            raise FilterError(f"{name}: no key {key!r} at {at}") from None

    return step


def _keys_step(keys: list[str], name: str, at: str) -> _Step:
    def step(node: Any) -> dict:
        _expect(node, dict, "an object", name, at)
        return {key: node[key] for key in keys if key in node}

    return step


def _index_step(index: int, name: str, at: str) -> _Step:
    def step(node: Any) -> Any:
        _expect(node, _arrays(), "an array", name, at)
        try:
            return node[index]
        except IndexError:
            raise FilterError(f"{name}: no index {index} at {at} (length {len(node)})") from None

    return step


def _slice_step(part: slice, name: str, at: str) -> _Step:
    def step(node: Any) -> list:
        _expect(node, _arrays(), "an array", name, at)
        return list(node[part])

    return step


def _star_step(name: str, at: str) -> _Step:
    def step(node: Any) -> list:
        _expect(node, (dict, *_arrays()), "an object or an array", name, at)
        return list(node.values() if isinstance(node, dict) else node)

    return step


def join_input(record: Any, prediction: dict) -> Any:
    """SageMaker's join: the prediction under "SageMakerOutput", in or around the input."""
    if isinstance(record, dict):
        return {**record, "SageMakerOutput": prediction}
    return {"SageMakerInput": record, "SageMakerOutput": prediction}
