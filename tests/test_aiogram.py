"""simplesession.contrib.aiogram's SessionMiddleware: a real aiogram Dispatcher and Bot, polling
the fake Bot API server on loopback, with aiogram's default concurrency (a task per update)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import forkserver
import pytest
from conftest import make_storage
from fakebotapi import FakeBotAPI
from helpers import fork_python

from simplesession import FileStorage, MemoryStorage, SessionKeyError, open_storage

# aiogram takes seconds of CPU to import, and every test process collects this file: only
# the tests that run import it (and simplesession.contrib.aiogram, which imports it).
if TYPE_CHECKING:
    from aiogram import Bot, Dispatcher
    from aiogram.types import ErrorEvent, Message, TelegramObject

    from simplesession.contrib.aiogram import AiogramContext

    Handler = Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]]

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
KINDS = ["memory", "file", "sqlite"]
ONE_CHAT = 50
TIMEOUT = 60.0


def bot_for(api: FakeBotAPI) -> Bot:
    from aiogram import Bot
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer

    return Bot(api.token, session=AiohttpSession(api=TelegramAPIServer.from_base(api.url)))


def message(update_id: int, text: str, chat: int = 42, user: int | None = None) -> dict[str, Any]:
    sender = {"id": chat if user is None else user, "is_bot": False, "first_name": "Tester"}
    chat_type = "private" if chat > 0 else "group"
    chat_info = {"id": chat, "type": chat_type}
    return {
        "update_id": update_id,
        "message": {"message_id": update_id, "date": 0, "chat": chat_info, "from": sender, "text": text},
    }


def run(main: Callable[[Bot], Coroutine[Any, Any, None]], api: FakeBotAPI) -> None:
    """``main(bot)`` in a fresh event loop, with a bot on ``api``; bounded."""

    async def wrapped() -> None:
        bot = bot_for(api)
        try:
            await asyncio.wait_for(main(bot), TIMEOUT)
        finally:
            await bot.session.close()

    asyncio.run(wrapped())


@pytest.mark.parametrize("kind", KINDS)
def test_fifty_polled_updates_of_one_chat_count_exactly(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, api: FakeBotAPI
) -> None:
    """Real polling: one batch of updates, a task each; one chat's handlers never overlap."""
    from aiogram import Dispatcher

    from simplesession.contrib.aiogram import SessionMiddleware

    storage = make_storage(kind, tmp_path / "sessions", request)
    updates = [(42, i) for i in range(ONE_CHAT)] + [(7, i) for i in range(10)]
    running: dict[int, int] = {42: 0, 7: 0}
    overlaps: list[int] = []
    in_flight, most_in_flight, finished = [0], [0], [0]

    async def main(bot: Bot) -> None:
        all_finished = asyncio.Event()
        dp = Dispatcher()

        # Registered before the session middleware, so it sees each update after its write-back.
        async def count_finished(handler: Handler, event: TelegramObject, data: dict[str, Any]) -> Any:
            in_flight[0] += 1
            most_in_flight[0] = max(most_in_flight[0], in_flight[0])
            try:
                return await handler(event, data)
            finally:
                in_flight[0] -= 1
                finished[0] += 1
                if finished[0] == len(updates):
                    all_finished.set()

        dp.update.outer_middleware(count_finished)
        dp.update.outer_middleware(SessionMiddleware(initial=lambda: {"n": 0}, storage=storage, sweep_interval=None))

        @dp.message()
        async def count(message: Message, session: dict[str, int]) -> None:
            chat = message.chat.id
            running[chat] += 1
            if running[chat] > 1:
                overlaps.append(chat)
            n = session["n"]
            await asyncio.sleep(0.001)  # other updates run here
            session["n"] = n + 1
            running[chat] -= 1

        for chat, i in updates:
            api.push(f"update {i}", chat_id=chat)
        polling = asyncio.create_task(dp.start_polling(bot, handle_signals=False, close_bot_session=False))
        await all_finished.wait()
        await dp.stop_polling()
        await polling

    run(main, api)
    assert storage.read("42") == {"n": ONE_CHAT}
    assert storage.read("7") == {"n": 10}
    assert overlaps == []
    assert most_in_flight[0] > 1  # the updates did run as concurrent tasks


