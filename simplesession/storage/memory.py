"""Sessions in a dict of this process: for tests, scripts and bots that may forget."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, NamedTuple

from .. import data
from ..keys import key_bytes
from .base import Storage, SweepReport, Version, ttl_seconds
from .locks import KeyLock, MemoryKeyLocks

__all__ = ["MemoryStorage"]

_log = logging.getLogger(__name__)


class _Item(NamedTuple):
    value: Any
    raw: bytes  # the value's JSON, for the session middleware
    version: Version | None
    used: float  # time.monotonic() of the last read or write


class MemoryStorage(Storage):
    """Keeps sessions in memory; they are gone when the process ends.

    Values are stored as private copies, so mutating a value after ``write`` or after
    ``read`` never changes what is stored. Locks hold across the threads of this process.

    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read
        nor written reads as missing.
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.

    :ivar set_aside_values: what :meth:`set_aside` moved out of the way, by key.
    """

    def __init__(self, *, ttl: float | timedelta | None = None, lock_timeout: float | None = 10.0) -> None:
        self.ttl = ttl_seconds(ttl)
        self.lock_timeout = lock_timeout
        self.set_aside_values: dict[str, list[Any]] = {}
        self._items: dict[str, _Item] = {}
        self._mutex = threading.Lock()
        self._locks = MemoryKeyLocks(f"memory:{id(self):x}")

    def __repr__(self) -> str:
        return f"MemoryStorage(<{len(self._items)} sessions>)"

    def read(self, key: str) -> Any | None:
        got = self.read_versioned(key)
        return None if got is None else got[0]

    def read_versioned(self, key: str) -> tuple[Any, Version | None] | None:
        item = self._get(key)
        return None if item is None else (data.copy(item.value), item.version)

    def has(self, key: str) -> bool:
        return self._get(key) is not None

    def write(self, key: str, value: Any, *, version: Version | None = None) -> None:
        key_bytes(key)
        value = data.check_copy(value, key)
        if value is None:
            self.delete(key)
        else:
            self._write_for_session(key, value, data.encode(value), version)

    # The session middleware's way in (see FileStorage).

    def _read_for_session(self, key: str) -> tuple[Any, Version | None, bytes] | None:
        item = self._get(key)
        return None if item is None else (data.copy(item.value), item.version, item.raw)

    def _write_for_session(self, key: str, value: Any, raw: bytes, version: Version | None) -> None:
        with self._mutex:
            self._items[key] = _Item(value, raw, version, time.monotonic())

    def delete(self, key: str) -> None:
        key_bytes(key)
        with self._mutex:
            self._items.pop(key, None)

    def keys(self) -> Iterator[str]:
        now = time.monotonic()
        with self._mutex:
            return iter([key for key, item in self._items.items() if not self._expired(item, now)])

    def lock(self, key: str) -> KeyLock:
        key_bytes(key)
        return KeyLock(self._locks, key, self.lock_timeout)

    def set_aside(self, key: str, reason: str) -> str | None:
        with self.lock(key), self._mutex:
            item = self._items.pop(key, None)
            if item is None:
                return None
            self.set_aside_values.setdefault(key, []).append(item.value)
        _log.error("session %r: %s; set it aside in memory, starting afresh", key, reason)
        return f"{self!r}.set_aside_values[{key!r}]"

    def sweep_slices(self, ttl: float | timedelta | None = None, *, dry_run: bool = False) -> Iterator[SweepReport]:
        seconds = ttl_seconds(ttl) if ttl is not None else self.ttl
        report = SweepReport()
        now = time.monotonic()
        for key in list(self._items):
            report.scanned += 1
            if seconds is None:
                continue
            try:
                with self._locks_now(key), self._mutex:
                    item = self._items.get(key)
                    if item is None or now - item.used <= seconds:
                        continue
                    if not dry_run:
                        del self._items[key]
                    report.removed += 1
            except TimeoutError:
                report.in_use += 1
        yield report

    def _locks_now(self, key: str) -> KeyLock:
        return KeyLock(self._locks, key, 0)

    def _get(self, key: str) -> _Item | None:
        key_bytes(key)
        now = time.monotonic()
        with self._mutex:
            item = self._items.get(key)
            if item is None or self._expired(item, now):
                return None
            if self.ttl is not None:
                self._items[key] = item._replace(used=now)
            return item

    def _expired(self, item: _Item, now: float) -> bool:
        return self.ttl is not None and now - item.used > self.ttl
