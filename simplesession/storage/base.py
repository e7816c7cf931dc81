"""The storage contract, documented once here; the adapters only implement it."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

__all__ = ["Storage"]


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

    @abstractmethod
    def read(self, key: str) -> Any | None:
        """The value stored under ``key``, or ``None`` if there is none."""

    @abstractmethod
    def write(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key``, replacing what was there.

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
    def lock(self, key: str) -> AbstractContextManager[None]:
        """A context manager that holds ``key`` exclusively.

        It excludes every other holder of the same key's lock for the storage's reach
        (threads, processes, machines), and is reentrant within one thread. Hold it around a
        ``read``-change-``write`` so that no update is lost. Raises
        :class:`~simplesession.LockTimeout` when the storage's ``lock_timeout`` passes.
        """
