"""The in-memory front caches of storages: a small thread-safe LRU map, and one that keeps all."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

__all__ = ["Cache", "LRUCache", "MapCache"]

K = TypeVar("K")
V = TypeVar("V")


class LRUCache(Generic[K, V]):
    """Keeps the ``maxsize`` most recently used entries; ``maxsize=0`` keeps none."""

    def __init__(self, maxsize: int) -> None:
        if type(maxsize) is not int or maxsize < 0:
            raise ValueError(f"cache_size must be a whole number >= 0, not {maxsize!r}")
        self.maxsize = maxsize
        self._data: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        # No lock: each call on the OrderedDict is atomic, and an entry another thread
        # removed between the two is simply not moved.
        value = self._data.get(key)
        if value is not None:
            try:  # noqa: SIM105 - contextlib.suppress would cost more than the lookup
                self._data.move_to_end(key)
            except KeyError:
                pass
        return value

    def put(self, key: K, value: V) -> None:
        if not self.maxsize:
            return
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            if len(self._data) > self.maxsize:
                self._data.popitem(last=False)

    def discard(self, key: K) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


class Cache(Protocol[V]):
    """What a storage's front cache offers, by session key."""

    def get(self, key: str) -> V | None: ...

    def put(self, key: str, value: V) -> None: ...

    def discard(self, key: str) -> None: ...


class MapCache(Generic[K, V]):
    """Keeps every entry: a plain dict, each of whose single operations is atomic already."""

    def __init__(self) -> None:
        self._data: dict[K, V] = {}
        # The dict's own methods, called without a Python frame between.
        self.get: Callable[[K], V | None] = self._data.get
        self.put: Callable[[K, V], None] = self._data.__setitem__

    def discard(self, key: K) -> None:
        self._data.pop(key, None)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)
