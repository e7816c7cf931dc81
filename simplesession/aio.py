"""Sessions for asyncio bots: per-key locks that coroutines hold, and the blocking work off the loop.

A storage's lock belongs to a *holder*, by default the calling thread; coroutines share
their thread, so here each lock gets a holder of its own. Waiting for a lock and reading
or writing a session block, so they run in the loop's default executor, never on the loop.

Coroutines of one loop that want the same key queue on the loop first (one
:class:`asyncio.Lock` per lock name). Only the first of them waits in a worker thread for
the storage's lock (the one other threads, processes and machines see): fifty updates of
one chat would otherwise fill every worker thread with waiting and stall all other chats.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, Literal, TypeVar

from .context import Context
from .errors import LockTimeout
from .session import AnyRun, SessionMiddleware, lock_names
from .storage.base import Storage, _Default
from .storage.locks import Holder, acting_for
from .storage.values import check_lock_timeout

__all__ = ["Sessions", "lock"]

_log = logging.getLogger(__name__)
_T = TypeVar("_T")


class _Queue:
    """The coroutines of one loop that hold or wait for one lock name, and which task holds it."""

    __slots__ = ("depth", "lock", "owner", "users")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.users = 0  # holders and waiters: the queue is dropped when the last one leaves
        self.owner: Holder | None = None
        self.depth = 0


# Per loop: an asyncio.Lock belongs to the loop it first waited on.
_queues: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, _Queue]] = weakref.WeakKeyDictionary()
# A task's locks are its own, whichever worker threads take them, as a thread's are.
_holders: weakref.WeakKeyDictionary[asyncio.Task[Any], Holder] = weakref.WeakKeyDictionary()


def _holder() -> Holder:
    """The running task's holder."""
    task = asyncio.current_task()
    if task is None:  # a coroutine driven by hand: a holder of its own each time
        return Holder("coroutine")
    holder = _holders.get(task)
    if holder is None:
        holder = _holders[task] = Holder(f"task {task.get_name()}")
    return holder


@asynccontextmanager
async def _queued(
    names: list[str], keys: list[str], timeout: float | None, holder: Holder
) -> AsyncIterator[float | None]:
    """Hold this loop's queues of ``names`` (in the order given, the locks' global order) for
    ``holder`` and its sessions ``keys``; yields the seconds left of ``timeout`` for the
    storage's locks. A queue the holder holds already is only counted again."""
    loop = asyncio.get_running_loop()
    queues = _queues.get(loop)
    if queues is None:
        queues = _queues[loop] = {}
    deadline = None if timeout is None else loop.time() + timeout
    joined: list[tuple[str, _Queue]] = []
    for name in names:
        queue = queues.get(name)
        if queue is None:
            queue = queues[name] = _Queue()
        queue.users += 1
        joined.append((name, queue))
    taken: list[_Queue] = []
    try:
        for _, queue in joined:
            if queue.owner is not holder:
                # With others holding or waiting (a waiter just woken holds nothing yet),
                # the wait is bounded; alone, the lock is free and taken at once.
                if deadline is None or queue.users == 1:
                    await queue.lock.acquire()
                else:
                    try:
                        await asyncio.wait_for(queue.lock.acquire(), max(deadline - loop.time(), 0.0))
                    except asyncio.TimeoutError:
                        what = f"session {keys[0]!r} is" if len(keys) == 1 else f"sessions {keys!r} are"
                        raise LockTimeout(
                            f"{what} still locked by another update of this event loop after {timeout} s; "
                            "a handler is running long or is stuck: find it, or raise lock_timeout",
                            key=keys[0] if len(keys) == 1 else None,
                            timeout=timeout,
                        ) from None
                queue.owner = holder
            queue.depth += 1
            taken.append(queue)
        yield None if deadline is None else max(deadline - loop.time(), 0.0)
    finally:
        for queue in reversed(taken):
            queue.depth -= 1
            if queue.depth == 0:
                queue.owner = None
                queue.lock.release()
        for name, queue in joined:
            queue.users -= 1
            if queue.users == 0:
                del queues[name]


async def _off_loop(holder: object, call: Callable[[], _T], undo: Callable[[_T], object] | None = None) -> _T:
    """``call()`` in a worker thread, taking and releasing locks for ``holder``.

    The thread runs to its end even if the awaiting coroutine is cancelled (a lock half
    taken cannot be left behind): then ``undo`` gets its result, to give back what it took.
    """

    def run() -> _T:
        with acting_for(holder):
            return call()

    loop = asyncio.get_running_loop()
    done = loop.run_in_executor(None, run)
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        if undo is not None:

            def give_back(future: asyncio.Future[_T]) -> None:
                if future.cancelled() or future.exception() is not None:
                    return
                try:
                    loop.run_in_executor(None, _logged, holder, undo, future.result())
                except RuntimeError:  # the loop is shutting its executor down (asyncio.run ending)
                    threading.Thread(target=_logged, args=(holder, undo, future.result())).start()

            done.add_done_callback(give_back)
        raise


