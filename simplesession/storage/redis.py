"""Sessions on a Redis server: for bots that run on several processes or machines."""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, cast

from ..data import DEFAULT_MAX_SIZE
from ..errors import StorageError
from ..keys import key_bytes
from .base import Storage
from .locks import Gate, LockSpace
from .values import Figure, KeyInfo, Listed, StorageStats, Stored, Unreadable, aside_suffix, ttl_seconds

if TYPE_CHECKING:
    import redis

__all__ = ["RedisStorage"]

_log = logging.getLogger(__name__)

_MISSING_REDIS = "RedisStorage needs the redis package: pip install 'simplesession[redis]'"
_SCAN_COUNT = 500
_GLOB = re.compile(rb"([*?\[\]\\])")

# Only the holder's token may release or renew a lock: one that expired and was taken by
# another holder is not ours to touch.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# Moves KEYS[1] to KEYS[2] for good, but only if it still is what the caller saw (ARGV[1]:
# 'same' = the string ARGV[2], 'other' = not a string of at most ARGV[2] bytes), so a good
# value that a writer put there meanwhile stays.
_SET_ASIDE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if ARGV[1] == 'same' and (kind ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[2]) then return 0 end
if ARGV[1] == 'other' and kind == 'string' and redis.call('STRLEN', KEYS[1]) <= tonumber(ARGV[2]) then
  return 0
