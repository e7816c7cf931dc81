"""Sessions in one SQLite file, through the standard library's ``sqlite3``: fast writes, one file to back up."""

from __future__ import annotations

import functools
import os
import random
import sqlite3
import stat
import threading
import time
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

from ..data import DEFAULT_MAX_SIZE
from ..errors import StorageError
from . import stripes
from ._folders import BadFolder, Folder, _check_owner
from ._fs import O_NOFOLLOW
from ._sqlite_sql import (
    DELETE,
    FIRST_PAGE,
    GET,
    IDLE,
    NEXT_PAGE,
    PUT,
    SAME,
    SCHEMA,
    SET_ASIDE,
    SET_USED,
    SHAPE,
    STAMP,
    STATS,
    STILL_TOO_LARGE,
    TABLES,
    TOUCH,
)
from ._sqlite_wal import Link, Stamp, after_one_commit, read_header, steady
from .base import Storage
from .document import join_document, most_bytes, split_document
from .file import _error, _make, default_directory
from .stripes import FileStripes
from .values import Figure, KeyInfo, Listed, StorageStats, Stored, Unreadable, check_key

__all__ = ["BUSY_TIMEOUT", "PAGE", "SQLiteStorage", "default_database"]

BUSY_TIMEOUT = 60.0
"""Seconds a statement waits for another connection's write to end. Writes take microseconds;
only a transaction left open elsewhere (in a ``sqlite3`` shell, say) makes one wait this long."""
PAGE = 500
"""Sessions per page of a listing, and so per slice of a sweep: each page is a short read of its own."""

# Pages read from the WAL (where the last writes are, until a checkpoint copies them into the
# database) are copied into the connection's page cache; the rest are read in place (mmap).
# SQLite's usual 2 MB holds a fraction of the WAL's 1,000 pages between checkpoints, so
# reads after a burst of writes would fetch the same pages again and again. Pages are
# taken only as used: a small database takes no more than its size.
PAGE_CACHE_KIB = 16384
_SQLITE_CORRUPT, _SQLITE_NOTADB, _SQLITE_BUSY, _SQLITE_LOCKED = 11, 26, 5, 6
OLDEST_SQLITE = (3, 31)  # generated columns; upserts came in 3.24


def default_database(app_name: str = "simplesession") -> Path:
    """Where a :class:`SQLiteStorage` keeps sessions when given no path: beside the folder of
    :func:`~simplesession.storage.default_directory`, with ``.db`` after its name (for example
    ``~/.local/share/simplesession/sessions.db`` on Linux; ``$SIMPLESESSION_DIR.db`` if set)."""
    folder = Path(os.path.abspath(default_directory(app_name)))
    return folder.with_name(folder.name + ".db")


