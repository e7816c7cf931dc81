"""Per-key locks: reentrant in a thread, exclusive across threads and processes.

A file lock is taken per *stripe*: keys hash onto a fixed number of lock files, so lock
files never pile up however many sessions there are (deleting a lock file while someone may
wait on it would break mutual exclusion). Two keys may now and then share a stripe; that
costs a short wait, never correctness. In front of each file lock sits an in-process
``RLock``: threads of one process queue on it cheaply instead of polling the file lock, and
it gives reentrancy.

The file lock itself is filelock's native lock on a descriptor (``flock`` on POSIX,
``LockFileEx`` on Windows), which the kernel drops when its process dies, so a lock is
never stale. The RLock already gives reentrancy and thread exclusion, so the bare
descriptor lock is all that is needed: it costs a few microseconds where ``FileLock``'s
general machinery costs tens.

Opening a lock file costs more than locking it (several times more beside a busy disk),
so a stripe keeps its descriptor open between holds. At most :data:`KEPT_DESCRIPTORS` are
kept per process, and no more than a quarter of its open-file limit (a low one, such as
macOS's usual 256, must leave the bot room for its own files and sockets); past that, the
longest-kept idle ones are closed. Keeping them relies on lock files never being deleted,
which holds: nothing removes a current stripe's file.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import threading
import time
from types import TracebackType

from filelock import lock_descriptor, unlock_descriptor

try:
    import resource
except ImportError:  # pragma: no cover - Windows, whose C runtime allows thousands of descriptors
    resource = None  # type: ignore[assignment]

from ..errors import LockTimeout, StorageError

__all__ = ["KEPT_DESCRIPTORS", "KeyLock", "MemoryKeyLocks", "file_stripe"]

_log = logging.getLogger(__name__)

# A process waiting on another process's lock polls; starting short and backing off keeps a
# contended key's latency low at little CPU cost.
_FIRST_POLL = 0.0005
_LAST_POLL = 0.01
_OPEN_FLAGS = os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)
_READ_FLAGS = os.O_RDONLY | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0)

KEPT_DESCRIPTORS = 256
"""How many lock files a process keeps open between holds at most: all of one storage's
stripes, and a quarter of Linux's usual limit of 1,024 open files. Under a lower limit,
a quarter of it."""


class KeyLock:
    """Holds one session key while the ``with`` block runs.

    :ivar name: a string that orders locks globally; take several in sorted order of their
        names and two holders can never deadlock.
    """

    __slots__ = ("_backend", "key", "timeout")

    def __init__(self, backend: _Stripe | MemoryKeyLocks, key: str, timeout: float | None) -> None:
        self._backend = backend
        self.key = key
        self.timeout = timeout

    @property
    def name(self) -> str:
        backend = self._backend
        return backend.name if isinstance(backend, _Stripe) else f"{backend.name}:{self.key}"

    def __enter__(self) -> None:
        self._backend.acquire(self.key, self.timeout)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._backend.release(self.key)

    def __repr__(self) -> str:
        return f"<KeyLock {self.key!r} on {self.name}>"


class _Stripe:
    """One lockable unit: an ``RLock``, optionally backed by a file lock."""

    def __init__(self, name: str, path: str | None) -> None:
        self.name = name
        self.path = path
        self._mutex = threading.RLock()
        self._depth = 0  # guarded by _mutex
        # The lock file's descriptor, kept open between holds; guarded by _mutex too.
        self._fd: int | None = None

    def acquire(self, key: str, timeout: float | None) -> None:
        # The usual case, a free stripe, asks for no clock. Waiting in this process and then
        # for another process share one deadline.
        deadline = None
        if not self._mutex.acquire(blocking=False):
            deadline = None if timeout is None else time.monotonic() + timeout
            if not self._mutex.acquire(timeout=-1 if timeout is None else timeout):
                raise self._timeout(key, timeout)
        if self._depth == 0 and self.path is not None:
            try:
                if self._fd is None or not lock_descriptor(self._fd, blocking=False):
                    self._lock_file(key, timeout, deadline)
            except BaseException:
                self._mutex.release()
                raise
        self._depth += 1

    def _lock_file(self, key: str, timeout: float | None, deadline: float | None) -> None:
        fd = self._fd
        if fd is None:
            fd = self._fd = self._open(key)
            _opened(self)
        if deadline is None and timeout is not None:
            deadline = time.monotonic() + timeout
        poll = _FIRST_POLL
        while not lock_descriptor(fd, blocking=False):
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise self._timeout(key, timeout)
            time.sleep(poll if left is None else min(poll, left))
            poll = min(poll * 2, _LAST_POLL)

    def close_if_idle(self) -> bool:
        """Close the kept descriptor unless the stripe is in use; whether it was closed."""
        if not self._mutex.acquire(blocking=False):
            return False
        try:
            if self._depth or self._fd is None:
                return False
            fd, self._fd = self._fd, None
            os.close(fd)
            return True
        finally:
            self._mutex.release()

    def _open(self, key: str) -> int:
        assert self.path is not None
        try:
            return os.open(self.path, _OPEN_FLAGS, 0o600)
        except OSError as exc:
            error = exc
        if error.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            # A lock works on a descriptor opened for reading too: in a read-only folder,
            # updates that only read go on.
            try:
                return os.open(self.path, _READ_FLAGS)
            except OSError:
                pass
        wrapped = StorageError(
            f"cannot open the lock file {self.path} of session {key!r}: {error.strerror or error}; "
            "check that the sessions folder exists and is writable",
            key=key,
            path=self.path,
        )
        wrapped.errno = error.errno
        raise wrapped from error

    def release(self, key: str) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._fd is not None:
                try:
                    unlock_descriptor(self._fd)
                except BaseException:
                    self._close_kept()  # which unlocks it too
                    raise
                if len(_kept) > _kept_limit:
                    # Over the limit since the others were all in use when this one opened.
                    self._close_kept()
        finally:
            self._mutex.release()

    def _close_kept(self) -> None:
        """Close the descriptor, which the caller holds ``_mutex`` for, and stop counting it."""
        with _kept_lock:
            _kept.pop(self, None)
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _timeout(self, key: str, timeout: float | None) -> LockTimeout:
        where = f" ({self.path})" if self.path else ""
        return LockTimeout(
            f"session {key!r} is still locked by another update after {timeout} s{where}; "
            "a handler is running long or is stuck: find it, or raise lock_timeout",
            key=key,
            path=self.path,
            timeout=timeout,
        )


_stripes: dict[str, _Stripe] = {}
_stripes_lock = threading.Lock()
# Stripes with a kept descriptor, first opened first.
_kept: dict[_Stripe, None] = {}
_kept_lock = threading.Lock()
# How many may be kept, worked out afresh at each new descriptor: the bot may change its
# open-file limit at any time, and opening one is rare.
_kept_limit = KEPT_DESCRIPTORS


def _keepable() -> int:
    if resource is None:  # pragma: no cover - Windows
        return KEPT_DESCRIPTORS
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return KEPT_DESCRIPTORS
    return max(1, min(KEPT_DESCRIPTORS, soft // 4))


def _opened(stripe: _Stripe) -> None:
    """Count ``stripe``'s new descriptor; past the limit, close the longest-kept idle ones."""
    global _kept_limit
    with _kept_lock:
        _kept[stripe] = None
        _kept_limit = _keepable()
        excess = len(_kept) - _kept_limit
        if excess <= 0:
            return
        for other in list(_kept):
            if other is not stripe and other.close_if_idle():
                del _kept[other]
                excess -= 1
                if not excess:
                    return


