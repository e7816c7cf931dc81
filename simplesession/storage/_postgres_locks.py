"""The locks of :class:`~simplesession.PostgresStorage`: a transaction that holds an advisory lock.

Taking a key's lock checks a connection out of the pool, begins a transaction on it, takes
``pg_try_advisory_xact_lock`` of the key and reads the session, all in one round trip; every
read and write of that key made meanwhile in this process goes through that transaction, and
releasing the lock commits it, with the session's write-back in the same round trip. So a
holder whose connection was lost (the server ended it, or the network did) writes nothing:
its transaction, and with it the lock, are gone, and its next statement or its commit fails.

While a lock is held its transaction asks the server to end it after ``lock_expiry`` seconds
idle (``idle_in_transaction_session_timeout``), and a daemon thread keeps the connections of
live holders busy before that: a holder that is paused (SIGSTOP, a debugger) or cut off loses
its lock after ``lock_expiry``, and one that merely runs long keeps it.

The session's read and write run as statements prepared on the server, once per connection
(planning them each time would cost more than the round trips saved); a connection told not
to prepare statements (``prepare_threshold=None``, as behind PgBouncer) gets them inline.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ..errors import StorageError
from ._postgres_sql import row_id, signed64
from .locks import Gate, LockSpace

if TYPE_CHECKING:
    from .postgres import PostgresStorage

__all__ = ["Hold", "PostgresLocks", "holding"]

_log = logging.getLogger("simplesession.storage.postgres")


class Hold:
    """A lock this process holds: the connection whose open transaction holds it.

    :ivar conn: the connection, checked out of ``pool`` for as long as the lock is held.
    :ivar found: the session's row as read right after the lock was taken, for the first read
        under it; ``None`` once used or stale. With ``limit``, the read limit it was read with
        (another storage on the table may have another).
    :ivar pending: the write-back (an ``EXECUTE``) sent with the release, or before any other
        statement under the lock; ``None``: none.
    :ivar wrote: whether anything was written under it (then a failed commit is an error).
    :ivar live: cleared, under ``mutex``, before the transaction ends: the keep-alive thread
        touches only a live hold's connection, never one back in the pool.
    """

    __slots__ = ("conn", "expiry", "found", "limit", "live", "mutex", "pending", "pool", "prepared", "since", "wrote")

    def __init__(self, conn: Any, pool: Any, expiry: float, found: Any, limit: int, prepared: bool) -> None:
        self.conn = conn
        self.pool = pool
        self.expiry = expiry
        self.found = found
        self.limit = limit
        self.prepared = prepared
        self.pending: bytes | None = None
        self.since = time.monotonic()
        self.wrote = False
        self.live = True
        self.mutex = threading.Lock()


holding: dict[str, Hold] = {}
"""The locks this process holds on PostgreSQL servers, by lock name (one entry set or popped is atomic)."""
_ready: weakref.WeakKeyDictionary[Any, set[bytes]] = weakref.WeakKeyDictionary()
"""Which storages' statements each connection has prepared, by name."""


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
        hold = self._take(key)
        if hold is None:
            return False
        holding[gate.name] = hold
        _keeper.watch(hold)
        return True

    def unlock(self, gate: Gate, key: str) -> None:
        hold = holding.pop(gate.name, None)
        if hold is not None:
            self._give_back(key, hold)

    def _take(self, key: str) -> Hold | None:
        """Begin a transaction on a connection of the pool, take ``key``'s advisory lock in it and
        read the session; the hold, or ``None`` if another holds the lock."""
        storage = self.storage
        psycopg, statements = storage._psycopg, storage._statements
        pool = storage._pool_now()
        limit = storage._read_limit(key)
        rid = row_id(key)
        values = (signed64(rid) ^ storage._salt, limit, rid.hex().encode())
        for attempt in range(pool.max_size + 2):
            conn = storage._checkout(pool, "lock", key)
            prepared = conn.prepare_threshold is not None
            # psycopg begins a transaction itself on a connection that is not in autocommit.
            query = statements.begin if conn.autocommit else statements.read_committed
            query += (statements.take if prepared else statements.take_inline) % values
            skip = statements.skip
            try:
                if prepared and statements.name not in _ready.setdefault(conn, set()):
                    self._prepare(conn)
                cursor = conn.execute(query)
                for _ in range(skip):  # to the lock's result
                    cursor.nextset()
                if cursor.fetchone() == (True,):
                    cursor.nextset()
                    return Hold(conn, pool, storage.lock_expiry, (cursor.fetchone(),), limit, prepared)
                conn.rollback()
            except psycopg.errors.InvalidSqlStatementName as exc:
                # Dropped since (DISCARD ALL, by the pool's reset): prepared again, once more.
                _ready[conn].discard(statements.name)
                conn.rollback()
                if attempt > pool.max_size:
                    raise storage._error("lock", key, exc) from exc
                continue
            except psycopg.Error as exc:
                if conn.closed and attempt < pool.max_size:
                    continue  # a pooled connection the server had closed meanwhile (a restart): another
                raise storage._error("lock", key, exc) from exc
            finally:
                if conn.info.transaction_status != psycopg.pq.TransactionStatus.INTRANS:
                    pool.putconn(conn)  # not taken: back to the pool
            return None
        raise AssertionError("unreachable")

    def _prepare(self, conn: Any) -> None:
        """Prepare the storage's statements on ``conn``, those it lacks (once per connection)."""
        statements = self.storage._statements
        names = [name for name, _ in statements.prepare]
        found = {
            row[0] for row in conn.execute(b"SELECT name FROM pg_prepared_statements WHERE name = ANY(%s)", [names])
        }
        missing = b"".join(text for name, text in statements.prepare if name not in found)
        if missing:
            conn.execute(missing)
        if not conn.autocommit:
            conn.commit()
        _ready[conn].add(statements.name)

    def _give_back(self, key: str, hold: Hold) -> None:
        """Send the write-back if any and commit, which frees the lock. If something was written
        under it and the commit failed, nothing was: :class:`LockLost` (or, if a statement
        under it had failed, :class:`StorageError`) says so."""
        storage = self.storage
        with hold.mutex:
            hold.live = False
        conn = hold.conn
        failure: StorageError | None = None
        try:
            if conn.info.transaction_status == storage._psycopg.pq.TransactionStatus.INERROR:
                conn.rollback()
                failure = StorageError(
                    f"a statement under the lock of session {key!r} in {storage.location} failed, "
                    "so nothing written under that lock was kept",
                    key=key,
                    path=storage.server,
                )
            elif hold.pending is not None:
                conn.execute(hold.pending + b"COMMIT")
            else:
                conn.commit()
        except storage._psycopg.Error as exc:
            failure = storage._lost(key, exc) if conn.closed else storage._error("write", key, exc)
            if not conn.closed:
                conn.rollback()
        finally:
            hold.pool.putconn(conn)
        if failure is not None:
            if hold.wrote:
                raise failure
            _log.warning("%s (nothing had been written under it)", failure)


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
