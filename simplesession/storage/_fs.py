"""The file-system calls of the file-backed storages, in one place.

Every call is made in a :class:`Folder` and names an entry of it, never a path through it,
so that what a folder is (a path today) can become a held descriptor without touching the
storages. Errors are the operating system's (``OSError``); the storages say what they meant.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import itertools
import os
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from ..keys import place_key
from .locks import LOCK_STRIPES, stripe_of

__all__ = [
    "LOCK_DIR",
    "TEMP_PREFIX",
    "Folder",
    "ReadFailed",
    "Stamp",
    "TooLarge",
    "flush_to_disk",
    "locate",
    "settled",
    "shard_folder",
]

TEMP_PREFIX = ".tmp-"
"""Begins the name of a file being written; one left behind is a crashed writer's."""
LOCK_DIR = ".locks"
"""The folder of a store's lock files."""

Stamp = tuple[int, int, int]
"""``(inode, mtime in ns, size)``: identifies one version of a file, as every write makes a
new inode and gives it a nanosecond mtime of its own."""

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
_temp_names = itertools.count()
_pid = os.getpid()  # for temporary names; a system call each time otherwise


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_pid)


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


class Folder:
    """One folder of a store and the calls made in it.

    :ivar path: where it is.
    """

    __slots__ = ("_prefix", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._prefix = path + os.sep

    def __repr__(self) -> str:
        return f"Folder({self.path!r})"

    def file(self, name: str) -> str:
        """The path of the entry ``name``, for messages."""
        return self._prefix + name

    def read(self, name: str, limit: int | None = None) -> tuple[Stamp, bytes]:
        """The stamp and bytes of the file ``name``.

        With ``limit``, a file of more bytes raises :class:`TooLarge` without being read
        in, and a file that grows past it while read stops the read there. Opening raises
        the system's error (``FileNotFoundError``, ``PermissionError``, ...); a failure to
        read what was opened raises :class:`ReadFailed`.
        """
        path = self._prefix + name
        try:
            fd = os.open(path, _READ_FLAGS)
        except PermissionError as exc:
            if exc.errno != errno.EPERM or not _O_NOATIME:
                raise
            fd = os.open(path, _READ_FLAGS & ~_O_NOATIME)  # another user's file
        try:
            st = os.fstat(fd)
            if limit is not None and st.st_size > limit:
                raise TooLarge(st.st_size, limit, path)
            raw = os.read(fd, st.st_size + 1)
            while len(raw) > st.st_size:  # it grew since the fstat: not one of our files
                if limit is not None and len(raw) > limit:
                    raise TooLarge(len(raw), limit, path)
                more = os.read(fd, 1 << 16)
                if not more:
                    break
                raw += more
        except OSError as exc:
            raise ReadFailed(exc.errno, exc.strerror, path) from exc
        finally:
            os.close(fd)
        return (st.st_ino, st.st_mtime_ns, st.st_size), raw

    def stat(self, name: str) -> os.stat_result:
        """The entry's own status (a link is not followed)."""
        return os.lstat(self._prefix + name)

    def stamp(self, name: str) -> Stamp:
        st = os.stat(self._prefix + name)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def set_times(self, name: str, ns: int) -> None:
        os.utime(self._prefix + name, ns=(ns, ns))

    def unlink(self, name: str) -> None:
        os.unlink(self._prefix + name)

    def rename(self, name: str, to: Folder, new_name: str) -> None:
        """Move the entry ``name`` into ``to`` as ``new_name``, failing rather than replacing one there."""
        os.rename(self._prefix + name, to._prefix + new_name)

    def scan(self) -> list[os.DirEntry[str]]:
        """The folder's entries (``FileNotFoundError`` if there is no such folder)."""
        return list(os.scandir(self.path))

    def names(self) -> list[str]:
        return os.listdir(self.path)

    def replace(self, name: str, data: bytes, fsync: bool) -> Stamp:
        """Atomically make the file ``name`` hold ``data``; the new file's stamp.

        The data goes to a temporary file in the same folder, which then replaces the old
        file in one step: a process killed at any instant leaves the old or the new file.
        With ``fsync`` the file is flushed before it replaces the old one; the folder is the
        caller's to sync. ``FileNotFoundError`` if the folder is missing.
        """
        temp = f"{self._prefix}{TEMP_PREFIX}{_pid}-{next(_temp_names)}"
        try:
            fd = os.open(temp, _CREATE_FLAGS, 0o600)
        except FileExistsError:
            # Left by an earlier process that had our pid; a fresh name will do.
            temp = f"{self._prefix}{TEMP_PREFIX}{os.urandom(8).hex()}"
            fd = os.open(temp, _CREATE_FLAGS, 0o600)
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view) :]
                # A mtime of nanosecond precision makes every version's stamp distinct, even
                # when the inode number is reused within one clock tick; an odd one shows
                # whether the file system kept every digit of it (see settled).
                now = time.time_ns() | 1
                if _UTIME_FD:
                    os.utime(fd, ns=(now, now))
                else:  # pragma: no cover - Windows
                    os.utime(temp, ns=(now, now))
                if fsync:
                    flush_to_disk(fd)
                st = os.fstat(fd)
            finally:
                os.close(fd)
            os.replace(temp, self._prefix + name)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return st.st_ino, st.st_mtime_ns, st.st_size

    def make(self, top: str, *, fsync: bool) -> None:
        """Create this folder and the missing ones it is in: those inside ``top`` (and ``top``)
        with mode 0700, as they hold personal data; with ``fsync``, each one's creation is flushed."""
        missing = []
        path = self.path
        while not os.path.isdir(path):
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            try:
                os.mkdir(path, 0o700 if path == top or path.startswith(top + os.sep) else 0o777)
            except FileExistsError:
                continue
            if fsync:
                Folder(os.path.dirname(path)).sync()

    def sync(self) -> None:
        """Flush the folder's entries to the disk (that a file was created, renamed or removed)."""
        fd = os.open(self.path, os.O_RDONLY | _O_CLOEXEC)
        try:
            flush_to_disk(fd)
        finally:
            os.close(fd)


