"""The folders of a file-backed store, each a descriptor opened once, checked and kept.

A folder is reached once: the store's own folder through the path the user gave (links and
all), each folder inside it relative to that descriptor and never through a link. It is
checked when it is opened: a link or a file where a folder belongs, or a folder another
user controls, raises :class:`BadFolder`. Every call is then made relative to the kept
descriptor (see :mod:`._fs`), which is replaced if the folder at its place is deleted and
made again.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Callable
from typing import TypeVar

try:
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None  # type: ignore[assignment]

from ..keys import place_key
from ._fs import (
    DIR_FLAGS,
    O_NOFOLLOW,
    Stamp,
    flush_to_disk,
    names_at,
    open_lock_at,
    read_at,
    replace_at,
    set_times_at,
    stat_at,
    unlink_at,
)
from .locks import LOCK_STRIPES, stripe_of

__all__ = ["CORRUPT_DIR", "KEPT_FOLDERS", "LOCK_DIR", "BadFolder", "Folder", "Store", "keepable"]

LOCK_DIR = ".locks"
"""The folder of a store's lock files."""
CORRUPT_DIR = "corrupt"
"""The folder where files that cannot be sessions are set aside."""
KEPT_FOLDERS = 512
"""How many folder descriptors a process keeps open at most (a store has 258 folders), and
no more than a quarter of its open-file limit; the others are opened for each call."""

_R = TypeVar("_R")

# Opening, checking and replacing folder descriptors is rare and done under this lock; the
# calls made in a folder take none.
_opening = threading.RLock()
_held = 0  # folder descriptors kept open, for KEPT_FOLDERS


def _new_lock() -> None:
    global _opening
    _opening = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_lock)