async def feed(dp: Dispatcher, bot: Bot, *updates: dict[str, Any]) -> None:
    for update in updates:
        await dp.feed_raw_update(bot, update)


def test_a_raising_handler_writes_nothing_also_when_an_errors_handler_takes_the_error(
    tmp_path: Path, api: FakeBotAPI
) -> None:
    from aiogram import Dispatcher

    from simplesession.contrib.aiogram import SessionMiddleware

    storage = FileStorage(tmp_path)
    storage.write("42", {"n": 1})
    seen: list[str] = []

    async def main(bot: Bot) -> None:
        for handled in (False, True):
            dp = Dispatcher()
            dp.update.outer_middleware(SessionMiddleware(storage=storage, sweep_interval=None))

            @dp.message()
            async def fails(message: Message, session: dict[str, int]) -> None:
                session["n"] = 99
                raise RuntimeError("handler failed")

            if handled:

                @dp.errors()
                async def on_error(event: ErrorEvent) -> bool:
                    seen.append(str(event.exception))
                    return True

                await dp.feed_raw_update(bot, message(1, "x"))
            else:
                with pytest.raises(RuntimeError, match="handler failed"):
                    await dp.feed_raw_update(bot, message(1, "x"))
            assert storage.read("42") == {"n": 1}
        # The chat is free again.
        dp = Dispatcher()
        dp.update.outer_middleware(SessionMiddleware(storage=storage, sweep_interval=None))

        @dp.message()
        async def count(message: Message, session: dict[str, int]) -> None:
            session["n"] += 1

        await asyncio.wait_for(dp.feed_raw_update(bot, message(2, "x")), 10)

    run(main, api)
    assert seen == ["handler failed"]
    assert storage.read("42") == {"n": 2}


