"""Sessions through Bot.handle_update: no lost update across threads and processes, no garbage left."""

from __future__ import annotations

import gc
import io
import subprocess
import threading
import types
from pathlib import Path
from typing import Any

import pytest
from helpers import fork_python

from simplesession import Bot, Context, FileStorage, MemoryStorage, SessionMiddleware, multi_session, session

COUNT_BOT = """
    import io, sys
    from simplesession import Bot, FileStorage, session

    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"count": 0}, storage=FileStorage(sys.argv[1])))

    @bot.command("count")
    def count(ctx):
        ctx.session["count"] += 1

    for n in range(int(sys.argv[2])):
        bot.handle_update({"update_id": n, "message": {"message_id": n, "chat": {"id": 42}, "text": "/count"}})
"""


def count_update(n: int) -> dict[str, Any]:
    return {"update_id": n, "message": {"message_id": n, "chat": {"id": 42, "type": "group"}, "text": "/count"}}


def test_threads_and_processes_counting_one_chat_lose_no_update(tmp_path: Path) -> None:
    procs = [fork_python(COUNT_BOT, str(tmp_path), "100", stderr=subprocess.PIPE) for _ in range(3)]

    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"count": 0}, storage=FileStorage(tmp_path)))
    replies: list[int] = []

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1
        replies.append(ctx.session["count"])

    def worker(first: int) -> None:
        for n in range(first, first + 100):
            bot.handle_update(count_update(n))

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert not any(t.is_alive() for t in threads)
    assert FileStorage(tmp_path, cache_size=0).read("42") == {"count": 700}
    assert len(replies) == len(set(replies)) == 400  # no two updates saw the same count


def _ours(thing: object) -> bool:
    """Whether ``thing`` is an object of this library, or a function defined in it."""
    module = thing.__module__ if isinstance(thing, types.FunctionType) else type(thing).__module__
    return module.startswith("simplesession")


@pytest.mark.parametrize("kind", ["session", "lazy_session", "multi_session", "raising handler", "raising key"])
def test_a_handled_update_leaves_no_garbage_for_the_collector(tmp_path: Path, kind: str) -> None:
    # Its context and sessions are freed as the update ends, whether it succeeds or fails:
    # none held until a garbage collection finds them in a reference cycle.
    storage = FileStorage(tmp_path)
    middleware: SessionMiddleware
    if kind in ("multi_session", "raising handler", "raising key"):

        def user_key(ctx: Context) -> str:
            if kind == "raising key":
                raise LookupError("no user")
            return "u"

        middleware = multi_session(
            chat={"initial": lambda: {"count": 0}, "storage": storage},
            user={"storage": MemoryStorage(), "get_session_key": user_key},
            sweep_interval=None,
        )
    else:
        lazy = kind == "lazy_session"
        middleware = session(initial=lambda: {"count": 0}, storage=storage, sweep_interval=None, lazy=lazy)
    bot = Bot(output=io.StringIO())
    bot.use(middleware)

    @bot.command("count")
    def count(ctx: Context) -> None:
        if isinstance(ctx.session, dict):
            ctx.session["count"] += 1
        else:
            ctx.session.chat["count"] += 1
            ctx.session.user = {"seen": True}
        ctx.reply("counted")
        if kind == "raising handler":
            raise RuntimeError("handler failed")

    def handle(n: int) -> None:
        try:
            bot.handle_update(count_update(n))
        except (RuntimeError, LookupError):
            assert kind.startswith("raising")

    handle(0)  # first-use set-up (folders, caches) is not counted
    gc.collect()
    gc.disable()
    try:
        for n in range(1, 6):
            handle(n)
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left = sorted({type(thing).__name__ for thing in gc.garbage if _ours(thing)})
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert left == [], f"updates left reference cycles of: {left}"
    counted = 0 if kind.startswith("raising") else 6
    key = "42" if kind in ("session", "lazy_session") else "chat:42"
    assert FileStorage(tmp_path, cache_size=0).read(key) == (None if not counted else {"count": counted})
