"""The locks of :class:`~simplesession.RedisStorage`: a key on the server, taken with a token,
renewed while held, and the fence of every write made under it.

Taking a lock reads the session in the same script (the middleware reads it next), and the
middleware's write-back travels with the release: two round trips per update. What this
process holds is in :data:`holding`, by lock name, so that a storage's writes find the token
that fences them and the value read with the lock.
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from .locks import Gate, LockSpace, thread_holder

if TYPE_CHECKING:
    from .redis import RedisStorage

__all__ = ["NOTHING", "Held", "RedisLocks", "holding", "ms"]

_log = logging.getLogger("simplesession.storage.redis")


def ms(seconds: float) -> int:
    """``seconds`` as whole milliseconds, at least 1 (Redis's expiries)."""
    return max(1, -int(-seconds * 1000 // 1))


NOTHING: Any = object()
"""No value read with the lock (or it was used): a read goes to the server."""


class Held:
    """A lock this process holds on the server.

    :ivar gate: this process's part of the lock, which says which holder has it.
    :ivar token: proves it is ours; every write under it is fenced by it.
    :ivar found: the lock script's reply for the session's value, until a read uses it;
        with the read limit and ttl it was read with (another storage on the same keys
        may differ in them).
    :ivar pending: ``(storage, document)`` the middleware wrote, sent with the release; a
        ``None`` document is a delete.
    """

    __slots__ = ("found", "gate", "limit", "pending", "token", "ttl")

    def __init__(self, gate: Gate, token: bytes, found: Any, limit: int, ttl: float | None) -> None:
        self.gate = gate
        self.token = token
        self.found = found
        self.limit = limit
        self.ttl = ttl
        self.pending: tuple[RedisStorage, bytes | None] | None = None

    def mine(self) -> bool:
        """Whether the calling thread holds it: only the holder uses what it read or wrote ahead."""
        return self.gate.owner is thread_holder()


holding: dict[str, Held] = {}
"""The locks this process holds on Redis servers, by lock name."""


class RedisLocks(LockSpace):
    """A key's lock is its session's name + ``:lock`` on the server, set only if free, with a
    token that proves whose it is, expiring after ``lock_expiry`` unless renewed."""

    # Most holds last milliseconds, so a waiter first polls often, then backs off so that many
    # waiters do not flood the server.
    first_poll = 0.002
    last_poll = 0.05

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage
        self._names = f"redis:{storage.server}:{storage.prefix}lock:"

    def name(self, key: str) -> str:
        return self._names + key

    def where(self, key: str) -> tuple[str, str | None]:
        storage = self.storage
        return f"lock {storage._lock_name(key).decode('utf-8', 'replace')} on {storage.server}", storage.server

    def try_lock(self, gate: Gate, key: str) -> bool:
        storage, token = self.storage, b"%s%x" % (_tokens[0], next(_tokens[1]))
        limit, ttl = storage._read_limit(key), storage.ttl
        found = storage._lock_and_read(key, token, limit, ttl)
        if found is NOTHING:
            return False
        gate.proof = token
        holding[self._names + key] = Held(gate, token, found, limit, ttl)
        _watchdog.watch(gate, storage, key, token)
        return True

    def unlock(self, gate: Gate, key: str) -> None:
        _watchdog.forget(gate)
        held = holding.pop(self._names + key, None)
        if held is not None:
            self.storage._give_back(key, held)


class _Watchdog:
    """A daemon thread that renews each lock this process holds every third of its expiry."""

    # Idle, the thread looks in this often, so that a lock taken then needs no wake-up: waking
    # a thread on every update would cost each update a switch of the GIL.
    IDLE_WAIT = 1.0

    def __init__(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._due: dict[Gate, tuple[float, RedisStorage, str, bytes]] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0  # when the thread looks next, at the latest

    def watch(self, gate: Gate, storage: RedisStorage, key: str, token: bytes) -> None:
        # One item set or popped is atomic: the usual update takes no lock here.
        at = time.monotonic() + storage.lock_expiry / 3
        self._due[gate] = (at, storage, key, token)
        if self._thread is None or at < self._wakes_at:
            with self._wake:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="simplesession-redis-locks", daemon=True)
                    self._thread.start()
                self._wake.notify()

    def forget(self, gate: Gate) -> None:
        self._due.pop(gate, None)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [
                    (gate, storage, key, token)
                    for gate, (at, storage, key, token) in list(self._due.items())
                    if at <= now
                ]
                if not due:
                    self._wakes_at = min((held[0] for held in self._due.values()), default=now + self.IDLE_WAIT)
                    self._wake.wait(self._wakes_at - now)
                    continue
                for gate, storage, key, token in due:
                    self._due[gate] = (now + storage.lock_expiry / 3, storage, key, token)
            for gate, storage, key, token in due:  # not under _wake: a slow server must not stall lock()
                try:
                    kept = storage._renew(keys=[storage._lock_name(key)], args=[token, ms(storage.lock_expiry)])
                except Exception as exc:
                    _log.warning(
                        "could not renew the lock of session %r on %s (%s); trying again", key, storage.server, exc
                    )
                    continue
                if not kept:  # lost, or released meanwhile; the write-back or the release reports a loss
                    held = self._due.get(gate)
                    if held is not None and held[3] == token:
                        self._due.pop(gate, None)


_watchdog = _Watchdog()


def _new_tokens() -> tuple[bytes, Iterator[int]]:
    # A token is unique for the life of a lock: 16 random bytes per process, then a count.
    return os.urandom(16).hex().encode() + b":", itertools.count()


_tokens = _new_tokens()


def _after_fork_in_child() -> None:
    # A forked child has no watchdog thread, holds none of its parent's locks, and must not
    # make its parent's tokens.
    global _watchdog, _tokens
    _watchdog = _Watchdog()
    _tokens = _new_tokens()
    holding.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
