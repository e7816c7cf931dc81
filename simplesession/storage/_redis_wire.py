"""The two calls of every update of :class:`~simplesession.RedisStorage`, on connections of
the client's own pool that stay with the storage between its calls.

redis-py's command path takes a connection from its pool for every call and gives it back
after, counting it for its metrics and sending events: on loopback about as much of the
client's CPU as sending the command and reading its reply. The calls made here keep what
that path guarantees that matters for them: a connection is checked before each use as the
pool checks the one it hands out (a poll of its socket: one the server closed is opened
afresh), each reply is read whole before its connection is used again, a connection that
failed is closed (and opened again by its next call), the client's retry policy, socket
timeouts and health checks apply, and a forked child never touches its parent's
connections. They are made only for a client whose pool hands out plain connections (see
:func:`wire_for`); any other goes the usual way.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import deque
from typing import Any, cast

__all__ = ["Wire", "command", "wire_for"]


def command(*parts: bytes) -> bytes:
    """``parts`` as one command in Redis's protocol (RESP), ready to send."""
    # One formatting of a pattern made once per number of parts: a few times faster than a
    # formatting per part (this runs twice per update).
    pattern = _patterns.get(len(parts))
    if pattern is None:
        pattern = _patterns[len(parts)] = b"*%d\r\n" % len(parts) + b"$%d\r\n%s\r\n" * len(parts)
    values: list[int | bytes] = []
    for part in parts:
        values.append(len(part))
        values.append(part)
    return pattern % tuple(values)


_patterns: dict[int, bytes] = {}


class Wire:
    """Connections borrowed from one pool, each used by one call at a time.

    A connection goes back to the idle ones after its reply has been read, also when that
    reply is an error; after any other failure it is closed first. At most as many stay
    borrowed as calls ran at once: one per thread that used a storage on this pool at the
    same time. A wire lives as long as its pool (see :func:`wire_for`), and storages made on
    the pool later use the same connections.
    """

    def __init__(self, pool: Any) -> None:
        import redis

        self.pool = pool
        self.idle: deque[Any] = deque()
        self._complete = redis.ResponseError  # the whole reply was read: the connection is clean
        self._broken = redis.ConnectionError
        self._unready = (redis.ConnectionError, redis.TimeoutError, OSError)

    def call(self, packed: bytes) -> Any:
        """Send ``packed`` (see :func:`command`) and return the reply, as redis-py parses it."""
        try:
            conn = self.idle.pop()
        except IndexError:
            conn = self._borrow()
        try:
            self._ready(conn)
            reply = conn.retry.call_with_retry(lambda: _send_and_read(conn, packed), _closer(conn))
        except self._complete:
            self.idle.append(conn)
            raise
        except BaseException:
            # Whatever it was (a timeout, an interrupt), a reply may be left unread.
            conn.disconnect()
            self.idle.append(conn)
            raise
        self.idle.append(conn)
        return reply

    def _ready(self, conn: Any) -> None:
        """Check ``conn`` as the pool checks the one it hands out: connected, and with
        nothing to read (else the server closed it meanwhile, or it is out of step), or
        else opened afresh."""
        conn.connect()  # nothing to do if it is
        try:
            if conn.can_read():
                raise self._broken("the connection has data before any command")
        except self._unready:
            conn.disconnect()
            conn.connect()
            if conn.can_read():
                raise self._broken("a new connection has data before any command") from None

    def _borrow(self) -> Any:
        try:
            return self.pool.get_connection()
        except TypeError:  # redis-py before 5.3 wants a command name, which it ignores
            return self.pool.get_connection("EVALSHA")


def _send_and_read(conn: Any, packed: bytes) -> Any:
    conn.send_packed_command((packed,))
    return conn.read_response()


def _closer(conn: Any) -> Any:
    # Before a retry, as redis-py does: the next send opens the connection again.
    return lambda error: conn.disconnect()


# On the pool itself: its connections may hold it, so a wire kept anywhere else would keep
# the pool alive for ever; kept on it, the two go together. Held here only for a fork.
_ATTRIBUTE = "_simplesession_wire"
_wires: weakref.WeakSet[Wire] = weakref.WeakSet()
_made = threading.Lock()


def wire_for(client: Any) -> Wire | None:
    """The :class:`Wire` of ``client``'s pool, shared by every storage on it; ``None`` for a
    client whose calls must go through its own command path.

    That is every client but a plain ``redis.Redis`` on a plain ``ConnectionPool`` speaking
    RESP2: a cluster picks a node per key, a Sentinel pool checks each connection it gets
    back against the master now, a blocking pool shares a bounded number of connections, a
    client-side cache or a credential provider acts on the connections between calls,
    RESP3 brings pushes, a single-connection client has its own lock, and a client whose
    ``execute_command`` is replaced or wrapped (tracing, logging) must see every call.
    """
    import redis

    if not isinstance(client, redis.Redis) or getattr(client, "connection", None) is not None:
        return None
    own = redis.Redis.execute_command
    if type(client).execute_command is not own or hasattr(own, "__wrapped__") or "execute_command" in vars(client):
        return None
    pool = getattr(client, "connection_pool", None)
    if type(pool) is not redis.ConnectionPool or getattr(pool, "cache", None) is not None:
        return None
    kwargs = pool.connection_kwargs
    if kwargs.get("protocol") not in (None, 2, "2") or kwargs.get("credential_provider") is not None:
        return None
    if pool.connection_class not in (redis.Connection, redis.SSLConnection, redis.UnixDomainSocketConnection):
        return None
    if not hasattr(pool, "__dict__"):  # nowhere to keep the wire: the usual way, then
        return None
    with _made:
        wire = vars(pool).get(_ATTRIBUTE)
        if wire is None:
            wire = Wire(pool)
            setattr(pool, _ATTRIBUTE, wire)
            _wires.add(wire)
    return cast("Wire", wire)


def _after_fork_in_child() -> None:
    # The parent's connections are the parent's: a child borrows its own (its pool resets
    # itself on first use). Not closed here: shutting a shared socket would cut the parent off.
    global _made
    _made = threading.Lock()  # another thread of the parent may have held it at the fork
    for wire in list(_wires):
        wire.idle.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
