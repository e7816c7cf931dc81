"""The file-system calls of the file-backed storages, each given its folder's descriptor.

Each call names an entry of a folder (see :mod:`._folders`, which opens and keeps the
folders), never a path through it, and follows no link (``O_NOFOLLOW``), so that nothing
planted inside a store makes it touch anything outside it, as ``shutil.rmtree``'s
descriptor-based walk does. Errors are the operating system's (``OSError``), or the ones
below where a call found something it must not use; the storages say what they meant.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import stat
import time

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "COARSEST_NS",
    "DIR_FLAGS",
    "O_NOFOLLOW",
    "TEMP_PREFIX",
    "NotAFile",
    "ReadFailed",
    "Stamp",
    "TooLarge",
    "flush_to_disk",
    "names_at",
    "open_lock_at",
    "read_at",
    "replace_at",
    "set_times_at",
    "settled",
    "stat_at",
    "unlink_at",
]

TEMP_PREFIX = ".tmp-"
"""Begins the name of a file being written; one left behind is a crashed writer's."""

Stamp = tuple[int, int, int]
"""``(inode, mtime in ns, size)``: identifies one version of a file, as every write makes a
new inode and gives it a nanosecond mtime of its own."""

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
# A fifo or device planted where a file belongs must not block the open or become the
# process's terminal; the file is then refused, unread.
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_O_NOCTTY = getattr(os, "O_NOCTTY", 0)
# Reading a session writes nothing to the disk: without O_NOATIME the first read after a
# write would dirty the file's inode for its access time (which nothing here uses). The
# kernel allows the flag on one's own files only; others are read without it.
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_READ_FLAGS = os.O_RDONLY | _O_CLOEXEC | _O_BINARY | O_NOFOLLOW | _O_NONBLOCK | _O_NOCTTY | _O_NOATIME
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC | O_NOFOLLOW | _O_BINARY
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | _O_CLOEXEC | O_NOFOLLOW | _O_NONBLOCK | _O_NOCTTY
_LOCK_READ_FLAGS = os.O_RDONLY | _O_CLOEXEC | O_NOFOLLOW | _O_NONBLOCK | _O_NOCTTY
DIR_FLAGS = os.O_RDONLY | _O_CLOEXEC | _O_DIRECTORY
_LINKED = {errno.ELOOP, errno.EMLINK}  # what O_NOFOLLOW gives for a link (EMLINK: the BSDs)
# Where a lock file may be opened for reading only: a lock works on such a descriptor too.
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
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


def read_at(fd: int, name: str, path: str, limit: int | None) -> tuple[Stamp, bytes]:
    try:
        file = os.open(name, _READ_FLAGS, dir_fd=fd)
    except PermissionError as exc:
        if exc.errno != errno.EPERM or not _O_NOATIME:
            raise
        file = os.open(name, _READ_FLAGS & ~_O_NOATIME, dir_fd=fd)  # another user's file
    except OSError as exc:
        if exc.errno in _LINKED:
            raise NotAFile(exc.errno, "a link, which the store never follows", path) from None
        raise
    try:
        st = os.fstat(file)
        if not stat.S_ISREG(st.st_mode):
            raise NotAFile(errno.EINVAL, f"not a regular file but {_kind(st.st_mode)}", path)
        if limit is not None and st.st_size > limit:
            raise TooLarge(st.st_size, limit, path)
        raw = os.read(file, st.st_size + 1)
        while len(raw) > st.st_size:  # it grew since the fstat: not one of our files
            if limit is not None and len(raw) > limit:
                raise TooLarge(len(raw), limit, path)
            more = os.read(file, 1 << 16)
            if not more:
                break
            raw += more
    except NotAFile:
        raise
    except OSError as exc:
        raise ReadFailed(exc.errno, exc.strerror, path) from exc
    finally:
        os.close(file)
    return (st.st_ino, st.st_mtime_ns, st.st_size), raw


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return f"a file of type {stat.S_IFMT(mode):o}"


def stat_at(fd: int, name: str) -> os.stat_result:
    return os.stat(name, dir_fd=fd, follow_symlinks=False)


def set_times_at(fd: int, name: str, ns: int) -> None:
    os.utime(name, ns=(ns, ns), dir_fd=fd, follow_symlinks=False)


def unlink_at(fd: int, name: str) -> None:
    os.unlink(name, dir_fd=fd)


def names_at(fd: int) -> list[str]:
    # A descriptor of the listing's own: one shared with another listing (another thread's,
    # or a forked process's) would share its position in the folder.
    own = os.open(".", DIR_FLAGS, dir_fd=fd)
    try:
        return [entry.name for entry in list(os.scandir(own))]
    finally:
        os.close(own)


def replace_at(fd: int, name: str, data: bytes, fsync: bool, prefix: str) -> Stamp:
    temp = f"{TEMP_PREFIX}{_pid}-{next(_temp_names)}"
    try:
        file = os.open(temp, _CREATE_FLAGS, 0o600, dir_fd=fd)
    except FileExistsError:
        # Left by an earlier process that had our pid; a fresh name will do.
        temp = f"{TEMP_PREFIX}{os.urandom(8).hex()}"
        file = os.open(temp, _CREATE_FLAGS, 0o600, dir_fd=fd)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(file, view) :]
            # A mtime of nanosecond precision makes every version's stamp distinct, even
            # when the inode number is reused within one clock tick; an odd one shows
            # whether the file system kept every digit of it (see settled).
            now = time.time_ns() | 1
            if _UTIME_FD:
                os.utime(file, ns=(now, now))
            else:  # pragma: no cover - Windows
                os.utime(prefix + temp, ns=(now, now))
            if fsync:
                flush_to_disk(file)
            st = os.fstat(file)
        finally:
            os.close(file)
        os.replace(temp, name, src_dir_fd=fd, dst_dir_fd=fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=fd)
        raise
    return st.st_ino, st.st_mtime_ns, st.st_size


def open_lock_at(fd: int, name: str, path: str) -> int:
    try:
        lock = os.open(name, _LOCK_FLAGS, 0o600, dir_fd=fd)
    except OSError as exc:
        if exc.errno in _LINKED:
            raise NotAFile(exc.errno, "a link, which the store never follows", path) from None
        if exc.errno not in _READ_ONLY:
            raise
        try:
            lock = os.open(name, _LOCK_READ_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            raise exc from None
        except OSError as again:
            if again.errno in _LINKED:
                raise NotAFile(again.errno, "a link, which the store never follows", path) from None
            raise
    try:
        mode = os.fstat(lock).st_mode
        if not stat.S_ISREG(mode):
            raise NotAFile(errno.EINVAL, f"not a regular file but {_kind(mode)}", path)
    except BaseException:
        os.close(lock)
        raise
    return lock


class NotAFile(OSError):
    """Where a file belongs is a link or something else than a regular file: ``strerror`` says what."""


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
