"""The storage contract, documented once here; the adapters only implement it."""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any

__all__ = ["Storage", "SweepReport", "Version", "ttl_seconds"]

Version = int | float
"""A schema version of session data: any int or float, compared numerically."""


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


class Storage(ABC):
    """Where sessions live: a map from string keys to JSON data.

    Any object with ``read``, ``write`` and ``delete`` can serve as a session storage (the
    shape of grammY's adapters, so a custom adapter ports one to one). The built-in adapters
    derive from this class and also offer ``has``, ``keys`` and ``lock``.

    Values are JSON data: ``dict`` with ``str`` keys, ``list``, ``str``, ``int``, finite
    ``float``, ``bool`` and ``None``, by exact type. Anything else raises
    :class:`~simplesession.SessionDataError` and leaves the stored value as it was. Values
    are isolated: changing an object after writing it, or one returned by ``read``, never
    changes what is stored.
    """

    #: Seconds after which a session that was neither read nor written reads as missing;
    #: ``None`` keeps sessions for ever.
    ttl: float | None

    @abstractmethod
    def read(self, key: str) -> Any | None:
        """The value stored under ``key``, or ``None`` if there is none (or it expired)."""

    @abstractmethod
    def read_versioned(self, key: str) -> tuple[Any, Version | None] | None:
        """``(value, version)`` stored under ``key``, or ``None``; see :meth:`write`."""

    @abstractmethod
    def write(self, key: str, value: Any, *, version: Version | None = None) -> None:
        """Store ``value`` under ``key``, replacing what was there.

        ``version`` records the schema version of ``value`` beside it (migrations use it).
        Writing ``None`` deletes the key, since ``read`` reports a missing key as ``None``.
        """

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""

    def has(self, key: str) -> bool:
        """Whether ``read(key)`` would return a value."""
        return self.read(key) is not None

    @abstractmethod
    def keys(self) -> Iterator[str]:
        """Every stored key, each exactly once, in no particular order.

        Keys written or deleted while the iteration runs may or may not be included.
        """

    @abstractmethod
    def set_aside(self, key: str, reason: str) -> str | None:
        """Move ``key``'s stored value out of the way, keeping it for a human to look at.

        Returns where it went (``None`` if there was nothing to move) and logs an ERROR
        with ``reason``. Afterwards the key reads as missing.
        """

    @abstractmethod
    def sweep_slices(self, ttl: float | timedelta | None = None, *, dry_run: bool = False) -> Iterator[SweepReport]:
        """A sweep (see :meth:`sweep`) in small steps: each ``next()`` does one slice of it."""

    def sweep(self, ttl: float | timedelta | None = None, *, dry_run: bool = False) -> SweepReport:
        """Remove sessions idle longer than ``ttl`` (default: the storage's own) and leftovers.

        Sessions that an update holds locked, or that were written meanwhile, are kept.
        With ``dry_run`` nothing is removed; the report says what would be.
        """
        report = SweepReport()
        for part in self.sweep_slices(ttl, dry_run=dry_run):
            report += part
        return report

    @abstractmethod
    def lock(self, key: str) -> AbstractContextManager[None]:
        """A context manager that holds ``key`` exclusively.

        It excludes every other holder of the same key's lock for the storage's reach
        (threads, processes, machines), and is reentrant within one thread. Hold it around a
        ``read``-change-``write`` so that no update is lost. Raises
        :class:`~simplesession.LockTimeout` when the storage's ``lock_timeout`` passes.
        """