class Folder:
    """One folder of a store and the calls made in it.

    A folder with no ``parent`` is a store's own folder, reached through its path; one with
    a parent is the entry ``name`` of it. Its descriptor is opened at the first call and
    kept (past :data:`KEPT_FOLDERS`, opened for each call); a call that finds no entry first
    checks that the descriptor is still of the folder at that place (one deleted and made
    again, say), and if not, takes that one. A folder that is missing raises
    ``FileNotFoundError`` until :meth:`make` makes it.

    :ivar path: where it is.
    :param trust: skip the check of who owns it and who may write to it.
    """

    __slots__ = ("_fd", "_name", "_parent", "_prefix", "_trust", "path")

    def __init__(self, path: str, parent: Folder | None = None, *, trust: bool = False) -> None:
        self.path = path
        self._prefix = path + os.sep
        self._parent = parent
        self._name = os.path.basename(path)
        self._trust = trust
        self._fd = -1  # the kept descriptor; it keeps its number once opened

    def __repr__(self) -> str:
        return f"Folder({self.path!r})"

    def __del__(self) -> None:
        global _held
        if self._fd >= 0:
            with contextlib.suppress(Exception), _opening:  # at interpreter exit, anything may be gone
                os.close(self._fd)
                if self._parent is not None:
                    _held -= 1

    def file(self, name: str) -> str:
        """The path of the entry ``name``, for messages."""
        return self._prefix + name

    # -- the calls -------------------------------------------------------------------------

    def read(self, name: str, limit: int | None = None) -> tuple[Stamp, bytes]:
        """The stamp and bytes of the file ``name``.

        With ``limit``, a file of more bytes raises :class:`TooLarge` without being read
        in, and a file that grows past it while read stops the read there. A link or
        anything but a regular file raises :class:`NotAFile`, unread. Opening raises the
        system's error (``FileNotFoundError``, ``PermissionError``, ...); a failure to read
        what was opened raises :class:`ReadFailed`.
        """
        return self._call(read_at, name, self._prefix + name, limit)

    def stat(self, name: str) -> os.stat_result:
        """The entry's own status (a link is not followed)."""
        return self._call(stat_at, name)

    def stamp(self, name: str) -> Stamp:
        """The entry's stamp (a link's own: never one of a file elsewhere)."""
        fd = self._fd
        if fd >= 0:
            # A cache hit costs this call and no other: made here, not through _call, as a
            # Python frame costs about as much as the stat itself.
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                st = self._call(stat_at, name)  # the folder may have been made again: _call finds it
        else:
            st = self._call(stat_at, name)
        return st.st_ino, st.st_mtime_ns, st.st_size

    def set_times(self, name: str, ns: int) -> None:
        """Set the entry's times (a link's own, not its target's)."""
        self._call(set_times_at, name, ns)

    def unlink(self, name: str) -> None:
        self._call(unlink_at, name)

    def rename(self, name: str, to: Folder, new_name: str) -> None:
        """Move the entry ``name`` (a link itself, never what it points to) into ``to`` as ``new_name``."""
        self._call(_rename, name, to, new_name)

    def names(self) -> list[str]:
        """The folder's entries (``FileNotFoundError`` if there is no such folder)."""
        self.refresh()  # a folder deleted meanwhile lists as empty, and gives no error
        return self._call(names_at)

    def replace(self, name: str, data: bytes, fsync: bool) -> Stamp:
        """Atomically make the file ``name`` hold ``data``; the new file's stamp.

        The data goes to a temporary file in the same folder, which then replaces the old
        file (or whatever was there, a link itself included) in one step: a process killed
        at any instant leaves the old or the new file. With ``fsync`` the file is flushed
        before it replaces the old one; the folder is the caller's to sync.
        ``FileNotFoundError`` if the folder is missing.
        """
        return self._call(replace_at, name, data, fsync, self._prefix)

    def open_lock(self, name: str) -> int:
        """A descriptor of the lock file ``name``, made (0600) if missing; one for reading
        only where the file exists but cannot be written. A link or anything but a regular
        file raises :class:`NotAFile`; a file that neither exists nor can be made, the
        error that kept it from being made."""
        return self._call(open_lock_at, name, self._prefix + name)

    def sync(self) -> None:
        """Flush the folder's entries to the disk (that a file was created, renamed or removed)."""
        self._call(flush_to_disk)

    def make(self, fsync: bool) -> None:
        """Make this folder if it is missing, and for a store's own folder the ones it is in,
        all private (0700) whatever the umask; with ``fsync``, each creation is flushed."""
        with _opening:
            fd = self._fd
            if fd >= 0 and self._current(fd):
                return
            new = self._open_new(True, fsync)
            if not self._keep(new):
                os.close(new)

    def refresh(self) -> bool:
        """Whether the kept descriptor was of a folder no longer at this folder's place (it
        was deleted, or moved away) and now is of the one there."""
        with _opening:
            fd = self._fd
            if fd < 0 or self._current(fd):
                return False
            new = self._open_new(False, False)
            if new < 0:
                return False  # nothing there now: a removed folder holds nothing, as a missing one
            self._keep(new)
            return True

    # -- descriptors -----------------------------------------------------------------------

    def _call(self, call: Callable[..., _R], *args: object) -> _R:
        fd = self._fd
        if fd >= 0:
            try:
                return call(fd, *args)
            except FileNotFoundError:
                if not self.refresh():
                    raise
            return call(fd, *args)  # the same number, now the folder at this place
        with _opening:
            temp = -1
            if self._fd < 0:
                new = self._open_new(False, False)
                if new < 0:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), self.path)
                if not self._keep(new):
                    temp = new  # over the limit of kept ones: opened for this call only
        if temp < 0:
            return call(self._fd, *args)
        try:
            return call(temp, *args)
        finally:
            os.close(temp)

    def _keep(self, new: int) -> bool:
        """Keep ``new`` as this folder's descriptor; ``False`` if it may not be kept (over
        :data:`KEPT_FOLDERS`), and then the caller closes it. Under ``_opening``."""
        global _held
        if self._fd >= 0:
            # Replaced in place: a thread in a call on the old one is on the new one now,
            # and no number is freed that another open could take.
            os.dup2(new, self._fd, inheritable=False)
            os.close(new)
            return True
        if self._parent is not None:
            if _held >= keepable(KEPT_FOLDERS):
                return False
            _held += 1
        self._fd = new
        return True

    def _current(self, fd: int) -> bool:
        """Whether ``fd`` is of the folder at this folder's place."""
        try:
            if self._parent is None:
                there = os.stat(self.path)
            else:
                parent = self._parent._fd
                if parent < 0:
                    return False
                there = os.stat(self._name, dir_fd=parent, follow_symlinks=False)
        except OSError:
            return False
        held = os.fstat(fd)
        return (there.st_dev, there.st_ino) == (held.st_dev, held.st_ino)

    def _open_new(self, create: bool, fsync: bool) -> int:
        """A new descriptor of the folder at this place, checked; -1 if there is none (and not ``create``)."""
        parent = self._parent
        if parent is None:
            if create:
                _make_path(os.path.dirname(self.path), fsync)
            fd = _open_folder(self.path, None, create, fsync, self._trust)
        else:
            # The store's own folder first, as it is now: this one is found (or made) in it.
            if create:
                parent.make(fsync)
            elif parent._fd < 0:
                with contextlib.suppress(FileNotFoundError):
                    parent._call(_nothing)
            else:
                parent.refresh()
            if parent._fd < 0:
                return -1
            fd = _open_folder(self._name, parent, create, fsync, self._trust)
        return fd


