"""python-telegram-bot with SessionPersistence in a bot process of its own, killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import copy
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import forkserver
import pytest
from fakebotapi import FakeBotAPI
from helpers import fork_python
from test_ptb import WAIT, build, counter, running

from simplesession import FileStorage, SQLiteStorage, Storage
from simplesession.contrib.ptb import SessionPersistence

CHATS = (42, -1001, 7)

# The bot: /count counts per chat, with some padding so that each write takes a moment;
# argv: the store's URL, the Bot API's URL, the token.
BOT = """
    import sys
    from telegram.ext import ApplicationBuilder, CommandHandler
    from simplesession import open_storage
    from simplesession.contrib.ptb import SessionPersistence

    store, api, token = sys.argv[1:4]
    persistence = SessionPersistence(open_storage(store), update_interval=0.02)
    app = (
        ApplicationBuilder().token(token).base_url(api + "/bot").concurrent_updates(True)
        .connection_pool_size(8).pool_timeout(30).persistence(persistence).build()
    )

    async def count(update, context):
        context.chat_data["count"] = context.chat_data.get("count", 0) + 1
        context.chat_data["pad"] = "x" * 4096
        await update.effective_message.reply_text(f"count={context.chat_data['count']}")

    app.add_handler(CommandHandler("count", count))
    app.run_polling(poll_interval=0, timeout=1)
"""


@pytest.fixture(params=["file", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Callable[[], Storage]]:
    """The store's URL for the bot process, and a way to open it here."""
    if request.param == "file":
        return f"file:{tmp_path / 'sessions'}", lambda: FileStorage(tmp_path / "sessions")
    return f"sqlite:{tmp_path / 'sessions.db'}", lambda: SQLiteStorage(tmp_path / "sessions.db")


def counts(storage: Storage) -> dict[int, Any]:
    return {chat: storage.read(f"ptb:chat:{chat}") for chat in CHATS}


def wait_for(condition: Callable[[], bool], what: str, bot: forkserver.Process) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert bot.poll() is None, f"the bot ended early ({bot.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {WAIT} s"
        time.sleep(0.01)


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_mid_run_loses_no_written_update_and_a_restart_goes_on_from_there(
    store: tuple[str, Callable[[], Storage]], seed: int
) -> None:
    url, open_store = store
    rng = random.Random(seed)
    with FakeBotAPI() as api:
        bot = fork_python(BOT, url, api.url, api.token, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        stop_feeding = threading.Event()
        try:
            for _ in range(10):
                for chat in CHATS:
                    api.push_command("/count", chat)
            wait_for(lambda: len(api.sent) >= 30, "30 replies", bot)
            # Written: ten each, by the bot's runs of update_persistence, while it runs on.
            wait_for(lambda: all(v and v["count"] == 10 for v in counts(open_store()).values()), "the writes", bot)

            def feed() -> None:
                for _ in range(100):
                    if stop_feeding.is_set():
                        return
                    for chat in CHATS:
                        api.push_command("/count", chat)
                    time.sleep(0.005)

            feeder = threading.Thread(target=feed)
            feeder.start()
            target = 30 + rng.randrange(3, 60)
            wait_for(lambda: len(api.sent) >= target, "more replies", bot)
            time.sleep(rng.uniform(0, 0.05))
            bot.send_signal(signal.SIGKILL)
            assert bot.wait(WAIT) == -signal.SIGKILL
        finally:
            stop_feeding.set()
            if bot.poll() is None:
                bot.kill()
            bot.communicate(timeout=WAIT)
        feeder.join(WAIT)

        # Every chat is there and whole, at what was written before the kill or later.
        after_kill = counts(open_store())
        for chat, value in after_kill.items():
            assert value is not None, chat
            assert value["pad"] == "x" * 4096
            assert value["count"] >= 10, (chat, value["count"])
        replies_before = len(api.sent)

        # The restart loads just that, and goes on from it through the updates still pending.
        async def restart() -> dict[int, Any]:
            app = build(api, SessionPersistence(open_store(), update_interval=0.05))
            counter(app)
            loaded: dict[int, Any] = {}
            # What it loaded, before it handles any update.
            async with running(app, initialized=lambda: loaded.update(copy.deepcopy(dict(app.chat_data)))):
                last = api.next_update_id - 1
                await asyncio.to_thread(api.wait_until, lambda: api.acknowledged_offset > last, WAIT, "the backlog")
            return loaded

        loaded = asyncio.run(restart())
        assert {chat: loaded.get(chat) for chat in CHATS} == after_kill
        later = api.sent[replies_before:]
        final = counts(open_store())
        for chat in CHATS:
            handled = sum(1 for message in later if message["chat_id"] == str(chat))
            assert final[chat]["count"] == after_kill[chat]["count"] + handled, chat
