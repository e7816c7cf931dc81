"""The storage contract, written once: public methods own the policy, backends implement hooks.

A backend stores *documents* (see :mod:`~simplesession.storage.document`) under string keys
and answers a few raw hooks (``_get``, ``_put``, ...). All a user relies on is decided here,
the same for every backend: which keys and values are accepted, on write and on read (one
set of rules); versions; ``ttl`` and ``lock_timeout``; the front cache; what becomes of a
stored value that cannot be a session; the idle sweep; the session middleware's way in.
"""

from __future__ import annotations

import enum
import time
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from .. import data
from ..cache import Cache, LRUCache, MapCache
from ..keys import key_bytes
from . import upkeep
from .document import (
    BadDocument,
    Version,
    check_size,
    check_version,
    data_json,
    document_of,
    join_document,
    most_bytes,
    session_of,
    too_large,
)
from .locks import KeyLock, LockSpace
from .values import (
    Figure,
    KeyInfo,
    Listed,
    Progress,
    StorageStats,
    Stored,
    SweepReport,
    Unreadable,
    check_key,
    check_lock_timeout,
    check_max_size,
    ttl_seconds,
)

__all__ = ["TOUCH_FRACTION", "Storage"]

TOUCH_FRACTION = 0.01
"""A read refreshes a session's idle clock once it is this fraction of the ttl old, so that
reads need not write each time; sessions may expire up to 1 % early."""


class _Default(enum.Enum):
    TIMEOUT = "the storage's lock_timeout"


_DEFAULT_TIMEOUT = _Default.TIMEOUT
_S = TypeVar("_S", bound="Storage")


_Entry = tuple[Hashable, Any, "Version | None", bytes, bool]
# What the front cache holds for a key: (stamp, value, version, raw, settled). ``raw`` is the
# value's JSON, which spares the middleware encoding it again. ``settled``: whether the stamp
# alone proves the value current (see _settled); if not, a hit compares the stored bytes. A
# plain tuple, as one is made on every read from the store and every write.
_Parts = tuple[Hashable, "bytes | None", "bytes | None", "bytes | None"]
# What a backend that keeps a document's parts apart reads (see _get_parts): (stamp, the
# version's JSON, the data's JSON, None), or (stamp, None, None, a whole document as given).


