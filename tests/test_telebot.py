"""pyTelegramBotAPI: SessionMiddleware on a real TeleBot, polling a fake Bot API on loopback."""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from fakebotapi import FakeBotAPI
from helpers import run_python
from telebot import TeleBot, apihelper
from telebot.async_telebot import AsyncTeleBot
from telebot.handler_backends import BaseMiddleware, CancelUpdate, SkipHandler
from telebot.types import CallbackQuery, InlineQuery, Message, Update

from simplesession import FileStorage, LockTimeout, MemoryStorage, SessionKeyError, SQLiteStorage
from simplesession.contrib.telebot import LazySession, SessionMiddleware

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOKEN = "123456:fake-TOKEN"
JOIN_TIMEOUT = 10.0


class SpyStorage(MemoryStorage):
    """A MemoryStorage that records reads, writes, deletes and lock holds."""

    def __init__(self) -> None:
        super().__init__(lock_timeout=0.2)
        self.events: list[str] = []
        self.keys_read: list[str] = []

    def count(self, event: str) -> int:
        return self.events.count(event)

    def read(self, key: str) -> Any | None:
        self.events.append("read")
        self.keys_read.append(key)
        return super().read(key)

    def write(self, key: str, value: Any, **options: Any) -> None:
        self.events.append("write")
        super().write(key, value, **options)

    def delete(self, key: str) -> None:
        self.events.append("delete")
        super().delete(key)

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:  # type: ignore[override]
        with super().lock(key):
            self.events.append("lock")
            try:
                yield
            finally:
                self.events.append("unlock")


class Scripted(BaseMiddleware):
    """Another middleware: its pre_process returns ``result`` or raises a RuntimeError(``error``).

    With ``meddle`` it also changes the session first, a change that a cancelled update
    must not write.
    """

    def __init__(self, result: object = None, error: str | None = None, *, meddle: bool = False) -> None:
        self.update_types = ["message"]
        self.result = result
        self.error = error
        self.meddle = meddle
        self.post_processed = 0

    def pre_process(self, message: Any, data: dict[str, Any]) -> object:
        if self.error is not None:
            raise RuntimeError(self.error)  # a new one each time: a kept one would keep its traceback
        if self.meddle:
            data["session"]["count"] = 99
        return self.result

    def post_process(self, message: Any, data: dict[str, Any], exception: BaseException | None) -> None:
        self.post_processed += 1


def make_bot(*middlewares: BaseMiddleware) -> TeleBot:
    """A TeleBot that handles updates in the calling thread (no network)."""
    bot = TeleBot(TOKEN, threaded=False, use_class_middlewares=True)
    for middleware in middlewares:
        bot.setup_middleware(middleware)
    return bot


def update_of(raw: dict[str, Any]) -> Update:
    return cast(Update, Update.de_json(raw))


def text_update(text: str = "/count", chat_id: int = 42, update_id: int = 1, user_id: int = 7) -> Update:
    message = {"message_id": update_id, "date": 0, "chat": {"id": chat_id, "type": "private"}, "text": text}
    message["from"] = {"id": user_id, "is_bot": False, "first_name": "U"}
    return update_of({"update_id": update_id, "message": message})


def callback_update(chat_id: int = 8, user_id: int = 71) -> Update:
    query: dict[str, Any] = {"id": "q1", "chat_instance": "c", "data": "press"}
    query["from"] = {"id": user_id, "is_bot": False, "first_name": "U"}
    query["message"] = {"message_id": 5, "date": 0, "chat": {"id": chat_id, "type": "private"}, "text": "pick"}
    return update_of({"update_id": 2, "callback_query": query})


def inline_update() -> Update:
    query = {"id": "i1", "from": {"id": 72, "is_bot": False, "first_name": "U"}, "query": "q", "offset": ""}
    return update_of({"update_id": 3, "inline_query": query})


def lock_is_free(storage: MemoryStorage | FileStorage, key: str) -> bool:
    """Whether another thread can take ``key``'s lock (within the storage's lock_timeout)."""
    got: list[bool] = []

    def take() -> None:
        try:
            with storage.lock(key):
                got.append(True)
        except LockTimeout:
            got.append(False)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(JOIN_TIMEOUT)
    return got == [True]


