"""Sessions on Redis (one server, a Sentinel service or a cluster): for bots that run on several
processes or machines."""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from ..data import DEFAULT_MAX_SIZE
from ..errors import LockLost, StorageError
from ..keys import key_bytes
from . import _redis_scripts as scripts
from ._redis_locks import NOTHING, Held, RedisLocks, holding, ms
from ._redis_topology import Topology, client_from_url
from ._redis_wire import command, wire_for
from .base import Storage
from .document import Version, check_size, document_of
from .values import Figure, KeyInfo, Listed, StorageStats, Stored, Unreadable, aside_suffix, ttl_seconds

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStorage"]

_log = logging.getLogger(__name__)

_MISSING_REDIS = "RedisStorage needs the redis package: pip install 'simplesession[redis]'"
_SCAN_COUNT = 500
_GLOB = re.compile(rb"([*?\[\]\\])")
# A socket timeout shorter than this fails calls on a merely busy machine.
_LEAST_TIMEOUT = 1.0


class RedisStorage(Storage):
    """Sessions on Redis (6.2 or later), shared by every process and machine using it.

    :param client_or_url: a client with the default ``decode_responses=False``: ``redis.Redis``,
        ``redis.cluster.RedisCluster``, or ``Sentinel(...).master_for(name)``; or a URL:
        ``redis://host:6379/0`` for one server, ``redis+cluster://host:port`` for a cluster
        (any of its nodes). A client made from a URL gives up on a call after a socket
        timeout of ``lock_timeout`` (``lock_expiry`` if that is ``None``; at least 1 s) and
        does not retry, so that an update fails within about ``lock_timeout`` when the server
        stops answering; a client you pass keeps its own timeouts and retries.
    :param prefix: begins every Redis key of this storage, so that bots can share a database:
        a session is ``{prefix}{s:{key}}``, its lock that name + ``:lock``, and a value set
        aside that name + ``:aside:{UTC time}-{random}``. The braces are a hash tag: a
        session's keys share one cluster slot. No prefix should begin with another's.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read nor
        written expires; Redis removes it by itself (writes set the expiry, reads renew it).
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    :param lock_expiry: seconds after which the lock of a holder that died frees itself. A live
        holder keeps its lock however long it takes: a daemon thread renews every lock the
        process holds each ``lock_expiry / 3`` seconds. A holder cut off or paused for longer
        loses it, and then writes nothing: see below.
    :param max_size: the most bytes of JSON a session may take: a bigger one is refused, and
        a value too big for one is set aside without being fetched (see :class:`Storage`).
    :param wait_replicas: after each write and delete, wait until this many replicas have it
        (Redis's ``WAIT``), else raise :class:`~simplesession.StorageError`: an update is
        acknowledged only once a failover cannot discard it. ``None`` (the default) means 1
        for a Sentinel client, 0 otherwise (a cluster client takes only 0).

    Writes are fenced. Under a lock, a write or delete is made in one script only if the
    lock still holds this holder's token; if it expired meanwhile (the process was paused,
    or cut off, for longer than ``lock_expiry``), nothing is written, the newer value stays,
    and :class:`~simplesession.LockLost` is raised. Taking a lock reads the session in the
    same script, and the session middleware's write-back goes with the release: an update
    costs two round trips.

    Each value is the JSON document of a session file: ``{"format": 1, "key": ..., "data":
    ...}`` plus ``"version"`` when there is one. A value that is not such a document of its
    key is renamed to its ``aside`` key (kept, without expiry), an ERROR is logged, and the
    key reads as missing. Failures to reach the server raise :class:`~simplesession.StorageError`.

    On a plain ``redis.Redis`` (RESP2, default pool) those two calls go out on connections of
    its pool that the storage keeps between calls, one per thread using it at once, checked
    as the pool checks them; the client's retries and timeouts apply (see ``_redis_wire``).
    """

    kind = "Redis"
    expires_by_itself = True

    def __init__(
        self,
        client_or_url: redis.Redis | str | Any,
        *,
        prefix: str = "simplesession:",
        ttl: float | timedelta | None = None,
        lock_timeout: float | None = 10.0,
        lock_expiry: float | timedelta = 30.0,
        max_size: int = DEFAULT_MAX_SIZE,
        wait_replicas: int | None = None,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ImportError(_MISSING_REDIS) from exc
        if type(prefix) is not str:
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__} {prefix!r}")
        expiry = ttl_seconds(lock_expiry, "lock_expiry")
        if expiry is None:
            raise ValueError("lock_expiry must be a positive duration, not None: a lock must expire if its holder dies")
        if isinstance(client_or_url, str):
            bound = max(_LEAST_TIMEOUT, min(expiry, math.inf if lock_timeout is None else lock_timeout))
            try:
                client = client_from_url(client_or_url, bound)
            except ValueError as exc:  # its message does not repeat the URL, which may hold a password
                raise ValueError(f"not a Redis URL: {exc}") from None
            except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:  # it asks for the slots at once
                raise StorageError(f"could not reach the Redis cluster: {exc}") from exc
        else:
            client = client_or_url
        if client.get_encoder().decode_responses:
            raise ValueError("RedisStorage needs a client with decode_responses=False: it stores UTF-8 bytes")
        self.client = client
        self.topology = Topology(client)
        self.server = self.topology.address
        self.prefix = prefix
        self.lock_expiry = expiry
        if wait_replicas is None:
            wait_replicas = 1 if self.topology.kind == "sentinel" else 0
        if type(wait_replicas) is not int or wait_replicas < 0:
            raise ValueError(f"wait_replicas must be a number of replicas >= 0, not {wait_replicas!r}")
        if wait_replicas and self.topology.cluster:
            # WAIT names no key, so a cluster client cannot tell which primary to ask.
            raise ValueError("wait_replicas is for one server or Sentinel; on a cluster it must be 0")
        self.wait_replicas = wait_replicas
        # A cluster client raises its own kind when no node answers.
        self._failure = (redis.RedisError, redis.exceptions.RedisClusterException)
        self._unreachable = (redis.ConnectionError, redis.TimeoutError)
        self._no_script = redis.exceptions.NoScriptError
        self._prefix = prefix.encode("utf-8")
        self._pattern = _GLOB.sub(rb"\\\1", self._prefix)
        self._renew = client.register_script(scripts.RENEW)
        self._set_aside = client.register_script(scripts.SET_ASIDE)
        self._read = client.register_script(scripts.READ)
        self._lock_read = client.register_script(scripts.LOCK_READ)
        self._commit_script = client.register_script(scripts.COMMIT)
        self._wire = wire_for(client)
        super().__init__(locks=RedisLocks(self), ttl=ttl, lock_timeout=lock_timeout, max_size=max_size)

    def __repr__(self) -> str:
        return f"RedisStorage({self.server!r}, prefix={self.prefix!r})"

    # -- what the command line shows -----------------------------------------------------

    @property
    def location(self) -> str:
        return f"{self.server} (prefix {self.prefix!r})"

    def where(self, key: str) -> str:
        return f"the key {self._name(key).decode('utf-8', 'replace')} on {self.server}"

    def about(self) -> list[Figure]:
        figures = [Figure("server", "server", self.server), Figure("prefix", "prefix", self.prefix)]
        master = self.topology.master()
        if master is not None:
            figures.append(Figure("master", "master now", master))
        return figures

    def stats(self, progress: Any = None) -> StorageStats:
        """Sessions and their bytes, values set aside, and locks held now, on every server of the data."""
        stats = StorageStats()
        for client, names in self._scan_names(b"{s:*}"):
            pipe = client.pipeline(transaction=False)
            for name in names:
                pipe.strlen(name)
            try:
                sizes = pipe.execute(raise_on_error=False)
            except self._failure as exc:
                raise self._error("count", None, exc) from exc
            for size in sizes:
                if type(size) is int:
                    stats.saw(size, None)
        aside = sum(len([n for n in names if not n.endswith(b"}")]) for _, names in self._scan_names(b"{s:*}:aside:*"))
        locks = sum(len(names) for _, names in self._scan_names(b"{s:*}:lock"))
        stats.details = [
            Figure("set_aside", "set aside", aside, f"{aside} (keys {self.prefix}{{s:*}}:aside:*)" if aside else "0"),
            Figure("locks", "locks held", locks),
        ]
        old = sum(len(names) for _, names in self._scan_names(b"s:*"))
        if old:
            text = f"{old} (keys {self.prefix}s:*; run: simplesession --redis URL upgrade)"
            stats.details.append(Figure("old_layout", "old layout", old, text))
        return stats

    def describe(self, key: str) -> KeyInfo | None:
        """Bytes and expiry time of ``key``'s stored value (``expires`` is ``None`` if it never expires).

        Unlike a read, it leaves the session's idle clock alone.
        """
        name = self._name(key)
        pipe = self.client.pipeline(transaction=False)
        pipe.pttl(name)
        pipe.strlen(name)
        try:
            left, size = pipe.execute()
        except self._failure as exc:
            raise self._error("look at", key, exc) from exc
        if left == -2:
            return None
        return KeyInfo(self.where(key), size, None, time.time() + left / 1000 if left >= 0 else None)

    def upgrade(self, *, dry_run: bool = False) -> tuple[int, int]:
        """Move the sessions stored in the key layout before hash tags (``{prefix}s:{key}``) to
        their names now, keeping their expiry (see :meth:`Storage.upgrade`)."""
        moved = kept = 0
        start = len(self._prefix) + 2
        for client, names in self._scan_names(b"s:*"):
            for name in names:
                try:
                    key = name[start:].decode("utf-8")
                except UnicodeDecodeError:
                    continue  # not a key any storage of ours wrote
                try:
                    if self.client.exists(self._name(key)):
                        kept += 1
                    elif dry_run or self._move_old(client, name, self._name(key)):
                        moved += 1
                except self._failure as exc:
                    raise self._error("upgrade", key, exc) from exc
        return moved, kept

    def _move_old(self, client: Any, old: bytes, new: bytes) -> bool:
        """Move ``old`` (on the server of ``client``) to ``new`` with its expiry; whether it was there."""
        # DUMP and RESTORE, not RENAME: on a cluster the two names lie in different slots.
        dumped, left = client.dump(old), client.pttl(old)
        if dumped is None:
            return False
        self.client.restore(new, max(left, 0), dumped)  # refused if new was written meanwhile
        client.delete(old)
        return True

    # -- the hooks -------------------------------------------------------------------------

    def _name(self, key: str) -> bytes:
        return self._prefix + b"{s:" + key_bytes(key) + b"}"

    def _lock_name(self, key: str) -> bytes:
        return self._name(key) + b":lock"

    def _ttl_ms(self) -> int | str:
        ttl = self.ttl
        return "" if ttl is None else ms(ttl)

    def _get(self, key: str) -> Stored | None:
        held = holding.get(self._locks.name(key))
        if held is not None and held.mine():
            if held.pending is not None:  # the middleware's write, not yet sent: read it back
                document = held.pending[1]
                return None if document is None else (document, None)
            if held.found is not NOTHING and held.limit == self._read_limit(key) and held.ttl == self.ttl:
                found, held.found = held.found, NOTHING
                return self._found(found)
        try:
            raw = self._read(keys=[self._name(key)], args=[self._read_limit(key), self._ttl_ms()])
        except self._failure as exc:
            if "WRONGTYPE" in str(exc):
                raise Unreadable("it is not a string value") from None
            raise self._error("read", key, exc) from exc
        if raw is None:
            return None
        if type(raw) is int:
            raise Unreadable(self._too_large(raw))
        assert isinstance(raw, bytes)  # decode_responses=False
        return raw, None

    def _found(self, raw: Any) -> Stored | None:
        """The read that the lock script made, as :meth:`_get` returns it."""
        if raw is None:
            return None
        if type(raw) is int:
            raise Unreadable("it is not a string value" if raw < 0 else self._too_large(raw))
        return cast("bytes", raw), None

    def _lock_and_read(self, key: str, token: bytes, limit: int, ttl: float | None) -> Any:
        """Take ``key``'s lock with ``token`` if it is free, reading its session in the same
        step; what was read (see :data:`scripts.LOCK_READ`), or :data:`NOTHING` if another holds it."""
        name = self._name(key)
        args = (token, b"%d" % ms(self.lock_expiry), b"%d" % limit, b"" if ttl is None else b"%d" % ms(ttl))
        try:
            got = self._run(self._lock_read, name + b":lock", name, *args)
        except self._failure as exc:
            raise self._error("lock", key, exc) from exc
        return NOTHING if type(got) is list else got

    def write_for_session(self, key: str, value: Any, raw: bytes, version: Version | None) -> None:
        # Under this process's lock the write-back waits for the release, to go with it in
        # one script (and a read meanwhile sees it); a subclass that reads or writes its own
        # way is served as the base does.
        held = holding.get(self._locks.name(key)) if self._fast else None
        if held is None or not held.mine():
            super().write_for_session(key, value, raw, version)
            return
        if len(raw) > self.max_size or len(key) > self._long_key:
            check_size(key, raw, self.max_size)
        held.found = NOTHING
        held.pending = (self, document_of(key, raw, version))

    def _put(self, key: str, document: bytes) -> None:
        held = holding.get(self._locks.name(key))
        if held is None:
            self._unfenced(
                key, "write", "set", self._name(key), document, px=None if self.ttl is None else ms(self.ttl)
            )
            return
        # Fenced by whoever holds the lock in this process; only the holder's own write
        # replaces a write-back it has waiting (another thread's would race it anyway).
        if held.mine():
            held.found, held.pending = NOTHING, None
        if not self._commit(key, held.token, b"set", document, release=False):
            raise self._lost(key)

    def _delete(self, key: str) -> None:
        held = holding.get(self._locks.name(key))
        if held is None:
            self._unfenced(key, "delete", "delete", self._name(key))
            return
        if held.mine():
            held.found, held.pending = NOTHING, None
        if not self._commit(key, held.token, b"del", b"", release=False):
            raise self._lost(key)

    def _unfenced(self, key: str, action: str, command: str, *args: Any, **kwargs: Any) -> None:
        """A write or delete without a lock: the client's ``command``, and with
        :attr:`wait_replicas` a ``WAIT`` in the same round trip."""
        try:
            if not self.wait_replicas:
                getattr(self.client, command)(*args, **kwargs)
                return
            pipe = self.client.pipeline(transaction=False)
            getattr(pipe, command)(*args, **kwargs)
            pipe.wait(self.wait_replicas, self._wait_ms())
            _, acked = pipe.execute()
        except self._failure as exc:
            raise self._error(action, key, exc) from exc
        self._wait(key, acked)

    def _run(self, script: Any, lock: bytes, name: bytes, *args: bytes) -> Any:
        """``script`` on the keys ``lock`` and ``name``: one call, without what redis-py's
        script objects add to each (a few µs, on the two calls of every update), and on a
        plain client without what its command path adds (see :mod:`._redis_wire`)."""
        try:
            if self._wire is not None:
                return self._wire.call(command(b"EVALSHA", script.sha.encode(), b"2", lock, name, *args))
            return self.client.execute_command("EVALSHA", script.sha, 2, lock, name, *args)
        except self._no_script:  # a new or restarted server: the script object loads it
            return script(keys=[lock, name], args=args)

    def _commit(self, key: str, token: bytes, op: bytes, document: bytes, *, release: bool) -> bool:
        """Run :data:`scripts.COMMIT`; whether the lock still was ours (else nothing was done).

        With :attr:`wait_replicas`, a write or delete then waits for the replicas, in the same
        round trip, and raises :class:`StorageError` if too few have it."""
        name, ttl = self._name(key), self.ttl
        keys = [name + b":lock", name]
        args = [token, op, document, b"" if ttl is None else b"%d" % ms(ttl), b"1" if release else b"0"]
        action = "write" if op == b"set" else "delete" if op == b"del" else "release the lock of"
        try:
            if not (op and self.wait_replicas):
                return bool(self._run(self._commit_script, *keys, *args))
            for _ in range(2):  # once more after loading the script into a new server
                pipe = self.client.pipeline(transaction=False)
                pipe.evalsha(self._commit_script.sha, 2, *keys, *args)
                pipe.wait(self.wait_replicas, self._wait_ms())
                done, acked = pipe.execute(raise_on_error=False)
                if not isinstance(done, self._no_script):
                    break
                self.client.script_load(scripts.COMMIT)
            for reply in (done, acked):
                if isinstance(reply, Exception):
                    raise reply
        except self._failure as exc:
            raise self._error(action, key, exc) from exc
        if done:
            self._wait(key, acked)
        return bool(done)

    def _wait_ms(self) -> int:
        # Within the socket timeout, which ends the call otherwise.
        return ms(min(self.lock_expiry, self.lock_timeout or self.lock_expiry) / 2)

    def _wait(self, key: str, acked: Any) -> None:
        if type(acked) is int and acked >= self.wait_replicas:
            return
        raise StorageError(
            f"session {key!r} was changed on {self.topology.master() or self.server} but only {acked} of "
            f"{self.wait_replicas} replica(s) confirmed it within {self._wait_ms()} ms, so a failover could "
            "still discard it; the update is not acknowledged (is a replica down or lagging?)",
            key=key,
            path=self.server,
        )

    def _give_back(self, key: str, held: Held) -> None:
        """Release ``key``'s lock, sending the middleware's write-back with it."""
        storage, document = held.pending if held.pending is not None else (self, None)
        op = b"" if held.pending is None else b"set" if document is not None else b"del"
        try:
            done = storage._commit(key, held.token, op, document or b"", release=True)
        except StorageError as exc:
            if op:
                raise
            # Raising here would hide the handler's own exception, and the lock frees itself anyway.
            _log.error(
                "the lock of session %r on %s could not be released (%s); it frees itself within lock_expiry",
                key,
                self.server,
                exc,
            )
            return
        if done:
            return
        if op:
            raise self._lost(key)
        _log.error(
            "the lock of session %r on %s expired while held (the process was paused or cut off?); "
            "another update may have used it",
            key,
            self.server,
        )

    def _lost(self, key: str) -> LockLost:
        return LockLost(
            f"the lock of session {key!r} on {self.server} expired while this update held it (was the process "
            f"paused or cut off for longer than lock_expiry={self.lock_expiry:g} s?), so another update may have "
            "changed the session since: nothing was written, and the newer value stays; run the update again",
            key=key,
            path=self.server,
        )

    def _set_used(self, key: str, used: float) -> None:
        # Its expiry is its idle clock: with a ttl, the session expires as long after ``used``.
        if self.ttl is None:
            return
        try:
            self.client.pexpire(self._name(key), ms(self.ttl - max(0.0, time.time() - used)))
        except self._failure as exc:
            raise self._error("set the expiry of", key, exc) from exc

    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        # Redis keeps no last use to report: its expiry does the work of an idle clock.
        start = len(self._prefix) + 3
        for _, names in self._scan_names(b"{s:*}"):
            page = []
            for name in names:
                try:
                    page.append(Listed(name[start:-1].decode("utf-8")))
                except UnicodeDecodeError:
                    continue  # not a key any storage of ours wrote
            yield page

    def _scan_names(self, part: bytes) -> Iterator[tuple[Any, list[bytes]]]:
        """Pages of the names of the keys that begin with prefix + ``part`` (a glob pattern),
        each name once, with the client of the server they are on; on a cluster, every primary's."""
        pattern = self._pattern + part
        for _, client in self.topology.servers():
            seen: set[bytes] = set()  # SCAN may return a key twice
            cursor = 0
            while True:
                try:
                    cursor, names = client.scan(cursor, match=pattern, count=_SCAN_COUNT)
                except self._failure as exc:
                    raise self._error("list", None, exc) from exc
                fresh = [name for name in cast("list[bytes]", names) if name not in seen]
                seen.update(fresh)
                yield client, fresh
                if cursor == 0:
                    break

    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        # In one step on the server: only if the value still is what the caller found
        # (a string of those bytes, or for None something that is not a string). The aside
        # name shares the session's hash tag, so both are in one cluster slot.
        aside = self._name(key) + f":aside:{aside_suffix()}".encode()
        what, raw = ("other", self._read_limit(key)) if expected is None else ("same", expected[0])
        try:
            moved = self._set_aside(keys=[self._name(key), aside], args=[what, raw])
        except self._failure as exc:
            hint = f"{exc}; rename or delete the key {self._name(key)!r} by hand"
            raise StorageError(hint, key=key, path=self.server) from exc
        return aside.decode("utf-8") if moved else None

    def _error(self, action: str, key: str | None, exc: Exception) -> StorageError:
        whose = f"session {key!r}" if key is not None else "the sessions"
        hint = "; RedisStorage needs Redis 6.2 or later" if "unknown command" in str(exc).lower() else ""
        if isinstance(exc, self._unreachable):
            hint = "; is the server running and reachable?"
            if action != "read":
                hint += " (if the server got the call, it may have been done)"
        message = f"could not {action} {whose} on {self.server}: {str(exc).rstrip('.')}{hint}"
        return StorageError(message, key=key, path=self.server)