def _to_wal(conn: sqlite3.Connection) -> None:
    """Put the database in WAL mode, if it is not yet.

    The switch needs the database to itself, and SQLite answers "locked" at once, without
    its busy timeout, while another connection reads: as several threads of a new bot open
    their connections together. So it is tried again, for at most :data:`BUSY_TIMEOUT`.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT
    pause = 0.001
    while conn.execute("PRAGMA journal_mode").fetchone()[0] != b"wal":
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() + pause > deadline:
                raise
            time.sleep(pause * (1 + random.random()))
            pause = min(pause * 2, 0.05)


class SQLiteStorage(Storage):
    """Sessions in one SQLite database file, safe across threads, processes and crashes.

    :param path: the database file; default :func:`default_database`. Made on first use,
        mode 0600, with the folders it is in (0700) if missing.
    :param app_name: names the default path.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read nor
        written reads as missing; :meth:`sweep` then removes it.
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    :param cache_size: how many sessions the in-memory front cache keeps (0: none). A hit
        costs one indexed read of the session's stamp, and no read of its value or parse;
        with nothing committed since the stamp was last found current, one read of the WAL
        index's header instead.
    :param fsync: commit with ``synchronous=FULL``, so that a write survives a power loss, at
        a cost in speed. Without it (``synchronous=NORMAL``) a write survives any crash of the
        process, but the last ones may be lost if the machine loses power.
    :param trust_folder: use a folder (or database file) that another user could change; by
        default one that belongs to another user than this process's and root, or that its
        group or other users may write to, is refused, as :class:`~simplesession.FileStorage` does.
    :param max_size: the most bytes of JSON a session may take: a bigger one is refused, and a
        stored one too big for one is set aside without being read into this process (SQLite
        learns its size from a column of its own, and copies it into ``set_aside``).

    The table ``sessions`` holds one row per session: its key, the version of its data, its
    last use and its data as JSON text, so ``sqlite3 sessions.db 'select * from sessions'``
    shows them. The database is in WAL mode; each write is one short transaction, and no
    transaction is held while a handler runs, so a slow update of one chat never holds up
    another's. A key's lock is a lock file beside the database (in ``<path>-locks``), held
    across threads and processes and freed when its process dies. A stored value that cannot
    be a session is moved to the table ``set_aside`` (kept), an ERROR is logged, and the key
    reads as missing. A file that is not an SQLite database, or a damaged one, raises a
    :class:`~simplesession.StorageError` naming it, and is left as it is.

    Each thread has its own connection, and a forked child opens its own (a connection must
    not cross a ``fork``).
    """

    kind = "SQLite"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        app_name: str = "simplesession",
        ttl: float | timedelta | None = None,
        lock_timeout: float | None = 10.0,
        cache_size: int = 1024,
        fsync: bool = False,
        trust_folder: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        if sqlite3.sqlite_version_info < OLDEST_SQLITE:
            raise StorageError(
                f"SQLiteStorage needs SQLite {'.'.join(map(str, OLDEST_SQLITE))} or later, and this Python's "
                f"sqlite3 module has {sqlite3.sqlite_version}: use a newer Python, or FileStorage"
            )
        self.database = Path(os.path.abspath(default_database(app_name) if path is None else path))
        self.fsync = bool(fsync)
        self.trust_folder = bool(trust_folder)
        self._path = str(self.database)
        self._folder = Folder(os.path.dirname(self._path), trust=self.trust_folder)
        # The lock folder is reached from the database's folder, never through a link.
        lock_folder = Folder(self._path + "-locks", self._folder, trust=self.trust_folder)
        self._local = threading.local()
        self._synchronous = "FULL" if self.fsync else "NORMAL"
        locks = FileStripes(lock_folder, functools.partial(_make, lock_folder, fsync=self.fsync))
        super().__init__(locks=locks, ttl=ttl, lock_timeout=lock_timeout, cache_size=cache_size, max_size=max_size)
        # A stored whole document (not split into columns) of more bytes cannot be a session.
        self._doc_limit = most_bytes(None, self.max_size)
        _storages.add(self)

    def __repr__(self) -> str:
        return f"SQLiteStorage({self._path!r})"

    # -- what the command line shows -----------------------------------------------------

    @property
    def location(self) -> str:
        return self._path

    def missing(self) -> str | None:
        try:
            st = os.stat(self._path)
        except (FileNotFoundError, NotADirectoryError):
            return "it does not exist"
        except OSError:
            return None  # there, but out of reach: the first use says why
        return None if stat.S_ISREG(st.st_mode) else "it is not a file"

    def about(self) -> list[Figure]:
        return [Figure("database", "database", self._path)]

    def describe(self, key: str) -> KeyInfo | None:
        check_key(key)
        row = self._query(IDLE, (key,), "look at", key)
        if not row:
            return None
        used, size = row[0]
        return KeyInfo(self.where(key), size, used, None if self.ttl is None else used + self.ttl)

    def stats(self, progress: Any = None) -> StorageStats:
        """Sessions and their bytes (key, version and data), last uses, values set aside, and the file's size."""
        (count, total, oldest, newest), *_ = self._query(STATS, (), "count", None)
        ((aside,),) = self._query("SELECT count(*) FROM set_aside", (), "count", None)
        size = sum(_size(self._path + end) for end in ("", "-wal"))
        where = f"{aside} (table set_aside in {self._path})" if aside else "0"
        details = [Figure("set_aside", "set aside", aside, where), Figure("file_bytes", "database bytes", size)]
        return StorageStats(count, int(total), oldest, newest, details)

    # -- the hooks -------------------------------------------------------------------------

    def _get(self, key: str) -> Stored | None:
        parts = self._get_parts(key)
        if parts is None:
            return None
        stamp, version, raw, whole = parts
        return (whole if raw is None else join_document(key, version, raw)), stamp  # type: ignore[return-value]

    def _get_parts(self, key: str) -> tuple[tuple[int, float], bytes | None, bytes | None, bytes | None] | None:
        try:
            link = self._local.link
        except AttributeError:
            link = self._connect()
        with link.mutex:
            try:
                row = link.read(GET, (self._max_size, self._doc_limit, key), read_header(link.shm))
            except sqlite3.Error as exc:
                raise self._error("read", key, exc) from exc
        if row is None:
            return None
        stamp, used, version, form, size, value = row
        if value is None:
            raise Unreadable(self._too_large(size))
        found = Stamp((stamp, used))
        return (found, version, value, None) if form == 1 else (found, None, None, value)

    def _stamp(self, key: str, known: Any) -> Any:
        try:
            link = self._local.link
        except AttributeError:
            link = self._connect()
        header = read_header(link.shm)
        if header is not None and header == known.seen:
            return known  # nothing committed since it was found current
        with link.mutex:
            try:
                row = link.read(STAMP, (key,), header)
            except sqlite3.Error as exc:
                raise self._error("read", key, exc) from exc
        if row != known:
            return row
        # Read before the row was: if it is the same later, nothing was committed after it.
        if header is not None and steady(header):
            known.seen = header
        return known

    def _put(self, key: str, document: bytes) -> Stamp:
        if stripes.lockless_holds:
            stripes.refuse_lockless(key, self._path, self._locks.where(key)[0], "write")
        parts = split_document(document, key)
        version, value, form = (None, document, None) if parts is None else (*parts, 1)
        now, stamp = time.time(), _tags.getrandbits(63)
        try:
            link = self._local.link
        except AttributeError:
            link = self._connect()
        with link.mutex:
            try:
                link.release()
                before = read_header(link.shm)
                link.conn.execute(PUT, (key, version, now, stamp, form, value))
            except sqlite3.Error as exc:
                raise self._error("write", key, exc) from exc
            after = read_header(link.shm)
        written = Stamp((stamp, now))
        if before is not None:
            written.seen = after_one_commit(before, after)
        return written

    def _delete(self, key: str) -> None:
        if stripes.lockless_holds:
            stripes.refuse_lockless(key, self._path, self._locks.where(key)[0], "delete")
        self._query(DELETE, (key,), "delete", key)

    def _age(self, stamp: Any) -> float:
        return time.time() - stamp[1]  # type: ignore[no-any-return]

    def _touch(self, key: str, stamp: Any) -> Stamp | None:
        now = time.time()
        link = self._link()
        with link.mutex:
            try:
                link.release()
                touched = link.conn.execute(TOUCH, (now, key, stamp[0])).rowcount
            except sqlite3.Error as exc:
                raise self._error("refresh the idle clock of", key, exc) from exc
        return Stamp((stamp[0], now)) if touched else None

    def _set_used(self, key: str, used: float) -> None:
        self._query(SET_USED, (used, key), "set the idle clock of", key)

    def _idle(self, key: str) -> tuple[float, int] | None:
        row = self._query(IDLE, (key,), "remove the idle", key)
        return (time.time() - row[0][0], row[0][1]) if row else None

    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        # Page by page, each a read of its own: no read stays open while the caller works.
        rows = self._query(FIRST_PAGE, (PAGE,), "list", None)
        while True:
            now = time.time()
            page = []
            for raw, used, size in rows:
                try:
                    key = raw.decode("utf-8")
                except UnicodeDecodeError:
                    continue  # not a key any storage of ours wrote
                page.append(Listed(key, now - used, size) if clock else Listed(key))
            yield page
            if len(rows) < PAGE:
                return
            rows = self._query(NEXT_PAGE, (rows[-1][0], PAGE), "list", None)

    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        args: tuple[Any, ...]
        if expected is not None:
            where, args = SAME, (key, expected[1][0])  # type: ignore[index]  # our stamp: (stamp, used)
        else:
            where, args = STILL_TOO_LARGE, (key, self._max_size, self._doc_limit)
        link = self._link()
        try:
            with link.mutex:
                link.release()
                conn = link.conn
                conn.execute("BEGIN IMMEDIATE")
                try:
                    moved = conn.execute(SET_ASIDE + where, args)
                    if moved.rowcount:
                        conn.execute("DELETE FROM sessions" + where, args)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
        except sqlite3.Error as exc:
            why = f"it could not be moved to the table set_aside: {exc}"
            raise StorageError(why, key=key, path=self._path) from exc
        return f"row {moved.lastrowid} of the table set_aside in {self._path}" if moved.rowcount else None

    # -- connections, and errors -------------------------------------------------------------

    def _link(self) -> Link:
        try:
            return self._local.link  # type: ignore[no-any-return]
        except AttributeError:
            return self._connect()

    def _connection(self) -> sqlite3.Connection:
        return self._link().conn

    def _query(self, sql: str, args: tuple[Any, ...], action: str, key: str | None) -> list[Any]:
        """All rows of ``sql``, in a transaction of its own (not in a read held open)."""
        link = self._link()
        with link.mutex:
            try:
                link.release()
                return link.conn.execute(sql, args).fetchall()
            except sqlite3.Error as exc:
                raise self._error(action, key, exc) from exc

    def _connect(self) -> Link:
        """This thread's connection, made at its first use (with the database, if missing)."""
        self._prepare()
        try:
            # Used by its thread, and by the one that ends a read it left open (see Link).
            conn = sqlite3.connect(self._path, timeout=BUSY_TIMEOUT, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise self._error("open", None, exc) from exc
        try:
            conn.text_factory = bytes
            _to_wal(conn)
            conn.execute(f"PRAGMA synchronous = {self._synchronous}")
            conn.execute("PRAGMA mmap_size = 67108864")
            conn.execute(f"PRAGMA cache_size = -{PAGE_CACHE_KIB}")
            if conn.execute(TABLES).fetchone()[0] < len(SCHEMA):
                conn.execute("BEGIN IMMEDIATE")
                for table in SCHEMA:
                    conn.execute(table)
                conn.execute("COMMIT")
            for probe in SHAPE:
                conn.execute(probe)
        except sqlite3.Error as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and "no such column" in str(exc):
                raise StorageError(
                    f"{self._path} has a table 'sessions' or 'set_aside' that simplesession did not make "
                    f"({exc}): give SQLiteStorage a database of its own",
                    path=self._path,
                ) from exc
            raise self._error("open", None, exc) from exc
        link = self._local.link = Link(conn, self._path)
        return link

    def _prepare(self) -> None:
        """Make the database's folder and file if missing (0700, 0600), and check what is there."""
        try:
            self._folder.make(self.fsync)
            st = os.lstat(self._path)
        except FileNotFoundError:
            st = self._create()
        except OSError as exc:
            raise _error("open", None, self._folder.path, exc) from exc
        if stat.S_ISLNK(st.st_mode):
            raise StorageError(
                f"{self._path} is a link where the database belongs, and SQLiteStorage never follows one "
                "(it could lead to a file elsewhere): give it the path of the database itself",
                path=self._path,
            )
        if not stat.S_ISREG(st.st_mode):
            raise StorageError(f"{self._path} is not a file, so it cannot be a database", path=self._path)
        for end, what in (("-wal", "write-ahead log"), ("-shm", "WAL index")):
            # SQLite opens these without following a link too, but then says only that it
            # could not open the database; a pipe there would hang it.
            try:
                beside = os.lstat(self._path + end)
            except FileNotFoundError:
                continue
            except OSError as exc:
                raise _error("open", None, self._path + end, exc) from exc
            if not stat.S_ISREG(beside.st_mode):
                kind = "a link" if stat.S_ISLNK(beside.st_mode) else "not a file"
                raise StorageError(
                    f"{self._path}{end} is {kind} where the database's {what} belongs, and SQLiteStorage never "
                    f"uses one (a link could lead to a file elsewhere): remove it, with no bot running on {self._path}",
                    path=self._path + end,
                )
        if not self.trust_folder:
            try:
                _check_owner(st, self._path)
            except BadFolder as exc:
                raise StorageError(f"cannot use the database: {exc.strerror}", path=self._path) from exc

    def _create(self) -> os.stat_result:
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(self._path, flags, 0o600)
        except FileExistsError:
            return os.lstat(self._path)  # made meanwhile, by another thread or process
        except OSError as exc:
            raise _error("create the database for", None, self._path, exc) from exc
        try:
            os.fchmod(fd, 0o600)  # what the umask took away
            st = os.fstat(fd)
        finally:
            os.close(fd)
        if self.fsync:
            self._folder.sync()
        return st

    def _error(self, action: str, key: str | None, exc: sqlite3.Error) -> StorageError:
        whose = f"session {key!r}" if key is not None else "the sessions"
        code = _code(exc)
        if code in (_SQLITE_CORRUPT, _SQLITE_NOTADB):
            message = (
                f"could not {action} {whose}: {self._path} is damaged or is not an SQLite database ({exc}); "
                f"it was left as it is: restore it from a backup, or move it away to start afresh "
                f"(sqlite3 {self._path} .recover may save its sessions)"
            )
        elif code in (_SQLITE_BUSY, _SQLITE_LOCKED):
            message = (
                f"could not {action} {whose}: {self._path} stayed locked by another connection for "
                f"{BUSY_TIMEOUT:g} s ({exc}); is a transaction left open on it (in a sqlite3 shell, say)?"
            )
        else:
            message = (
                f"could not {action} {whose} in {self._path}: {exc}; "
                "check that the database and its folder are writable and the disk has free space"
            )
        return StorageError(message, key=key, path=self._path)


def _code(exc: sqlite3.Error) -> int | None:
    """SQLite's primary result code of ``exc`` (before Python 3.11, worked out from its message)."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF  # type: ignore[no-any-return]
    text = str(exc)
    if "malformed" in text or "not a database" in text:
        return _SQLITE_CORRUPT
    return _SQLITE_BUSY if "locked" in text else None


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# Stamps come from a generator of this module's own: one a bot seeds for its own reasons
# would draw the same numbers in two processes.
_tags = random.Random()
# A connection must not cross a fork: a child opens its own. The parent's are kept (never
# closed, which could touch the parent's locks) and never used.
_storages: weakref.WeakSet[SQLiteStorage] = weakref.WeakSet()
_inherited: list[threading.local] = []


def _after_fork_in_child() -> None:
    _tags.seed()
    for storage in list(_storages):
        _inherited.append(storage._local)
        storage._local = threading.local()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