def _nothing(fd: int) -> None:
    pass


def keepable(cap: int) -> int:
    """How many descriptors of one kind a process may keep open: ``cap``, and no more than a
    quarter of its open-file limit, so that the bot has descriptors left for its own work."""
    if resource is None:  # pragma: no cover - Windows
        return cap
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return cap
    return max(1, min(cap, soft // 4))


def _make_path(path: str, fsync: bool) -> None:
    """Make the missing folders of ``path``, 0700: where a store is made, they hold its data."""
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # what the umask took away
        if fsync:
            _flush_path(os.path.dirname(path))


def _flush_path(path: str) -> None:
    fd = os.open(path, DIR_FLAGS)
    try:
        flush_to_disk(fd)
    finally:
        os.close(fd)


def _open_folder(name: str, parent: Folder | None, create: bool, fsync: bool, trust: bool) -> int:
    """Open (with ``create``, make) the folder ``name`` of ``parent``, or the path ``name``; -1: none."""
    path = name if parent is None else parent.file(name)
    at = None if parent is None else parent._fd
    flags = DIR_FLAGS if parent is None else DIR_FLAGS | O_NOFOLLOW
    made = False
    if create:
        try:
            os.mkdir(name, 0o700, dir_fd=at)
            made = True
        except FileExistsError:
            pass
        except NotADirectoryError:
            pass  # said below, with what is there
    try:
        fd = os.open(name, flags) if at is None else os.open(name, flags, dir_fd=at)
    except FileNotFoundError:
        if create:
            raise
        return -1
    except NotADirectoryError:
        raise _not_a_folder(name, at, path) from None
    except PermissionError as exc:
        raise _denied(path, exc) from None
    try:
        st = os.fstat(fd)
        if made:
            if stat.S_IMODE(st.st_mode) != 0o700:
                os.fchmod(fd, 0o700)  # what the umask took away
            if fsync:
                if at is None:
                    _flush_path(os.path.dirname(path))
                else:
                    flush_to_disk(at)
        elif not trust:
            _check_owner(st, path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _not_a_folder(name: str, at: int | None, path: str) -> BadFolder:
    if at is None:
        return BadFolder(
            errno.ENOTDIR,
            f"{path} is not a folder: give the storage a folder of its own, or move that file away",
            path,
        )
    try:
        linked = stat.S_ISLNK(os.stat(name, dir_fd=at, follow_symlinks=False).st_mode)
    except OSError:
        linked = False
    if linked:
        return BadFolder(
            errno.ELOOP,
            f"{path} is a link where the store keeps a folder of its own, and the store never "
            "follows a link inside it (that could reach files outside it): remove the link, "
            "and put back the folder it stands for if that holds sessions",
            path,
        )
    return BadFolder(
        errno.ENOTDIR,
        f"{path} is not a folder where the store keeps one of its own: move it out of the store",
        path,
    )


def _denied(path: str, exc: OSError) -> BadFolder:
    """Why the folder ``path`` could not be opened (``exc``): the first folder on its way that
    this process may not enter, else the folder itself, which it may not list."""
    blamed, verb = path, "list"
    full = os.path.abspath(path)
    ancestors = []
    while os.path.dirname(full) != full:
        full = os.path.dirname(full)
        ancestors.append(full)
    for folder in reversed(ancestors):
        if not os.access(folder, os.X_OK, effective_ids=os.access in os.supports_effective_ids):
            blamed, verb = folder, "enter"
            break
    me = os.geteuid() if hasattr(os, "geteuid") else -1
    try:
        st = os.stat(blamed)
    except OSError:
        what, fix = "", f"give it back its permissions (chmod u+rwx {blamed})"
    else:
        what = f" (mode {stat.S_IMODE(st.st_mode):04o}, owned by {_user(st.st_uid)})"
        if st.st_uid == me:
            fix = f"give it back its permissions (chmod u+rwx {blamed})"
        else:
            fix = "run the bot as its owner, or have its owner let you in"
    return BadFolder(
        exc.errno,
        f"{blamed}{what} does not let {_user(me)} {verb} it, so the store cannot be used: {fix}",
        blamed,
    )


def _check_owner(st: os.stat_result, path: str) -> None:
    """Refuse a folder that another user could change, as OpenSSH's StrictModes does: it must
    belong to this process's effective user (or to root) and be writable by no one else."""
    if not hasattr(os, "geteuid"):  # pragma: no cover - Windows
        return
    me = os.geteuid()
    trust = "or, if you trust them, pass trust_folder=True (--trust-folder on the command line)"
    if st.st_uid not in (me, 0):
        raise BadFolder(
            None,
            f"{path} belongs to {_user(st.st_uid)}, not to {_user(me)} that this process runs as "
            f"(nor to root), so that user could change or forge its sessions: make it yours "
            f"(chown -R {me} {path}) {trust}",
            path,
        )
    writable = st.st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    if writable:
        who = {stat.S_IWGRP: "its group", stat.S_IWOTH: "every user"}.get(writable, "its group and every user")
        raise BadFolder(
            None,
            f"{path} can be written by {who} (mode {stat.S_IMODE(st.st_mode):04o}), who could change "
            f"or forge its sessions: make it private (chmod go-w {path}; the store makes its folders "
            f"0700) {trust}",
            path,
        )


def _user(uid: int) -> str:
    try:
        import pwd

        return f"user {pwd.getpwuid(uid).pw_name!r} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _rename(fd: int, name: str, to: Folder, new_name: str) -> None:
    to._call(_rename_into, fd, name, new_name)


def _rename_into(to: int, fd: int, name: str, new_name: str) -> None:
    os.rename(name, new_name, src_dir_fd=fd, dst_dir_fd=to)


class BadFolder(OSError):
    """Where a folder of the store belongs is something it must not or cannot use: a link, a
    file, a folder that another user controls, or one this process may not open (then the
    first folder on the way that keeps it out is named). ``strerror`` says what and what to do."""


class Store:
    """The folders of one store, each opened at first use and kept: its own, the 256 shards
    that hold the sessions, :data:`LOCK_DIR` and :data:`CORRUPT_DIR`.

    :param trust: use folders that another user could change (see :class:`Folder`).
    :ivar places: what :meth:`locate` worked out, by key: look a key up here first, as a
        call costs more than the lookup.
    """

    __slots__ = ("corrupt", "lock_files", "locks", "places", "shards", "top")

    _MAX_PLACES = 8192

    def __init__(self, directory: str, *, trust: bool = False) -> None:
        self.top = Folder(directory, trust=trust)
        self.shards = {f"{i:02x}": Folder(f"{directory}{os.sep}{i:02x}", self.top, trust=trust) for i in range(256)}
        self.locks = Folder(f"{directory}{os.sep}{LOCK_DIR}", self.top, trust=trust)
        self.corrupt = Folder(f"{directory}{os.sep}{CORRUPT_DIR}", self.top, trust=trust)
        self.lock_files = [f"{self.locks.path}{os.sep}{i:03x}.lock" for i in range(LOCK_STRIPES)]
        self.places: dict[str, tuple[Folder, str, str]] = {}

    def locate(self, key: str) -> tuple[Folder, str, str]:
        """The shard folder, file name and lock file of ``key`` (a valid key): worked out once per hot key."""
        place = self.places.get(key)
        if place is None:
            shard, name, crc = place_key(key)
            place = (self.shards[shard], name, self.lock_files[stripe_of(crc)])
            if len(self.places) >= self._MAX_PLACES:
                self.places.clear()
            self.places[key] = place
        return place
