"""A storage written with nothing but the base's hooks: a dict behind them, and a clock of its own.

It shows what a new backend has to write; the contract suite, the middleware and the command
line run on it like on the built-in storages.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

from simplesession import Storage
from simplesession.storage.locks import InProcessLocks
from simplesession.storage.values import Listed, Stored


class HookStorage(Storage):
    """Documents in a dict, each with its last use on ``clock``, the storage's idle clock in seconds."""

    kind = "a dict"

    def __init__(self, *, cache_size: int = 16, **options: Any) -> None:
        self.clock = 0.0
        self.aside: dict[str, bytes] = {}
        self._docs: dict[str, tuple[bytes, float, int]] = {}  # document, last use, serial
        self._serial = 0
        self._mutex = threading.Lock()
        super().__init__(locks=InProcessLocks(f"hooks:{id(self):x}"), cache_size=cache_size, **options)

    def __repr__(self) -> str:
        return f"HookStorage(<{len(self._docs)} sessions>)"

    def _get(self, key: str) -> Stored | None:
        found = self._docs.get(key)
        return None if found is None else (found[0], found[1:])

    def _stamp(self, key: str, known: Any) -> tuple[float, int] | None:
        found = self._docs.get(key)
        return None if found is None else found[1:]

    def _put(self, key: str, document: bytes) -> tuple[float, int]:
        with self._mutex:
            self._serial += 1
            self._docs[key] = (document, self.clock, self._serial)
        return self.clock, self._serial

    def _delete(self, key: str) -> None:
        with self._mutex:
            self._docs.pop(key, None)

    def _age(self, stamp: Any) -> float:
        return self.clock - stamp[0]  # type: ignore[no-any-return]

    def _touch(self, key: str, stamp: Any) -> tuple[float, int] | None:
        with self._mutex:
            found = self._docs.get(key)
            if found is None or found[1:] != stamp:
                return None
            self._docs[key] = (found[0], self.clock, found[2])
        return self.clock, found[2]

    def _set_used(self, key: str, used: float) -> None:
        with self._mutex:
            found = self._docs.get(key)
            if found is not None:  # as long ago on this clock as ``used`` is on the wall clock
                self._docs[key] = (found[0], self.clock - (time.time() - used), found[2])

    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        with self._mutex:
            docs = list(self._docs.items())
        yield [Listed(key, self.clock - used, len(doc)) for key, (doc, used, _) in docs]

    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        with self._mutex:
            found = self._docs.get(key)
            if found is None or (expected is not None and found[0] != expected[0]):
                return None
            del self._docs[key]
            self.aside[key] = found[0]
        return f"aside[{key!r}]"
