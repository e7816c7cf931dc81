"""simplesession.aio: locks that coroutines hold, and sessions for async bots, off the event loop."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import fork_python
from pgserver import drop_tables

from simplesession import (
    Context,
    FileStorage,
    LockTimeout,
    MemoryStorage,
    Storage,
    lazy_session,
    multi_session,
    open_storage,
    session,
)
from simplesession.aio import Sessions, lock

COROUTINES = 50


async def _increment(storage: Storage, key: str, pause: float = 0.0) -> None:
    async with lock(storage, key):
        value = await asyncio.to_thread(storage.read, key) or {"n": 0}
        await asyncio.sleep(pause)  # another coroutine runs here; it must wait for the lock
        value["n"] += 1
        await asyncio.to_thread(storage.write, key, value)


def test_coroutines_of_one_loop_exclude_each_other(storage: Storage) -> None:
    async def main() -> None:
        await asyncio.gather(*(_increment(storage, "counter", 0.001) for _ in range(COROUTINES)))

    asyncio.run(main())
    assert storage.read("counter") == {"n": COROUTINES}


def test_a_thread_and_coroutines_exclude_each_other(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)

    def thread_increments() -> None:
        for _ in range(100):
            with storage.lock("counter"):
                value = storage.read("counter") or {"n": 0}
                time.sleep(0.0002)
                value["n"] += 1
                storage.write("counter", value)

    async def main() -> None:
        worker = threading.Thread(target=thread_increments)
        worker.start()
        await asyncio.gather(*(_increment(storage, "counter", 0.001) for _ in range(COROUTINES)))
        await asyncio.to_thread(worker.join)

    asyncio.run(main())
    assert storage.read("counter") == {"n": COROUTINES + 100}


# Increments per coroutine of the processes below: the long runs (SIMPLESESSION_SOAK_SECONDS
# set, see test_soak.py) make twice as many.
INCREMENTS = 100 if os.environ.get("SIMPLESESSION_SOAK_SECONDS") else 50

ASYNC_INCREMENTER = """
    import asyncio, json, sys
    from simplesession import open_storage
    from simplesession.aio import lock

    storage = open_storage(sys.argv[1], **json.loads(sys.argv[2]))

    async def increments(times):
        for _ in range(times):
            async with lock(storage, "counter"):
                value = await asyncio.to_thread(storage.read, "counter") or {"n": 0}
                await asyncio.sleep(0)
                value["n"] += 1
                await asyncio.to_thread(storage.write, "counter", value)

    async def main():
        await asyncio.gather(*(increments(int(sys.argv[4])) for _ in range(int(sys.argv[3]))))

    asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["file", "sqlite", "redis", "postgres"])
