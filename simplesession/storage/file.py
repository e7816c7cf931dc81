"""Sessions as JSON files, one per key, under a data directory."""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import platformdirs

from .. import data
from ..cache import LRUCache
from ..errors import CorruptSessionError, StorageError
from ..keys import encode_key, is_hashed_name, key_bytes, key_from_name
from .base import Storage
from .locks import KeyLock, file_stripe

__all__ = ["FORMAT", "FileStorage"]

_log = logging.getLogger(__name__)

FORMAT = 1
"""The file format version written in every session file as ``"format"``."""

LOCK_STRIPES = 1024
TEMP_PREFIX = ".tmp-"
CORRUPT_DIR = "corrupt"
LOCK_DIR = ".locks"

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_READ_FLAGS = os.O_RDONLY | _O_CLOEXEC | _O_BINARY
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | _O_NOFOLLOW | _O_BINARY
_UTIME_FD = os.utime in os.supports_fd
_temp_names = itertools.count()


class _Entry(NamedTuple):
    # What the front cache holds for a key. The stamp identifies one version of the file:
    # every write makes a new inode and gives it a nanosecond mtime of its own.
    stamp: tuple[int, int, int]
    value: Any


class _Corrupt(Exception):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


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
    ) -> None:
        if lock_timeout is not None and (isinstance(lock_timeout, bool) or not lock_timeout >= 0):
            raise ValueError(f"lock_timeout must be a number of seconds >= 0 or None, not {lock_timeout!r}")
        self.directory = Path(os.path.abspath(default_directory(app_name) if directory is None else directory))
        self.fsync = bool(fsync)
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

    def has(self, key: str) -> bool:
        return self._load(key) is not None

    def write(self, key: str, value: Any) -> None:
        value = data.check_copy(value, key)
        if value is None:
            self.delete(key)
            return
        shard, name = encode_key(key)
        raw = data.encode({"format": FORMAT, "key": key, "data": value}) + b"\n"
        stamp = self._replace(key, os.path.join(self._dir, shard), name, raw)
        self._cache.put(key, _Entry(stamp, value))

    def delete(self, key: str) -> None:
        shard, name = encode_key(key)
        folder = os.path.join(self._dir, shard)
        path = os.path.join(folder, name)
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
                    if key is not None and encode_key(key)[0] == shard:
                        yield key
                elif is_hashed_name(name):
                    key = self._key_of_hashed(folder, name)
                    if key is not None:
                        yield key

    def lock(self, key: str) -> KeyLock:
        raw = key_bytes(key)
        stripe = (zlib.crc32(raw) >> 8) % LOCK_STRIPES
        if not self._lock_dir_ready:
            self._make_folder(self._lock_dir, key)
            self._lock_dir_ready = True
        return KeyLock(file_stripe(os.path.join(self._lock_dir, f"{stripe:03x}.lock")), key, self.lock_timeout)

    # -- reading -----------------------------------------------------------------------

    def _path(self, key: str) -> str:
        shard, name = encode_key(key)
        return os.path.join(self._dir, shard, name)

    def _load(self, key: str) -> _Entry | None:
        path = self._path(key)
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
                return cached
        try:
            stamp, doc = self._read_file(path, key)
        except FileNotFoundError:
            self._cache.discard(key)
            return None
        except _Corrupt as exc:
            self._cache.discard(key)
            self._move_aside(key, path, str(exc))
            return None
        entry = _Entry(stamp, doc["data"])
        self._cache.put(key, entry)
        return entry

    def _read_file(self, path: str, key: str | None = None) -> tuple[tuple[int, int, int], dict[str, Any]]:
        """The stamp and decoded document of one session file (of ``key``, if given).

        Raises ``FileNotFoundError``, :class:`_Corrupt` for bytes that are not a session
        file (or cannot be read), and :class:`StorageError` for trouble that is not the
        file's fault (too many open files, say).
        """
        try:
            fd = os.open(path, _READ_FLAGS)
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
            doc = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            reason = "it is empty" if not raw else f"it is not JSON ({exc})"
            raise _Corrupt(reason) from None
        if not (type(doc) is dict and doc.get("format") == FORMAT and type(doc.get("key")) is str and "data" in doc):
            raise _Corrupt("it is JSON but not a simplesession file")
        if key is not None and doc["key"] != key:
            raise _Corrupt(f"it holds the session of {doc['key']!r}, not of {key!r}")
        return (st.st_ino, st.st_mtime_ns, st.st_size), doc

    def _key_of_hashed(self, folder: str, name: str) -> str | None:
        path = os.path.join(folder, name)
        try:
            _, doc = self._read_file(path)
        except FileNotFoundError:
            return None
        except _Corrupt as exc:
            self._move_aside(None, path, str(exc))
            return None
        key: str = doc["key"]
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

    def _move_aside_locked(self, key: str | None, path: str, reason: str) -> None:
        try:
            self._read_file(path, key)
        except FileNotFoundError:
            return
        except _Corrupt:
            pass
        else:
            return  # a writer replaced it with a good file meanwhile
        folder = os.path.join(self._dir, CORRUPT_DIR)
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        dest = os.path.join(folder, f"{os.path.basename(path)}.{when}-{os.urandom(3).hex()}")
        try:
            self._make_folder(folder, key)
            os.rename(path, dest)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise CorruptSessionError(
                f"session file {path} is corrupt ({reason}) and could not be moved to {folder}: "
                f"{exc.strerror or exc}; move or delete it by hand",
                key=key,
                path=path,
            ) from exc
        whose = f"session {key!r}" if key is not None else "a session"
        _log.error("%s: file %s is corrupt (%s); moved it to %s and starting afresh", whose, path, reason, dest)

    # -- writing -----------------------------------------------------------------------

    def _replace(self, key: str, folder: str, name: str, raw: bytes) -> tuple[int, int, int]:
        """Atomically make ``folder/name`` hold ``raw``; return the new file's stamp."""
        path = os.path.join(folder, name)
        temp = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{next(_temp_names)}")
        try:
            try:
                fd = os.open(temp, _CREATE_FLAGS, 0o600)
            except FileNotFoundError:
                self._make_folder(folder, key)
                fd = os.open(temp, _CREATE_FLAGS, 0o600)
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
                    os.fsync(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.replace(temp, path)
        except BaseException as exc:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            if isinstance(exc, OSError):
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
        except OSError as exc:
            raise self._error("create the folder for", key, folder, exc) from exc

    def _sync_folder(self, folder: str, key: str | None) -> None:
        try:
            fd = os.open(folder, os.O_RDONLY | _O_CLOEXEC)
        except OSError as exc:  # pragma: no cover - Windows cannot open folders
            raise self._error("sync the folder of", key, folder, exc) from exc
        try:
            os.fsync(fd)
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
