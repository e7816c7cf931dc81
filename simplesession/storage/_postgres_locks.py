"""The locks of :class:`~simplesession.PostgresStorage`: a transaction that holds an advisory lock.

Taking a key's lock checks a connection out of the pool, begins a transaction on it and takes
``pg_try_advisory_xact_lock`` of the key; every read and write of that key made meanwhile in
this process goes through that transaction, and releasing the lock commits it. So a holder
whose connection was lost (the server ended it, or the network did) writes nothing: its
transaction, and with it the lock, are gone, and its next statement or its commit fails.

While a lock is held its transaction asks the server to end it after ``lock_expiry`` seconds
idle (``idle_in_transaction_session_timeout``), and a daemon thread keeps the connections of
live holders busy before that: a holder that is paused (SIGSTOP, a debugger) or cut off loses
its lock after ``lock_expiry``, and one that merely runs long keeps it.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import TYPE_CHECKING, Any

from .locks import Gate, LockSpace

if TYPE_CHECKING:
    from .postgres import PostgresStorage

__all__ = ["Hold", "PostgresLocks", "holding"]

_log = logging.getLogger("simplesession.storage.postgres")


class Hold:
    """A lock this process holds: the connection whose open transaction holds it.

    :ivar conn: the connection, checked out of ``pool`` for as long as the lock is held.
    :ivar wrote: whether anything was written under it (then a failed commit is an error).
    :ivar live: cleared, under ``mutex``, before the transaction ends: the keep-alive thread
        touches only a live hold's connection, never one back in the pool.
    """

    __slots__ = ("conn", "expiry", "live", "mutex", "pool", "since", "wrote")

    def __init__(self, conn: Any, pool: Any, expiry: float) -> None:
        self.conn = conn
        self.pool = pool
        self.expiry = expiry
        self.since = time.monotonic()
        self.wrote = False
        self.live = True
        self.mutex = threading.Lock()


holding: dict[str, Hold] = {}
"""The locks this process holds on PostgreSQL servers, by lock name (one entry set or popped is atomic)."""


class PostgresLocks(LockSpace):
    """A key's lock is a transaction-scoped advisory lock, held by a connection of the pool."""

    # A poll costs two round trips and a connection from the pool: often at first, as most
    # holds last milliseconds, then backing off so that many waiters cost the server little.
    first_poll = 0.001
    last_poll = 0.02

    def __init__(self, storage: PostgresStorage) -> None:
        self.storage = storage

    def name(self, key: str) -> str:
        return self.storage._names + key

    def where(self, key: str) -> tuple[str, str | None]:
        storage = self.storage
        return f"advisory lock {storage._lock_id(key)} of table {storage.table} on {storage.server}", storage.server

    def try_lock(self, gate: Gate, key: str) -> bool:
        hold = self.storage._take(key)
        if hold is None:
            return False
        holding[gate.name] = hold
        _keeper.watch(hold)
        return True

    def unlock(self, gate: Gate, key: str) -> None:
        hold = holding.pop(gate.name, None)
        if hold is not None:
            self.storage._give_back(key, hold)


class _Keeper:
    """A daemon thread that keeps the connections of held locks from looking idle to the server."""

    # Idle, it looks in this often (or a third of the shortest lock_expiry seen): waking a
    # thread on every lock would cost each update a switch of the GIL.
    IDLE_WAIT = 1.0

    def __init__(self) -> None:
        self._mutex = threading.Lock()
        self._thread: threading.Thread | None = None
        self._wait = self.IDLE_WAIT

    def watch(self, hold: Hold) -> None:
        if self._thread is None or hold.expiry / 3 < self._wait:
            with self._mutex:
                self._wait = min(self._wait, hold.expiry / 3)
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="simplesession-postgres-locks", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while True:
            time.sleep(self._wait)
            now = time.monotonic()
            for hold in list(holding.values()):
                if now - hold.since >= hold.expiry / 3:
                    _ping(hold, now)


def _ping(hold: Hold, now: float) -> None:
    with hold.mutex:
        if not hold.live:
            return
        try:
            hold.conn.execute(b"SELECT 1")
        except Exception as exc:  # the holder's next statement or commit reports the loss
            _log.warning("could not keep a held session lock's connection busy: %s", exc)
        hold.since = now


_keeper = _Keeper()


def _after_fork_in_child() -> None:
    # A forked child holds none of its parent's locks (the lock core forgets their gates),
    # must never touch their connections, and has no keep-alive thread.
    global _keeper
    holding.clear()
    _keeper = _Keeper()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
