"""Sessions in a PostgreSQL table: for bots on several processes or machines that share a database."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from .. import data
from ..data import DEFAULT_MAX_SIZE
from ..errors import LockLost, StorageError
from ._postgres_locks import PostgresLocks, holding
from ._postgres_sql import (
    PAGE,
    QUERIES,
    SCHEMA,
    SCHEMA_ASIDE,
    SHAPE,
    key_column,
    key_of,
    lock_statements,
    row_id,
    signed64,
    version_of,
)
from .base import Storage
from .values import Figure, Listed, StorageStats, Stored, Unreadable, ttl_seconds

if TYPE_CHECKING:
    import psycopg
    import psycopg_pool

__all__ = ["PAGE", "POOL_SIZE", "PostgresStorage"]

_log = logging.getLogger(__name__)

_MISSING = "PostgresStorage needs psycopg 3 and psycopg_pool: pip install 'simplesession[postgres]'"
POOL_SIZE = 10
"""The most connections of the pool a PostgresStorage makes for itself. Each held lock takes
one for as long as it is held; give the storage a pool of your own for more."""


class PostgresStorage(Storage):
    """Sessions in a PostgreSQL table (PostgreSQL 11 or later), shared by every process and machine using it.

    :param conninfo_or_pool: a ``psycopg_pool.ConnectionPool`` (open), or a connection string
        such as ``postgresql://user:password@host/dbname`` (then the storage makes a pool of
        at most :data:`POOL_SIZE` connections of its own, closed by :meth:`close`).
    :param table: the table, ``name`` or ``schema.name``; made if missing, with ``<name>_aside``
        beside it for values set aside. No other simplesession storage should use the name.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read nor
        written reads as missing, by the server's clock; :meth:`sweep` then deletes it.
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever. A waiter polls the lock
        (``pg_try_advisory_xact_lock``), often at first, then backing off.
    :param lock_expiry: seconds after which the server ends the transaction, and so frees the
        lock, of a holder that went silent (paused, cut off). A live holder keeps its lock
        however long it takes.
    :param max_size: the most bytes of JSON a session may take: a bigger one is refused, and a
        stored one too big for one is set aside without being sent (see :class:`Storage`).

    A row holds a session's key, the version of its data, its last use and its JSON document
    (as in a session file). A key's lock is a transaction-scoped advisory lock, taken on a
    connection of the pool and held there from load to write-back: reads and writes of the
    key go through that transaction, and releasing the lock commits it (a write under the
    lock travels with the release). A holder whose connection was lost gets
    :class:`~simplesession.LockLost` and writes nothing, so no stale value ever overwrites a
    newer one. Each held lock takes a connection of the pool while it is held. A stored value
    that is not a session of its key is moved to the ``_aside`` table (kept), an ERROR is
    logged, and the key reads as missing. Failures to reach the server raise
    :class:`~simplesession.StorageError`. The database must be UTF8; behind PgBouncer, give a
    pool whose connections have ``prepare_threshold=None``. A storage used in a forked child
    makes a pool of its own there (a pool it was given cannot cross a fork).
    """

    kind = "PostgreSQL"

    def __init__(
        self,
        conninfo_or_pool: str | psycopg_pool.ConnectionPool[Any],
        *,
        table: str = "simplesession",
        ttl: float | timedelta | None = None,
        lock_timeout: float | None = 10.0,
        lock_expiry: float | timedelta = 30.0,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        try:
            import psycopg
            import psycopg_pool
        except ImportError as exc:
            raise ImportError(_MISSING) from exc
        parts = _table_parts(table)
        expiry = ttl_seconds(lock_expiry, "lock_expiry")
        if expiry is None:
            raise ValueError(
                "lock_expiry must be a positive duration, not None: a lock must free itself if its holder dies"
            )
        self.table = table
        self.lock_expiry = expiry
        self._psycopg = psycopg
        self._conninfo = None if not isinstance(conninfo_or_pool, str) else _expiring(conninfo_or_pool, expiry)
        self._pid = os.getpid()
        if self._conninfo is not None:
            # Connect once first: an unreachable server is an error now, saying why, rather
            # than a pool retrying in the background until a timeout.
            try:
                with psycopg.connect(self._conninfo, autocommit=True, connect_timeout=10) as conn:
                    self._prepare(conn, parts)
            except psycopg.Error as exc:
                raise self._error("open", None, exc, where=_conninfo_host(self._conninfo)) from exc
            self._pool: psycopg_pool.ConnectionPool[Any] = self._own_pool()
        else:
            if not isinstance(conninfo_or_pool, psycopg_pool.ConnectionPool):
                raise TypeError(
                    "PostgresStorage takes a connection string or a psycopg_pool.ConnectionPool, "
                    f"not {type(conninfo_or_pool).__name__}"
                )
            self._pool = conninfo_or_pool
            try:
                with self._pool.connection() as conn:
                    self._prepare(conn, parts)
            except psycopg.Error as exc:
                raise self._error("open", None, exc, where="the server of the pool given") from exc
        super().__init__(locks=PostgresLocks(self), ttl=ttl, lock_timeout=lock_timeout, max_size=max_size)

    def _prepare(self, conn: psycopg.Connection[Any], parts: tuple[str, ...]) -> None:
        """Make the tables if missing, check their shape, and learn where they are."""
        from psycopg import sql

        info = conn.info
        if info.host.startswith("/"):  # a unix socket's folder
            self.server = f"postgresql://{info.user}@/{info.dbname}?host={info.host}&port={info.port}"
        else:
            self.server = f"postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
        if conn.execute("SHOW server_encoding").fetchone() != ("UTF8",):
            raise StorageError(f"the database {self.server} is not UTF8: PostgresStorage keeps JSON text in UTF-8")
        table = sql.Identifier(*parts)
        aside = sql.Identifier(*parts[:-1], parts[-1] + "_aside")
        qualified = table.as_string(conn)
        with conn.transaction():
            # Two processes making the table at once wait for each other here.
            conn.execute("SELECT pg_advisory_xact_lock(%s)", [signed64(hashlib.blake2b(b"tables").digest())])
            for name, schema in ((table, SCHEMA), (aside, SCHEMA_ASIDE)):
                if conn.execute("SELECT to_regclass(%s)", [name.as_string(conn)]).fetchone() == (None,):
                    conn.execute(sql.SQL(schema).format(t=table, a=aside))
            try:
                conn.execute(sql.SQL(SHAPE).format(t=table, a=aside))
            except self._psycopg.errors.UndefinedColumn as exc:
                raise StorageError(
                    f"the table {qualified} on {self.server} is not a simplesession table ({exc}): "
                    "give PostgresStorage another table name",
                    path=self.server,
                ) from None
            found = conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE c.oid = %s::regclass",
                [qualified],
            ).fetchone()
        assert found is not None
        # The table by its schema and name, whatever search_path found it by: one set of lock
        # names, lock ids and statements for every storage on it.
        canonical = f"{found[0]}.{found[1]}"
        table, aside = sql.Identifier(*found), sql.Identifier(found[0], found[1] + "_aside")
        self._names = f"postgres:{self.server}:{canonical}:"
        self._salt = signed64(hashlib.blake2b(canonical.encode(), digest_size=8).digest())
        self._aside = f"{canonical}_aside"
        self._sql = {name: sql.SQL(text).format(t=table, a=aside).as_bytes(conn) for name, text in QUERIES.items()}
        expiry_ms = _ms(self.lock_expiry)
        self._statements = lock_statements(self._sql, canonical, expiry_ms, expiring=self._conninfo is not None)

    def _own_pool(self) -> psycopg_pool.ConnectionPool[Any]:
        import psycopg_pool

        assert self._conninfo is not None
        return psycopg_pool.ConnectionPool(
            self._conninfo, min_size=1, max_size=POOL_SIZE, kwargs={"autocommit": True}, name=self._names, open=True
        )

    def __repr__(self) -> str:
        return f"PostgresStorage({self.server!r}, table={self.table!r})"

    def close(self) -> None:
        """Close the pool the storage made for itself (a pool it was given is left open)."""
        if self._conninfo is not None and self._pid == os.getpid():
            self._pool.close()

    # -- what the command line shows -----------------------------------------------------

    @property
    def location(self) -> str:
        return f"table {self.table} on {self.server}"

    def where(self, key: str) -> str:
        return f"the row of {key!r} in table {self.table} on {self.server}"

    def about(self) -> list[Figure]:
        return [Figure("server", "server", self.server), Figure("table", "table", self.table)]

    def stats(self, progress: Any = None) -> StorageStats:
        """Sessions, their bytes and last uses, counted by the server; and the values set aside."""
        (count, size, oldest, newest), (aside,) = (
            self._one("count", None, "stats"),
            self._one("count", None, "aside_count"),
        )
        now = time.time()
        stats = StorageStats(
            count, int(size), None if oldest is None else now - oldest, None if newest is None else now - newest
        )
        stats.details = [Figure("set_aside", "set aside", aside, f"{aside} (table {self._aside})" if aside else "0")]
        return stats

    # -- the hooks -------------------------------------------------------------------------

    def _get(self, key: str) -> Stored | None:
        limit = self._read_limit(key)
        hold = holding.get(self._names + key)
        if hold is not None and hold.found is not None and hold.limit == limit:
            found, hold.found = hold.found[0], None  # read with the lock: no round trip
        else:
            found = self._one("read", key, "get", (limit, row_id(key)), binary=True)
        if found is None:
            return None
        document, size, age = found
        if document is None:
            raise Unreadable(self._too_large(size))
        return bytes(document), (age, time.monotonic())

    def _put(self, key: str, document: bytes) -> Any:
        version = version_of(key, document)
        hold = holding.get(self._names + key)
        if hold is not None and hold.prepared:
            # Sent with the release, in its round trip (or before any other statement under the lock).
            literal = b"NULL" if version is None else data.encode(version)
            values = (
                row_id(key).hex().encode(),
                key_column(key).encode().hex().encode(),
                literal,
                document.hex().encode(),
            )
            hold.found, hold.wrote, hold.pending = None, True, self._statements.put % values
        else:
            self._run("write", key, "put", (row_id(key), key_column(key), version, document), wrote=True)
        return 0.0, time.monotonic()

    def _delete(self, key: str) -> None:
        self._run("delete", key, "delete", (row_id(key),), wrote=True)

    def _age(self, stamp: Any) -> float:
        age, seen = stamp
        return age + time.monotonic() - seen  # type: ignore[no-any-return]

    def _touch(self, key: str, stamp: Any) -> Any:
        return (0.0, time.monotonic()) if self._run("touch", key, "touch", (row_id(key),)) else None

    def _set_used(self, key: str, used: float) -> None:
        self._run("set the idle clock of", key, "set_used", (used, row_id(key)), wrote=True)

    def _idle(self, key: str) -> tuple[float, int] | None:
        found = self._one("look at", key, "idle", (row_id(key),))
        return None if found is None else (found[0], found[1])

    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        last = b""
        while True:
            rows = self._rows("list", "page", (last,))
            yield [Listed(key_of(key), age, size) for _, key, age, size in rows]
            if len(rows) < PAGE:
                return
            last = rows[-1][0]

    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        if expected is None:  # unreadable: too large to be a session
            params: tuple[Any, ...] = (row_id(key), self._read_limit(key))
            found = self._one("set aside", key, "aside_large", params, wrote=True)
        else:
            found = self._one("set aside", key, "aside_same", (row_id(key), expected[0]), wrote=True)
        return None if found is None else f"row aside_id={found[0]} of table {self._aside} on {self.server}"

    # -- statements --------------------------------------------------------------------------

    def _one(
        self,
        action: str,
        key: str | None,
        query: str,
        params: Sequence[Any] = (),
        *,
        binary: bool = False,
        wrote: bool = False,
    ) -> Any:
        """The one row of ``query`` (``None``: none), run as :meth:`_run` runs it."""
        rows = self._run(action, key, query, params, binary=binary, wrote=wrote, fetch=True)
        return rows[0] if rows else None

    def _rows(self, action: str, query: str, params: Sequence[Any]) -> list[Any]:
        return self._run(action, None, query, params, fetch=True)  # type: ignore[no-any-return]

    def _run(
        self,
        action: str,
        key: str | None,
        query: str,
        params: Sequence[Any],
        *,
        binary: bool = False,
        wrote: bool = False,
        fetch: bool = False,
    ) -> Any:
        """Run one statement: in the transaction of ``key``'s lock if this process holds it, else
        on a connection of the pool. Its rows with ``fetch``, else how many rows it changed."""
        statement = self._sql[query]
        hold = None if key is None else holding.get(self._names + key)
        if hold is not None:
            hold.found = None  # what the lock read may be stale from here on
            if wrote:
                hold.wrote = True
            try:
                if hold.pending is not None:
                    hold.conn.execute(hold.pending)
                    hold.pending = None
                cursor = hold.conn.execute(statement, params, binary=binary)
            except self._psycopg.Error as exc:
                if hold.conn.closed:
                    hold.wrote = False  # reported here: the release has nothing more to say
                    raise self._lost(key, exc) from exc
                raise self._error(action, key, exc) from exc
            return cursor.fetchall() if fetch else cursor.rowcount
        pool = self._pool_now()
        for attempt in range(pool.max_size + 1):
            conn = self._checkout(pool, action, key)
            try:
                cursor = conn.execute(statement, params, binary=binary)
                result = cursor.fetchall() if fetch else cursor.rowcount
                if not conn.autocommit:
                    conn.commit()
            except self._psycopg.Error as exc:
                if conn.closed and attempt < pool.max_size:
                    continue  # a pooled connection the server had closed meanwhile (a restart): try another
                raise self._error(action, key, exc) from exc
            finally:
                pool.putconn(conn)  # a closed one is dropped
            return result
        raise AssertionError("unreachable")

    def _checkout(
        self, pool: psycopg_pool.ConnectionPool[Any], action: str, key: str | None
    ) -> psycopg.Connection[Any]:
        from psycopg_pool import PoolTimeout

        try:
            conn: psycopg.Connection[Any] = pool.getconn()
        except PoolTimeout as exc:
            raise StorageError(
                f"could not {action} session {key!r} in {self.location}: no connection of its pool was free "
                f"within {pool.timeout:g} s ({pool.max_size} at most; each lock held takes one): "
                "give PostgresStorage a larger pool of your own, or find what holds them",
                key=key,
                path=self.server,
            ) from exc
        except self._psycopg.Error as exc:
            raise self._error(action, key, exc) from exc
        return conn

    def _pool_now(self) -> psycopg_pool.ConnectionPool[Any]:
        """The pool; in a forked child, a new one of its own if the storage made it (the parent's
        connections are the parent's: they are left alone, never closed from here)."""
        if self._pid != os.getpid() and self._conninfo is not None:
            _inherited.append(self._pool)
            self._pid = os.getpid()
            self._pool = self._own_pool()
        return self._pool

    # -- locks ---------------------------------------------------------------------------------

    def _lock_id(self, key: str) -> int:
        return signed64(row_id(key)) ^ self._salt

    # -- errors ----------------------------------------------------------------------------------

    def _error(self, action: str, key: str | None, exc: Exception, where: str | None = None) -> StorageError:
        whose = f"session {key!r}" if key is not None else "the sessions"
        place = where or self.location
        hint = "; is the server running and reachable?" if isinstance(exc, self._psycopg.OperationalError) else ""
        message = f"could not {action} {whose} in {place}: {_said(exc)}{hint}"
        return StorageError(message, key=key, path=getattr(self, "server", place))

    def _lost(self, key: str | None, exc: Exception) -> LockLost:
        return LockLost(
            f"the lock of session {key!r} in {self.location} was lost with its connection ({_said(exc)}), "
            "so nothing was written; another update may have changed the session since",
            key=key,
            path=self.server,
        )


_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_inherited: list[Any] = []
"""Pools a forked child found in its storages: kept, never closed, as their connections are its parent's."""


def _said(exc: Exception) -> str:
    return " ".join(str(exc).split()).rstrip(".") or type(exc).__name__


def _table_parts(table: object) -> tuple[str, ...]:
    if type(table) is not str:
        raise TypeError(f"table must be a str, not {type(table).__name__} {table!r}")
    parts = tuple(table.split("."))
    if not (1 <= len(parts) <= 2 and all(_NAME.fullmatch(part) for part in parts) and len(parts[-1]) <= 57):
        raise ValueError(
            f"table must be a name of ASCII letters, digits and _ (at most 57), or schema.name, not {table!r}"
        )
    return parts


def _ms(seconds: float) -> int:
    return max(1, round(seconds * 1000))


def _expiring(conninfo: str, expiry: float) -> str:
    """``conninfo`` for connections that end a transaction idle for ``expiry`` seconds (a lock's
    holder gone silent) by themselves, so that taking a lock need not ask for it."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    try:
        given = conninfo_to_dict(conninfo)
    except ProgrammingError:  # its message may quote the string, password and all
        raise ValueError("not a PostgreSQL connection string: postgresql://... or key=value pairs") from None
    setting = f"-c idle_in_transaction_session_timeout={_ms(expiry)}"
    options = f"{given.get('options') or ''} {setting}".lstrip()
    # Named, unless the string names them, so that pg_stat_activity tells the sessions' connections.
    return make_conninfo(conninfo, options=options, application_name=given.get("application_name") or "simplesession")


def _conninfo_host(conninfo: str) -> str:
    """Where ``conninfo`` points, without its password, for messages."""
    try:
        from psycopg.conninfo import conninfo_to_dict

        found = conninfo_to_dict(conninfo)
    except Exception:
        return "the server of the given connection string"
    user, host, port = found.get("user", ""), found.get("host", "localhost"), found.get("port", 5432)
    return f"postgresql://{user}@{host}:{port}/{found.get('dbname', '')}"