def counting_bot(storage: MemoryStorage, *middlewares: BaseMiddleware, **options: Any) -> TeleBot:
    """A bot whose /count handler counts in its session, behind ``middlewares`` (after ours)."""
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage, **options), *middlewares)

    @bot.message_handler(commands=["count"])
    def count(message: Message, session: Any) -> None:
        session["count"] += 1

    return bot


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBotAPI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeBotAPI(TOKEN) as server:
        monkeypatch.setattr(apihelper, "API_URL", server.url + "/bot{0}/{1}")
        yield server


# -- concurrency ---------------------------------------------------------------------------


class ThreadSpy(BaseMiddleware):
    """Records the thread of pre_process and post_process of each message."""

    def __init__(self) -> None:
        self.update_types = ["message"]
        self.threads: dict[int, list[int]] = {}

    def pre_process(self, message: Message, data: dict[str, Any]) -> None:
        self.threads[message.message_id] = [threading.get_ident()]

    def post_process(self, message: Message, data: dict[str, Any], exception: BaseException | None) -> None:
        self.threads[message.message_id].append(threading.get_ident())


@pytest.mark.parametrize("kind", ["files", "sqlite"])
def test_forty_rapid_counts_of_one_chat_on_two_workers_lose_no_update(
    tmp_path: Path, api: FakeBotAPI, kind: str
) -> None:
    storage = FileStorage(tmp_path) if kind == "files" else SQLiteStorage(tmp_path / "sessions.db")
    bot = TeleBot(api.token, threaded=True, num_threads=2, use_class_middlewares=True)
    bot.setup_middleware(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))
    spy = ThreadSpy()
    bot.setup_middleware(spy)

    @bot.message_handler(commands=["count"])
    def count(message: Message, session: dict[str, int]) -> None:
        session["count"] += 1
        bot.send_message(message.chat.id, str(session["count"]))

    for _ in range(40):
        api.push("/count")
    polling = threading.Thread(
        target=bot.polling, kwargs={"interval": 0, "timeout": 5, "long_polling_timeout": 1}, daemon=True
    )
    polling.start()
    try:
        sent = api.wait_for_sent(40, timeout=30)
    finally:
        bot.stop_bot()
        api.close()  # answers the poll under way at once, so that polling stops now
        polling.join(JOIN_TIMEOUT)
    assert not polling.is_alive(), "polling did not stop"
    assert sorted(int(message["text"]) for message in sent) == list(range(1, 41))
    assert storage.read("42") == {"count": 40}
    assert len(spy.threads) == 40
    assert all(pre == post for pre, post in spy.threads.values()), "pre_process and post_process in two threads"


# -- the lock is released on every path ------------------------------------------------------


def test_cancel_update_from_a_later_middleware_releases_the_lock_and_writes_nothing() -> None:
    storage = SpyStorage()
    storage.write("42", {"count": 5})
    later = Scripted(CancelUpdate(), meddle=True)
    counting_bot(storage, later).process_new_updates([text_update()])
    assert later.post_processed == 0  # telebot skips every post_process
    assert lock_is_free(storage, "42")
    assert storage.read("42") == {"count": 5}
    assert storage.count("write") == 1


def test_cancel_update_from_an_earlier_middleware_touches_nothing() -> None:
    storage = SpyStorage()
    bot = make_bot(Scripted(CancelUpdate()), SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))
    bot.process_new_updates([text_update()])
    assert storage.events == []
    assert lock_is_free(storage, "42")


def test_skip_handler_releases_the_lock_and_writes_nothing() -> None:
    storage = SpyStorage()
    skip = Scripted(SkipHandler())
    counting_bot(storage, skip).process_new_updates([text_update()])
    assert skip.post_processed == 1
    assert storage.events == ["lock", "read", "unlock"]
    assert lock_is_free(storage, "42")


def test_handler_that_raises_releases_the_lock_and_writes_nothing() -> None:
    storage = SpyStorage()
    storage.write("42", {"count": 5})
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

    @bot.message_handler(commands=["count"])
    def count(message: Message, session: dict[str, int]) -> None:
        session["count"] = 6
        raise RuntimeError("handler failed")

    bot.process_new_updates([text_update()])  # telebot logs the error, post_process gets it
    assert lock_is_free(storage, "42")
    assert storage.read("42") == {"count": 5}
    assert storage.count("write") == 1