def test_processes_of_coroutines_lose_no_update(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """2 processes x 8 coroutines x 50 increments of one key (100 in the long runs): exactly 800 (1600)."""
    if kind == "file":
        url = f"file:{tmp_path}"
    elif kind == "sqlite":
        url = f"sqlite:{tmp_path / 'sessions.db'}"
    elif kind == "redis":
        url = request.getfixturevalue("redis_url")
    else:
        url = request.getfixturevalue("postgres_url")
    options: dict[str, Any] = {}
    if kind == "redis":
        options["prefix"] = request.getfixturevalue("redis_prefix")
    if kind == "postgres":
        options["table"] = f"test_{uuid.uuid4().hex}"  # the server may outlive this run: a table of its own
    args = (url, json.dumps(options), "8", str(INCREMENTS))
    try:
        procs = [fork_python(ASYNC_INCREMENTER, *args, stderr=subprocess.PIPE) for _ in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=90)
            assert proc.returncode == 0, err
        with open_storage(url, **options) as storage:
            assert storage.read("counter") == {"n": 2 * 8 * INCREMENTS}
            if kind == "postgres":
                storage.close()
    finally:
        if kind == "postgres":
            drop_tables(url, options["table"])


def test_waiting_for_a_lock_leaves_the_loop_running(tmp_path: Path) -> None:
    """Another process holds the key: the waiting coroutine waits in a worker thread, and
    the loop goes on with other chats meanwhile."""
    storage = FileStorage(tmp_path)
    holder = fork_python(
        """
        import sys, time
        from simplesession import FileStorage
        with FileStorage(sys.argv[1]).lock("busy"):
            print("held", flush=True)
            time.sleep(1.0)
        """,
        str(tmp_path),
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    ticks: list[float] = []

    async def ticker(stop: asyncio.Event) -> None:
        while not stop.is_set() and len(ticks) < 1000:
            ticks.append(time.monotonic())
            await asyncio.sleep(0.01)

    async def main() -> float:
        stop = asyncio.Event()
        ticking = asyncio.create_task(ticker(stop))
        start = time.monotonic()
        async with lock(storage, "busy"):
            got = time.monotonic()
        await _increment(storage, "other")
        stop.set()
        await ticking
        return got - start

    waited = asyncio.run(main())
    holder.wait(timeout=10)
    assert waited > 0.5  # it did wait for the other process
    during = [t for t in ticks if t <= ticks[0] + waited]
    assert len(during) >= 10  # the loop ticked all along (at most 100 ticks a second)


def test_updates_of_one_busy_chat_leave_the_worker_threads_to_other_chats(tmp_path: Path) -> None:
    """Fifty coroutines of one chat queue on the loop, not in worker threads: an update of
    another chat, started after them, finishes while nearly all of them still wait."""
    storage = FileStorage(tmp_path)
    done: list[str] = []

    async def busy() -> None:
        await _increment(storage, "busy", 0.005)
        done.append("busy")

    async def main() -> None:
        tasks = [asyncio.create_task(busy()) for _ in range(COROUTINES)]
        await asyncio.sleep(0.01)
        await asyncio.wait_for(_increment(storage, "other"), 10)
        done.append("other")
        await asyncio.gather(*tasks)

    asyncio.run(main())
    assert done.index("other") < 10, done.index("other")
    assert storage.read("busy") == {"n": COROUTINES}


def test_a_cancelled_waiter_leaves_no_lock_behind(storage: Storage) -> None:
    async def main() -> None:
        release = asyncio.Event()

        async def hold() -> None:
            async with lock(storage, "k"):
                await release.wait()

        holding = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        waiters = [asyncio.create_task(_increment(storage, "k")) for _ in range(5)]
        await asyncio.sleep(0.05)
        for waiter in waiters:
            waiter.cancel()
        release.set()
        await holding
        for waiter in waiters:
            with pytest.raises(asyncio.CancelledError):
                await waiter
        # The key is free again, for coroutines and for threads alike.
        await asyncio.wait_for(_increment(storage, "k"), 10)
        with storage.lock("k", timeout=5):
            pass

    asyncio.run(main())
    assert storage.read("k") == {"n": 1}


def test_a_lock_a_cancelled_waiter_gets_as_the_loop_shuts_down_is_given_back(tmp_path: Path) -> None:
    """Its worker thread gets the lock only once asyncio.run is shutting the executor down."""
    storage = FileStorage(tmp_path)
    taken, release = threading.Event(), threading.Event()

    def thread_holds() -> None:
        with storage.lock("k"):
            taken.set()
            release.wait(10)

    worker = threading.Thread(target=thread_holds)
    worker.start()
    assert taken.wait(10)

    async def main() -> None:
        waiter = asyncio.create_task(_increment(storage, "k"))
        await asyncio.sleep(0.1)  # in its worker thread, waiting for the thread's lock
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        threading.Timer(0.3, release.set).start()  # once main has returned

    asyncio.run(main())
    worker.join(10)
    with storage.lock("k", timeout=5):
        pass


def test_cancelled_while_the_thread_takes_the_lock(tmp_path: Path) -> None:
    """Cancelled after its worker thread began to wait for another thread's lock: once the
    thread gets the lock, it is given back."""
    storage = FileStorage(tmp_path)
    taken, release = threading.Event(), threading.Event()

    def thread_holds() -> None:
        with storage.lock("k"):
            taken.set()
            release.wait(10)

    async def main() -> None:
        worker = threading.Thread(target=thread_holds)
        worker.start()
        await asyncio.to_thread(taken.wait, 10)
        waiter = asyncio.create_task(_increment(storage, "k"))
        await asyncio.sleep(0.1)  # in its worker thread, waiting for the thread's lock
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        release.set()
        await asyncio.to_thread(worker.join)
        await asyncio.wait_for(_increment(storage, "k"), 10)

    asyncio.run(main())
    with storage.lock("k", timeout=5):
        assert storage.read("k") == {"n": 1}


def test_lock_timeout_covers_the_wait_on_the_loop() -> None:
    storage = MemoryStorage(lock_timeout=0.2)

    async def main() -> None:
        release = asyncio.Event()

        async def hold() -> None:
            async with lock(storage, "k"):
                await release.wait()

        holding = asyncio.create_task(hold())
        await asyncio.sleep(0.05)
        with pytest.raises(LockTimeout, match=r"session 'k' is still locked by another update of this event loop"):
            async with lock(storage, "k"):
                pass
        with pytest.raises(LockTimeout):
            async with lock(storage, "k", timeout=0):
                pass
        release.set()
        await holding
        async with lock(storage, "k", timeout=0):
            pass

    asyncio.run(main())


def test_a_task_may_enter_its_lock_again_and_other_keys_of_the_same_lock_file(tmp_path: Path) -> None:
    """Re-entry belongs to the task, as it belongs to the thread for storage.lock: nested
    locks of one key, or of two keys on one lock file, never wait for themselves."""
    storage = FileStorage(tmp_path, lock_timeout=2)
    same_file = next(k for k in (f"k{i}" for i in range(100_000)) if storage.lock_name(k) == storage.lock_name("a"))

    async def main() -> None:
        async with lock(storage, "a"), lock(storage, same_file), lock(storage, "a"):
            other = asyncio.create_task(_increment(storage, "a"))  # another task: it waits
            await asyncio.sleep(0.1)
            assert not other.done()
        await asyncio.wait_for(other, 10)

    asyncio.run(main())
    assert storage.read("a") == {"n": 1}


def test_a_waiter_behind_a_woken_one_still_times_out() -> None:
    """Taking the key again just after giving it up, while a waiter woken for it has not run
    yet: the wait is still bounded by the timeout."""
    storage = MemoryStorage(lock_timeout=0.3)

    async def main() -> str:
        release = asyncio.Event()

        async def first() -> str:
            async with lock(storage, "k"):
                await asyncio.sleep(0.1)  # second() queues meanwhile
            try:
                async with lock(storage, "k"):  # at once: second() is woken but has not run
                    return "got it"
            except LockTimeout:
                return "LockTimeout"

        async def second() -> None:
            await asyncio.sleep(0.05)
            async with lock(storage, "k"):
                await release.wait()  # a stuck handler

        stuck = asyncio.create_task(second())
        try:
            return await asyncio.wait_for(first(), 5)
        finally:
            release.set()
            await stuck

    assert asyncio.run(main()) == "LockTimeout"


def test_a_bad_key_is_refused_before_any_wait() -> None:
    async def main() -> None:
        with pytest.raises(ValueError, match="key"):
            async with lock(MemoryStorage(), "caf\u00e9\udc80"):
                pass

    asyncio.run(main())


# -- sessions for async bots -----------------------------------------------------------------


def _update(chat: int, text: str = "hi", update_id: int = 1) -> dict[str, Any]:
    return {"update_id": update_id, "message": {"message_id": 1, "chat": {"id": chat}, "text": text}}


async def _handle(sessions: Sessions, update: dict[str, Any], handler: Callable[[Context], Any]) -> None:
    ctx = Context(update)

    async def next() -> None:
        await handler(ctx)

    await sessions(ctx, next)


def test_concurrent_updates_of_one_chat_count_exactly(storage: Storage) -> None:
    sessions = Sessions(session(initial=lambda: {"n": 0}, storage=storage, sweep_interval=None))

    async def count(ctx: Context) -> None:
        n = ctx.session["n"]
        await asyncio.sleep(0.001)
        ctx.session["n"] = n + 1

    async def main() -> None:
        updates = [_update(chat, update_id=i) for i in range(COROUTINES) for chat in (1, 2)]
        await asyncio.gather(*(_handle(sessions, update, count) for update in updates))

    asyncio.run(main())
    assert storage.read("1") == {"n": COROUTINES}
    assert storage.read("2") == {"n": COROUTINES}


def test_a_raising_handler_writes_nothing_and_frees_the_chat(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("7", {"n": 1})
    sessions = Sessions(session(storage=storage, sweep_interval=None))

    async def fails(ctx: Context) -> None:
        ctx.session["n"] = 99
        await asyncio.sleep(0)
        raise RuntimeError("handler failed")

    async def count(ctx: Context) -> None:
        ctx.session["n"] += 1

    async def main() -> None:
        with pytest.raises(RuntimeError, match="handler failed"):
            await _handle(sessions, _update(7), fails)
        assert storage.read("7") == {"n": 1}
        await asyncio.wait_for(_handle(sessions, _update(7), count), 10)

    asyncio.run(main())
    assert storage.read("7") == {"n": 2}


def test_multi_sessions_of_overlapping_keys_never_deadlock(tmp_path: Path) -> None:
    """Updates of two chats from one user: the user's and the chats' locks, taken in one order."""
    storage = FileStorage(tmp_path)
    sessions = Sessions(
        multi_session(
            sweep_interval=None,
            chat={"storage": storage, "initial": lambda: {"n": 0}},
            user={
                "storage": storage,
                "initial": lambda: {"n": 0},
                "get_session_key": lambda ctx: str(ctx.update["message"]["from"]["id"]),
            },
        )
    )

    def update(chat: int, user: int, update_id: int) -> dict[str, Any]:
        found = _update(chat, update_id=update_id)
        found["message"]["from"] = {"id": user}
        return found

    async def count(ctx: Context) -> None:
        ctx.session.chat["n"] += 1
        await asyncio.sleep(0.001)
        ctx.session.user["n"] += 1

    async def main() -> None:
        updates = [update(chat, 5, i) for i in range(20) for chat in (1, 2)]
        await asyncio.wait_for(asyncio.gather(*(_handle(sessions, u, count) for u in updates)), 60)

    asyncio.run(main())
    assert storage.read("chat:1") == {"n": 20}
    assert storage.read("chat:2") == {"n": 20}
    assert storage.read("user:5") == {"n": 40}


def test_lazy_sessions_are_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match=r"lazy sessions .* would read on the event loop"):
        Sessions(lazy_session(storage=MemoryStorage()))
    with pytest.raises(TypeError, match="middleware of session"):
        Sessions(object())  # type: ignore[arg-type]


def test_an_update_without_a_key_runs_without_locks() -> None:
    storage = MemoryStorage()
    sessions = Sessions(session(storage=storage, sweep_interval=None))
    seen: list[Any] = []

    async def handler(ctx: Context) -> None:
        seen.append(ctx.session_key)

    asyncio.run(_handle(sessions, {"update_id": 1, "poll": {"id": "p"}}, handler))
    assert seen == [None]
