"""What the header of SQLite's WAL index tells :class:`~simplesession.SQLiteStorage`: whether
anything was committed to the database since a row was found current, or since a read began.

A thread's :class:`Link` (its connection) keeps its read open between statements while the
header stays as it was when the read began: then nothing was committed since, so the read's
view is the database as it is, and the next statement needs no new read (which costs SQLite
two system calls for its read lock, and more). A commit anywhere ends it at the next
statement. A read held open stops checkpoints from emptying the WAL, so one is never held
longer than :data:`HOLD`: a thread of this module's own ends those left idle.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import sys
import threading
import time
import weakref
from typing import Any

from ._fs import O_NOFOLLOW

__all__ = ["HEADER", "HOLD", "Link", "Stamp", "after_one_commit", "open_header", "read_header", "steady"]

HOLD = 0.05
"""Seconds a read is held open between statements at most."""

# The WAL index's header: the first 96 bytes of the "-shm" file, two copies of 48 that every
# commit rewrites (any connection's, in any process, a sqlite3 shell's too: its change counter
# goes up by one), as SQLite's own readers check it to know their page cache is current. See
# "The WAL-Index Format" in SQLite's documentation.
HEADER = 96
# SQLite's wal_autocheckpoint: a commit that leaves the WAL at least this many frames long
# checkpoints it (the header's frame count is a native 32-bit int at byte 16).
CHECKPOINT_FRAMES = 1000


class Stamp(tuple):  # type: ignore[type-arg]
    """A row's ``(tag, used)``: its stamp (drawn at each write) and its last use.

    ``seen`` is the WAL index's header as it was before a read found this row current
    (``None``: not known). While the header is still those bytes, nothing was committed
    since, so the row is still current, and a cache hit needs no read of the database.
    """

    seen: bytes | None = None


def read_header(fd: int | None) -> bytes | None:
    """The WAL index's header now, from the "-shm" file open as ``fd``; ``None`` if not to be had."""
    if fd is None:
        return None
    try:
        return os.pread(fd, HEADER, 0)
    except OSError:
        return None  # then the database is read, which says if anything is wrong


def steady(header: bytes) -> bool:
    """Whether ``header`` is whole: two unequal copies are a commit under way, which a read
    made just after may or may not show."""
    return len(header) == HEADER and header[:48] == header[48:]


def _frames(header: bytes) -> int:
    """The frames in the WAL, as the header ``header`` says."""
    return int.from_bytes(header[16:20], sys.byteorder)


def after_one_commit(before: bytes, after: bytes | None) -> bytes | None:
    """``after``, if the headers ``before`` and ``after`` a commit of ours show no other commit
    between them (the change counter, a native 32-bit int at byte 8, went up by one): then
    the row just written is current as long as the header stays ``after``. Else ``None``."""
    if after is None or not (steady(before) and steady(after)):
        return None
    step = int.from_bytes(after[8:12], sys.byteorder) - int.from_bytes(before[8:12], sys.byteorder)
    return after if step % (1 << 32) == 1 else None


def open_header(path: str) -> tuple[int, Any] | None:
    """A descriptor of the "-shm" file of the database at ``path`` to read the header from, and
    the file object that closes it when dropped; ``None`` where there is none to have. To be
    opened once a connection uses the file, so that it is the one in use: SQLite deletes it
    only when the last connection closes, and that one stays open as long as the descriptor."""
    if not hasattr(os, "pread"):
        return None
    flags = os.O_RDONLY | O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path + "-shm", flags)
    except OSError:
        return None
    owner = open(fd, "rb", buffering=0)  # noqa: SIM115 - it lives as long as the connection
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        owner.close()
        return None
    return fd, owner


