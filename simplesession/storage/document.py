"""The stored form of one session, the same in every storage.

A UTF-8 JSON object: ``{"format": 1, "key": ..., "version": ..., "data": ...}``, with
``version`` only when there is one. It names its key, so that a value can be checked
against the key it was read for, and a file can be listed without a name to decode.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

from .. import data
from ..errors import SessionDataError
from ..keys import shown

Version = int | float
"""A schema version of session data: any int or float, compared numerically."""

__all__ = [
    "FORMAT",
    "BadDocument",
    "Version",
    "check_size",
    "check_version",
    "data_json",
    "decode_document",
    "document_of",
    "encode_document",
    "join_document",
    "key_size",
    "most_bytes",
    "session_of",
    "split_document",
    "too_large",
]

FORMAT = 1
"""The format version written in every document as ``"format"``."""
_KEY_HEAD = b'{"format":%d,"key":' % FORMAT


class BadDocument(ValueError):
    """The bytes are not a session document (of the expected key); ``str()`` says why."""


def check_version(version: object) -> Version:
    """``version`` if it is a session version (an int or a finite float), else ``TypeError``."""
    try:
        usable = type(version) in (int, float) and math.isfinite(version)  # type: ignore[arg-type]
    except OverflowError:  # an int beyond a float's range
        usable = False
    if not usable:
        raise TypeError(f"a session version is an int or a finite float, not {type(version).__name__} {version!r}")
    return version  # type: ignore[return-value]


def encode_document(key: str, value: Any, version: Version | None) -> bytes:
    """The document of ``value``, which :func:`simplesession.data.check_copy` accepted."""
    return document_of(key, data.encode(value), version)


def document_of(key: str, raw: bytes, version: Version | None) -> bytes:
    """The document of a value whose JSON is ``raw`` (so that it is not encoded twice)."""
    return _head(key, version) + raw + b"}\n"


def data_json(document: bytes, key: str, version: Version | None) -> bytes | None:
    """The JSON of the data in a document that :func:`decode_document` read as ``key`` and
    ``version``, if the document is exactly as :func:`document_of` writes it; else ``None``.

    It spares encoding a value that was just decoded. The slice is the data's JSON: a
    document that decodes, starts as ours does and ends in ``}``, holds its data last.
    Any slice that is not a whole JSON value (a hand edit added a member, or spaces) never
    equals an encoding, so it can only make an unchanged session look changed.
    """
    head = _head(key, version)
    if document.startswith(head) and document.endswith(b"}\n"):
        return document[len(head) : -2]
    return None


# A version as data.encode writes one: an int or a finite float.
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")


def split_document(document: bytes, key: str) -> tuple[bytes | None, bytes] | None:
    """``(the version's JSON or None, the data's JSON)`` of a document of ``key`` exactly as
    :func:`document_of` writes it, so that :func:`join_document` makes the same bytes again;
    ``None`` for any other bytes. For storages that keep the parts apart, as a database's columns."""
    head = _key_head(key)
    if not (document.startswith(head) and document.endswith(b"}\n")):
        return None
    start = len(head)
    if document.startswith(b',"data":', start):
        return None, document[start + 8 : -2]
    if document.startswith(b',"version":', start):
        end = document.find(b',"data":', start + 11)
        version = document[start + 11 : end]
        if end > 0 and _NUMBER.fullmatch(version):
            return version, document[end + 8 : -2]
    return None


def join_document(key: str, version: bytes | None, raw: bytes) -> bytes:
    """The document that :func:`split_document` split into ``version`` and ``raw``."""
    if version is None:
        return _key_head(key) + b',"data":' + raw + b"}\n"
    return _key_head(key) + b',"version":' + version + b',"data":' + raw + b"}\n"


def _head(key: str, version: Version | None) -> bytes:
    if version is None:
        return _key_head(key) + b',"data":'
    return _key_head(key) + b',"version":' + data.encode(check_version(version)) + b',"data":'


@functools.lru_cache(maxsize=4096)
def _key_head(key: str) -> bytes:
    return _KEY_HEAD + data.encode(key)


# Around the key's and the data's JSON: the longest version a document can record (an int
# of 309 digits and a sign: check_version refuses ints beyond a float's range) and the rest.
_FRAME = len(',"version":') + 310 + len(',"data":') + len("}\n")