def _logged(holder: object, undo: Callable[[_T], object], result: _T) -> None:
    try:
        with acting_for(holder):
            undo(result)
    except Exception:
        _log.exception("could not give back the locks of a cancelled update")


@asynccontextmanager
async def lock(
    storage: Storage,
    key: str,
    *,
    timeout: float | Literal[_Default.TIMEOUT] | None = _Default.TIMEOUT,
) -> AsyncIterator[None]:
    """Hold ``key`` exclusively: ``async with simplesession.aio.lock(storage, key):``.

    It excludes other coroutines of the loop, other threads, processes and (for a server's
    storage) machines, as :meth:`Storage.lock` does for threads; the waiting happens in a
    worker thread, so the event loop keeps running. Read and write inside it as usual
    (``await asyncio.to_thread(storage.write, key, value)`` keeps file I/O off the loop too).
    Raises :class:`~simplesession.LockTimeout` after ``timeout`` seconds in all (default
    the storage's ``lock_timeout``). The lock belongs to the running task, which may enter
    it again, or another key's lock that shares its lock file (that only counts), as a
    thread may with :meth:`Storage.lock`; a task it starts is another holder.
    """
    wait = storage.lock_timeout if timeout is _Default.TIMEOUT else check_lock_timeout(timeout)
    holder = _holder()
    held = storage.lock(key, timeout=wait, holder=holder)  # checks the key
    async with _queued([held.name], [key], wait, holder) as left:
        held.timeout = left
        await _off_loop(holder, held.__enter__, lambda _: held.__exit__(None, None, None))
        try:
            yield
        finally:
            await _off_loop(holder, lambda: held.__exit__(None, None, None))


Next = Callable[[], Awaitable[object]]


class Run:
    """One update's sessions, loaded by :meth:`Sessions.begin` for :meth:`Sessions.end`."""

    __slots__ = ("holder", "queued", "run")

    def __init__(self, run: AnyRun, holder: Holder, queued: AbstractAsyncContextManager[object]) -> None:
        self.run = run
        self.holder = holder
        self.queued = queued


class Sessions:
    """A session middleware (:func:`~simplesession.session`, ``multi_session``) for an async bot.

    ``await sessions.begin(ctx)`` installs ``ctx.session`` and loads it, holding its locks;
    ``await sessions.end(run, failed=...)`` writes back what changed (nothing if the handler
    ``failed``) and releases them; ``await sessions(ctx, next)`` does both around
    ``await next()``. Same semantics as the blocking middleware, with the locks held by the
    update's coroutine. Sessions load before the handler runs: a lazy session would read
    on the event loop when first touched, so it is refused.
    """

    def __init__(self, middleware: SessionMiddleware) -> None:
        if not isinstance(middleware, SessionMiddleware):
            raise TypeError(f"Sessions needs the middleware of session() or multi_session(), not {middleware!r}")
        lazy = [fragment.name or "session" for fragment in middleware.fragments if fragment.lazy]
        if lazy:
            raise ValueError(
                f"an async bot cannot use lazy sessions ({', '.join(lazy)}): the first touch would read "
                "on the event loop; drop lazy=True (the session is then loaded before the handler)"
            )
        self.middleware = middleware
        # How long an update waits for the updates of this loop ahead of it, before it waits
        # (as long again at most) for the storages' locks: the longest of their timeouts.
        timeouts = [getattr(fragment.storage, "lock_timeout", None) for fragment in middleware.fragments]
        self._timeout = None if None in timeouts else max(t for t in timeouts if t is not None)

    async def __call__(self, ctx: Context, next: Next) -> None:
        run = await self.begin(ctx)
        try:
            await next()
        except BaseException:
            await self.end(run, failed=True)
            raise
        await self.end(run, failed=False)

    async def begin(self, ctx: Context) -> Run:
        """Install ``ctx.session`` and load it, waiting for its locks off the loop."""
        middleware = self.middleware
        prepared = middleware.prepare(ctx)
        names, keys = lock_names(prepared)
        holder = _holder()
        # The loop's queues are held until end().
        queued = _queued(names, keys, self._timeout, holder)
        await queued.__aenter__()
        try:
            await _off_loop(holder, lambda: middleware.load(prepared), lambda _: prepared.finish(failed=True))
        except BaseException:
            await queued.__aexit__(None, None, None)
            raise
        return Run(prepared, holder, queued)

    async def end(self, run: Run, *, failed: bool) -> None:
        """Write back what changed (unless the handler ``failed``) and release the locks."""
        try:
            await _off_loop(run.holder, lambda: self.middleware.end(run.run, failed=failed))
        finally:
            await run.queued.__aexit__(None, None, None)
