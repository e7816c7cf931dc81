"""One lock core for every storage: per-key locks that belong to a holder, not to a thread.

A lock has two parts. In this process a *gate* (one per lock name, shared by every storage
object on the same place) queues the holders of this process cheaply and gives re-entry.
Beneath it the backend takes the lock that other processes and machines see: ``flock`` on
a lock file, a key on a Redis server. What is the same for every backend lives here: the
gate, the deadline and back-off, the :class:`~simplesession.LockTimeout` message, and the
reset after ``fork``. A backend is a :class:`LockSpace` with two hooks,
:meth:`~LockSpace.try_lock` and :meth:`~LockSpace.unlock`.

Ownership and re-entry belong to a *holder*: any object, by default the calling thread's
own (:func:`thread_holder`). The holder goes with the lock object, so a lock taken in one
thread can be released in another, and two holders in one thread (two coroutines, say)
exclude each other. The gate's inner lock is a plain ``threading.Lock``, which any thread
may release.

File locks (:mod:`~simplesession.storage.stripes`) are taken per *stripe*: keys hash onto a
fixed number of lock files (:func:`stripe_of`), so lock files never pile up however many
sessions there are. Other backends that lock with files reuse them.
"""

from __future__ import annotations

import os
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import TypeVar

from ..errors import LockTimeout

__all__ = [
    "LOCK_STRIPES",
    "Gate",
    "Holder",
    "InProcessLocks",
    "KeyLock",
    "LockSpace",
    "acting_for",
    "lasting",
    "lasting_gate",
    "stripe_of",
    "thread_holder",
]

LOCK_STRIPES = 256
"""Lock files per folder. Every stripe's file stays open once used, so there are no more
stripes than one process keeps open (see :data:`~simplesession.storage.stripes.KEPT_DESCRIPTORS`)."""


def stripe_of(crc: int) -> int:
    """The stripe of a key whose UTF-8 has the CRC-32 ``crc``.

    It takes the hash's bits above the lowest eight, which pick a FileStorage's shard folder,
    so that the keys of one shard spread over all the stripes.
    """
    return (crc >> 8) % LOCK_STRIPES


