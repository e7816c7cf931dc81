"""The small values of the storage contract: checked settings, what backends hand over, reports."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Hashable
from datetime import timedelta
from typing import NamedTuple

from ..keys import key_bytes

__all__ = [
    "Figure",
    "KeyInfo",
    "Listed",
    "Progress",
    "StorageStats",
    "Stored",
    "SweepReport",
    "Unreadable",
    "aside_suffix",
    "check_key",
    "check_lock_timeout",
    "check_max_size",
    "ttl_seconds",
]

Progress = Callable[[int, int], object]
"""Called as ``progress(done, total)`` while a long operation runs."""


def ttl_seconds(ttl: float | timedelta | None, what: str = "ttl") -> float | None:
    """``ttl`` as seconds (``None`` stays ``None``); ``ValueError`` if it is not a positive duration."""
    if ttl is None:
        return None
    if isinstance(ttl, timedelta):
        seconds = ttl.total_seconds()
    elif isinstance(ttl, (int, float)) and not isinstance(ttl, bool):
        seconds = float(ttl)
    else:
        raise TypeError(f"{what} must be seconds (a number) or a timedelta, not {type(ttl).__name__} {ttl!r}")
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{what} must be a positive duration, not {ttl!r}")
    return seconds


def check_lock_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is a number of seconds >= 0 or ``None``, else ``ValueError``."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0):
        raise ValueError(f"lock_timeout must be a number of seconds >= 0 or None, not {timeout!r}")
    return timeout


def check_max_size(max_size: int) -> int:
    """``max_size`` if it is a number of bytes > 0, else ``ValueError``."""
    if type(max_size) is not int or max_size <= 0:
        raise ValueError(f"max_size must be a number of bytes > 0, not {max_size!r}")
    return max_size


def check_key(key: str) -> None:
    """``TypeError``/``ValueError`` saying why ``key`` is not a usable session key."""
    if type(key) is not str or not key.isascii():
        key_bytes(key)


@dataclasses.dataclass
class SweepReport:
    """What a sweep found and did.

    :ivar scanned: sessions looked at.
    :ivar removed: idle sessions removed (or, in a dry run, that would be).
    :ivar bytes_freed: bytes of the removed sessions and debris.
    :ivar debris: leftovers removed: temporary files of crashed writers, stray lock files.
    :ivar in_use: idle sessions kept because an update held their lock or wrote them meanwhile.
    """

    scanned: int = 0
    removed: int = 0
    bytes_freed: int = 0
    debris: int = 0
    in_use: int = 0

    def __iadd__(self, other: SweepReport) -> SweepReport:
        for field in dataclasses.fields(self):
            setattr(self, field.name, getattr(self, field.name) + getattr(other, field.name))
        return self


class Figure(NamedTuple):
    """One thing a storage reports about itself: ``name`` in JSON, ``label`` for people.

    ``text`` is how people read ``value`` when it is not ``str(value)``; a figure without a
    ``label`` is for JSON only.
    """

    name: str
    label: str | None
    value: int | float | str | None
    text: str | None = None


@dataclasses.dataclass
class StorageStats:
    """What :meth:`Storage.stats` counted.

    :ivar sessions: stored sessions.
    :ivar bytes: their total size.
    :ivar oldest: the oldest last use (seconds since the epoch), or ``None`` (none, or not kept).
    :ivar newest: the newest last use, or ``None``.
    :ivar details: the storage's own figures, such as leftover files or values set aside.
    """

    sessions: int = 0
    bytes: int = 0
    oldest: float | None = None
    newest: float | None = None
    details: list[Figure] = dataclasses.field(default_factory=list)

    def saw(self, size: int, used: float | None) -> None:
        """Count one session of ``size`` bytes, last used at ``used``."""
        self.sessions += 1
        self.bytes += size
        if used is not None:
            self.oldest = used if self.oldest is None else min(self.oldest, used)
            self.newest = used if self.newest is None else max(self.newest, used)


class KeyInfo(NamedTuple):
    """Where one session is and what it takes (:meth:`Storage.describe`).

    :ivar where: the file or server key that holds it.
    :ivar size: its bytes as stored.
    :ivar used: its last use (seconds since the epoch), if the storage keeps it.
    :ivar expires: when it expires unless used again, if it will.
    """

    where: str
    size: int
    used: float | None
    expires: float | None


Stored = tuple[bytes, Hashable]
"""``(document, stamp)``: a stored document as a backend's ``_get`` found it, and what
identifies this version of it (``None`` where a backend cannot tell), so that the cache
knows when a value it holds was replaced. A plain tuple: one is made on every read."""


class Listed(NamedTuple):
    """A stored session as a listing found it: ``age`` (seconds idle) and ``size`` only when asked for."""

    key: str
    age: float | None = None
    size: int = 0


class Unreadable(Exception):
    """Raised by :meth:`Storage._get`: something is stored under the key that cannot be read
    as a document (a folder, a file nobody may read, another kind of value); ``str()`` says why."""


def aside_suffix() -> str:
    """The end of a set-aside value's name: the UTC time and a few random characters."""
    return f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.urandom(3).hex()}"
