"""Lock files: keys striped over the :data:`~simplesession.storage.locks.LOCK_STRIPES` files of a folder.

Keys hash onto a fixed number of lock files, so lock files never pile up however many
sessions there are (deleting a lock file while someone may wait on it would break mutual
exclusion). Two keys may now and then share a stripe; that costs a short wait, never
correctness. The lock is filelock's native lock on a descriptor (``flock`` on POSIX,
``LockFileEx`` on Windows), which the kernel drops when its process dies, so a lock is
never stale. On POSIX ``flock`` is called straight, as filelock calls it, without the two
calls of checks filelock wraps it in, on every update.

Opening a lock file costs more than locking it (several times more beside a busy disk), so
a stripe keeps its descriptor open between holds. At most :data:`KEPT_DESCRIPTORS` are kept
per process, and no more than a quarter of its open-file limit (a low one, such as macOS's
usual 256, must leave the bot room for its own files and sockets); past that, the
longest-kept idle ones are closed. Keeping them relies on lock files never being deleted,
which holds: nothing removes a current stripe's file. Nor is a kept descriptor checked
against the file now at its place on each hold (a system call per update): a lock folder
deleted while bots run on it parts them until they restart, as README says. A lock file is
opened in the lock folder's own descriptor, which is checked when a lock file is opened:
one deleted and made again is taken anew, so new stripes land in the folder that is there.

A lock file is opened without following a link (``O_NOFOLLOW``), and anything but a
regular file there is refused. Where the lock file cannot be made because the store
cannot be written (read-only, no permission, no free inodes), the lock is held within
this process only: no process can write the session then, so reads go on. Such a hold is
retried with a file at each take, and a write made under it is refused (see
:func:`lockless_cause`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import threading
import zlib
from collections.abc import Callable
from typing import Any

from filelock import lock_descriptor, unlock_descriptor

from ..errors import StorageError
from ._folders import BadFolder, Folder, keepable
from ._fs import NotAFile
from .locks import LOCK_STRIPES, Gate, LockSpace, lasting, lasting_gate, stripe_of

__all__ = ["KEPT_DESCRIPTORS", "FileStripes", "lockless_cause", "lockless_holds", "refuse_lockless"]

KEPT_DESCRIPTORS = 256
"""How many lock files a process keeps open between holds at most: all of one storage's
stripes, and a quarter of Linux's usual limit of 1,024 open files. Under a lower limit,
a quarter of it."""

# Why a lock file could not be made in a store that cannot be written.
_CANNOT_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOSPC, errno.EDQUOT}

_flock: Callable[[int, int], None] | None = None
if sys.platform != "win32":
    import fcntl

    _flock = fcntl.flock
    _TRY_EXCLUSIVE, _UNLOCK = fcntl.LOCK_EX | fcntl.LOCK_NB, fcntl.LOCK_UN
# What flock says when another holds the lock (EACCES on some file systems), as filelock reads it.
_CONTENDED = frozenset({errno.EACCES, errno.EAGAIN, errno.EWOULDBLOCK})

lockless_holds = 0
"""How many stripes this process holds without a lock file: while none, writes check nothing."""


class _FileGate(Gate):
    """A stripe's gate, which lives as long as the process and keeps its lock file's descriptor."""

    __slots__ = ("fd", "path")
    transient = False

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path
        self.fd: int | None = None  # used only by the gate's holder, or with the gate taken

    def _forget(self) -> None:
        super()._forget()
        if self.fd is not None:
            # Closing the child's copy leaves the parent's lock held; a lock held across the
            # fork must not later touch a reused descriptor number.
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = None

    def close_if_idle(self) -> bool:
        """Close the kept descriptor unless the stripe is in use; whether it was closed."""
        if not self._taken.acquire(blocking=False):
            return False
        try:
            if self.fd is None:
                return False
            fd, self.fd = self.fd, None
            os.close(fd)
            return True
        finally:
            self._taken.release()


class FileStripes(LockSpace):
    """Locks on the :data:`LOCK_STRIPES` lock files of one folder.

    :param folder: where the lock files are (``NNN.lock``): a :class:`~simplesession.storage._folders.Folder`
        of a store, or a path.
    :param make_folder: creates ``folder`` (and what it is in) if missing, before the first
        lock file is opened; called with the key whose lock is wanted, for its error message.
    :param locate: where the storage keeps what it worked out about a key (with a cache of
        its own), the lock file's path last: then this is not worked out again. By default
        the lock file is the stripe :func:`stripe_of` the CRC-32 of the key's UTF-8.
    """

    def __init__(
        self,
        folder: Folder | str,
        make_folder: Callable[[str], None],
        locate: Callable[[str], tuple[Any, ...]] | None = None,
    ) -> None:
        self._folder = folder if isinstance(folder, Folder) else Folder(folder)
        self.folder = self._folder.path
        self._make_folder = make_folder
        self._locate = locate or self._stripe
        self._striped = locate is None
        self._stripes = [(f"{self.folder}{os.sep}{stripe:03x}.lock",) for stripe in range(LOCK_STRIPES)]

    def _stripe(self, key: str) -> tuple[str]:
        return self._stripes[stripe_of(zlib.crc32(key.encode("utf-8")))]

    def path(self, key: str) -> str:
        """The lock file of ``key``."""
        return self._locate(key)[-1]  # type: ignore[no-any-return]

    def name(self, key: str) -> str:
        return self.path(key)

    def where(self, key: str) -> tuple[str, str | None]:
        path = self.path(key)
        return path, path

    def gate(self, key: str) -> Gate:
        # A stripe's gate lives on with its kept descriptor.
        if self._striped:  # _stripe, inline: two calls less on every update
            path = self._stripes[(zlib.crc32(key.encode("utf-8")) >> 8) % LOCK_STRIPES][0]
        else:
            path = self._locate(key)[-1]
        return lasting.get(path) or lasting_gate(path, _FileGate)

    def try_lock(self, gate: Gate, key: str) -> bool:
        global lockless_holds
        fd = gate.fd  # type: ignore[attr-defined]  # a _FileGate: this space made it
        if fd is None:
            fd = self._open(gate, key)
            if fd is None:
                with _kept_lock:
                    lockless_holds += 1
                return True
            gate.fd = fd  # type: ignore[attr-defined]
            _opened(gate)  # type: ignore[arg-type]
        if _flock is None:
            return lock_descriptor(fd, blocking=False)
        try:
            _flock(fd, _TRY_EXCLUSIVE)
        except OSError as exc:
            if exc.errno in _CONTENDED:
                return False
            raise
        return True

    def unlock(self, gate: Gate, key: str) -> None:
        global lockless_holds
        if gate.proof is not None:
            gate.proof = None
            with _kept_lock:
                lockless_holds -= 1
            return
        try:
            if _flock is None:
                unlock_descriptor(gate.fd)  # type: ignore[attr-defined]
            else:
                _flock(gate.fd, _UNLOCK)  # type: ignore[attr-defined]
        except BaseException:
            _close_kept(gate)  # type: ignore[arg-type]  # which unlocks it too
            raise
        if len(_kept) > _kept_limit:
            # Over the limit since the others were all in use when this one opened.
            _close_kept(gate)  # type: ignore[arg-type]

    def _open(self, gate: Gate, key: str) -> int | None:
        """A descriptor of ``gate``'s lock file; ``None`` where the store cannot be written
        and the file is missing (the gate then keeps why, as its proof)."""
        path = gate.name
        name = os.path.basename(path)
        try:
            try:
                return self._folder.open_lock(name)
            except FileNotFoundError:
                self._make_folder(key)  # raises a StorageError saying what failed
                return self._folder.open_lock(name)
        except StorageError as error:  # from make_folder
            if error.errno not in _CANNOT_WRITE:
                raise
            cause: OSError = error
        except (BadFolder, NotAFile) as error:
            what = "" if isinstance(error, BadFolder) else f"the lock file {path} is "
            wrapped = StorageError(
                f"cannot lock session {key!r}: {what}{error.strerror}"
                + ("" if isinstance(error, BadFolder) else "; remove it (a lock file is made again at the next lock)"),
                key=key,
                path=error.filename,
            )
            wrapped.errno = error.errno
            raise wrapped from error
        except OSError as error:
            if error.errno not in _CANNOT_WRITE:
                wrapped = StorageError(
                    f"cannot open the lock file {path} of session {key!r}: {error.strerror or error}; "
                    "check that the sessions folder exists and is writable",
                    key=key,
                    path=path,
                )
                wrapped.errno = error.errno
                raise wrapped from error
            cause = error
        gate.proof = cause
        return None


def lockless_cause(gate: Gate) -> OSError | None:
    """Why ``gate``, a stripe's, is held without a lock file (which keeps no other process
    out), or ``None`` if it is not."""
    proof = gate.proof
    return proof if isinstance(proof, OSError) else None


def refuse_lockless(key: str, path: str, lock: str, action: str) -> None:
    """Raise a :class:`~simplesession.StorageError` if ``key``'s lock, whose file is ``lock``, is
    held without a lock file: ``action`` (``"write"``) of its session at ``path`` would then be
    made with no other process kept out. Worth calling only while :data:`lockless_holds`."""
    gate = lasting.get(lock)
    cause = None if gate is None or gate.owner is None else lockless_cause(gate)
    if cause is None:
        return
    error = StorageError(
        f"could not {action} session {key!r} at {path}: its lock was taken when its lock file "
        f"{lock} could not be made ({cause.strerror or cause}), so it keeps no other process "
        "out; a store that cannot be written serves reads only",
        key=key,
        path=path,
    )
    error.errno = cause.errno
    raise error


# Stripes with a kept descriptor, first opened first.
_kept: dict[_FileGate, None] = {}
_kept_lock = threading.Lock()
# How many may be kept, worked out afresh at each new descriptor: the bot may change its
# open-file limit at any time, and opening one is rare.
_kept_limit = KEPT_DESCRIPTORS


def _opened(gate: _FileGate) -> None:
    """Count ``gate``'s new descriptor; past the limit, close the longest-kept idle ones."""
    global _kept_limit
    with _kept_lock:
        _kept[gate] = None
        _kept_limit = keepable(KEPT_DESCRIPTORS)
        excess = len(_kept) - _kept_limit
        if excess <= 0:
            return
        for other in list(_kept):
            if other is not gate and other.close_if_idle():
                del _kept[other]
                excess -= 1
                if not excess:
                    return


def _close_kept(gate: _FileGate) -> None:
    """Close the descriptor of ``gate``, which the caller holds, and stop counting it."""
    with _kept_lock:
        _kept.pop(gate, None)
    fd, gate.fd = gate.fd, None
    if fd is not None:
        os.close(fd)


def _forget_kept() -> None:
    # The child's copies of the descriptors are closed with their gates (see locks).
    global _kept_lock, lockless_holds
    _kept_lock = threading.Lock()
    _kept.clear()
    lockless_holds = 0


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_kept)