def test_a_handler_telebot_refuses_to_call_releases_the_lock() -> None:
    # With pass_bot, a handler without a ``bot`` parameter makes telebot log an error and
    # return without any post_process.
    storage = SpyStorage()
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))
    bot.register_message_handler(lambda message, session: None, commands=["count"], pass_bot=True)
    bot.process_new_updates([text_update()])
    assert storage.events == ["lock", "read", "unlock"]
    assert lock_is_free(storage, "42")


def test_a_later_middleware_whose_pre_process_raises_releases_the_lock_when_its_error_is_dropped() -> None:
    storage = SpyStorage()
    bot = counting_bot(storage, Scripted(error="middleware failed"))
    raised = False
    try:
        bot.process_new_updates([text_update()])
    except RuntimeError:
        raised = True  # and the error, with its traceback and telebot's ``data``, is gone
    assert raised
    assert lock_is_free(storage, "42")
    assert storage.count("write") == 0


def test_an_update_whose_dispatch_raised_is_ended_by_the_next_update_of_its_thread(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A worker thread keeps the exception (so telebot's ``data``) of an update whose
    # dispatch raised; its next update must end the leftover.
    storage = SpyStorage()
    failing = Scripted(error="middleware failed")
    bot = counting_bot(storage, failing)
    kept: list[BaseException] = []
    try:
        bot.process_new_updates([text_update(update_id=1)])
    except RuntimeError as error:
        kept.append(error)
    assert not lock_is_free(storage, "42")
    failing.error = None
    with caplog.at_level(logging.WARNING, "simplesession.contrib.telebot"):
        bot.process_new_updates([text_update(update_id=2)])
    assert "ended with an exception before post_process" in caplog.text
    assert lock_is_free(storage, "42")
    assert storage.read("42") == {"count": 1}


def test_a_second_session_middleware_is_refused_and_leaks_no_lock() -> None:
    storage = SpyStorage()
    bot = counting_bot(storage, SessionMiddleware(storage=MemoryStorage()))
    message = ""
    try:
        bot.process_new_updates([text_update()])
    except TypeError as error:
        message = str(error)
    assert "SessionMiddleware.multi" in message
    assert lock_is_free(storage, "42")
    assert storage.count("write") == 0


# -- sessions ------------------------------------------------------------------------------


def test_writes_back_only_when_the_session_changed() -> None:
    storage = SpyStorage()
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

    @bot.message_handler(commands=["count"])
    def count(message: Message, session: dict[str, int]) -> None:
        session["count"] += 1

    @bot.message_handler(commands=["show"])
    def show(message: Message, session: dict[str, int]) -> None:
        assert session["count"] >= 0

    bot.process_new_updates([text_update("/show")])
    assert storage.count("write") == 0  # an untouched initial session creates nothing
    bot.process_new_updates([text_update("/count")])
    bot.process_new_updates([text_update("/show")])
    assert storage.count("write") == 1
    assert storage.read("42") == {"count": 1}


@pytest.mark.parametrize("lazy", [False, True])
def test_assigning_none_through_data_deletes_the_session(lazy: bool) -> None:
    storage = SpyStorage()
    storage.write("42", {"count": 3})
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage, lazy=lazy))

    @bot.message_handler(commands=["reset"])
    def reset(message: Message, data: dict[str, Any]) -> None:
        data["session"] = None

    bot.process_new_updates([text_update("/reset")])
    assert storage.read("42") is None
    assert storage.count("delete") == 1


@pytest.mark.parametrize("lazy", [False, True])
def test_assigning_a_new_object_through_data_replaces_the_session(lazy: bool) -> None:
    storage = SpyStorage()
    storage.write("42", {"count": 3})
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage, lazy=lazy))

    @bot.message_handler(commands=["set"])
    def replace(message: Message, data: dict[str, Any]) -> None:
        data["session"] = {"count": 100, "new": True}

    bot.process_new_updates([text_update("/set")])
    assert storage.read("42") == {"count": 100, "new": True}


