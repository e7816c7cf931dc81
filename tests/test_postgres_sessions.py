"""PostgresStorage through the middleware: session(), lazy_session(), multi_session(), the sweep, telebot."""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from conftest import postgres_storage
from fakebotapi import FakeBotAPI
from telebot import TeleBot, apihelper
from telebot.types import Message

from simplesession import Bot, Context, LockTimeout, PostgresStorage, lazy_session, multi_session, session
from simplesession.contrib.telebot import SessionMiddleware

Make = Callable[..., PostgresStorage]


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Make:
    return lambda **options: postgres_storage(request, **options)


def update(n: int, chat: int = 42, text: str = "/count", user: int = 7) -> dict[str, Any]:
    message = {"message_id": n, "chat": {"id": chat, "type": "group"}, "from": {"id": user}, "text": text}
    return {"update_id": n, "message": message}


def test_bot_sessions_count_from_two_threads_and_the_sweep_runs_by_itself(make: Make) -> None:
    storage = make(ttl=3600)
    storage.write("idle", 1)
    storage._set_used("idle", time.time() - 7200)
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"count": 0}, storage=storage, sweep_interval=0.001))

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    def worker(first: int) -> None:
        for n in range(first, first + 100):
            bot.handle_update(update(n))

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert storage.read("42") == {"count": 200}
    assert list(storage.keys()) == ["42"]  # the idle one swept


def test_lazy_session_of_an_update_that_never_touches_it_takes_no_lock(make: Make) -> None:
    storage = make(lock_timeout=0.05)
    mw = lazy_session(initial=lambda: {"count": 0}, storage=storage, sweep_interval=None)
    seen: list[Any] = []
    with storage.lock("42", holder="another update"):
        mw(Context(update(1)), lambda: None)  # no LockTimeout: it never asked
        ctx = Context(update(2))
        with pytest.raises(LockTimeout):
            mw(ctx, lambda: seen.append(ctx.session))
    ctx = Context(update(3))
    mw(ctx, lambda: ctx.session.update(count=1))
    assert storage.read("42") == {"count": 1}
    assert seen == []


def test_multi_session_fragments_share_one_table(make: Make) -> None:
    storage = make()
    mw = multi_session(
        user={"initial": lambda: {"n": 0}, "storage": storage, "get_session_key": lambda ctx: str(ctx.from_id)},
        chat={"initial": lambda: {"n": 0}, "storage": storage},
        sweep_interval=None,
    )
    for n in range(3):
        ctx = Context(update(n))

        def bump(ctx: Context = ctx) -> None:
            ctx.session.user["n"] += 1
            ctx.session.chat["n"] += 10

        mw(ctx, bump)
    assert sorted(storage.keys()) == ["chat:42", "user:7"]
    assert (storage.read("user:7"), storage.read("chat:42")) == ({"n": 3}, {"n": 30})


def test_telebot_middleware_on_two_workers_loses_no_update(make: Make, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = make()
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    token = "123456:fake-TOKEN"
    with FakeBotAPI(token) as api:
        monkeypatch.setattr(apihelper, "API_URL", api.url + "/bot{0}/{1}")
        bot = TeleBot(api.token, threaded=True, num_threads=2, use_class_middlewares=True)
        bot.setup_middleware(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

        @bot.message_handler(commands=["count"])
        def count(message: Message, session: dict[str, int]) -> None:
            session["count"] += 1
            bot.send_message(message.chat.id, str(session["count"]))

        for _ in range(20):
            api.push("/count")
        polling = threading.Thread(
            target=bot.polling, kwargs={"interval": 0, "timeout": 5, "long_polling_timeout": 1}, daemon=True
        )
        polling.start()
        try:
            sent = api.wait_for_sent(20, timeout=30)
        finally:
            bot.stop_bot()
            polling.join(10)
    assert sorted(int(message["text"]) for message in sent) == list(range(1, 21))
    assert storage.read("42") == {"count": 20}
