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
from types import TracebackType
from typing import TYPE_CHECKING, Any

from .. import data
from ..errors import CorruptSessionError, LockTimeout, StorageError
from ..keys import key_bytes
from .base import Storage, SweepReport, Version, ttl_seconds
from .document import BadDocument, decode_document, encode_document
from .file import StorageStats

if TYPE_CHECKING:
    import redis

__all__ = ["RedisLock", "RedisStorage"]

_log = logging.getLogger(__name__)

_MISSING_REDIS = "RedisStorage needs the redis package: pip install 'simplesession[redis]'"
_SCAN_COUNT = 500
# Most holds last milliseconds, so a waiter first polls often, then backs off so that many
# waiters do not flood the server.
_FIRST_POLL = 0.002
_LAST_POLL = 0.05
_GLOB = re.compile(rb"([*?\[\]\\])")

# Only the holder's token may release or renew a lock: one that expired and was taken by
# another holder is not ours to touch.
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
# Moves KEYS[1] to KEYS[2] for good, but only if it still is what the caller saw (ARGV[1]:
# 'same' = the string ARGV[2], 'other' = not a string, 'any'), so a good value that a writer
# put there meanwhile stays.
_SET_ASIDE = """
local kind = redis.call('TYPE', KEYS[1]).ok
if kind == 'none' then return 0 end
if ARGV[1] == 'same' and (kind ~= 'string' or redis.call('GET', KEYS[1]) ~= ARGV[2]) then return 0 end
if ARGV[1] == 'other' and kind == 'string' then return 0 end
redis.call('RENAME', KEYS[1], KEYS[2])
redis.call('PERSIST', KEYS[2])
return 1
"""


