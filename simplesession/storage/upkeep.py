"""What becomes of idle and of corrupt sessions, the same for every backend.

The idle sweep never waits for a lock and re-checks each session under it before removing
it; a corrupt value is set aside (kept for a human, never deleted) under its key's lock,
only while it is still the bad value that was found, and an ERROR says where it went.
These are :class:`~simplesession.storage.base.Storage`'s own policies, kept here so that
the base stays readable; they call only the base's hooks.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from ..errors import CorruptSessionError, LockTimeout, StorageError
from .document import BadDocument, session_of
from .locks import KeyLock
from .values import Stored, SweepReport, Unreadable

if TYPE_CHECKING:
    from .base import Storage

__all__ = ["acceptable", "cannot_set_aside", "log_left", "log_set_aside", "quarantine", "sweep_slices"]

_log = logging.getLogger("simplesession.storage")


def sweep_slices(storage: Storage, ttl: float | None, dry_run: bool) -> Iterator[SweepReport]:
    """Remove ``storage``'s sessions idle longer than ``ttl`` (``None``: only count), one page a slice."""
    for page, report in storage._sweep_pages(clock=ttl is not None, dry_run=dry_run):
        for item in page:
            report.scanned += 1
            if ttl is None or item.age is None or item.age <= ttl:
                continue
            freed = _remove_if_idle(storage, item.key, ttl, dry_run)
            if freed is None:
                report.in_use += 1
            else:
                report.removed += 1
                report.bytes_freed += freed
        yield report


def _remove_if_idle(storage: Storage, key: str, ttl: float, dry_run: bool) -> int | None:
    """Remove ``key`` if it is still idle; the bytes freed, or ``None`` if it is in use."""
    try:
        # Never wait: a held lock means an update is using the session right now.
        with KeyLock(storage._locks, key, 0):
            found = storage._idle(key)
            if found is None:
                return 0  # removed since the listing
            age, size = found
            if age <= ttl:
                return None  # read or written since the listing
            if not dry_run:
                storage._delete(key)
                if storage._cache is not None:
                    storage._cache.discard(key)
            return size
    except LockTimeout:
        return None


def quarantine(storage: Storage, key: str, reason: str, found: Stored | None, *, check: bool = True) -> str | None:
    """Set aside what is under ``key``; with ``check``, only while it is still as bad as ``found``
    (``None``: unreadable), since a writer may have put a good value there meanwhile. With
    ``check`` and not ``set_aside_corrupt``, only report it."""
    if check and not storage.set_aside_corrupt:
        log_left(key, reason, storage.where(key))
        return None
    with storage.lock(key):  # no writer in flight can be undone (re-entry is free)
        if storage._cache is not None:
            storage._cache.discard(key)
        try:
            now = storage._get(key)
        except Unreadable:
            now = None
        else:
            if now is None:
                return None
            if check and (found is None or now[0] != found[0]) and acceptable(now[0], key, storage.max_size):
                return None  # replaced by a good value meanwhile
        try:
            where = storage._move_aside(key, now)
        except StorageError as exc:
            raise cannot_set_aside(key, storage.where(key), reason, exc) from exc
    if where is not None:
        log_set_aside(key, reason, storage.where(key), where)
    return where


def acceptable(document: bytes, key: str, max_size: int) -> bool:
    """Whether ``document`` is a session of ``key`` that a read would take."""
    try:
        session_of(document, key, max_size)
    except BadDocument:
        return False
    return True


def cannot_set_aside(key: str | None, where: str, reason: str, exc: StorageError) -> CorruptSessionError:
    """The error for a corrupt value at ``where`` that could not be moved."""
    whose = f"session {key!r}" if key is not None else "a session"
    return CorruptSessionError(
        f"{whose} at {where} is unusable ({reason}) and could not be set aside: {exc}; move or delete it by hand",
        key=key,
        path=exc.path,
    )


def log_left(key: str | None, reason: str, where: str) -> None:
    """Say that a corrupt value was left where it is (``set_aside_corrupt`` is off)."""
    whose = f"session {key!r}" if key is not None else "a session"
    _log.error("%s: %s; left it at %s (set_aside_corrupt is off), so it reads as missing", whose, reason, where)


def log_set_aside(key: str | None, reason: str, source: str, where: str) -> None:
    """Say that a corrupt value was moved from ``source`` to ``where``."""
    whose = f"session {key!r}" if key is not None else "a session"
    _log.error("%s: %s; moved it from %s to %s, so the session starts afresh", whose, reason, source, where)
