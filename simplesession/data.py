"""Session values are JSON data; this module checks, copies and encodes them.

Only ``dict`` (with ``str`` keys), ``list``, ``str``, ``int``, ``float``, ``bool`` and
``None`` are accepted, by exact type. ``json.dumps`` would quietly turn a tuple into a list,
an int dict key into a string and NaN into a non-standard token, so a value read back from
disk would differ from the one a cache handed out; refusing them keeps both the same.
"""

from __future__ import annotations

import json
import math
from typing import Any

from .errors import SessionDataError

__all__ = ["check_copy", "copy", "decode", "encode"]

_SCALARS = (str, int, bool, type(None))

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def copy(value: Any) -> Any:
    """A deep copy of JSON data, much cheaper than :func:`copy.deepcopy`."""
    cls = type(value)
    if cls is dict:
        return {k: copy(v) for k, v in value.items()}
    if cls is list:
        return [copy(v) for v in value]
    return value


def check_copy(value: Any, key: str | None = None) -> Any:
    """A deep copy of ``value``, or :class:`SessionDataError` naming what is not JSON data."""
    whose = f"session {key!r}" if key is not None else "a session"
    try:
        return _check_copy(value)
    except RecursionError:
        raise SessionDataError(f"cannot store {whose}: it is nested too deeply", key=key) from None
    except _Refused:
        problem = _find_problem(value, "session")
        assert problem is not None
        where, what = problem
        raise SessionDataError(
            f"cannot store {whose}: {where} {what}; sessions hold only JSON data "
            "(dict with str keys, list, str, int, float, bool, None)",
            key=key,
            where=where,
        ) from None


def encode(value: Any) -> bytes:
    """UTF-8 JSON text of data that :func:`check_copy` accepted."""
    return _encoder.encode(value).encode("utf-8")


def decode(raw: bytes | str) -> Any:
    """The value of JSON text; ``ValueError`` if it is not strict JSON (NaN, say)."""
    return json.loads(raw, parse_constant=_reject_constant)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


class _Refused(Exception):
    pass


def _check_copy(value: Any) -> Any:
    cls = type(value)
    if cls is dict:
        out = {}
        for k, v in value.items():
            if type(k) is not str:
                raise _Refused
            out[k] = _check_copy(v)
        return out
    if cls is list:
        return [_check_copy(v) for v in value]
    if cls is str:
        if not value.isascii():
            _check_text(value)
        return value
    if cls in _SCALARS:
        return value
    if cls is float and math.isfinite(value):
        return value
    raise _Refused


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise _Refused from None


def _find_problem(value: Any, where: str) -> tuple[str, str] | None:
    # The slow path, run only after _check_copy refused: it walks again to say where.
    cls = type(value)
    if cls is dict:
        for k, v in value.items():
            if type(k) is not str:
                return where, f"has a key {k!r} of type {type(k).__name__} (JSON keys are strings)"
            found = _find_problem(v, f"{where}[{k!r}]")
            if found:
                return found
        return None
    if cls is list:
        for i, v in enumerate(value):
            found = _find_problem(v, f"{where}[{i}]")
            if found:
                return found
        return None
    if cls is str:
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return where, "is a string with a lone surrogate (not valid Unicode)"
        return None
    if cls in _SCALARS:
        return None
    if cls is float:
        return None if math.isfinite(value) else (where, f"is {value!r} (JSON has no NaN or Infinity)")
    name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return where, f"is a {name}"
