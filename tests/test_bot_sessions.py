"""Sessions through Bot.handle_update: no lost update across threads and processes."""

from __future__ import annotations

import io
import subprocess
import threading
from pathlib import Path
from typing import Any

from helpers import start_python

from simplesession import Bot, Context, FileStorage, session

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
    procs = [start_python(COUNT_BOT, str(tmp_path), "100", stderr=subprocess.PIPE) for _ in range(3)]

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