class _Corrupt(Exception):
    pass


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

    Each value is the JSON document of a session file: ``{"format": 1, "key": ..., "data":
    ...}`` plus ``"version"`` when there is one. A value that is not such a document of its
    key is renamed to its ``aside`` key (kept, without expiry), an ERROR is logged, and the
    key reads as missing. Failures to reach the server raise :class:`~simplesession.StorageError`.
    """

    def __init__(
        self,
        client_or_url: redis.Redis | str,
        *,
        prefix: str = "simplesession:",
        ttl: float | timedelta | None = None,
        lock_timeout: float | None = 10.0,
        lock_expiry: float | timedelta = 30.0,
    ) -> None:
        try:
            import redis
        except ImportError as exc:
            raise ImportError(_MISSING_REDIS) from exc
        if lock_timeout is not None and (isinstance(lock_timeout, bool) or not lock_timeout >= 0):
            raise ValueError(f"lock_timeout must be a number of seconds >= 0 or None, not {lock_timeout!r}")
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
        self.ttl = ttl_seconds(ttl)
        self.lock_timeout = lock_timeout
        self.lock_expiry = expiry
        self._failure: type[Exception] = redis.RedisError
        self._unreachable = (redis.ConnectionError, redis.TimeoutError)
        self._prefix = prefix.encode("utf-8")
        self._sessions = self._prefix + b"s:"
        self._release = client.register_script(_RELEASE)
        self._renew = client.register_script(_RENEW)
        self._set_aside = client.register_script(_SET_ASIDE)

    def __repr__(self) -> str:
        return f"RedisStorage({self.server!r}, prefix={self.prefix!r})"

    # -- the contract ------------------------------------------------------------------

    def read(self, key: str) -> Any | None:
        got = self._load(key)
        return None if got is None else got[0]

    def read_versioned(self, key: str) -> tuple[Any, Version | None] | None:
        return self._load(key)

    def has(self, key: str) -> bool:
        return self._load(key) is not None

    def write(self, key: str, value: Any, *, version: Version | None = None) -> None:
        value = data.check_copy(value, key)
        if value is None:
            self.delete(key)
            return
        name = self._name(key)
        raw = encode_document(key, value, version)
        ttl = self.ttl
        try:
            self.client.set(name, raw, px=None if ttl is None else _ms(ttl))
        except self._failure as exc:
            raise self._error("write", key, exc) from exc

    def delete(self, key: str) -> None:
        name = self._name(key)
        try:
            self.client.delete(name)
        except self._failure as exc:
            raise self._error("delete", key, exc) from exc

    def keys(self) -> Iterator[str]:
        seen: set[str] = set()  # SCAN may return a key twice
        for names in self._scan(b"s:"):
            for name in names:
                try:
                    key = bytes(name)[len(self._sessions) :].decode("utf-8")
                except UnicodeDecodeError:
                    continue  # not a key any storage of ours wrote
                if key not in seen:
                    seen.add(key)
                    yield key

    def lock(self, key: str) -> RedisLock:
        key_bytes(key)
        return RedisLock(self, key, self.lock_timeout)

    def set_aside(self, key: str, reason: str) -> str | None:
        with self.lock(key):
            return self._move_aside(key, "any", b"", reason)

    def sweep_slices(self, ttl: float | timedelta | None = None, *, dry_run: bool = False) -> Iterator[SweepReport]:
        """Only counts the sessions, one SCAN page per slice: it removes nothing.

        Redis removes idle sessions by itself (every write sets the expiry, every read renews
        it), and the lock of a holder that died expires by itself too.
        """
        ttl_seconds(ttl)
        seen: set[bytes] = set()
        for names in self._scan(b"s:"):
            fresh = {bytes(name) for name in names} - seen
            seen |= fresh
            yield SweepReport(scanned=len(fresh))

    # -- for the command line ----------------------------------------------------------

    def stats(self) -> StorageStats:
        """Sessions and their bytes; ``corrupt_files`` counts values set aside, ``lock_files`` locks held now."""
        stats = StorageStats()
        seen: set[bytes] = set()
        for names in self._scan(b"s:"):
            fresh = {bytes(name) for name in names} - seen
            seen |= fresh
            pipe = self.client.pipeline(transaction=False)
            for name in fresh:
                pipe.strlen(name)
            try:
                sizes = pipe.execute(raise_on_error=False)
            except self._failure as exc:
                raise self._error("count", None, exc) from exc
            stats.sessions += len(fresh)
            stats.bytes += sum(size for size in sizes if type(size) is int)
        stats.corrupt_files = len({bytes(n) for names in self._scan(b"aside:") for n in names})
        stats.lock_files = len({bytes(n) for names in self._scan(b"lock:") for n in names})
        return stats

    def describe(self, key: str) -> tuple[int, float | None] | None:
        """``(bytes, expiry time)`` of ``key``'s stored value (the time ``None`` if it never expires), or ``None``.

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
        return size, (time.time() + left / 1000 if left >= 0 else None)

    # -- internals ---------------------------------------------------------------------

    def _name(self, key: str) -> bytes:
        return self._sessions + key_bytes(key)

    def _lock_name(self, key: str) -> bytes:
        return self._prefix + b"lock:" + key_bytes(key)

    def _scan(self, part: bytes) -> Iterator[list[Any]]:
        """Pages of the names of the keys that begin with prefix + ``part``."""
        pattern = _GLOB.sub(rb"\\\1", self._prefix) + part + b"*"
        cursor = 0
        while True:
            try:
                cursor, names = self.client.scan(cursor, match=pattern, count=_SCAN_COUNT)
            except self._failure as exc:
                raise self._error("list", None, exc) from exc
            yield names
            if cursor == 0:
                return

    def _load(self, key: str) -> tuple[Any, Version | None] | None:
        name = self._name(key)
        ttl = self.ttl
        try:
            raw = self.client.get(name) if ttl is None else self.client.getex(name, px=_ms(ttl))
        except self._failure as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise self._error("read", key, exc) from exc
            self._move_aside(key, "other", b"", "it is not a string value")
            return None
        if raw is None:
            return None
        assert isinstance(raw, bytes)  # decode_responses=False
        try:
            return self._decode(raw, key)
        except _Corrupt as exc:
            self._move_aside(key, "same", raw, str(exc))
            return None

    @staticmethod
    def _decode(raw: bytes, key: str) -> tuple[Any, Version | None]:
        try:
            _, value, version = decode_document(raw, key)
        except BadDocument as exc:
            raise _Corrupt(str(exc)) from None
        return value, version

    def _move_aside(self, key: str, what: str, raw: bytes, reason: str) -> str | None:
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        aside = self._prefix + b"aside:" + key_bytes(key) + f":{when}-{os.urandom(3).hex()}".encode()
        try:
            moved = self._set_aside(keys=[self._name(key), aside], args=[what, raw])
        except self._failure as exc:
            raise CorruptSessionError(
                f"session {key!r} on {self.server} is unusable ({reason}) and could not be set aside: {exc}; "
                f"rename or delete the key {self._name(key)!r} by hand",
                key=key,
                path=self.server,
            ) from exc
        if not moved:
            return None  # gone, or a writer replaced it with a good value meanwhile
        where = aside.decode("utf-8")
        _log.error("session %r: %s; moved its value on %s to %r, so it starts afresh", key, reason, self.server, where)
        return where

    def _error(self, action: str, key: str | None, exc: Exception) -> StorageError:
        whose = f"session {key!r}" if key is not None else "the sessions"
        hint = "; RedisStorage needs Redis 6.2 or later" if "unknown command" in str(exc).lower() else ""
        if isinstance(exc, self._unreachable):
            hint = "; is the server running and reachable?"
        message = f"could not {action} {whose} on {self.server}: {str(exc).rstrip('.')}{hint}"
        return StorageError(message, key=key, path=self.server)

    def _timeout(self, key: str, timeout: float | None) -> LockTimeout:
        return LockTimeout(
            f"session {key!r} is still locked by another update after {timeout} s "
            f"(lock {self.prefix}lock:{key} on {self.server}); a handler is running long or is stuck: "
            "find it, or raise lock_timeout",
            key=key,
            path=self.server,
            timeout=timeout,
        )

    def _take(self, key: str, deadline: float | None, timeout: float | None) -> bytes:
        """Take the Redis lock of ``key`` by ``deadline``; return the token that proves it is ours."""
        name, token, pause = self._lock_name(key), os.urandom(16).hex().encode(), _FIRST_POLL
        while True:
            try:
                if self.client.set(name, token, nx=True, px=_ms(self.lock_expiry)):
                    return token
            except self._failure as exc:
                raise self._error("lock", key, exc) from exc
            left = math.inf if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise self._timeout(key, timeout)
            time.sleep(min(pause, left))
            pause = min(pause * 2, _LAST_POLL)

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