def _forget_stripes() -> None:
    # A forked child must not share its parent's in-process locks or lock descriptors.
    # Closing its copies of them leaves the parent's locks held.
    global _stripes_lock, _kept_lock
    _stripes_lock, _kept_lock = threading.Lock(), threading.Lock()
    for stripe in _stripes.values():
        if stripe._fd is not None:
            with contextlib.suppress(OSError):
                os.close(stripe._fd)
            stripe._fd = None  # a lock held across the fork must not touch a reused number
    _stripes.clear()
    _kept.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_stripes)


def file_stripe(path: str) -> _Stripe:
    """The process-wide stripe for the lock file at ``path``, shared by every storage on it."""
    stripe = _stripes.get(path)
    if stripe is None:
        with _stripes_lock:
            stripe = _stripes.get(path)
            if stripe is None:
                stripe = _stripes[path] = _Stripe(path, path)
    return stripe


class MemoryKeyLocks:
    """Exact per-key locks for one in-process storage; an idle key keeps no lock object."""

    def __init__(self, owner: str) -> None:
        self.name = owner
        self._mutex = threading.Lock()
        self._held: dict[str, tuple[_Stripe, int]] = {}

    def acquire(self, key: str, timeout: float | None) -> None:
        with self._mutex:
            stripe, users = self._held.get(key) or (_Stripe(f"{self.name}:{key}", None), 0)
            self._held[key] = (stripe, users + 1)
        try:
            stripe.acquire(key, timeout)
        except BaseException:
            self._leave(key)
            raise

    def release(self, key: str) -> None:
        try:
            self._held[key][0].release(key)
        finally:
            self._leave(key)

    def _leave(self, key: str) -> None:
        with self._mutex:
            stripe, users = self._held[key]
            if users == 1:
                del self._held[key]
            else:
                self._held[key] = (stripe, users - 1)
