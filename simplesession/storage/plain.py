"""What the session middleware needs of a storage, and a storage of the user's own made to give it.

Every :class:`~simplesession.Storage` has it all. A storage of the user's own may be any
object with ``read``, ``write`` and ``delete``, the shape of grammY's adapters, so that one
ports over as it is: :func:`session_store` wraps it, and this is the one place that looks at
what else such an object offers (``lock``, ``read_versioned``, ``set_aside``, ``ttl``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, runtime_checkable

from .base import Storage
from .document import Version
from .locks import InProcessLocks, KeyLock
from .values import SweepReport

__all__ = ["PlainStorage", "SessionStore", "UserStorage", "session_store"]

_log = logging.getLogger("simplesession.storage")
_MISSING = object()
LOCK_TIMEOUT = 10.0
"""Seconds a storage of the user's own waits for a key's in-process lock, as the built-in ones do by default."""


@runtime_checkable
class PlainStorage(Protocol):
    """The least a storage needs: the three methods of grammY's adapters."""

    def read(self, key: str) -> Any | None: ...

    def write(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


class SessionStore(Protocol):
    """The part of :class:`~simplesession.Storage` that the session middleware uses."""

    @property
    def records_versions(self) -> bool: ...

    def read_for_session(self, key: str, versions: bool = False) -> tuple[Any, Version | None, bytes | None] | None: ...

    def write_for_session(self, key: str, value: Any, raw: bytes, version: Version | None) -> None: ...

    def delete(self, key: str) -> None: ...

    def lock(self, key: str) -> AbstractContextManager[Any]: ...

    def lock_name(self, key: str) -> str: ...

    def set_aside(self, key: str, reason: str) -> str | None: ...

    def sweep_slices(self) -> Iterator[SweepReport]: ...

    def use_ttl(self, ttl: float | None, where: str) -> None: ...


def session_store(storage: object, where: str) -> SessionStore:
    """``storage`` as the middleware uses it (``where`` names the middleware in errors)."""
    if isinstance(storage, Storage):
        return storage
    if not isinstance(storage, PlainStorage):
        raise TypeError(f"{where}: storage must have read, write and delete methods, not {storage!r}")
    return UserStorage(storage)


class UserStorage:
    """A storage of the user's own, as the middleware uses it.

    Its values are passed through as they are. Without a ``lock`` method of its own, a key
    is locked within this process, so that the updates of one chat in two threads never
    interleave; a storage shared by several processes should bring its own ``lock(key)``.
    """

    def __init__(self, storage: PlainStorage) -> None:
        self.storage = storage
        self.records_versions = hasattr(storage, "read_versioned")
        self._own_lock = getattr(storage, "lock", None)
        self._locks = InProcessLocks(f"user:{id(storage):x}")

    def __repr__(self) -> str:
        return repr(self.storage)

    def read_for_session(self, key: str, versions: bool = False) -> tuple[Any, Version | None, bytes | None] | None:
        if versions:
            found = self.storage.read_versioned(key)  # type: ignore[attr-defined]
            return None if found is None else (found[0], found[1], None)
        value = self.storage.read(key)
        return None if value is None else (value, None, None)

    def write_for_session(self, key: str, value: Any, raw: bytes, version: Version | None) -> None:
        if version is not None:
            self.storage.write(key, value, version=version)  # type: ignore[call-arg]
        else:
            self.storage.write(key, value)

    def delete(self, key: str) -> None:
        self.storage.delete(key)

    def lock(self, key: str) -> AbstractContextManager[Any]:
        if self._own_lock is not None:
            return self._own_lock(key)  # type: ignore[no-any-return]
        return KeyLock(self._locks, key, LOCK_TIMEOUT)

    def lock_name(self, key: str) -> str:
        return self._locks.name(key)

    def set_aside(self, key: str, reason: str) -> str | None:
        own = getattr(self.storage, "set_aside", None)
        if own is not None:
            return own(key, reason)  # type: ignore[no-any-return]
        # Keep the value under a side key, then free the key.
        value = self.storage.read(key)
        aside = None
        if value is not None:
            aside = f"{key}~set-aside~{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            self.storage.write(aside, value)
            _log.error("session %r: %s; kept it as %r, starting afresh", key, reason, aside)
        self.storage.delete(key)
        return aside

    def sweep_slices(self) -> Iterator[SweepReport]:
        own = getattr(self.storage, "sweep_slices", None)
        return iter(()) if own is None else own()

    def use_ttl(self, ttl: float | None, where: str) -> None:
        if ttl is None:
            return
        current = getattr(self.storage, "ttl", _MISSING)
        if current is _MISSING:
            raise TypeError(f"{where}: ttl needs a storage with expiry (FileStorage, MemoryStorage, RedisStorage)")
        if current is None:
            self.storage.ttl = ttl  # type: ignore[attr-defined]
        elif current != ttl:
            raise ValueError(f"{where}: ttl={ttl} conflicts with the storage's own ttl={current}")