class RedisLock:
    """Holds one session key on a Redis server while the ``with`` block runs; reentrant in a thread.

    :ivar name: orders locks globally (see :class:`~simplesession.storage.locks.KeyLock`);
        it names the server, prefix and key, so storages on the same server share it.
    """

    __slots__ = ("_storage", "key", "name", "timeout")

    def __init__(self, storage: RedisStorage, key: str, timeout: float | None) -> None:
        self._storage = storage
        self.key = key
        self.name = f"redis:{storage.server}:{storage.prefix}lock:{key}"
        self.timeout = timeout

    def __enter__(self) -> None:
        timeout = self.timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        hold = _join(self.name)
        try:
            if not hold.mutex.acquire(timeout=-1 if timeout is None else timeout):
                raise self._storage._timeout(self.key, timeout)
            try:
                if hold.depth == 0:
                    hold.token = self._storage._take(self.key, deadline, timeout)
                    hold.storage, hold.key = self._storage, self.key
                    _watchdog.watch(hold)
                hold.depth += 1
            except BaseException:
                hold.mutex.release()
                raise
        except BaseException:
            _leave(self.name)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        hold = _holds.get(self.name)
        if hold is None:
            return  # entered before a fork, in the parent: the lock is the parent's to release
        try:
            hold.depth -= 1
            if hold.depth == 0:
                assert hold.storage is not None
                _watchdog.forget(hold)
                hold.storage._give_back(hold.key, hold.token)
        finally:
            hold.mutex.release()
            _leave(self.name)

    def __repr__(self) -> str:
        return f"<RedisLock {self.key!r} on {self.name}>"


class _Hold:
    """This process's part in one Redis lock: an RLock queues its threads and gives reentrancy."""

    __slots__ = ("depth", "key", "mutex", "storage", "token", "users")

    def __init__(self) -> None:
        self.mutex = threading.RLock()
        self.depth = 0  # guarded by mutex
        self.users = 0  # guarded by _holds_mutex: while > 0 the entry stays
        # Of the current holding (depth > 0): who took the Redis lock, for which key, with what token.
        self.storage: RedisStorage | None = None
        self.key = ""
        self.token = b""


_holds: dict[str, _Hold] = {}
_holds_mutex = threading.Lock()


def _join(name: str) -> _Hold:
    with _holds_mutex:
        hold = _holds.get(name)
        if hold is None:
            hold = _holds[name] = _Hold()
        hold.users += 1
        return hold


def _leave(name: str) -> None:
    # An idle key keeps no entry, so the table stays as small as the number of keys in use.
    with _holds_mutex:
        hold = _holds[name]
        hold.users -= 1
        if hold.users == 0:
            del _holds[name]


class _Watchdog:
    """A daemon thread that renews each lock this process holds every third of its expiry."""

    def __init__(self) -> None:
        self._wake = threading.Condition(threading.Lock())
        self._due: dict[_Hold, float] = {}
        self._thread: threading.Thread | None = None

    def watch(self, hold: _Hold) -> None:
        assert hold.storage is not None
        with self._wake:
            self._due[hold] = time.monotonic() + hold.storage.lock_expiry / 3
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="simplesession-redis-locks", daemon=True)
                self._thread.start()
            self._wake.notify()

    def forget(self, hold: _Hold) -> None:
        with self._wake:
            self._due.pop(hold, None)

    def _run(self) -> None:
        while True:
            with self._wake:
                now = time.monotonic()
                due = [(hold, hold.storage, hold.key, hold.token) for hold, at in self._due.items() if at <= now]
                if not due:
                    self._wake.wait(min(self._due.values(), default=now + 60) - now)
                    continue
                for hold, storage, _, _ in due:
                    assert storage is not None
                    self._due[hold] = now + storage.lock_expiry / 3
            for hold, storage, key, token in due:  # not under _wake: a slow server must not stall lock()
                assert storage is not None
                try:
                    kept = storage._renew(keys=[storage._lock_name(key)], args=[token, _ms(storage.lock_expiry)])
                except Exception as exc:
                    _log.warning(
                        "could not renew the lock of session %r on %s (%s); trying again", key, storage.server, exc
                    )
                    continue
                if not kept:  # lost, or released meanwhile; a release reports a loss
                    with self._wake:
                        if hold.token == token:
                            self._due.pop(hold, None)


_watchdog = _Watchdog()


def _forget_holds() -> None:
    # A forked child holds none of its parent's locks and has no watchdog thread.
    global _holds_mutex, _watchdog
    _holds.clear()
    _holds_mutex = threading.Lock()
    _watchdog = _Watchdog()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_holds)