end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
return 1
"""
# A session's value in one round trip, but only if it takes at most ARGV[1] bytes: else its
# size, so that a value too big for a session is never sent (nor its expiry renewed). With
# ARGV[2], the expiry in ms, the read renews it.
_READ = """
local size = redis.call('STRLEN', KEYS[1])
if size > tonumber(ARGV[1]) then return size end
if ARGV[2] == '' then return redis.call('GET', KEYS[1]) end
return redis.call('GETEX', KEYS[1], 'PX', ARGV[2])
"""


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _address(client: redis.Redis) -> str:
    """Where ``client`` connects, without credentials (it goes into messages and logs)."""
    pool = getattr(client, "connection_pool", None)
    kwargs: dict[str, Any] = getattr(pool, "connection_kwargs", {})
    db = kwargs.get("db", 0)
    if kwargs.get("path"):
        return f"unix://{kwargs['path']}?db={db}"
    return f"redis://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{db}"


class RedisStorage(Storage):
    """Sessions on a Redis server (6.2 or later), shared by every process and machine using it.

    :param client_or_url: a ``redis.Redis`` client (with the default ``decode_responses=False``)
        or a URL such as ``redis://localhost:6379/0``.
    :param prefix: begins every Redis key of this storage, so that bots can share a database:
        sessions are ``{prefix}s:{key}``, locks ``{prefix}lock:{key}``, and values set aside
        ``{prefix}aside:{key}:{UTC time}-{random}``. No prefix should begin with another's.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read nor
        written expires; Redis removes it by itself (writes set the expiry, reads renew it).
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    :param lock_expiry: seconds after which the lock of a holder that died frees itself. A live
        holder keeps its lock however long it takes: a daemon thread renews every lock the
        process holds each ``lock_expiry / 3`` seconds.
    :param max_size: the most bytes of JSON a session may take: a bigger one is refused, and
        a value too big for one is set aside without being fetched (see :class:`Storage`).

    Each value is the JSON document of a session file: ``{"format": 1, "key": ..., "data":
    ...}`` plus ``"version"`` when there is one. A value that is not such a document of its
    key is renamed to its ``aside`` key (kept, without expiry), an ERROR is logged, and the
    key reads as missing. Failures to reach the server raise :class:`~simplesession.StorageError`.
    """

    kind = "Redis"
    expires_by_itself = True

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        prefix: str = "simplesession:",
        ttl: float | timedelta | None = None,
        lock_timeout: float | None = 10.0,
        lock_expiry: float | timedelta = 30.0,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ImportError(_MISSING_REDIS) from exc
        if type(prefix) is not str:
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__} {prefix!r}")
        if isinstance(client_or_url, str):
            try:
                client = redis.Redis.from_url(client_or_url)
            except ValueError as exc:  # its message does not repeat the URL, which may hold a password
                raise ValueError(f"not a Redis URL: {exc}") from None
        else:
            client = client_or_url
        if client.get_encoder().decode_responses:
            raise ValueError("RedisStorage needs a client with decode_responses=False: it stores UTF-8 bytes")
        expiry = ttl_seconds(lock_expiry, "lock_expiry")
        if expiry is None:
            raise ValueError("lock_expiry must be a positive duration, not None: a lock must expire if its holder dies")
        self.client = client
        self.server = _address(client)
        self.prefix = prefix
        self.lock_expiry = expiry
        self._failure: type[Exception] = redis.RedisError
        self._unreachable = (redis.ConnectionError, redis.TimeoutError)
        self._prefix = prefix.encode("utf-8")
        self._sessions = self._prefix + b"s:"
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._set_aside = client.register_script(_SET_ASIDE)
        self._read = client.register_script(_READ)
        super().__init__(locks=_RedisLocks(self), ttl=ttl, lock_timeout=lock_timeout, max_size=max_size)

    def __repr__(self) -> str:
        return f"RedisStorage({self.server!r}, prefix={self.prefix!r})"

    # -- what the command line shows -----------------------------------------------------

    @property
    def location(self) -> str:
        return f"{self.server} (prefix {self.prefix!r})"

    def where(self, key: str) -> str:
        return f"the key {self.prefix}s:{key} on {self.server}"

    def about(self) -> list[Figure]:
        return [Figure("server", "server", self.server), Figure("prefix", "prefix", self.prefix)]

    def stats(self, progress: Any = None) -> StorageStats:
        """Sessions and their bytes, values set aside, and locks held now."""
        stats = StorageStats()
        for names in self._scan_names(b"s:"):
            pipe = self.client.pipeline(transaction=False)
            for name in names:
                pipe.strlen(name)
            try:
                sizes = pipe.execute(raise_on_error=False)
            except self._failure as exc:
                raise self._error("count", None, exc) from exc
            for size in sizes:
                if type(size) is int:
                    stats.saw(size, None)
        aside = sum(len(names) for names in self._scan_names(b"aside:"))
        locks = sum(len(names) for names in self._scan_names(b"lock:"))
        stats.details = [
            Figure("set_aside", "set aside", aside, f"{aside} (keys {self.prefix}aside:*)" if aside else "0"),
            Figure("locks", "locks held", locks),
        ]
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

    # -- the hooks -------------------------------------------------------------------------

    def _name(self, key: str) -> bytes:
        return self._sessions + key_bytes(key)

    def _lock_name(self, key: str) -> bytes:
        return self._prefix + b"lock:" + key_bytes(key)

    def _get(self, key: str) -> Stored | None:
        ttl = self.ttl
        try:
            raw = self._read(keys=[self._name(key)], args=[self._read_limit(key), "" if ttl is None else _ms(ttl)])
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

    def _put(self, key: str, document: bytes) -> None:
        ttl = self.ttl
        try:
            self.client.set(self._name(key), document, px=None if ttl is None else _ms(ttl))
        except self._failure as exc:
            raise self._error("write", key, exc) from exc

    def _delete(self, key: str) -> None:
        try:
            self.client.delete(self._name(key))
        except self._failure as exc:
            raise self._error("delete", key, exc) from exc

    def _set_used(self, key: str, used: float) -> None:
        # Its expiry is its idle clock: with a ttl, the session expires as long after ``used``.
        if self.ttl is None:
            return
        try:
            self.client.pexpire(self._name(key), _ms(self.ttl - max(0.0, time.time() - used)))
        except self._failure as exc:
            raise self._error("set the expiry of", key, exc) from exc

    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        # Redis keeps no last use to report: its expiry does the work of an idle clock.
        start = len(self._sessions)
        for names in self._scan_names(b"s:"):
            page = []
            for name in names:
                try:
                    page.append(Listed(name[start:].decode("utf-8")))
                except UnicodeDecodeError:
                    continue  # not a key any storage of ours wrote
            yield page

    def _scan_names(self, part: bytes) -> Iterator[list[bytes]]:
        """Pages of the names of the keys that begin with prefix + ``part``, each name once."""
        pattern = _GLOB.sub(rb"\\\1", self._prefix) + part + b"*"
        seen: set[bytes] = set()  # SCAN may return a key twice
        cursor = 0
        while True:
            try:
                cursor, names = self.client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            except self._failure as exc:
                raise self._error("list", None, exc) from exc
            fresh = [name for name in cast("list[bytes]", names) if name not in seen]
            seen.update(fresh)
            yield fresh
            if cursor == 0:
                return

    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        # In one step on the server: only if the value still is what the caller found
        # (a string of those bytes, or for None something that is not a string).
        aside = self._prefix + b"aside:" + key_bytes(key) + f":{aside_suffix()}".encode()
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
        message = f"could not {action} {whose} on {self.server}: {str(exc).rstrip('.')}{hint}"
        return StorageError(message, key=key, path=self.server)

    def _give_back(self, key: str, token: bytes) -> None:
        # Raising here would hide the handler's own exception, and the lock frees itself anyway.
        try:
            released = self._release(keys=[self._lock_name(key)], args=[token])
        except self._failure as exc:
            released, why = False, f"could not be released ({exc}); it frees itself within lock_expiry"
        else:
            why = "expired while held (the process was paused or cut off?); another update may have used it"
        if not released:
            _log.error("the lock of session %r on %s %s", key, self.server, why)


class _RedisLocks(LockSpace):
    """A key's lock is ``{prefix}lock:{key}`` on the server, set only if free, with a token
    that proves whose it is, expiring after ``lock_expiry`` unless renewed."""

    # Most holds last milliseconds, so a waiter first polls often, then backs off so that many
    # waiters do not flood the server.
    first_poll = 0.002
    last_poll = 0.05

    def __init__(self, storage: RedisStorage) -> None:
        self.storage = storage

    def name(self, key: str) -> str:
        storage = self.storage
        return f"redis:{storage.server}:{storage.prefix}lock:{key}"

    def where(self, key: str) -> tuple[str, str | None]:
        storage = self.storage
        return f"lock {storage.prefix}lock:{key} on {storage.server}", storage.server

    def try_lock(self, gate: Gate, key: str) -> bool:
        storage, token = self.storage, os.urandom(16).hex().encode()
        try:
            if not storage.client.set(storage._lock_name(key), token, nx=True, px=_ms(storage.lock_expiry)):
                return False
        except storage._failure as exc:
            raise storage._error("lock", key, exc) from exc
        gate.proof = token
        _watchdog.watch(gate, storage, key, token)
        return True

    def unlock(self, gate: Gate, key: str) -> None:
        _watchdog.forget(gate)
        assert isinstance(gate.proof, bytes)
        self.storage._give_back(key, gate.proof)


class _Watchdog:
    """A daemon thread that renews each lock this process holds every third of its expiry."""

    def __init__(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._due: dict[Gate, tuple[float, RedisStorage, str, bytes]] = {}
        self._thread: threading.Thread | None = None

    def watch(self, gate: Gate, storage: RedisStorage, key: str, token: bytes) -> None:
        with self._wake:
            self._due[gate] = (time.monotonic() + storage.lock_expiry / 3, storage, key, token)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="simplesession-redis-locks", daemon=True)
                self._thread.start()
            self._wake.notify()

    def forget(self, gate: Gate) -> None:
        with self._wake:
            self._due.pop(gate, None)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [
                    (gate, storage, key, token) for gate, (at, storage, key, token) in self._due.items() if at <= now
                ]
                if not due:
                    self._wake.wait(min((held[0] for held in self._due.values()), default=now + 60) - now)
                    continue
                for gate, storage, key, token in due:
                    self._due[gate] = (now + storage.lock_expiry / 3, storage, key, token)
            for gate, storage, key, token in due:  # not under _wake: a slow server must not stall lock()
                try:
                    kept = storage._renew(keys=[storage._lock_name(key)], args=[token, _ms(storage.lock_expiry)])
                except Exception as exc:
                    _log.warning(
                        "could not renew the lock of session %r on %s (%s); trying again", key, storage.server, exc
                    )
                    continue
                if not kept:  # lost, or released meanwhile; a release reports a loss
                    with self._wake:
                        held = self._due.get(gate)
                        if held is not None and held[3] == token:
                            del self._due[gate]


_watchdog = _Watchdog()


def _new_watchdog() -> None:
    # A forked child has no watchdog thread, and holds none of its parent's locks.
    global _watchdog
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_watchdog)