def key_size(key: str) -> int:
    """Bytes of the JSON of ``key`` (a valid key), quotes included."""
    return len(_key_head(key)) - len(_KEY_HEAD)


def most_bytes(key: str | None, max_size: int) -> int:
    """The most bytes a document of ``key`` can take when its data's JSON takes at most
    ``max_size`` bytes; with ``key`` ``None``, of any key whose JSON takes at most ``max_size``."""
    head = len(_KEY_HEAD) + max_size if key is None else len(_key_head(key))
    return head + _FRAME + max_size


def too_large(size: int, max_size: int) -> str:
    """Why a stored value of ``size`` bytes is corrupt under ``max_size``, for messages."""
    return f"it takes {size:,} bytes, over what a session within max_size={max_size:,} can take"


def check_size(key: str, raw: bytes, max_size: int) -> None:
    """:class:`~simplesession.SessionDataError` if ``raw`` (the data's JSON) or ``key`` takes more than ``max_size``."""
    if len(raw) > max_size:
        what = f"is {len(raw):,} bytes of JSON"
    elif key_size(key) > max_size:
        what = f"cannot be stored: its key takes {key_size(key):,} bytes of JSON"
    else:
        return
    raise SessionDataError(
        f"session {shown(key)} {what}, over the storage's max_size={max_size:,}; nothing was stored. "
        "Keep sessions small, or give the storage a larger max_size",
        key=key,
    )


def session_of(document: bytes, key: str, max_size: int) -> tuple[Any, Any, Version | None, bytes]:
    """``(value, a private copy of it, version, its JSON)`` of a document read for ``key``,
    checked by the rules of writing: :class:`BadDocument` saying why it breaks them."""
    if len(document) > most_bytes(key, max_size):
        raise BadDocument(too_large(len(document), max_size))
    found = _as_written(document, key)
    if found is None:  # not as a write makes it (a hand edit, or not a document): all of it is decoded
        _, value, version = decode_document(document, key)
        raw = data_json(document, key, version)
    else:
        value, version, raw = found
    try:
        private = data.checked_copy(value)
    except data.NotSessionData as exc:
        raise BadDocument(f"its data cannot be a session: {exc}") from None
    if raw is None:  # its JSON is needed to measure it
        raw = data.encode(value)
    if len(raw) > max_size:
        raise BadDocument(too_large(len(raw), max_size))
    return value, private, version, raw


def _as_written(document: bytes, key: str) -> tuple[Any, Version | None, bytes] | None:
    """``(data, version, the data's JSON)`` of a document of ``key`` exactly as :func:`document_of`
    writes one, decoding only the data (the usual case, and the quicker); ``None`` for any other."""
    parts = split_document(document, key)
    if parts is None:
        return None
    version_json, raw = parts
    try:
        value = data.decode(raw.decode("utf-8", "surrogatepass"))
        version = None if version_json is None else check_version(data.decode(version_json))
    except (ValueError, TypeError, OverflowError):
        return None  # the whole document is decoded, to say why it cannot be a session
    if value is None or (version is not None and data.encode(version) != version_json):
        return None
    return value, version, raw


def decode_document(raw: bytes, key: str | None = None) -> tuple[str, Any, Version | None]:
    """``(key, data, version)`` of a document (whose key must be ``key``, if given)."""
    try:
        doc = data.decode(raw)
    except data.TooDeep as exc:
        raise BadDocument(str(exc)) from None
    except ValueError as exc:
        raise BadDocument("it is empty" if not raw else f"it is not JSON ({exc})") from None
    if not (type(doc) is dict and doc.get("format") == FORMAT and type(doc.get("key")) is str):
        raise BadDocument("it is JSON but not a simplesession document")
    if doc.get("data") is None:
        raise BadDocument("it has no data")
    if key is not None and doc["key"] != key:
        raise BadDocument(f"it holds the session of {shown(doc['key'])}, not of {shown(key)}")
    if key is None and not doc["key"].isascii():
        try:
            doc["key"].encode("utf-8")
        except UnicodeEncodeError:
            raise BadDocument(f"its key {shown(doc['key'])} is not valid Unicode (it has a lone surrogate)") from None
    version = doc.get("version")
    try:
        version = None if version is None else check_version(version)
    except TypeError as exc:
        raise BadDocument(str(exc)) from None
    return doc["key"], doc["data"], version