def test_lazy_session_does_no_io_when_the_handler_does_not_touch_it() -> None:
    storage = SpyStorage()
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage, lazy=True))
    got: list[object] = []

    @bot.message_handler(commands=["count"])
    def count(message: Message, session: LazySession) -> None:
        session["count"] += 1
        got.append(session.value)

    @bot.message_handler(func=lambda message: True)
    def echo(message: Message, session: LazySession) -> None:
        got.append(type(session))

    bot.process_new_updates([text_update("hello")])
    assert got == [LazySession]
    assert storage.events == []
    bot.process_new_updates([text_update("/count")])
    assert got[1] == {"count": 1}
    assert storage.events == ["lock", "read", "write", "unlock"]


def test_multi_sessions_give_session_user_and_session_chat() -> None:
    storage = SpyStorage()
    middleware = SessionMiddleware.multi(
        user={"initial": lambda: {"name": ""}, "storage": storage, "get_session_key": lambda m: str(m.from_user.id)},
        chat={"initial": lambda: {"muted": False}, "storage": storage},
    )
    bot = make_bot(middleware)

    @bot.message_handler(commands=["mute"])
    def mute(message: Message, session: Any) -> None:
        session.user["name"] = "Ann"
        session.chat["muted"] = True

    @bot.message_handler(commands=["forget"])
    def forget(message: Message, session: Any) -> None:
        session.user = None

    bot.process_new_updates([text_update("/mute")])
    assert storage.read("user:7") == {"name": "Ann"}
    assert storage.read("chat:42") == {"muted": True}
    bot.process_new_updates([text_update("/forget")])
    assert storage.read("user:7") is None
    assert storage.read("chat:42") == {"muted": True}


def test_custom_get_session_key_receives_the_telebot_object() -> None:
    storage = MemoryStorage()
    seen: list[object] = []

    def per_user(obj: Any) -> str:
        seen.append(obj)
        return f"user-{obj.from_user.id}"

    bot = make_bot(SessionMiddleware(initial=lambda: {"presses": 0}, storage=storage, get_session_key=per_user))

    @bot.callback_query_handler(func=lambda query: True)
    def press(query: CallbackQuery, session: dict[str, int]) -> None:
        session["presses"] += 1

    bot.process_new_updates([callback_update(user_id=71)])
    assert len(seen) == 1
    assert isinstance(seen[0], CallbackQuery)
    assert storage.read("user-71") == {"presses": 1}


def test_default_key_of_a_callback_query_is_the_chat_of_its_message() -> None:
    storage = MemoryStorage()
    bot = make_bot(SessionMiddleware(initial=lambda: {"presses": 0}, storage=storage))

    @bot.callback_query_handler(func=lambda query: True)
    def press(query: CallbackQuery, session: dict[str, int]) -> None:
        session["presses"] += 1

    bot.process_new_updates([callback_update(chat_id=8)])
    assert storage.read("8") == {"presses": 1}


USER = {"id": 7, "is_bot": False, "first_name": "U"}
GROUP = {"id": -100, "type": "supergroup", "title": "G"}
GROUP_MESSAGE = {"message_id": 1, "date": 0, "chat": GROUP, "text": "hi"}
MEMBER_UPDATE = {"chat": GROUP, "from": USER, "date": 0, "new_chat_member": {"status": "member", "user": USER}}
MEMBER_UPDATE["old_chat_member"] = {"status": "left", "user": USER}


@pytest.mark.parametrize(
    ("kind", "body"),
    [
        ("edited_message", GROUP_MESSAGE),
        ("channel_post", GROUP_MESSAGE),
        ("business_message", {**GROUP_MESSAGE, "business_connection_id": "b"}),
        ("edited_business_message", {**GROUP_MESSAGE, "business_connection_id": "b"}),
        ("my_chat_member", MEMBER_UPDATE),
        ("chat_join_request", {"chat": GROUP, "from": USER, "user_chat_id": 7, "date": 0}),
        (
            "message_reaction",
            {"chat": GROUP, "message_id": 1, "user": USER, "date": 0, "old_reaction": [], "new_reaction": []},
        ),
    ],
)
def test_default_key_is_the_chat_of_every_kind_of_update_that_has_one(kind: str, body: dict[str, Any]) -> None:
    storage = SpyStorage()
    make_bot(SessionMiddleware(initial=dict, storage=storage)).process_new_updates(
        [update_of({"update_id": 1, kind: body})]
    )
    assert storage.keys_read == ["-100"]