class Storage(ABC):
    """Where sessions live: a map from string keys to JSON data.

    Keys are strings of valid Unicode. Values are JSON data: ``dict`` with ``str`` keys,
    ``list``, ``str``, ``int``, finite ``float``, ``bool`` and ``None``, by exact type, nested
    at most :data:`simplesession.data.MAX_DEPTH` levels; anything else raises
    :class:`~simplesession.SessionDataError` and leaves the stored value as it was. Values are
    isolated: changing an object after writing it, or one returned by ``read``, never changes
    what is stored. What is read is checked by the same rules: a stored value that breaks
    them (or is no session document of its key) is set aside and kept, an ERROR is logged on
    the ``simplesession`` logger, and the key reads as missing.

    A backend derives from this class, implements the hooks below and passes its
    :class:`~simplesession.storage.locks.LockSpace` to ``__init__``. (Any object with
    ``read``, ``write`` and ``delete`` can serve the middleware too, as grammY's adapters do.)

    :param locks: how the backend's locks are taken.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read nor
        written reads as missing; ``None`` keeps sessions for ever.
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    :param cache_size: how many decoded sessions to keep in memory, validated by
        :meth:`_stamp` on each use (0: none; ``None``: all). Only for backends whose stamps
        are cheap.
    :param max_size: the most bytes of JSON a session's data (and its key) may take. A
        bigger value is refused on write with :class:`~simplesession.SessionDataError`, and
        a stored one is corrupt: it is set aside without being loaded, as the backends check
        the size first. So what any read costs in memory is bounded by it.

    :ivar set_aside_corrupt: whether a read moves a corrupt value out of the way (the
        default). Set it to ``False`` and a corrupt value is left where it is, the ERROR is
        logged all the same and the key reads as missing: for tools that must not change
        the store, such as a backup. :meth:`set_aside` moves it either way.
    """

    #: What kind of place it is, for messages ("files", "Redis").
    kind: ClassVar[str] = "storage"
    #: Whether the place removes idle sessions itself (Redis's expiry): then ``ttl`` is
    #: the backend's to pass on and a sweep only counts; else the idle clock is :meth:`_age`.
    expires_by_itself: ClassVar[bool] = False
    _fast: ClassVar[bool] = True
    _parts: ClassVar[bool] = False
    set_aside_corrupt: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        # A subclass that overrides read or write (to migrate old data, say) must see every
        # session the middleware loads and stores; the others are served without a copy or
        # a check too many (see read_for_session).
        cls._fast = all(getattr(cls, name) is getattr(Storage, name) for name in ("read", "read_versioned", "write"))
        cls._parts = cls._get_parts is not Storage._get_parts

    def __init__(
        self,
        *,
        locks: LockSpace,
        ttl: float | timedelta | None = None,
        lock_timeout: float | None = 10.0,
        cache_size: int | None = 0,
        max_size: int = data.DEFAULT_MAX_SIZE,
    ) -> None:
        self._max_size = check_max_size(max_size)
        # Keys this long may take more JSON than max_size (a character takes 6 bytes at most).
        self._long_key = (max_size - 2) // 6
        self._locks = locks
        self.ttl = ttl_seconds(ttl)
        self.lock_timeout = lock_timeout
        cache: Cache[_Entry] = MapCache() if cache_size is None else LRUCache(cache_size)  # checks it
        if cache_size != 0 and type(self)._stamp is Storage._stamp:
            raise TypeError(f"{type(self).__name__} has no cheap stamps, so it cannot keep a cache")
        self._cache = cache if cache_size != 0 else None
        # Keys read once while the cache was full (see _admit), as many as it holds at most.
        self._cache_size = cache_size
        self._seen: OrderedDict[str, bool] = OrderedDict()
        self._full = False
        # Whether a stamp can be ambiguous: then each cached one notes when it was seen.
        self._doubt = self._cache is not None and type(self)._settled is not Storage._settled

    @property
    def ttl(self) -> float | None:
        """Seconds after which an unused session reads as missing, or ``None``."""
        return self._ttl

    @ttl.setter
    def ttl(self, ttl: float | timedelta | None) -> None:
        self._ttl = ttl_seconds(ttl)
        # The idle clock is the backend's own unless the place expires sessions by itself.
        self._idle_ttl = None if self.expires_by_itself else self._ttl

    @property
    def max_size(self) -> int:
        """The most bytes of JSON a session's data, or its key, may take in this storage."""
        return self._max_size

    @property
    def lock_timeout(self) -> float | None:
        """Seconds :meth:`lock` waits before raising :class:`~simplesession.LockTimeout`, or ``None``."""
        return self._lock_timeout

    @lock_timeout.setter
    def lock_timeout(self, timeout: float | None) -> None:
        self._lock_timeout = check_lock_timeout(timeout)

    # -- the contract ------------------------------------------------------------------

    def read(self, key: str) -> Any | None:
        """The value stored under ``key``, or ``None`` if there is none (or it expired)."""
        got = self._fetch(key)
        return None if got is None else got[1]

    def read_versioned(self, key: str) -> tuple[Any, Version | None] | None:
        """``(value, version)`` stored under ``key``, or ``None``; see :meth:`write`."""
        got = self._fetch(key)
        return None if got is None else (got[1], got[0][2])

    def has(self, key: str) -> bool:
        """Whether ``read(key)`` would return a value."""
        return self._fetch(key, copy=False) is not None

    def write(self, key: str, value: Any, *, version: Version | None = None) -> None:
        """Store ``value`` under ``key``, replacing what was there.

        ``version`` records the schema version of ``value`` beside it (migrations use it).
        Writing ``None`` deletes the key, since ``read`` reports a missing key as ``None``.
        """
        check_key(key)
        value = data.check_copy(value, key)
        if value is None:
            self.delete(key)
            return
        if version is not None:
            check_version(version)
        raw = data.encode(value)
        check_size(key, raw, self._max_size)
        self._store(key, value, raw, version)

    def restore(self, key: str, value: Any, *, version: Version | None = None, used: float | None = None) -> None:
        """Store ``value`` as :meth:`write` does, and set its idle clock to ``used`` (a
        ``time.time()``; ``None``: now), so that a session moved from another store expires
        when it would have there. A place that cannot set the clock starts it now."""
        self.write(key, value, version=version)
        if used is not None and value is not None:
            if self._cache is not None:
                self._cache.discard(key)
            self._set_used(key, used)

    def delete(self, key: str) -> None:
        """Remove ``key``; removing a missing key is not an error."""
        check_key(key)
        if self._cache is not None:
            self._cache.discard(key)
        self._delete(key)

    def keys(self) -> Iterator[str]:
        """Every stored key once, in no particular order (keys written or deleted meanwhile may be left out)."""
        ttl = self._idle_ttl
        for page in self._scan(clock=ttl is not None):
            for item in page:
                if ttl is None or item.age is None or item.age <= ttl:
                    yield item.key

    def lock(
        self,
        key: str,
        *,
        timeout: float | Literal[_Default.TIMEOUT] | None = _Default.TIMEOUT,
        holder: object = None,
    ) -> KeyLock:
        """A context manager that holds ``key`` exclusively.

        It excludes every other holder of the key's lock within the storage's reach (threads,
        processes, machines): hold it around a ``read``-change-``write`` and no update is
        lost. Raises :class:`~simplesession.LockTimeout` after ``timeout`` seconds (default
        ``lock_timeout``). It belongs to ``holder``, by default the calling thread, which
        may enter it again (that only counts) and exit it from another thread. Give each
        coroutine a holder of its own (a :class:`~simplesession.storage.locks.Holder`).
        """
        if type(key) is not str or not key.isascii():
            key_bytes(key)  # raises, saying what a key must be
        wait = self._lock_timeout if timeout is _DEFAULT_TIMEOUT else check_lock_timeout(timeout)
        return KeyLock(self._locks, key, wait, holder)

    def lock_name(self, key: str) -> str:
        """The name of ``key``'s lock (see :meth:`~simplesession.storage.locks.LockSpace.name`)."""
        return self._locks.name(key)

    def set_aside(self, key: str, reason: str) -> str | None:
        """Move ``key``'s value out of the way, kept for a human, and log an ERROR with ``reason``;
        where it went (``None``: nothing there). Afterwards the key reads as missing."""
        check_key(key)
        return upkeep.quarantine(self, key, reason, None, check=False)

    def sweep_slices(self, ttl: float | timedelta | None = None, *, dry_run: bool = False) -> Iterator[SweepReport]:
        """A sweep (see :meth:`sweep`) in small steps: each ``next()`` does one slice of it."""
        seconds = ttl_seconds(ttl) if ttl is not None else self._ttl
        if self.expires_by_itself:
            seconds = None  # the place removes idle sessions itself: only count them
        return upkeep.sweep_slices(self, seconds, dry_run)

    def sweep(
        self, ttl: float | timedelta | None = None, *, dry_run: bool = False, progress: Progress | None = None
    ) -> SweepReport:
        """Remove sessions idle longer than ``ttl`` (default: the storage's own) and leftovers.

        It never waits for a lock: sessions an update holds, or that were written meanwhile,
        are kept. With ``dry_run`` it only reports. ``progress(done, sweep_size)`` follows it.
        """
        report = SweepReport()
        for done, part in enumerate(self.sweep_slices(ttl, dry_run=dry_run), 1):
            report += part
            if progress is not None:
                progress(done, max(done, self.sweep_size))
        return report

    @property
    def sweep_size(self) -> int:
        """How many slices :meth:`sweep_slices` yields (at least; some places cannot tell ahead)."""
        return 1

    def stats(self, progress: Progress | None = None) -> StorageStats:
        """What the storage holds: sessions, bytes, last uses, and its own figures."""
        stats = StorageStats()
        now = time.time()
        for page in self._scan(clock=True):
            for item in page:
                stats.saw(item.size, None if item.age is None else now - item.age)
        return stats

    def describe(self, key: str) -> KeyInfo | None:
        """Where ``key``'s session is and what it takes (``None``: none); it leaves its idle clock alone."""
        check_key(key)
        try:
            stored = self._get(key)
        except Unreadable:
            stored = None
        if stored is None:
            return None
        used = expires = None
        if not self.expires_by_itself:
            used = time.time() - self._age(stored[1])
            expires = None if self._ttl is None else used + self._ttl
        return KeyInfo(self.where(key), len(stored[0]), used, expires)

    def upgrade(self, *, dry_run: bool = False) -> tuple[int, int]:
        """Move the sessions stored in an older layout of this storage to the current one;
        ``(moved, kept)``, kept being those whose current name is taken by a newer value (left
        where they are). Run it once, with the bots stopped. Most storages have nothing to do."""
        return 0, 0

    def about(self) -> list[Figure]:
        """Where the storage is, as figures (the command line's ``stats`` shows them first)."""
        return [Figure("storage", "storage", repr(self))]

    @property
    def location(self) -> str:
        """Where the sessions are, in a few words for messages."""
        return repr(self)

    def where(self, key: str) -> str:
        """Where ``key``'s session is (or would be) stored, in a few words."""
        return f"{key!r} in {self.location}"

    def path(self, key: str) -> Path | None:
        """The file that holds (or would hold) ``key``'s session, for storages of files."""
        return None

    def missing(self) -> str | None:
        """Why the storage is not there yet (a FileStorage's folder before the first write), or ``None``."""
        return None

    def use_ttl(self, ttl: float | None, where: str) -> None:
        """Take the middleware's ``ttl`` (``where`` names it) unless this storage has one of its own."""
        if ttl is None or ttl == self._ttl:
            return
        if self._ttl is not None:
            raise ValueError(f"{where}: ttl={ttl} conflicts with the storage's own ttl={self._ttl}")
        self.ttl = ttl

    @property
    def records_versions(self) -> bool:
        """Whether :meth:`write` keeps ``version`` beside the value (migrations need it)."""
        return True

    def close(self) -> None:
        """Give back what the storage keeps open (a PostgresStorage's own pool of connections);
        most keep nothing. Use no storage after closing it. ``with storage:`` closes it at the end."""
        return  # optional: most places keep nothing open

    def __enter__(self: _S) -> _S:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the session middleware's way in -------------------------------------------------

    def read_for_session(self, key: str, versions: bool = False) -> tuple[Any, Version | None, bytes | None] | None:
        """``(value, version, its JSON as stored)`` for the session middleware, or ``None``.

        The JSON tells whether a handler changed the value. A subclass that overrides
        :meth:`read` (or ``read_versioned``, with ``versions``) is read through it, and then
        the JSON is ``None``.
        """
        if self._fast:
            got = self._fetch(key)
            if got is None:
                return None
            entry, value = got
            return value, entry[2], entry[3]
        if versions:
            found = self.read_versioned(key)
            return None if found is None else (found[0], found[1], None)
        value = self.read(key)
        return None if value is None else (value, None, None)

    def write_for_session(self, key: str, value: Any, raw: bytes, version: Version | None) -> None:
        """Store ``value``, a private copy that :func:`simplesession.data.check_copy` made and
        whose JSON is ``raw``, at ``version`` (through an overridden :meth:`write` if any)."""
        if len(raw) > self._max_size or len(key) > self._long_key:
            check_size(key, raw, self._max_size)
        if self._fast:
            since = time.time_ns() if self._doubt else 0
            stamp = self._put(key, document_of(key, raw, version))  # as _store, without a call on the hot path
            if self._cache is not None:
                self._cache.put(key, (stamp, value, version, raw, not self._doubt or self._settled(stamp, since)))
        elif version is not None:
            self.write(key, value, version=version)
        else:
            self.write(key, value)

    # -- what backends implement ---------------------------------------------------------

    @abstractmethod
    def _get(self, key: str) -> Stored | None:
        """The document stored under ``key`` (a valid key), or ``None``.

        Raises :class:`Unreadable` for something there that is not a document (it is then
        set aside), :class:`~simplesession.StorageError` for trouble that is not the stored
        value's fault (the place cannot be reached, say).
        """

    @abstractmethod
    def _put(self, key: str, document: bytes) -> Hashable:
        """Store ``document`` under ``key`` in one step (a reader sees the old or the new
        one, never a mix), resetting its idle clock; return its stamp (see :data:`Stored`)."""

    @abstractmethod
    def _delete(self, key: str) -> None:
        """Remove what is stored under ``key``, if anything."""

    @abstractmethod
    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        """Every stored key once, in pages; with ``clock``, each with its age and size."""

    @abstractmethod
    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        """Move what is under ``key`` where no read finds it, keeping it; where it went (``None``: nothing).

        Called under ``key``'s lock, with what was found there (``None``: something unreadable),
        to be moved only if it still is that. :class:`~simplesession.StorageError` if it cannot.
        """

    def _get_parts(self, key: str) -> _Parts | None:
        """For a backend that keeps a document's version and data apart (a database's columns),
        what :meth:`_get` would read, without joining them: ``(stamp, the version's JSON or None,
        the data's JSON, None)``, the parts :func:`~.document.split_document` gives; or ``(stamp,
        None, None, document)`` for a document kept whole. ``None``: nothing there. Reads go
        through it instead of :meth:`_get` where a backend has it; raises as :meth:`_get` does."""
        raise NotImplementedError

    def _stamp(self, key: str, known: Hashable) -> Hashable | None:
        """The stamp of what is stored under ``key`` (``None``: nothing), cheaply; for the cache,
        which holds a value stored with stamp ``known`` (a backend that can tell that nothing
        changed since it last found ``known`` current may return it without looking)."""
        raise NotImplementedError

    def _settled(self, stamp: Hashable, since: int) -> bool:
        """Whether ``stamp`` can be no other stored version's, when it was the stored one as
        the clock read ``since`` (``time.time_ns()``), or after. If not, a cache hit reads
        the value again to compare it, until a read shows it is. By default stamps are never
        reused; a backend whose stamps may be (file times) says when they cannot be."""
        return True

    def _age(self, stamp: Hashable) -> float:
        """Seconds since the stored version with ``stamp`` was last used (written, or read and touched)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no idle clock, so it cannot expire sessions")

    def _touch(self, key: str, stamp: Hashable) -> Hashable | None:
        """Reset the idle clock of what is stored under ``key``; its new stamp, or ``None`` if it could not."""
        raise NotImplementedError(f"{type(self).__name__} keeps no idle clock, so it cannot expire sessions")

    def _set_used(self, key: str, used: float) -> None:
        """Set the idle clock of what is stored under ``key`` to ``used`` (a ``time.time()``),
        for :meth:`restore`; by default the clock stays as the write left it."""
        return  # optional: a place without an idle clock of its own has nothing to set

    def _idle(self, key: str) -> tuple[float, int] | None:
        """``(age, size)`` of what is stored under ``key`` now, or ``None``: the sweep's re-check."""
        try:
            stored = self._get(key)
        except Unreadable:
            return None
        return None if stored is None else (self._age(stored[1]), len(stored[0]))

    def _sweep_pages(self, clock: bool, dry_run: bool) -> Iterator[tuple[list[Listed], SweepReport]]:
        """The pages of a sweep, each with a report of the leftovers the backend removed in it."""
        for page in self._scan(clock):
            yield page, SweepReport()

    # -- the policy ------------------------------------------------------------------------

    def _fetch(self, key: str, copy: bool = True) -> tuple[_Entry, Any] | None:
        """``key``'s entry and a private copy of its value (if ``copy``), or ``None``."""
        if type(key) is not str or not key.isascii():  # check_key, without a call on the hot path
            key_bytes(key)
        cache = self._cache
        cached = None
        if cache is not None:
            entry = cache.get(key)
            if entry is not None:
                stamp = self._stamp(key, entry[0])
                if stamp == entry[0] and entry[4]:
                    if self._idle_ttl is not None:
                        fresh = self._fresh(key, entry)
                        if fresh is None:
                            return None
                        entry = fresh
                    return entry, data.copy(entry[1]) if copy else None
                if stamp is None:
                    cache.discard(key)
                    return None
                cached = entry  # replaced, or its stamp could be another file's: read and compare
        since = time.time_ns() if self._doubt else 0
        try:
            found = self._get_parts(key) if self._parts else self._get(key)
        except Unreadable as exc:
            upkeep.quarantine(self, key, str(exc), None)
            return None
        if found is None:
            if cache is not None:
                cache.discard(key)
            return None
        if self._parts:
            stamp, version_json, raw, whole = found  # type: ignore[misc]
            if raw is not None:
                if cached is None:
                    quick = self._proven(key, stamp, version_json, raw, since, copy)
                    if quick is not None:
                        return quick or None
                whole = join_document(key, version_json, raw)
            stored: Stored = (whole, stamp)  # type: ignore[assignment]
        else:
            stored = found  # type: ignore[assignment]
        document, stamp = stored
        settled = not self._doubt or self._settled(stamp, since)
        if cached is not None and data_json(document, key, cached[2]) == cached[3]:
            entry = (stamp, cached[1], cached[2], cached[3], settled)  # the same bytes: no need to decode them
            private = data.copy(cached[1]) if copy else None
            return self._cached(key, entry, private, True)
        try:
            value, private, version, raw = session_of(document, key, self._max_size)
        except BadDocument as exc:
            upkeep.quarantine(self, key, str(exc), stored)
            return None
        keep = cache is not None and (cached is not None or self._admit(key))
        return self._cached(key, (stamp, value, version, raw, settled), private, keep)

    def _proven(
        self, key: str, stamp: Hashable, version_json: bytes | None, raw: bytes, since: int, copy: bool
    ) -> tuple[_Entry, Any] | tuple[()] | None:
        """What :meth:`_fetch` returns for data JSON ``raw`` at ``version_json`` (``()`` for
        ``None``) when the bytes alone show that the data keeps the rules of writing; ``None``
        if they cannot, and then :func:`~.document.session_of` checks it the long way, which
        says what is wrong. The short way decodes it in C, with no walk in Python."""
        value = data.proven_data(raw, self._max_size)
        if value is None:
            return None
        version = None
        if version_json is not None:
            try:
                version = check_version(data.decode(version_json))
            except (ValueError, TypeError, OverflowError):
                return None
            if data.encode(version) != version_json:
                return None
        entry = (stamp, value, version, raw, not self._doubt or self._settled(stamp, since))
        # The decoded value is nobody else's: it needs a copy only if the cache keeps it.
        keep = self._cache is not None and self._admit(key)
        private = (data.copy(value) if keep else value) if copy else None
        if self._idle_ttl is None:  # _cached, inline
            if keep:
                self._cache.put(key, entry)  # type: ignore[union-attr]
            return entry, private
        return self._cached(key, entry, private, keep) or ()

    def _admit(self, key: str) -> bool:
        """Whether a session just read from the store joins the cache (which is there): while the
        cache has room, yes; once it is full, only at the second read of the key among the last
        ``cache_size`` that were left out. So chats read once in a long while (more chats than
        the cache holds, read at random) cost no copy and push out no session in use, and one
        read again soon gets its place."""
        size = self._cache_size
        if not self._full:
            if size is None or len(self._cache) < size:  # type: ignore[arg-type]
                return True
            self._full = True  # for good: one discarded later leaves room the next write fills
        seen = self._seen
        if seen.pop(key, False):
            return True
        seen[key] = True
        if len(seen) > size:  # type: ignore[operator]  # not None: only a full LRU cache gets here
            try:  # noqa: SIM105 - contextlib.suppress would cost more than the pop
                seen.popitem(last=False)
            except KeyError:  # emptied by other threads meanwhile
                pass
        return False

    def _cached(self, key: str, entry: _Entry, private: Any, keep: bool) -> tuple[_Entry, Any] | None:
        """``entry``, just read, put in the cache if ``keep``; ``None`` if its session has expired."""
        if keep:
            self._cache.put(key, entry)  # type: ignore[union-attr]
        if self._idle_ttl is not None:
            fresh = self._fresh(key, entry, keep)
            if fresh is None:
                return None
            entry = fresh
        return entry, private

    def _fresh(self, key: str, entry: _Entry, keep: bool = True) -> _Entry | None:
        """``entry`` if its session has not expired (``None`` if it has: left for the sweep,
        as reading never deletes); a read now and then also resets its idle clock."""
        ttl = self._idle_ttl
        assert ttl is not None
        age = self._age(entry[0])
        if age > ttl:
            return None
        if age > ttl * TOUCH_FRACTION:
            since = time.time_ns() if self._doubt else 0
            stamp = self._touch(key, entry[0])
            if stamp is not None:
                entry = (stamp, entry[1], entry[2], entry[3], not self._doubt or self._settled(stamp, since))
                if keep and self._cache is not None:  # one left out holds the caller's own value
                    self._cache.put(key, entry)
        return entry

    def _read_limit(self, key: str | None) -> int:
        """The most bytes a stored document of ``key`` (``None``: of any key) may take; a
        backend that can tell a stored value's size before loading it raises :class:`Unreadable`
        for a bigger one, with :meth:`_too_large` as the reason."""
        return most_bytes(key, self._max_size)

    def _too_large(self, size: int) -> str:
        """Why a stored value of ``size`` bytes is corrupt here, for messages."""
        return too_large(size, self._max_size)

    def _store(self, key: str, value: Any, raw: bytes, version: Version | None) -> None:
        since = time.time_ns() if self._doubt else 0
        stamp = self._put(key, document_of(key, raw, version))
        if self._cache is not None:
            self._cache.put(key, (stamp, value, version, raw, not self._doubt or self._settled(stamp, since)))
