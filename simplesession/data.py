"""Session values are JSON data; this module checks, copies and encodes them.

Only ``dict`` (with ``str`` keys), ``list``, ``str``, ``int``, ``float``, ``bool`` and
``None`` are accepted, by exact type. ``json.dumps`` would quietly turn a tuple into a list,
an int dict key into a string and NaN into a non-standard token, so a value read back from
disk would differ from the one a cache handed out; refusing them keeps both the same.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import re
import sys
from typing import Any

from .errors import SessionDataError

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_DEPTH",
    "NotSessionData",
    "TooDeep",
    "check_copy",
    "checked_copy",
    "copy",
    "decode",
    "encode",
    "proven_data",
]

_SCALARS = (bool, type(None))
_CONTAINERS = (dict, list)
DEFAULT_MAX_SIZE = 1 << 20
"""Bytes of JSON a session's data may take by default (1 MiB), in a storage and in the middleware."""
MAX_DEPTH = 256
"""How deeply dicts and lists may nest in a session: a fixed limit, so that what one caller
could store, any other can read back, however deep its own stack."""
_BIG_INT_BITS = 13_000  # ints shorter than this print in fewer than 4,000 digits

_encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
# JSONEncoder.encode builds a C encoder, and a dict to find cycles with, on every call. Data
# that check_copy accepted is a tree, so one C encoder without the cycle check serves all.
_make_c_encoder: Any = getattr(json.encoder, "c_make_encoder", None)
_c_encoder = (
    None
    if _make_c_encoder is None
    else _make_c_encoder(None, _encoder.default, json.encoder.encode_basestring, None, ":", ",", False, False, False)
)


def copy(value: Any) -> Any:
    """A deep copy of JSON data, much cheaper than :func:`copy.deepcopy`."""
    cls = type(value)
    if cls is dict:
        out = {}
        for k, v in value.items():
            out[k] = copy(v) if type(v) in _CONTAINERS else v
        return out
    if cls is list:
        return [copy(v) if type(v) in _CONTAINERS else v for v in value]
    return value


class NotSessionData(ValueError):
    """A value is not session data: at ``where`` in it, ``what`` is wrong (``str()`` says both)."""

    def __init__(self, where: str, what: str) -> None:
        super().__init__(f"{where} {what}")
        self.where = where
        self.what = what


def checked_copy(value: Any) -> Any:
    """A deep copy of ``value``, or :class:`NotSessionData` naming what in it is not JSON data.

    The one set of rules for session data, applied to what is written and to what is read.
    """
    try:
        return _check_copy(value, MAX_DEPTH)
    except _Refused:
        raise _refusal(value) from None


def check_copy(value: Any, key: str | None = None) -> Any:
    """A deep copy of ``value``, or :class:`SessionDataError` naming what is not JSON data."""
    try:
        return _check_copy(value, MAX_DEPTH)  # checked_copy, without a call on the hot path
    except _Refused:
        problem = _refusal(value)
    whose = f"session {key!r}" if key is not None else "a session"
    raise SessionDataError(
        f"cannot store {whose}: {problem}; sessions hold only JSON data "
        "(dict with str keys, list, str, int, float, bool, None)",
        key=key,
        where=problem.where,
    )


def _refusal(value: Any) -> NotSessionData:
    # The slow path, run only after _check_copy refused: it walks again to say where.
    problem = _find_problem(value, "session", MAX_DEPTH)
    assert problem is not None
    return NotSessionData(*problem)


def encode(value: Any) -> bytes:
    """UTF-8 JSON text of data that :func:`check_copy` accepted.

    Other values may raise ``TypeError`` or ``ValueError``, and a value that contains
    itself ``RecursionError``.
    """
    if _c_encoder is None:  # pragma: no cover - Pythons without the C accelerator
        return _encoder.encode(value).encode("utf-8")
    return "".join(_c_encoder(value, 0)).encode("utf-8")


def decode(raw: bytes | str) -> Any:
    """The value of JSON text; ``ValueError`` if it is not strict JSON (NaN, say), or if it
    nests more than one level beyond :data:`MAX_DEPTH` (a stored document, or a line of an
    export, holds the data one level down)."""
    if not isinstance(raw, str):
        # What json.loads does with bytes, minus its encoding guess for the usual case: a
        # document that opens with "{" and a second byte that is not NUL is UTF-8.
        utf8 = raw[:1] == b"{" and raw[1:2] != b"\x00"
        raw = raw.decode("utf-8" if utf8 else json.detect_encoding(raw), "surrogatepass")
    # The C decoder recurses once per level, stopped only by the recursion limit: at the
    # default limit it raises RecursionError long before the C stack runs out, but a program
    # that raised the limit would crash on deep enough text. Then the depth is measured
    # first, unless the text has too few brackets to be deep at all.
    if (
        sys.getrecursionlimit() > _DEFAULT_RECURSION_LIMIT
        and raw.count("[") + raw.count("{") > _DECODE_DEPTH
        and _nesting(raw) > _DECODE_DEPTH
    ):
        raise TooDeep(f"it nests more than {MAX_DEPTH} levels")
    try:
        # The C scanner alone, as JSONDecoder.decode would call it, but without two regex
        # matches and two Python calls; text with spaces around it, or that is not JSON, goes
        # the whole way, which says what is wrong.
        try:
            value, end = _scan(raw, 0)
        except StopIteration:
            return _decoder.decode(raw)
        return value if end == len(raw) else _decoder.decode(raw)
    except RecursionError:
        raise TooDeep(f"it nests more than {MAX_DEPTH} levels (too deeply to decode)") from None


class TooDeep(ValueError):
    """JSON text nests more deeply than session data may."""


