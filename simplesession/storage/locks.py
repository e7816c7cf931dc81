"""Per-key locks: reentrant in a thread, exclusive across threads and processes.

A file lock is taken per *stripe*: keys hash onto a fixed number of lock files, so lock
files never pile up however many sessions there are (deleting a lock file while someone may
wait on it would break mutual exclusion). Two keys may now and then share a stripe; that
costs a short wait, never correctness. In front of each file lock sits an in-process
``RLock``: threads of one process queue on it cheaply instead of polling the file lock, and
it gives reentrancy.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from types import TracebackType

import filelock

from ..errors import LockTimeout

__all__ = ["KeyLock", "MemoryKeyLocks", "file_stripe"]

_log = logging.getLogger(__name__)

# How often a process waiting on another process's lock tries again. filelock polls; a short
# interval keeps a contended key's latency low at little CPU cost.
_POLL_INTERVAL = 0.001


class KeyLock:
    """Holds one session key while the ``with`` block runs.

    :ivar name: a string that orders locks globally; take several in sorted order of their
        names and two holders can never deadlock.
    """

    __slots__ = ("_backend", "key", "name", "timeout")

    def __init__(self, backend: _Stripe | MemoryKeyLocks, key: str, timeout: float | None) -> None:
        self._backend = backend
        self.key = key
        self.name = backend.name if isinstance(backend, _Stripe) else f"{backend.name}:{key}"
        self.timeout = timeout

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
        self._file = (
            filelock.FileLock(path, mode=0o600, thread_local=False, poll_interval=_POLL_INTERVAL)
            if path is not None
            else None
        )

    def acquire(self, key: str, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        if not self._mutex.acquire(timeout=-1 if timeout is None else timeout):
            raise self._timeout(key, timeout)
        if self._depth == 0 and self._file is not None:
            remaining = -1.0 if deadline is None else max(0.0, deadline - time.monotonic())
            try:
                self._file.acquire(timeout=remaining)
            except filelock.Timeout:
                self._mutex.release()
                raise self._timeout(key, timeout) from None
            except BaseException:
                self._mutex.release()
                raise
        self._depth += 1

    def release(self, key: str) -> None:
        self._depth -= 1
        try:
            if self._depth == 0 and self._file is not None:
                self._file.release()
        finally:
            self._mutex.release()

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


def _forget_stripes() -> None:
    # A forked child must not share its parent's in-process locks or lock descriptors.
    global _stripes_lock
    _stripes_lock = threading.Lock()
    _stripes.clear()


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