class Link:
    """A thread's connection, the "-shm" file its header is read from, and the read it holds.

    Whoever uses ``conn`` holds ``mutex``: the owning thread, or the thread that ends a read
    left idle. ``held`` is the header as it was when the open read began (``None``: none open).
    """

    __slots__ = ("__weakref__", "_closing", "_owner", "conn", "held", "mutex", "shm", "since")

    def __init__(self, conn: sqlite3.Connection, path: str) -> None:
        self.conn = conn
        # Closed when the link goes (its thread ended, or its storage went), not whenever the
        # garbage collector comes to it: a read it held would keep checkpoints back till then.
        # Never at exit, which in a forked child would close its parent's connections.
        self._closing = weakref.finalize(self, conn.close)
        self._closing.atexit = False
        opened = open_header(path)
        self.shm: int | None = None if opened is None else opened[0]
        self._owner: Any = None if opened is None else opened[1]
        self.held: bytes | None = None
        self.since = 0.0
        self.mutex = threading.Lock()

    def read(self, sql: str, args: tuple[Any, ...], header: bytes | None) -> Any:
        """The first row of the read ``sql``; ``header``: the header just read. Call with ``mutex`` held."""
        held = self.held
        if held is not None and header != held:
            self.release()
            held = None
        if held is None and header is not None and steady(header) and self._may_hold(header):
            # The read begins at the statement, so after the header was read: if it is still
            # those bytes later, nothing was committed since the read began.
            self.conn.execute("BEGIN")
            self.held, self.since = header, time.monotonic()
            _watch(self)
        return self.conn.execute(sql, args).fetchone()

    def _may_hold(self, header: bytes) -> bool:
        """Whether a read begun now may be held open. Not once the WAL is long enough for
        commits to checkpoint it, unless it is all copied back already: a checkpoint runs
        just after a commit, when a thread reading without pause always still holds the
        read it began before, so the WAL would never be copied back whole, and would grow
        for as long as that thread reads. A read begun on a WAL copied back whole reads the
        database alone, and holds back neither a checkpoint nor the WAL's restart."""
        frames = _frames(header)
        if frames < CHECKPOINT_FRAMES:
            return True
        try:
            copied = os.pread(self.shm, 4, HEADER)  # type: ignore[arg-type]  # a header came from it
        except OSError:
            return False
        return len(copied) == 4 and int.from_bytes(copied, sys.byteorder) == frames

    def release(self) -> None:
        """End the read held open, if any (before a write, say). Call with ``mutex`` held."""
        if self.held is not None:
            self.held = None
            if self.conn.in_transaction:  # a failed statement may have ended it already
                self.conn.execute("COMMIT")


# The links with a read held open, and whether the thread that ends idle ones runs.
_held: weakref.WeakSet[Link] = weakref.WeakSet()
_held_mutex = threading.Lock()
_ending = False


def _watch(link: Link) -> None:
    global _ending
    with _held_mutex:
        _held.add(link)
        if not _ending:
            _ending = True
            threading.Thread(target=_end_idle_reads, name="simplesession: SQLite reads", daemon=True).start()


def _end_idle_reads() -> None:
    """End every read held open longer than :data:`HOLD` whose connection is not in use; stop
    once none is held."""
    global _ending
    while True:
        time.sleep(HOLD / 2)
        with _held_mutex:
            links = list(_held)
            if not links:
                _ending = False
                return
        now = time.monotonic()
        for link in links:
            if link.held is not None and now - link.since >= HOLD and link.mutex.acquire(blocking=False):
                try:
                    link.release()
                except sqlite3.Error:
                    pass  # the connection's own thread meets whatever is wrong at its next statement
                finally:
                    link.mutex.release()
            with _held_mutex:
                if link.held is None:  # looked at here: its thread marks a new one held, then adds it
                    _held.discard(link)


def _end_reads_before_fork() -> None:
    """End every read held open whose connection is not in use, before a fork.

    SQLite counts the read locks of a process's connections in the process, and takes the
    lock from the system for the first only. A child inherits the count, not the lock: a
    read its parent held open would stay counted there for ever (the parent's connections
    are never used in the child), so that the child's own reads of that slot would hold no
    lock, and its checkpoints, waiting on that read, would never empty the WAL.
    """
    with _held_mutex:
        links = list(_held)
    for link in links:
        if link.mutex.acquire(blocking=False):  # one in use is in a statement, as without reads held
            try:
                link.release()
            except sqlite3.Error:
                pass  # its own thread meets whatever is wrong at its next statement
            finally:
                link.mutex.release()


def _after_fork_in_child() -> None:
    # The parent's thread is not in the child, nor are its links used there.
    global _held_mutex, _ending
    _held_mutex, _ending = threading.Lock(), False
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_end_reads_before_fork, after_in_child=_after_fork_in_child)
