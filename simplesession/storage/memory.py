"""Sessions in a dict of this process: for tests, scripts and bots that may forget."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from .. import data
from ..keys import key_bytes
from .base import Storage
from .locks import KeyLock, MemoryKeyLocks

__all__ = ["MemoryStorage"]


class MemoryStorage(Storage):
    """Keeps sessions in memory; they are gone when the process ends.

    Values are stored as private copies, so mutating a value after ``write`` or after
    ``read`` never changes what is stored. Locks hold across the threads of this process.

    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    """

    def __init__(self, *, lock_timeout: float | None = 10.0) -> None:
        self.lock_timeout = lock_timeout
        self._values: dict[str, Any] = {}
        self._locks = MemoryKeyLocks(f"memory:{id(self):x}")

    def __repr__(self) -> str:
        return f"MemoryStorage(<{len(self._values)} sessions>)"

    def read(self, key: str) -> Any | None:
        key_bytes(key)
        value = self._values.get(key)
        return None if value is None else data.copy(value)

    def has(self, key: str) -> bool:
        key_bytes(key)
        return key in self._values

    def write(self, key: str, value: Any) -> None:
        key_bytes(key)
        value = data.check_copy(value, key)
        if value is None:
            self._values.pop(key, None)
        else:
            self._values[key] = value

    def delete(self, key: str) -> None:
        key_bytes(key)
        self._values.pop(key, None)

    def keys(self) -> Iterator[str]:
        return iter(list(self._values))

    def lock(self, key: str) -> KeyLock:
        key_bytes(key)
        return KeyLock(self._locks, key, self.lock_timeout)