class ReadFailed(OSError):
    """A file was opened but could not be read."""


class TooLarge(ValueError):
    """A file holds more bytes than the reader's limit: ``size`` (at least) over ``limit``."""

    def __init__(self, size: int, limit: int, path: str) -> None:
        super().__init__(f"{path} holds {size:,} bytes or more, over the limit of {limit:,}")
        self.size = size
        self.limit = limit
        self.path = path


COARSEST_NS = 2_000_000_000
"""The coarsest file times met: FAT keeps even seconds; ext2/3, ext4 with 128-byte inodes, HFS+
and many network file systems whole seconds."""


def settled(mtime_ns: int, since_ns: int) -> bool:
    """Whether a file of time ``mtime_ns``, seen in place when the clock read ``since_ns`` or
    later, can be told by its stamp from any file that replaces it (git's test for "racily
    clean" index entries).

    A writer reads the clock, sets that time on its new file and renames it into place; the
    file system keeps the time rounded down to its granularity. A later file can share the
    stamp only if it gets the inode number of this one, so it is made after this one was
    replaced: after ``since_ns``, and after ``mtime_ns``. Its time can still be ``mtime_ns``
    if that is less than one grain old; the grain shows in the time itself: whole seconds
    are taken to be as coarse as the coarsest file system's, a time that ends in ``k``
    zeros (in ns) to be ``10**k`` ns coarse.
    """
    since_ns = max(since_ns, mtime_ns + 1)
    if since_ns - mtime_ns >= COARSEST_NS:  # a file written long ago: decided at once
        return True
    if mtime_ns % 1_000_000_000 == 0:
        return False
    grain = 1
    while mtime_ns % (grain * 10) == 0:  # at most 8 times: not whole seconds
        grain *= 10
    return mtime_ns + grain <= since_ns


@functools.lru_cache(maxsize=8192)
def locate(directory: str, key: str) -> tuple[Folder, str, str]:
    """The shard folder, file name and lock file of ``key`` (a valid key) in the store at
    ``directory``: worked out once per hot key."""
    shard, name, crc = place_key(key)
    shards, locks = _layout(directory)
    return shards[shard], name, locks[stripe_of(crc)]


@functools.lru_cache(maxsize=64)
def _layout(directory: str) -> tuple[dict[str, Folder], list[str]]:
    # A store's shard folders and lock files, made once: a key not in locate's cache finds
    # its own among them, with no path to build.
    shards = {f"{i:02x}": Folder(f"{directory}{os.sep}{i:02x}") for i in range(256)}
    return shards, [f"{directory}{os.sep}{LOCK_DIR}{os.sep}{i:03x}.lock" for i in range(LOCK_STRIPES)]


def shard_folder(directory: str, shard: str) -> Folder:
    """The :class:`Folder` of the shard ``shard`` (two hex digits) of the store at ``directory``."""
    return _layout(directory)[0][shard]