@pytest.mark.parametrize("kind", KINDS)
def test_the_session_is_written_only_when_changed_replaced_or_deleted(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, api: FakeBotAPI
) -> None:
    from aiogram import Dispatcher
    from aiogram.filters import Command

    from simplesession.contrib.aiogram import SessionMiddleware

    storage = make_storage(kind, tmp_path / "sessions", request)
    replies: list[str] = []

    async def main(bot: Bot) -> None:
        dp = Dispatcher()
        dp.update.outer_middleware(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

        @dp.message(Command("look"))
        async def look(message: Message, session: dict[str, int]) -> None:
            replies.append(f"count={session['count']}")

        @dp.message(Command("count"))
        async def count(message: Message, session: dict[str, int]) -> None:
            session["count"] += 1

        @dp.message(Command("set"))
        async def replace(message: Message, session_context: AiogramContext) -> None:
            session_context.session = {"count": 10}

        @dp.message(Command("reset"))
        async def reset(message: Message, session_context: AiogramContext) -> None:
            assert session_context.session_key == "42"
            assert session_context.event.update_id == message.message_id
            session_context.session = None

        @dp.message()
        async def other(message: Message) -> None:  # names no session: gets none, all the same
            replies.append("other")

        await feed(dp, bot, message(1, "/look"), message(2, "hello"))
        assert list(storage.keys()) == []  # an untouched initial session creates nothing
        await feed(dp, bot, message(3, "/count"), message(4, "/count"))
        assert storage.read("42") == {"count": 2}
        await feed(dp, bot, message(5, "/set"))
        assert storage.read("42") == {"count": 10}
        await feed(dp, bot, message(6, "/reset"))
        assert storage.read("42") is None
        await feed(dp, bot, message(7, "/look"))

    run(main, api)
    assert replies == ["count=0", "other", "count=0"]


def test_an_update_without_a_chat_gets_a_session_that_says_why_it_has_none(api: FakeBotAPI) -> None:
    from aiogram import Dispatcher

    from simplesession.contrib.aiogram import SessionMiddleware

    storage = MemoryStorage()
    errors: list[str] = []
    inline = {
        "update_id": 1,
        "inline_query": {"id": "q", "from": {"id": 5, "is_bot": False, "first_name": "T"}, "query": "", "offset": ""},
    }

    async def main(bot: Bot) -> None:
        dp = Dispatcher()
        dp.update.outer_middleware(SessionMiddleware(initial=dict, storage=storage))

        @dp.inline_query()
        async def query(event: TelegramObject, session: dict[str, Any]) -> None:
            with pytest.raises(SessionKeyError, match="belongs to no chat") as error:
                session["x"] = 1
            errors.append(str(error.value))

        await feed(dp, bot, inline)

    run(main, api)
    assert len(errors) == 1
    assert list(storage.keys()) == []


def test_keys_of_your_own_and_multi_sessions_see_the_update_as_the_bot_api_sends_it(api: FakeBotAPI) -> None:
    from aiogram import Dispatcher
    from aiogram.filters import Command

    from simplesession.contrib.aiogram import SessionMiddleware

    storage = MemoryStorage()

    async def main(bot: Bot) -> None:
        dp = Dispatcher()
        dp.update.outer_middleware(
            SessionMiddleware.multi(
                sweep_interval=None,
                chat={"storage": storage, "initial": lambda: {"n": 0}},
                user={
                    "storage": storage,
                    "initial": lambda: {"n": 0},
                    "get_session_key": lambda ctx: f"{ctx.from_id}:{ctx.update['message']['from']['first_name']}",
                },
            )
        )

        @dp.message(Command("count"))
        async def count(message: Message, session: Any) -> None:
            session.chat["n"] += 1
            session.user["n"] += 1

        @dp.message(Command("forget"))
        async def forget(message: Message, session: Any) -> None:
            session.user = None

        group = -100
        await feed(dp, bot, message(1, "/count", group, 5), message(2, "/count", group, 6), message(3, "/count", 7, 5))
        assert storage.read("chat:-100") == {"n": 2}
        assert storage.read("chat:7") == {"n": 1}
        assert storage.read("user:5:Tester") == {"n": 2}
        await feed(dp, bot, message(4, "/forget", group, 6))
        assert storage.read("user:6:Tester") is None
        assert storage.read("chat:-100") == {"n": 2}

    run(main, api)


def test_on_a_routers_message_observer_it_keys_by_the_update_all_the_same(api: FakeBotAPI) -> None:
    from aiogram import Dispatcher

    from simplesession.contrib.aiogram import SessionMiddleware

    storage = MemoryStorage()

    async def main(bot: Bot) -> None:
        dp = Dispatcher()
        dp.message.outer_middleware(SessionMiddleware(initial=lambda: {"n": 0}, storage=storage))

        @dp.message()
        async def count(message: Message, session: dict[str, int], session_context: AiogramContext) -> None:
            assert session_context.event.message is message
            session["n"] += 1

        await feed(dp, bot, message(1, "x"), message(2, "y"))

    run(main, api)
    assert storage.read("42") == {"n": 2}


def test_lazy_sessions_and_two_middlewares_are_refused_with_the_reason(api: FakeBotAPI) -> None:
    from aiogram import Dispatcher

    from simplesession.contrib.aiogram import SessionMiddleware

    with pytest.raises(ValueError, match=r"lazy sessions .* would read on the event loop"):
        SessionMiddleware(lazy=True, storage=MemoryStorage())
    with pytest.raises(TypeError, match="initial must be a function"):
        SessionMiddleware(initial={"count": 0})

    async def main(bot: Bot) -> None:
        dp = Dispatcher()
        dp.update.outer_middleware(SessionMiddleware(storage=MemoryStorage()))
        dp.update.outer_middleware(SessionMiddleware(storage=MemoryStorage()))

        @dp.message()
        async def handler(message: Message) -> None:
            pass

        with pytest.raises(TypeError, match=r"data\['session'\] is taken"):
            await feed(dp, bot, message(1, "x"))

    run(main, api)


# -- a crash -------------------------------------------------------------------------------------

POLLING_BOT = """
    import asyncio, sys
    from aiogram import Bot, Dispatcher
    from aiogram.client.session.aiohttp import AiohttpSession
    from aiogram.client.telegram import TelegramAPIServer
    from simplesession import open_storage
    from simplesession.contrib.aiogram import SessionMiddleware

    url, token, store = sys.argv[1:4]
    dp = Dispatcher()

    async def report(handler, event, data):
        # Registered before the session middleware: runs once the write-back is done.
        result = await handler(event, data)
        await data["bot"].send_message(event.message.chat.id, f"done {data['session']['n']}")
        return result

    dp.update.outer_middleware(report)
    dp.update.outer_middleware(SessionMiddleware(initial=lambda: {"n": 0}, storage=open_storage(store)))

    @dp.message()
    async def count(message, session):
        session["n"] += 1
        await asyncio.sleep(0.005)  # so that the kill comes mid-run

    asyncio.run(dp.start_polling(Bot(token, session=AiohttpSession(api=TelegramAPIServer.from_base(url)))))
"""


@pytest.mark.usefixtures("forked")
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_a_bot_killed_mid_run_loses_no_finished_update(kind: str, tmp_path: Path, api: FakeBotAPI) -> None:
    store = f"file:{tmp_path / 'sessions'}" if kind == "file" else f"sqlite:{tmp_path / 'sessions.db'}"
    for i in range(300):
        api.push(f"update {i}")
    bot = fork_python(POLLING_BOT, api.url, api.token, store, stderr=subprocess.PIPE)
    try:
        api.wait_for_sent(20, timeout=TIMEOUT)
    finally:
        bot.send_signal(signal.SIGKILL)
        _, stderr = bot.communicate(timeout=TIMEOUT)
    # Each "done n" was sent once update n was written back; they may arrive out of order.
    done = [int(sent["text"].split()[1]) for sent in api.sent]
    assert len(set(done)) == len(done) >= 20, stderr
    with open_storage(store) as storage:
        stored = storage.read("42")
    assert stored is not None
    assert max(done) <= stored["n"] < 300  # every finished update is there; the kill came mid-run


# -- the example ---------------------------------------------------------------------------------


@pytest.mark.usefixtures("forked")
def test_aiogram_counter_example_counts_and_forgets_on_a_bot_api_server_of_its_own(
    tmp_path: Path, api: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SIMPLESESSION_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    storage = FileStorage(app_name="aiogram_counter")
    env = {**os.environ, "BOT_TOKEN": api.token, "TELEGRAM_API_URL": api.url}
    bot = forkserver.popen(
        [str(EXAMPLES / "aiogram_counter.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api.push("/count")
        api.push("/count")
        api.wait_for_sent(2, timeout=TIMEOUT)
        # The reply goes out before the write-back: wait for the write.
        deadline = time.monotonic() + TIMEOUT
        while storage.read("42") != {"count": 2} and time.monotonic() < deadline:
            time.sleep(0.02)
        assert storage.read("42") == {"count": 2}
        api.push("/reset")
        api.wait_for_sent(3, timeout=TIMEOUT)
        deadline = time.monotonic() + TIMEOUT
        while storage.read("42") is not None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        bot.send_signal(signal.SIGINT)  # aiogram stops polling on SIGINT
        _, stderr = bot.communicate(timeout=TIMEOUT)
    texts = [sent["text"] for sent in api.sent]
    assert texts == ["You have sent 1 commands", "You have sent 2 commands", "Forgotten"], stderr
    assert storage.read("42") is None
    assert storage.directory == tmp_path / "aiogram_counter" / "sessions"
    assert bot.returncode == 0, stderr


@pytest.mark.usefixtures("forked")
def test_the_example_says_what_it_needs_without_a_token() -> None:
    env = {k: v for k, v in os.environ.items() if k != "BOT_TOKEN"}
    done = forkserver.run([str(EXAMPLES / "aiogram_counter.py")], env=env, timeout=TIMEOUT)
    assert done.returncode == 1
    assert "set BOT_TOKEN" in done.stderr
