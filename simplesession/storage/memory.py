"""Sessions in a dict of this process: for tests, scripts and bots that may forget."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any, NamedTuple

from ..data import DEFAULT_MAX_SIZE
from .base import Storage
from .document import BadDocument, decode_document
from .locks import InProcessLocks
from .values import Figure, Listed, Stored

__all__ = ["MemoryStorage"]


class _Item(NamedTuple):
    # One stored session; the item itself is its stamp, so every write and touch makes a new one.
    document: bytes
    used: float  # time.monotonic() of the last write, or of the read that last touched it


class MemoryStorage(Storage):
    """Keeps sessions in memory; they are gone when the process ends.

    Sessions are kept as documents, as other storages keep them, and decoded once: every
    session is also in the front cache, so a read costs one copy. Locks hold across the
    threads of this process.

    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read
        nor written reads as missing.
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    :param max_size: the most bytes of JSON a session may take (see :class:`Storage`).

    :ivar set_aside_values: what :meth:`set_aside` moved out of the way, by key (the data,
        or the stored bytes if they were not a session).
    """

    kind = "memory"

    def __init__(
        self,
        *,
        ttl: float | timedelta | None = None,
        lock_timeout: float | None = 10.0,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.set_aside_values: dict[str, list[Any]] = {}
        self._items: dict[str, _Item] = {}
        self._mutex = threading.Lock()
        locks = InProcessLocks(f"memory:{id(self):x}")
        super().__init__(locks=locks, ttl=ttl, lock_timeout=lock_timeout, cache_size=None, max_size=max_size)

    def __repr__(self) -> str:
        return f"MemoryStorage(<{len(self._items)} sessions>)"

    def about(self) -> list[Figure]:
        return [Figure("memory", "memory", f"this process ({self!r})")]

    def _get(self, key: str) -> Stored | None:
        item = self._items.get(key)
        return None if item is None else (item.document, item)

    def _stamp(self, key: str, known: Any) -> _Item | None:
        return self._items.get(key)

    def _put(self, key: str, document: bytes) -> _Item:
        item = _Item(document, time.monotonic())
        with self._mutex:
            self._items[key] = item
        return item

    def _delete(self, key: str) -> None:
        with self._mutex:
            self._items.pop(key, None)

    def _age(self, stamp: Any) -> float:
        return time.monotonic() - stamp.used  # type: ignore[no-any-return]

    def _touch(self, key: str, stamp: Any) -> _Item | None:
        with self._mutex:
            item = self._items.get(key)
            if item is None or item is not stamp:
                return None  # written since: its clock is new anyway
            item = self._items[key] = item._replace(used=time.monotonic())
        return item

    def _set_used(self, key: str, used: float) -> None:
        with self._mutex:
            item = self._items.get(key)
            if item is not None:  # the clock is monotonic: as long ago as ``used`` is
                self._items[key] = item._replace(used=time.monotonic() - max(0.0, time.time() - used))

    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        now = time.monotonic()
        with self._mutex:
            items = list(self._items.items())
        yield [Listed(key, now - item.used, len(item.document)) if clock else Listed(key) for key, item in items]

    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        with self._mutex:
            item = self._items.get(key)
            if item is None or (expected is not None and item.document != expected[0]):
                return None
            del self._items[key]
        try:
            kept: Any = decode_document(item.document, key)[1]
        except BadDocument:
            kept = item.document
        self.set_aside_values.setdefault(key, []).append(kept)
        return f"{self!r}.set_aside_values[{key!r}]"