@pytest.mark.parametrize("lazy", [False, True])
def test_an_update_with_no_chat_has_no_session(lazy: bool) -> None:
    storage = SpyStorage()
    bot = make_bot(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage, lazy=lazy))
    errors: list[str] = []

    @bot.inline_handler(func=lambda query: True)
    def inline(query: InlineQuery, session: LazySession) -> None:
        with pytest.raises(SessionKeyError) as error:
            session["count"]
        errors.append(str(error.value))

    bot.process_new_updates([inline_update()])
    assert len(errors) == 1
    assert "belongs to no chat" in errors[0]
    assert storage.events == []


# -- AsyncTeleBot: refused, saying what works ------------------------------------------------


def test_setting_up_on_an_async_telebot_is_refused_at_once_saying_what_works() -> None:
    bot = AsyncTeleBot(TOKEN)
    with pytest.raises(TypeError, match=r"AsyncTeleBot") as refused:
        bot.setup_middleware(SessionMiddleware(initial=lambda: {"count": 0}))  # type: ignore[arg-type]  # on purpose
    assert "telebot.TeleBot(token, use_class_middlewares=True)" in str(refused.value)
    assert "AsyncSessionMiddleware" in str(refused.value)
    assert bot.middlewares == []


def test_an_async_telebot_given_it_anyway_refuses_every_update_before_any_lock() -> None:
    storage = SpyStorage()
    bot = AsyncTeleBot(TOKEN)
    bot.middlewares.append(SessionMiddleware(initial=lambda: {"count": 0}, storage=storage))  # past setup_middleware

    @bot.message_handler(commands=["count"])
    async def count(message: Message, session: Any) -> None:
        session["count"] += 1

    for update_id in (1, 2):
        with pytest.raises(TypeError, match=r"use_class_middlewares=True"):
            asyncio.run(bot.process_new_updates([text_update(update_id=update_id)]))
    assert storage.events == []


def test_a_session_middleware_awaited_by_a_coroutine_refuses_before_any_lock() -> None:
    # Any async dispatcher, not only AsyncTeleBot's: the caller is a coroutine.
    storage = SpyStorage()
    pre_process = cast(Any, SessionMiddleware(storage=storage)).pre_process_message
    message = text_update().message

    async def dispatch() -> None:
        await pre_process(message, {})

    with pytest.raises(TypeError, match=r"AsyncTeleBot"):
        asyncio.run(dispatch())
    assert storage.events == []
    assert lock_is_free(storage, "42")


# -- packaging and the example -------------------------------------------------------------


def test_importing_without_telebot_names_the_pip_command() -> None:
    done = run_python(
        """
        import sys
        sys.modules["telebot"] = None  # as if pyTelegramBotAPI were not installed
        import simplesession  # the core never needs it
        try:
            import simplesession.contrib.telebot
        except ImportError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install pyTelegramBotAPI" in done.stdout  # a line that works with or without a checkout


def test_telebot_counter_example_counts_on_a_bot_api_server_of_its_own(
    tmp_path: Path, api: FakeBotAPI, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its sessions go to its own app's folder, apart from the other examples'.
    monkeypatch.delenv("SIMPLESESSION_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    storage = FileStorage(app_name="telebot_counter")
    env = {**os.environ, "BOT_TOKEN": api.token, "TELEGRAM_API_URL": api.url}
    bot = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "telebot_counter.py")],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        api.push("/count")
        api.push("/count")
        sent = api.wait_for_sent(2, timeout=30)
        # The reply goes out before the write-back (both under the lock): wait for the write.
        deadline = time.monotonic() + JOIN_TIMEOUT
        while storage.read("42") != {"count": 2} and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        bot.terminate()
        _, stderr = bot.communicate(timeout=JOIN_TIMEOUT)
    assert [message["text"] for message in sent] == ["You have sent 1 commands", "You have sent 2 commands"], stderr
    assert storage.read("42") == {"count": 2}
    assert storage.directory == tmp_path / "telebot_counter" / "sessions"