_DECODE_DEPTH = MAX_DEPTH + 1
_DEFAULT_RECURSION_LIMIT = 1000
_NOT_STRUCTURE = re.compile(r'[^"\[\]{}]+')
_OPENS_CLOSES = bytes.maketrans(b"[]{}", b"\x02\x00\x02\x00")


def _nesting(text: str) -> int:
    """How deeply the arrays and objects of JSON text nest, without parsing it (no recursion)."""
    # Escaped backslashes and quotes first, so that every quote left opens or closes a
    # string; then the brackets between quotes are the strings' own, and are dropped.
    structure = _NOT_STRUCTURE.sub("", text.replace("\\\\", "").replace('\\"', ""))
    brackets = "".join(structure.split('"')[::2]).encode("ascii").translate(_OPENS_CLOSES)
    return max(itertools.accumulate(map(operator.sub, brackets, itertools.repeat(1))), default=0)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for all: json.loads with an option builds a new one per call.
_decoder = json.JSONDecoder(parse_constant=_reject_constant)
_scan: Any = _decoder.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__


class _Refused(Exception):
    pass


def _check_copy(value: Any, depth: int) -> Any:
    # Plain ASCII strings, small ints, bools and None, most of a session, are taken as they
    # are without a call each; the rest goes through the checks below.
    cls = type(value)
    if cls is dict:
        if not depth:
            raise _Refused
        out = {}
        for k, v in value.items():
            if type(k) is not str or not (k.isascii() or _is_text(k)):
                raise _Refused
            t = type(v)
            if (t is str and v.isascii()) or t is bool or v is None or (t is int and v.bit_length() <= _BIG_INT_BITS):
                out[k] = v
            else:
                out[k] = _check_copy(v, depth - 1)
        return out
    if cls is list:
        if not depth:
            raise _Refused
        return [
            v
            if ((t := type(v)) is str and v.isascii())
            or t is bool
            or v is None
            or (t is int and v.bit_length() <= _BIG_INT_BITS)
            else _check_copy(v, depth - 1)
            for v in value
        ]
    if cls is str:
        if not (value.isascii() or _is_text(value)):
            raise _Refused
        return value
    if cls is int:
        if value.bit_length() > _BIG_INT_BITS and not _is_encodable_int(value):
            raise _Refused
        return value
    if cls in _SCALARS or (cls is float and math.isfinite(value)):
        return value
    raise _Refused


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _is_encodable_int(number: int) -> bool:
    # Python refuses to print ints of more than sys.get_int_max_str_digits() digits.
    try:
        int.__repr__(number)
    except ValueError:
        return False
    return True


def _find_problem(value: Any, where: str, depth: int) -> tuple[str, str] | None:
    # The slow path, run only after _check_copy refused: it walks again to say where.
    cls = type(value)
    if cls in _CONTAINERS and not depth:
        return where, f"is nested too deeply (sessions nest at most {MAX_DEPTH} levels)"
    if cls is dict:
        for k, v in value.items():
            if type(k) is not str:
                return where, f"has a key {k!r} of type {type(k).__name__} (JSON keys are strings)"
            if not _is_text(k):
                return where, f"has a key {k!r} with a lone surrogate (not valid Unicode)"
            found = _find_problem(v, f"{where}[{k!r}]", depth - 1)
            if found:
                return found
        return None
    if cls is list:
        for i, v in enumerate(value):
            found = _find_problem(v, f"{where}[{i}]", depth - 1)
            if found:
                return found
        return None
    if cls is str:
        return None if _is_text(value) else (where, "is a string with a lone surrogate (not valid Unicode)")
    if cls is int:
        if _is_encodable_int(value):
            return None
        return where, "is an int too long for Python to print (see sys.set_int_max_str_digits)"
    if cls in _SCALARS:
        return None
    if cls is float:
        return None if math.isfinite(value) else (where, f"is {value!r} (JSON has no NaN or Infinity)")
    name = cls.__name__ if cls.__module__ == "builtins" else f"{cls.__module__}.{cls.__qualname__}"
    return where, f"is a {name}"


# -- reading what a storage wrote ----------------------------------------------------------


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is beyond a float")
    return number


def _reject(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# The decoder of proven_data: strict JSON whose numbers are all finite (1e999 would be inf).
_proven_scan: Any = json.JSONDecoder(parse_constant=_reject, parse_float=_finite).scan_once  # type: ignore[attr-defined]
# JSON text shorter than this cannot nest deeper than MAX_DEPTH: each level takes two brackets.
_SHALLOW = 2 * MAX_DEPTH + 2


def proven_data(raw: bytes, max_size: int) -> Any:
    """The data whose JSON is ``raw``, if the bytes alone show that it keeps every rule of
    :func:`~simplesession.data.checked_copy` (and of :func:`~simplesession.storage.document.session_of`); else ``None``.

    Decoded strictly, JSON is JSON data but for four things, each ruled out here: a lone
    surrogate, which only an escape (``\\u``) or a surrogate encoded in UTF-8 can make (the
    strict UTF-8 decoder refuses the latter); too deep a nesting, which takes as many opening
    brackets; an infinite float (refused by the decoder); and ``null`` as a whole (no data).
    Ints come out printable, as the decoder and ``repr`` share Python's limit on digits."""
    # A backslash (92) is found by a byte scan several times as fast as the two bytes "\\u".
    if len(raw) > max_size or (92 in raw and b"\\u" in raw):
        return None
    if len(raw) >= _SHALLOW and raw.count(b"[") + raw.count(b"{") > MAX_DEPTH:
        return None
    try:
        text = raw.decode("utf-8")
        value, end = _proven_scan(text, 0)
    except (ValueError, StopIteration, RecursionError):
        return None
    return value if end == len(text) else None
