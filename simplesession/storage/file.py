"""Sessions as JSON files, one per key, under a data directory."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import itertools
import logging
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import platformdirs

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from .. import data
from ..cache import LRUCache
from ..errors import CorruptSessionError, LockTimeout, StorageError
from ..keys import SUFFIX, encode_key, is_hashed_name, key_bytes, key_from_name, place_key
from .base import Storage, SweepReport, Version, ttl_seconds
from .document import BadDocument, data_json, decode_document, document_of
from .locks import KeyLock, file_stripe

__all__ = ["FileStorage", "StorageStats", "default_directory"]

_log = logging.getLogger(__name__)


# Every stripe's lock file stays open once used (see locks.KEPT_DESCRIPTORS), so there are
# no more stripes than one process keeps open.
LOCK_STRIPES = 256
SHARDS = 256
SWEEP_SLICES = SHARDS + 1
"""How many slices :meth:`FileStorage.sweep_slices` yields: one per shard folder, then the locks."""
# A temporary file exists for the microseconds of one write; one this old was left by a
# writer that crashed.
DEBRIS_AGE = 3600.0
# A read refreshes a session's idle clock (its mtime) once it is this fraction of the ttl
# old, so reads need not touch the file each time; sessions may expire up to 1 % early.
TOUCH_FRACTION = 0.01
TEMP_PREFIX = ".tmp-"
CORRUPT_DIR = "corrupt"
LOCK_DIR = ".locks"

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
# Reading a session writes nothing to the disk: without O_NOATIME the first read after a
# write would dirty the file's inode for its access time (which nothing here uses). The
# kernel allows the flag on one's own files only; others are read without it.
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_READ_FLAGS = os.O_RDONLY | _O_CLOEXEC | _O_BINARY | _O_NOATIME
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW | _O_BINARY
_UTIME_FD = os.utime in os.supports_fd
# macOS's fsync hands the data to the drive, whose cache a power loss empties; F_FULLFSYNC
# flushes that cache too. File systems without it (some network ones) refuse it thus:
_F_FULLFSYNC: int | None = getattr(fcntl, "F_FULLFSYNC", None)
_NO_FULLFSYNC = {errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOTTY}
_STRIPE_NAME = re.compile(r"[0-9a-f]{3}\.lock")
_temp_names = itertools.count()
_pid = os.getpid()  # for temporary names; a system call each time otherwise


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pid)


class _Entry(NamedTuple):
    # What the front cache holds for a key. The stamp identifies one version of the file:
    # every write makes a new inode and gives it a nanosecond mtime of its own. ``raw`` is
    # the value's JSON once known, which spares the middleware encoding it again.
    stamp: tuple[int, int, int]
    value: Any
    version: Version | None
    raw: bytes | None


def flush_to_disk(fd: int) -> None:
    """Make what was written to ``fd`` survive a power loss, as far as the system allows."""
    if _F_FULLFSYNC is not None:
        try:
            fcntl.fcntl(fd, _F_FULLFSYNC)
            return
        except OSError as exc:
            if exc.errno not in _NO_FULLFSYNC:
                raise
    os.fsync(fd)


def _locate(directory: str, key: str) -> tuple[str, str, str]:
    """The shard folder, file and lock file of ``key``: worked out once per hot key."""
    if type(key) is not str:
        key_bytes(key)  # raises, saying what a key must be
    return _locate_str(directory, key)


@functools.lru_cache(maxsize=8192)
def _locate_str(directory: str, key: str) -> tuple[str, str, str]:
    shard, name, crc = place_key(key)
    folder = f"{directory}{os.sep}{shard}"
    stripe = (crc >> 8) % LOCK_STRIPES  # the hash's other bits, so a shard's keys spread over the stripes
    return folder, f"{folder}{os.sep}{name}", f"{directory}{os.sep}{LOCK_DIR}{os.sep}{stripe:03x}.lock"


class _Corrupt(Exception):
    pass


@dataclasses.dataclass
class StorageStats:
    """What :meth:`FileStorage.stats` found.

    :ivar sessions: session files.
    :ivar bytes: their total size.
    :ivar oldest: the oldest last-use time (seconds since the epoch), or ``None``.
    :ivar newest: the newest last-use time, or ``None``.
    :ivar temp_files: temporary files (of writes under way, or of crashed writers).
    :ivar corrupt_files: files set aside in ``corrupt/``.
    :ivar lock_files: lock files (at most 256).
    """

    sessions: int = 0
    bytes: int = 0
    oldest: float | None = None
    newest: float | None = None
    temp_files: int = 0
    corrupt_files: int = 0
    lock_files: int = 0


def default_directory(app_name: str = "simplesession") -> Path:
    """Where a :class:`FileStorage` keeps sessions when given no directory.

    ``$SIMPLESESSION_DIR`` if set, else ``sessions`` in the user's data folder for ``app_name``
    (for example ``~/.local/share/simplesession/sessions`` on Linux).
    """
    env = os.environ.get("SIMPLESESSION_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(app_name, appauthor=False)) / "sessions"


class FileStorage(Storage):
    """One human-readable JSON file per session, safe across threads, processes and crashes.

    :param directory: where the files live; default :func:`default_directory`. Created on
        the first write, mode 0700; files are 0600, as sessions hold personal data.
    :param app_name: names the default directory.
    :param cache_size: how many sessions the in-memory front cache keeps (0: none). A hit
        costs one ``stat`` and no read or parse; a file another process replaced is re-read.
    :param fsync: also flush each write to the disk (file and folder), so that it survives
        a power loss, at a large cost in speed. Without it a write survives any crash of
        the process, but not of the machine.
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read
        nor written reads as missing; :meth:`sweep` then removes its file.

    Files live in 256 shard folders. Each file records ``{"format": 1, "key": ...,
    "data": ...}``. Writes go to a temporary file that replaces the old one in one step,
    so a killed process leaves every session at its old or its new value. A file that cannot
    be decoded is moved into the ``corrupt`` folder (never deleted), an ERROR is logged, and
    the key reads as missing.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        app_name: str = "simplesession",
        cache_size: int = 1024,
        fsync: bool = False,
        lock_timeout: float | None = 10.0,
        ttl: float | timedelta | None = None,
    ) -> None:
        if lock_timeout is not None and (isinstance(lock_timeout, bool) or not lock_timeout >= 0):
            raise ValueError(f"lock_timeout must be a number of seconds >= 0 or None, not {lock_timeout!r}")
        self.directory = Path(os.path.abspath(default_directory(app_name) if directory is None else directory))
        self.fsync = bool(fsync)
        self.ttl = ttl_seconds(ttl)
        self.lock_timeout = lock_timeout
        self._cache: LRUCache[str, _Entry] = LRUCache(cache_size)
        self._dir = str(self.directory)
        self._lock_dir = os.path.join(self._dir, LOCK_DIR)
        self._lock_dir_ready = False

    def __repr__(self) -> str:
        return f"FileStorage({self._dir!r})"

    def path(self, key: str) -> Path:
        """The file that holds (or would hold) ``key``'s session."""
        return Path(self._path(key))

    # -- the contract ------------------------------------------------------------------

    def read(self, key: str) -> Any | None:
        entry = self._load(key)
        return None if entry is None else data.copy(entry.value)

    def read_versioned(self, key: str) -> tuple[Any, Version | None] | None:
        entry = self._load(key)
        return None if entry is None else (data.copy(entry.value), entry.version)

    def has(self, key: str) -> bool:
        return self._load(key) is not None

    def write(self, key: str, value: Any, *, version: Version | None = None) -> None:
        value = data.check_copy(value, key)
        if value is None:
            self.delete(key)
        else:
            self._write_for_session(key, value, data.encode(value), version)

    def delete(self, key: str) -> None:
        folder, path, _ = _locate(self._dir, key)
        self._cache.discard(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("delete", key, path, exc) from exc
        if self.fsync:
            self._sync_folder(folder, key)

    def keys(self) -> Iterator[str]:
        for shard in self._shards():
            folder = os.path.join(self._dir, shard)
            try:
                entries = list(os.scandir(folder))
            except FileNotFoundError:
                continue
            for entry in entries:
                name = entry.name
                if name.startswith("k"):
                    key = key_from_name(name)
                    if key is None or encode_key(key)[0] != shard:
                        continue
                elif is_hashed_name(name):
                    key = self._key_of_hashed(folder, name)
                    if key is None:
                        continue
                else:
                    continue
                if self.ttl is None or not self._expired(entry):
                    yield key

    def lock(self, key: str) -> KeyLock:
        if not self._lock_dir_ready:
            self._make_folder(self._lock_dir, key)
            self._lock_dir_ready = True
        return KeyLock(file_stripe(_locate(self._dir, key)[2]), key, self.lock_timeout)

    # The session middleware's way in: it has checked and encoded the value already, and
    # wants the stored JSON to tell whether a handler changed anything.

    def _read_for_session(self, key: str) -> tuple[Any, Version | None, bytes] | None:
        entry = self._load(key)
        if entry is None:
            return None
        if entry.raw is None:
            entry = entry._replace(raw=data.encode(entry.value))
            self._cache.put(key, entry)
        assert entry.raw is not None
        return data.copy(entry.value), entry.version, entry.raw

    def _write_for_session(self, key: str, value: Any, raw: bytes, version: Version | None) -> None:
        """Store ``value``, a private checked copy whose JSON is ``raw``."""
        folder, path, _ = _locate(self._dir, key)
        stamp = self._replace(key, folder, path, document_of(key, raw, version))
        self._cache.put(key, _Entry(stamp, value, version, raw))

    def set_aside(self, key: str, reason: str) -> str | None:
        path = self._path(key)
        with self.lock(key):
            self._cache.discard(key)
            return self._move_aside_locked(key, path, reason, check=False)

    def sweep_slices(self, ttl: float | timedelta | None = None, *, dry_run: bool = False) -> Iterator[SweepReport]:
        """One slice per shard folder (1/256 of the sessions), then one for the lock files."""
        seconds = ttl_seconds(ttl) if ttl is not None else self.ttl
        for shard in range(SHARDS):
            yield self._sweep_shard(f"{shard:02x}", seconds, dry_run)
        yield self._sweep_locks(dry_run)

    def stats(self, progress: Callable[[int, int], object] | None = None) -> StorageStats:
        """Counts and sizes of what the folder holds (``progress(done, 256)`` after each shard)."""
        stats = StorageStats()
        for shard in range(SHARDS):
            try:
                entries = list(os.scandir(os.path.join(self._dir, f"{shard:02x}")))
            except FileNotFoundError:
                entries = []
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if entry.name.startswith(TEMP_PREFIX):
                    stats.temp_files += 1
                elif entry.name.endswith(SUFFIX):
                    stats.sessions += 1
                    stats.bytes += st.st_size
                    when = st.st_mtime_ns / 1e9
                    stats.oldest = when if stats.oldest is None else min(stats.oldest, when)
                    stats.newest = when if stats.newest is None else max(stats.newest, when)
            if progress is not None:
                progress(shard + 1, SHARDS)
        for folder, attribute in ((CORRUPT_DIR, "corrupt_files"), (LOCK_DIR, "lock_files")):
            with contextlib.suppress(FileNotFoundError):
                setattr(stats, attribute, len(os.listdir(os.path.join(self._dir, folder))))
        return stats

    # -- sweeping ----------------------------------------------------------------------

    def _sweep_shard(self, shard: str, ttl: float | None, dry_run: bool) -> SweepReport:
        report = SweepReport()
        folder = os.path.join(self._dir, shard)
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return report
        except OSError as exc:
            raise self._error("sweep", None, folder, exc) from exc
        now = time.time_ns()
        for entry in entries:
            name = entry.name
            try:
                if name.startswith(TEMP_PREFIX):
                    st = entry.stat(follow_symlinks=False)
                    if now - st.st_mtime_ns > DEBRIS_AGE * 1e9:
                        if not dry_run:
                            os.unlink(entry.path)
                        report.debris += 1
                        report.bytes_freed += st.st_size
                    continue
                if not name.endswith(SUFFIX):
                    continue
                report.scanned += 1
                if ttl is None or now - entry.stat(follow_symlinks=False).st_mtime_ns <= ttl * 1e9:
                    continue
            except FileNotFoundError:
                continue  # replaced or removed since the listing
            except OSError as exc:
                raise self._error("sweep", None, entry.path, exc) from exc
            key = key_from_name(name) if name.startswith("k") else None
            if key is None and is_hashed_name(name):
                key = self._key_of_hashed(folder, name)
            if key is None or os.path.join(self._dir, *encode_key(key)) != entry.path:
                continue
            freed = self._remove_if_idle(key, entry.path, ttl, dry_run)
            if freed is None:
                report.in_use += 1
            else:
                report.removed += 1
                report.bytes_freed += freed
        return report

    def _remove_if_idle(self, key: str, path: str, ttl: float, dry_run: bool) -> int | None:
        """Remove ``key``'s file if it is still idle; its size, or ``None`` if in use."""
        try:
            # Never wait: a held lock means an update is using the session right now.
            with self._lock(key, 0):
                st = os.stat(path)
                if time.time_ns() - st.st_mtime_ns <= ttl * 1e9:
                    return None  # read or written since the listing
                if not dry_run:
                    os.unlink(path)
                    self._cache.discard(key)
                return st.st_size
        except LockTimeout:
            return None
        except FileNotFoundError:
            return 0
        except StorageError:
            raise
        except OSError as exc:
            raise self._error("remove the idle", key, path, exc) from exc

    def _sweep_locks(self, dry_run: bool) -> SweepReport:
        # Lock files of the current stripes are permanent (a lock dies with its process, so
        # none is ever stale); anything else in the lock folder is a leftover.
        report = SweepReport()
        try:
            entries = list(os.scandir(self._lock_dir))
        except FileNotFoundError:
            return report
        for entry in entries:
            if _STRIPE_NAME.fullmatch(entry.name) and int(entry.name[:3], 16) < LOCK_STRIPES:
                continue
            try:
                size = entry.stat(follow_symlinks=False).st_size
                if not dry_run:
                    os.unlink(entry.path)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
            report.debris += 1
            report.bytes_freed += size
        return report

    def _lock(self, key: str, timeout: float | None) -> KeyLock:
        lock = self.lock(key)
        lock.timeout = timeout
        return lock

    # -- reading -----------------------------------------------------------------------

    def _path(self, key: str) -> str:
        return _locate(self._dir, key)[1]

    def _load(self, key: str) -> _Entry | None:
        path = _locate(self._dir, key)[1]
        cached = self._cache.get(key)
        if cached is not None:
            try:
                st = os.stat(path)
            except FileNotFoundError:
                self._cache.discard(key)
                return None
            except OSError as exc:
                raise self._error("read", key, path, exc) from exc
            if (st.st_ino, st.st_mtime_ns, st.st_size) == cached.stamp:
                return cached if self.ttl is None else self._fresh(key, path, cached)
        try:
            stamp, document, (_, value, version) = self._read_file(path, key)
        except FileNotFoundError:
            self._cache.discard(key)
            return None
        except _Corrupt as exc:
            self._cache.discard(key)
            self._move_aside(key, path, str(exc))
            return None
        entry = _Entry(stamp, value, version, data_json(document, key, version))
        self._cache.put(key, entry)
        return entry if self.ttl is None else self._fresh(key, path, entry)

    def _fresh(self, key: str, path: str, entry: _Entry) -> _Entry | None:
        """``entry`` if its session has not expired; a read also resets its idle clock.

        Only for a storage with a ``ttl``: its callers check that first, on the hot path.
        """
        ttl = self.ttl
        assert ttl is not None
        ino, mtime, size = entry.stamp
        now = time.time_ns()
        age = now - mtime
        if age > ttl * 1e9:
            return None  # left for the sweep: reading never deletes
        if age > ttl * TOUCH_FRACTION * 1e9:
            try:
                os.utime(path, ns=(now, now))
            except OSError as exc:
                _log.debug("could not refresh the idle clock of %s: %s", path, exc)
            else:
                entry = entry._replace(stamp=(ino, now, size))
                self._cache.put(key, entry)
        return entry

    def _expired(self, entry: os.DirEntry[str]) -> bool:
        assert self.ttl is not None
        try:
            return time.time_ns() - entry.stat(follow_symlinks=False).st_mtime_ns > self.ttl * 1e9
        except FileNotFoundError:
            return True

    def _read_file(
        self, path: str, key: str | None = None
    ) -> tuple[tuple[int, int, int], bytes, tuple[str, Any, Version | None]]:
        """The stamp, bytes and ``(key, data, version)`` of one session file (of ``key``, if given).

        Raises ``FileNotFoundError``, :class:`_Corrupt` for bytes that are not a session
        file (or cannot be read), and :class:`StorageError` for trouble that is not the
        file's fault (too many open files, say).
        """
        try:
            try:
                fd = os.open(path, _READ_FLAGS)
            except PermissionError as exc:
                if exc.errno != errno.EPERM or not _O_NOATIME:
                    raise
                fd = os.open(path, _READ_FLAGS & ~_O_NOATIME)  # another user's file
        except FileNotFoundError:
            raise
        except (PermissionError, IsADirectoryError) as exc:
            raise _Corrupt(f"it cannot be read: {exc.strerror}") from exc
        except OSError as exc:
            raise self._error("read", None, path, exc) from exc
        try:
            st = os.fstat(fd)
            raw = os.read(fd, st.st_size + 1)
            while len(raw) > st.st_size:  # it grew since the fstat: not one of our files
                more = os.read(fd, 1 << 16)
                if not more:
                    break
                raw += more
        except OSError as exc:
            raise _Corrupt(f"it cannot be read: {exc.strerror}") from exc
        finally:
            os.close(fd)
        try:
            return (st.st_ino, st.st_mtime_ns, st.st_size), raw, decode_document(raw, key)
        except BadDocument as exc:
            raise _Corrupt(str(exc)) from None

    def _key_of_hashed(self, folder: str, name: str) -> str | None:
        path = os.path.join(folder, name)
        try:
            _, _, (key, _, _) = self._read_file(path)
        except FileNotFoundError:
            return None
        except _Corrupt as exc:
            self._move_aside(None, path, f"the file is corrupt: {exc}")
            return None
        return key if os.path.join(self._dir, *encode_key(key)) == path else None

    def _move_aside(self, key: str | None, path: str, reason: str) -> None:
        """Move an undecodable file into ``corrupt/``, keeping its bytes for a human."""
        if key is not None:
            # Under the key's lock, so that a file a writer just put in place of the
            # corrupt one is left alone (the reentrant lock is free if we hold it already).
            with self.lock(key):
                self._move_aside_locked(key, path, reason)
        else:
            self._move_aside_locked(key, path, reason)

    def _move_aside_locked(self, key: str | None, path: str, reason: str, *, check: bool = True) -> str | None:
        """Move ``path`` into ``corrupt/`` (if ``check``, only while it is still corrupt)."""
        if check:
            try:
                self._read_file(path, key)
            except FileNotFoundError:
                return None
            except _Corrupt:
                pass
            else:
                return None  # a writer replaced it with a good file meanwhile
        folder = os.path.join(self._dir, CORRUPT_DIR)
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = os.path.join(folder, f"{os.path.basename(path)}.{when}-{os.urandom(3).hex()}")
        try:
            self._make_folder(folder, key)
            os.rename(path, dest)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise CorruptSessionError(
                f"session file {path} is unusable ({reason}) and could not be moved to {folder}: "
                f"{exc.strerror or exc}; move or delete it by hand",
                key=key,
                path=path,
            ) from exc
        whose = f"session {key!r}" if key is not None else "a session"
        _log.error("%s: %s; moved its file %s to %s, so the session starts afresh", whose, reason, path, dest)
        return dest

    # -- writing -----------------------------------------------------------------------

    def _replace(self, key: str, folder: str, path: str, raw: bytes) -> tuple[int, int, int]:
        """Atomically make ``path`` (in ``folder``) hold ``raw``; return the new file's stamp."""
        temp = f"{folder}{os.sep}{TEMP_PREFIX}{_pid}-{next(_temp_names)}"
        try:
            try:
                fd = os.open(temp, _CREATE_FLAGS, 0o600)
            except FileNotFoundError:
                self._make_folder(folder, key)
                fd = os.open(temp, _CREATE_FLAGS, 0o600)
        except StorageError:
            raise  # from _make_folder, which said what failed
        except FileExistsError:
            # Left by an earlier process that had our pid; a fresh name will do.
            temp = os.path.join(folder, f"{TEMP_PREFIX}{os.urandom(8).hex()}")
            try:
                fd = os.open(temp, _CREATE_FLAGS, 0o600)
            except OSError as exc:
                raise self._error("write", key, path, exc) from exc
        except OSError as exc:
            raise self._error("write", key, path, exc) from exc
        try:
            try:
                view = memoryview(raw)
                while view:
                    view = view[os.write(fd, view) :]
                # A mtime of nanosecond precision makes every version's stamp distinct, even
                # when the inode number is reused within one clock tick.
                now = time.time_ns()
                if _UTIME_FD:
                    os.utime(fd, ns=(now, now))
                else:  # pragma: no cover - Windows
                    os.utime(temp, ns=(now, now))
                if self.fsync:
                    flush_to_disk(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(exc, OSError) and not isinstance(exc, StorageError):
                raise self._error("write", key, path, exc) from exc
            raise
        if self.fsync:
            self._sync_folder(folder, key)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def _make_folder(self, folder: str, key: str | None) -> None:
        missing = []
        parent = folder
        while not os.path.isdir(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        try:
            for path in reversed(missing):
                try:
                    os.mkdir(path, 0o700 if path == self._dir or path.startswith(self._dir + os.sep) else 0o777)
                except FileExistsError:
                    continue
                if self.fsync:
                    self._sync_folder(os.path.dirname(path), key)
        except StorageError:
            raise  # from _sync_folder, which said what failed
        except OSError as exc:
            raise self._error("create the folder for", key, folder, exc) from exc

    def _sync_folder(self, folder: str, key: str | None) -> None:
        try:
            fd = os.open(folder, os.O_RDONLY | _O_CLOEXEC)
        except OSError as exc:  # pragma: no cover - Windows cannot open folders
            raise self._error("sync the folder of", key, folder, exc) from exc
        try:
            flush_to_disk(fd)
        except OSError as exc:
            raise self._error("sync the folder of", key, folder, exc) from exc
        finally:
            os.close(fd)

    def _shards(self) -> list[str]:
        try:
            names = os.listdir(self._dir)
        except FileNotFoundError:
            return []
        return sorted(n for n in names if len(n) == 2 and all(c in "0123456789abcdef" for c in n))

    @staticmethod
    def _error(action: str, key: str | None, path: str, exc: OSError) -> StorageError:
        whose = f"session {key!r}" if key is not None else "a session"
        error = StorageError(
            f"could not {action} {whose} at {path}: {exc.strerror or exc}; "
            "check that the folder exists, is writable and has free space",
            key=key,
            path=path,
        )
        error.errno = exc.errno
        return error