class Holder:
    """Who holds a lock. Any object serves as a holder; this one has a name for messages."""

    __slots__ = ("name",)

    def __init__(self, name: str = "") -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Holder {self.name}>" if self.name else f"<Holder at {id(self):#x}>"


_threads = threading.local()


def thread_holder() -> Holder:
    """The calling thread's holder: what a lock belongs to when it is given none."""
    try:
        return _threads.holder  # type: ignore[no-any-return]
    except AttributeError:
        # An object, not the thread's ident: idents are reused once a thread ends, and a
        # lock handed to another thread may outlive the thread that took it.
        holder = _threads.holder = Holder(f"thread {threading.current_thread().name}")
        return holder


@contextmanager
def acting_for(holder: object) -> Iterator[None]:
    """Make ``holder`` the calling thread's holder while the block runs.

    Code that takes locks with the default holder (the middleware, a storage's own
    ``write``) then takes them for ``holder``: so a coroutine's locks, taken and released
    in whichever worker threads run its blocking parts, stay its own.
    """
    previous = getattr(_threads, "holder", None)
    _threads.holder = holder
    try:
        yield
    finally:
        if previous is None:
            del _threads.holder
        else:
            _threads.holder = previous


class Gate:
    """This process's part of one lock: who holds it, how deeply, and what the backend took.

    :ivar owner: the holder, or ``None`` when free.
    :ivar depth: how many times ``owner`` has entered it.
    :ivar proof: what the backend's :meth:`LockSpace.try_lock` keeps for its :meth:`~LockSpace.unlock`.
    """

    __slots__ = ("_taken", "depth", "forgotten", "name", "owner", "proof", "users")

    #: Whether the gate exists only while in use (counted in ``users``); a lasting one,
    #: such as a lock file's with its kept descriptor, lives as long as the process.
    transient = True

    def __init__(self, name: str) -> None:
        self.name = name
        self._taken = threading.Lock()  # held while a holder owns the gate
        self.owner: object | None = None
        self.depth = 0
        self.proof: object = None
        self.users = 0  # acquirers in flight or holding, for gates that vanish when idle
        self.forgotten = False  # made before a fork, in the parent: nothing here to release

    def _forget(self) -> None:
        """After a fork, in the child: the parent's lock is the parent's."""
        self.forgotten = True


class LockSpace(ABC):
    """The locks of one storage: how a key's lock is named, taken and given back beyond this process."""

    #: A waiter polls a lock that another process holds, first after ``first_poll``
    #: seconds, backing off to ``last_poll``: a contended key's latency stays low, and many
    #: waiters cost little.
    first_poll = 0.0005
    last_poll = 0.01

    @abstractmethod
    def name(self, key: str) -> str:
        """The name of ``key``'s lock, the same for every storage object on the same place.

        Names order locks globally: take several in sorted order and two holders can never
        deadlock; keys whose locks have one name share one lock.
        """

    @abstractmethod
    def where(self, key: str) -> tuple[str, str | None]:
        """``(text, path)`` naming ``key``'s lock in messages, and in :attr:`LockTimeout.path`."""

    def gate(self, key: str) -> Gate:
        """This process's gate of ``key``'s lock: by default one that exists while in use.

        A backend may return a :func:`lasting_gate` instead, one of its own making.
        """
        return _join(self.name(key))

    @abstractmethod
    def try_lock(self, gate: Gate, key: str) -> bool:
        """Take the lock beyond this process without waiting; whether it was free.

        Only the holder of ``gate`` calls it (and :meth:`unlock`), so no two run at once.
        """

    @abstractmethod
    def unlock(self, gate: Gate, key: str) -> None:
        """Give back what :meth:`try_lock` took."""


def _wait(space: LockSpace, gate: Gate, key: str, timeout: float | None, deadline: float | None) -> None:
    if deadline is None and timeout is not None:
        deadline = time.monotonic() + timeout
    poll = space.first_poll
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            raise _timeout(space, key, timeout)
        time.sleep(poll if left is None else min(poll, left))
        poll = min(poll * 2, space.last_poll)
        if space.try_lock(gate, key):
            return


def _timeout(space: LockSpace, key: str, timeout: float | None) -> LockTimeout:
    text, path = space.where(key)
    where = f" ({text})" if text else ""
    return LockTimeout(
        f"session {key!r} is still locked by another update after {timeout} s{where}; "
        "a handler is running long or is stuck: find it, or raise lock_timeout",
        key=key,
        path=path,
        timeout=timeout,
    )


class KeyLock:
    """Holds one session key while the ``with`` block runs (what ``storage.lock(key)`` returns).

    It belongs to ``holder``, by default the thread that made it: entering it again while
    held, or entering another lock of the same key for the same holder, only counts; it may
    be exited in another thread.

    :ivar name: orders locks globally (see :meth:`LockSpace.name`).
    """

    __slots__ = ("_gate", "_space", "holder", "key", "timeout")

    def __init__(self, space: LockSpace, key: str, timeout: float | None, holder: object = None) -> None:
        self._space = space
        self.key = key
        self.timeout = timeout
        if holder is None:
            try:  # thread_holder(), without a call on the hot path
                holder = _threads.holder
            except AttributeError:
                holder = thread_holder()
        self.holder = holder
        self._gate: Gate | None = None

    @property
    def name(self) -> str:
        return self._space.name(self.key)

    def __enter__(self) -> None:
        """Hold the key for the holder (again, if it holds it already).

        Waits at most ``timeout`` seconds in all (``None``: for ever), then raises
        :class:`~simplesession.LockTimeout`.
        """
        space, key, holder = self._space, self.key, self.holder
        gate = self._gate = space.gate(key)
        try:
            if gate.owner is holder:  # only this holder can have made itself the owner
                gate.depth += 1
                return
            # The usual case, a free lock, asks for no clock. Waiting for this process's
            # other holders and then for other processes share one deadline.
            deadline = None
            taken, timeout = gate._taken, self.timeout
            if not taken.acquire(False):  # positional: a keyword costs more, every update
                if timeout is not None:
                    deadline = time.monotonic() + timeout
                if not taken.acquire(timeout=-1 if timeout is None else timeout):
                    raise _timeout(space, key, timeout)
            try:
                if not space.try_lock(gate, key):
                    _wait(space, gate, key, timeout, deadline)
            except BaseException:
                taken.release()
                raise
            gate.owner = holder
            gate.depth = 1
        except BaseException:
            if gate.transient:
                _leave(gate)
            raise

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        """Give back one hold; the last one frees the key."""
        gate = self._gate
        if gate is None:
            raise RuntimeError(f"the lock of session {self.key!r} was never entered")
        if gate.forgotten:
            return  # entered before a fork, in the parent: the parent's to release
        if gate.owner is not self.holder:
            raise RuntimeError(f"the lock of session {self.key!r} is not held by {self.holder!r}")
        try:
            depth = gate.depth = gate.depth - 1
            if depth == 0:
                try:
                    self._space.unlock(gate, self.key)
                finally:
                    gate.owner = None
                    gate._taken.release()
        finally:
            if gate.transient:
                _leave(gate)

    def __repr__(self) -> str:
        return f"<KeyLock {self.key!r} on {self.name} for {self.holder!r}>"


# -- gates that exist while in use ------------------------------------------------------

_gates: dict[str, Gate] = {}
_gates_mutex = threading.Lock()


def _join(name: str) -> Gate:
    with _gates_mutex:
        gate = _gates.get(name)
        if gate is None:
            gate = _gates[name] = Gate(name)
        gate.users += 1
        return gate


def _leave(gate: Gate) -> None:
    # An idle key keeps no gate, so the table stays as small as the number of keys in use.
    with _gates_mutex:
        gate.users -= 1
        if gate.users == 0 and _gates.get(gate.name) is gate:
            del _gates[gate.name]


class InProcessLocks(LockSpace):
    """Exact per-key locks within this process only (nothing beyond it to take)."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def name(self, key: str) -> str:
        return f"{self.owner}:{key}"

    def where(self, key: str) -> tuple[str, str | None]:
        return "", None

    def try_lock(self, gate: Gate, key: str) -> bool:
        return True

    def unlock(self, gate: Gate, key: str) -> None:
        pass


_G = TypeVar("_G", bound=Gate)
lasting: dict[str, Gate] = {}
"""Gates that live as long as the process (a lock file's, with its kept descriptor), by name;
look one up here, and make it with :func:`lasting_gate`."""
_lasting_mutex = threading.Lock()


def lasting_gate(name: str, make: Callable[[str], _G]) -> _G:
    """The gate called ``name`` that lives as long as the process, made by ``make`` at first use."""
    gate = lasting.get(name)
    if gate is None:
        with _lasting_mutex:
            gate = lasting.get(name)
            if gate is None:
                gate = lasting[name] = make(name)
    return gate  # type: ignore[return-value]


def _after_fork_in_child() -> None:
    # A forked child holds none of its parent's locks: it forgets every gate of the parent's
    # (a lock object entered before the fork then releases nothing) and starts afresh.
    global _gates_mutex, _lasting_mutex
    _gates_mutex, _lasting_mutex = threading.Lock(), threading.Lock()
    for gate in [*_gates.values(), *lasting.values()]:
        gate._forget()
    _gates.clear()
    lasting.clear()  # the same dict: who looks gates up in it keeps finding it


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
