"""pyTelegramBotAPI: AsyncSessionMiddleware on a real AsyncTeleBot, polling a fake Bot API on loopback."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import make_storage
from fakebotapi import FakeBotAPI
from helpers import fork_python
from telebot import TeleBot, asyncio_helper
from telebot.async_telebot import AsyncTeleBot
from telebot.asyncio_handler_backends import BaseMiddleware, CancelUpdate, SkipHandler
from telebot.types import InlineQuery, Message, Update

from simplesession import FileStorage, LockTimeout, MemoryStorage, SessionKeyError, SQLiteStorage, Storage
from simplesession.contrib.telebot import AsyncSessionMiddleware, LazySession, SessionMiddleware

TOKEN = "123456:fake-TOKEN"
DEADLINE = 30.0  # seconds; every wait of these tests ends by then


class Spy(MemoryStorage):
    """A MemoryStorage that records reads, writes and deletes."""

    def __init__(self) -> None:
        super().__init__(lock_timeout=5.0)
        self.events: list[str] = []

    def count(self, event: str) -> int:
        return self.events.count(event)

    def read(self, key: str) -> Any | None:
        self.events.append("read")
        return super().read(key)

    def write(self, key: str, value: Any, **options: Any) -> None:
        self.events.append("write")
        super().write(key, value, **options)

    def delete(self, key: str) -> None:
        self.events.append("delete")
        super().delete(key)


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

    async def pre_process(self, message: Any, data: dict[str, Any]) -> object:
        if self.error is not None:
            raise RuntimeError(self.error)
        if self.meddle:
            data["session"]["count"] = 99
        return self.result

    async def post_process(self, message: Any, data: dict[str, Any], exception: BaseException | None) -> None:
        self.post_processed += 1


def text_update(text: str = "/count", chat_id: int = 42, update_id: int = 1) -> Update:
    message = {"message_id": update_id, "date": 0, "chat": {"id": chat_id, "type": "private"}, "text": text}
    message["from"] = {"id": 7, "is_bot": False, "first_name": "U"}
    return cast(Update, Update.de_json({"update_id": update_id, "message": message}))


def counting_bot(storage: Storage, *middlewares: BaseMiddleware, **options: Any) -> AsyncTeleBot:
    """An AsyncTeleBot whose /count handler counts in its session, behind ``middlewares`` (after ours)."""
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage, **options))
    for middleware in middlewares:
        bot.setup_middleware(middleware)

    @bot.message_handler(commands=["count"])
    async def count(message: Message, session: dict[str, int]) -> None:
        session["count"] += 1

    return bot


def lock_is_free(storage: Storage, key: str) -> bool:
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
    thread.join(DEADLINE)
    return got == [True]


def run(*updates: Update, bot: AsyncTeleBot) -> None:
    """Each update through the bot's dispatch, one after the other, on a loop of their own."""

    async def main() -> None:
        for update in updates:
            await asyncio.wait_for(bot.process_new_updates([update]), DEADLINE)

    asyncio.run(main())


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBotAPI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeBotAPI(TOKEN) as server:
        monkeypatch.setattr(asyncio_helper, "API_URL", server.url + "/bot{0}/{1}")
        yield server


async def poll_until(bot: AsyncTeleBot, done: Callable[[], bool]) -> None:
    """Long-poll the fake server until ``done()`` and every update's task has finished."""
    polling = asyncio.create_task(bot.polling(timeout=1, request_timeout=10))
    try:
        deadline = time.monotonic() + DEADLINE
        while not (done() and not bot._pending_tasks) and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert done(), "the bot did not get there in time"
    finally:
        polling.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await polling


# -- concurrency: AsyncTeleBot runs every update as a task ---------------------------------


@pytest.mark.parametrize("kind", ["memory", "file", "sqlite"])
def test_fifty_concurrent_updates_of_one_chat_count_exactly(
    kind: str, tmp_path: Path, api: FakeBotAPI, request: pytest.FixtureRequest
) -> None:
    storage = make_storage(kind, tmp_path / "sessions", request)
    bot = AsyncTeleBot(api.token)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

    @bot.message_handler(commands=["count"])
    async def count(message: Message, session: dict[str, int]) -> None:
        seen = session["count"]
        await bot.send_message(message.chat.id, str(seen + 1))  # other updates run meanwhile
        session["count"] = seen + 1

    for _ in range(50):
        api.push("/count")
    asyncio.run(poll_until(bot, lambda: storage.read("42") == {"count": 50}))
    assert sorted(int(message["text"]) for message in api.sent) == list(range(1, 51))


def test_a_new_bot_on_the_same_storage_goes_on_counting(tmp_path: Path, api: FakeBotAPI) -> None:
    def start() -> tuple[AsyncTeleBot, FileStorage]:
        storage = FileStorage(tmp_path)
        bot = AsyncTeleBot(api.token)
        bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

        @bot.message_handler(commands=["count"])
        async def count(message: Message, session: dict[str, int]) -> None:
            session["count"] += 1
            await bot.send_message(message.chat.id, f"count {session['count']}")

        return bot, storage

    bot, storage = start()
    for _ in range(3):
        api.push("/count")
    asyncio.run(poll_until(bot, lambda: storage.read("42") == {"count": 3}))
    bot, storage = start()  # a restart: a new bot, a new storage object on the same files
    api.push("/count")
    asyncio.run(poll_until(bot, lambda: len(api.sent) == 4 and storage.read("42") == {"count": 4}))
    assert [message["text"] for message in api.sent] == ["count 1", "count 2", "count 3", "count 4"]


# -- every path ends the update: nothing written, no lock left --------------------------------


def test_a_raising_handler_writes_nothing_and_frees_the_chat() -> None:
    storage = Spy()
    storage.write("42", {"count": 5})
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

    @bot.message_handler(commands=["fail"])
    async def fail(message: Message, session: dict[str, int]) -> None:
        session["count"] = 6
        await asyncio.sleep(0)
        raise RuntimeError("handler failed")

    @bot.message_handler(commands=["count"])
    async def count(message: Message, session: dict[str, int]) -> None:
        session["count"] += 1

    run(text_update("/fail"), bot=bot)  # telebot logs the error; post_process gets it
    assert storage.read("42") == {"count": 5}
    assert storage.count("write") == 1
    assert lock_is_free(storage, "42")
    run(text_update("/count", update_id=2), bot=bot)
    assert storage.read("42") == {"count": 6}


def test_skip_handler_from_a_later_middleware_writes_nothing_and_frees_the_chat() -> None:
    storage = Spy()
    skip = Scripted(SkipHandler())
    run(text_update(), bot=counting_bot(storage, skip))
    assert skip.post_processed == 1
    assert storage.events == ["read"]
    assert lock_is_free(storage, "42")


def test_cancel_update_from_a_later_middleware_writes_nothing_and_frees_the_chat() -> None:
    # telebot returns at once, skipping every post_process: the end of the update's task ends it.
    storage = Spy()
    storage.write("42", {"count": 5})
    later = Scripted(CancelUpdate(), meddle=True)
    bot = counting_bot(storage, later)

    async def main() -> None:
        await bot.process_new_updates([text_update(update_id=1)])
        later.result, later.meddle = None, False
        # The next update of the chat waits for nothing: the first one's locks are gone.
        await asyncio.wait_for(bot.process_new_updates([text_update(update_id=2)]), DEADLINE)

    asyncio.run(main())
    assert later.post_processed == 1  # only the second update's
    assert storage.read("42") == {"count": 6}
    assert lock_is_free(storage, "42")


def test_cancel_update_as_the_last_thing_a_loop_does_leaves_no_lock() -> None:
    # asyncio.run ends right after the cancelled update: the lock goes all the same.
    storage = Spy()
    run(text_update(), bot=counting_bot(storage, Scripted(CancelUpdate(), meddle=True)))
    assert storage.count("write") == 0
    assert lock_is_free(storage, "42")


def test_cancel_update_from_an_earlier_middleware_touches_nothing() -> None:
    storage = Spy()
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(Scripted(CancelUpdate()))
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))
    run(text_update(), bot=bot)
    assert storage.events == []
    assert lock_is_free(storage, "42")


def test_a_later_middleware_whose_pre_process_raises_leaves_no_lock() -> None:
    storage = Spy()
    bot = counting_bot(storage, Scripted(error="middleware failed"))
    with pytest.raises(RuntimeError, match="middleware failed"):
        run(text_update(), bot=bot)
    assert storage.count("write") == 0
    assert lock_is_free(storage, "42")


def test_a_handler_telebot_refuses_to_call_leaves_no_lock() -> None:
    # With pass_bot, a handler without a ``bot`` parameter makes telebot log an error and
    # return without any post_process.
    storage = Spy()
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

    async def handler(message: Message, session: Any) -> None:
        session["count"] = 1

    bot.register_message_handler(handler, commands=["count"], pass_bot=True)  # type: ignore[arg-type]  # on purpose
    run(text_update(), bot=bot)
    assert storage.events == ["read"]
    assert lock_is_free(storage, "42")


def test_an_update_cancelled_in_its_handler_writes_nothing_and_frees_the_chat() -> None:
    storage = Spy()
    storage.write("42", {"count": 5})
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))
    entered = asyncio.Event()

    @bot.message_handler(commands=["hang"])
    async def hang(message: Message, session: dict[str, int]) -> None:
        session["count"] = 99
        entered.set()
        await asyncio.sleep(DEADLINE)

    @bot.message_handler(commands=["count"])
    async def count(message: Message, session: dict[str, int]) -> None:
        session["count"] += 1

    async def main() -> None:
        hanging = asyncio.create_task(bot.process_new_updates([text_update("/hang")]))
        await asyncio.wait_for(entered.wait(), DEADLINE)
        hanging.cancel()  # as a bot that is stopped mid-update
        with pytest.raises(asyncio.CancelledError):
            await hanging
        await asyncio.wait_for(bot.process_new_updates([text_update("/count", update_id=2)]), DEADLINE)

    asyncio.run(main())
    assert storage.read("42") == {"count": 6}
    assert lock_is_free(storage, "42")


def test_an_update_no_handler_matches_writes_nothing() -> None:
    storage = Spy()
    post = Scripted()
    run(text_update("hello"), bot=counting_bot(storage, post))
    assert post.post_processed == 1  # telebot runs post_process when no handler matched
    assert storage.events == ["read"]
    assert lock_is_free(storage, "42")


def test_a_second_session_middleware_is_refused_and_leaks_no_lock() -> None:
    storage = Spy()
    bot = counting_bot(storage, AsyncSessionMiddleware(storage=MemoryStorage()))
    with pytest.raises(TypeError, match=r"AsyncSessionMiddleware\.multi"):
        run(text_update(), bot=bot)
    assert lock_is_free(storage, "42")
    assert storage.count("write") == 0


# -- sessions ------------------------------------------------------------------------------


def test_writes_back_only_when_the_session_changed() -> None:
    storage = Spy()
    bot = counting_bot(storage)

    @bot.message_handler(commands=["show"])
    async def show(message: Message, session: dict[str, int]) -> None:
        assert session["count"] >= 0

    run(text_update("/show"), bot=bot)
    assert storage.count("write") == 0  # an untouched initial session creates nothing
    run(text_update("/count"), text_update("/show"), bot=bot)
    assert storage.count("write") == 1
    assert storage.read("42") == {"count": 1}


def test_data_replaces_or_deletes_the_session() -> None:
    storage = Spy()
    storage.write("42", {"count": 3})
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))

    @bot.message_handler(commands=["set"])
    async def replace(message: Message, data: dict[str, Any]) -> None:
        data["session"] = {"count": 100, "new": True}

    @bot.message_handler(commands=["reset"])
    async def reset(message: Message, data: dict[str, Any]) -> None:
        data["session"] = None

    run(text_update("/set"), bot=bot)
    assert storage.read("42") == {"count": 100, "new": True}
    run(text_update("/reset"), bot=bot)
    assert storage.read("42") is None
    assert storage.count("delete") == 1


def test_multi_sessions_give_session_user_and_session_chat() -> None:
    storage = Spy()
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(
        AsyncSessionMiddleware.multi(
            user={"initial": lambda: {"n": 0}, "storage": storage, "get_session_key": lambda m: str(m.from_user.id)},
            chat={"initial": lambda: {"muted": False}, "storage": storage},
        )
    )

    @bot.message_handler(commands=["mute"])
    async def mute(message: Message, session: Any) -> None:
        session.user["n"] += 1
        session.chat["muted"] = True

    @bot.message_handler(commands=["forget"])
    async def forget(message: Message, session: Any) -> None:
        session.user = None

    run(text_update("/mute"), text_update("/mute", chat_id=43), bot=bot)
    assert storage.read("user:7") == {"n": 2}
    assert storage.read("chat:42") == {"muted": True}
    assert storage.read("chat:43") == {"muted": True}
    run(text_update("/forget"), bot=bot)
    assert storage.read("user:7") is None
    assert storage.read("chat:42") == {"muted": True}


def test_custom_get_session_key_receives_the_telebot_object() -> None:
    storage = MemoryStorage()
    seen: list[object] = []

    def per_user(obj: Any) -> str:
        seen.append(obj)
        return f"user-{obj.from_user.id}"

    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"n": 0}, storage=storage, get_session_key=per_user))

    @bot.message_handler(func=lambda message: True)
    async def count(message: Message, session: dict[str, int]) -> None:
        session["n"] += 1

    run(text_update("hi"), bot=bot)
    assert [type(obj) for obj in seen] == [Message]
    assert storage.read("user-7") == {"n": 1}


def test_an_update_with_no_chat_gets_a_session_that_says_why_it_has_none() -> None:
    storage = Spy()
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"n": 0}, storage=storage))
    errors: list[str] = []

    @bot.inline_handler(func=lambda query: True)
    async def inline(query: InlineQuery, session: LazySession) -> None:
        with pytest.raises(SessionKeyError) as error:
            session["n"]
        errors.append(str(error.value))

    query = {"id": "i1", "from": {"id": 72, "is_bot": False, "first_name": "U"}, "query": "q", "offset": ""}
    run(cast(Update, Update.de_json({"update_id": 3, "inline_query": query})), bot=bot)
    assert len(errors) == 1
    assert "belongs to no chat" in errors[0]
    assert storage.events == []


def test_update_types_narrow_what_gets_a_session() -> None:
    storage = Spy()
    middleware = AsyncSessionMiddleware(initial=lambda: {"n": 0}, storage=storage)
    middleware.update_types = ["callback_query"]
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(middleware)
    got: list[object] = []

    @bot.message_handler(func=lambda message: True)
    async def echo(message: Message) -> None:
        got.append(message.text)

    run(text_update("hi"), bot=bot)
    assert got == ["hi"]
    assert storage.events == []


# -- refusals that say what works ------------------------------------------------------------


def test_lazy_sessions_are_refused_saying_why() -> None:
    with pytest.raises(ValueError, match=r"lazy sessions .* would read on the event loop"):
        AsyncSessionMiddleware(lazy=True, storage=MemoryStorage())


def test_the_blocking_telebot_refuses_it_at_setup_saying_what_works() -> None:
    bot = TeleBot(TOKEN, use_class_middlewares=True)
    with pytest.raises(TypeError, match=r"AsyncTeleBot") as refused:
        bot.setup_middleware(AsyncSessionMiddleware(storage=MemoryStorage()))  # type: ignore[arg-type]
    assert "SessionMiddleware" in str(refused.value)
    assert bot.middlewares == []
    # and the blocking middleware, given to AsyncTeleBot, points here
    with pytest.raises(TypeError, match=r"AsyncSessionMiddleware"):
        AsyncTeleBot(TOKEN).setup_middleware(SessionMiddleware(storage=MemoryStorage()))  # type: ignore[arg-type]


# -- a SIGKILL mid-run ---------------------------------------------------------------------

COUNTER = """
    import asyncio, sys
    from telebot import asyncio_helper
    from telebot.async_telebot import AsyncTeleBot
    from telebot.asyncio_handler_backends import BaseMiddleware
    from simplesession import open_storage
    from simplesession.contrib.telebot import AsyncSessionMiddleware

    api_url, store, progress_path, token = sys.argv[1:5]
    asyncio_helper.API_URL = api_url + "/bot{0}/{1}"
    progress = open(progress_path, "a")

    class Finished(BaseMiddleware):
        # After the session middleware: its post_process runs once the session is written.
        update_types = ["message"]

        async def pre_process(self, message, data):
            pass

        async def post_process(self, message, data, exception):
            if exception is None and "n" in data:
                progress.write(f"{data['n']}\\n")
                progress.flush()

    bot = AsyncTeleBot(token)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=open_storage(store)))
    bot.setup_middleware(Finished())

    @bot.message_handler(commands=["count"])
    async def count(message, data):
        data["session"]["count"] += 1
        data["n"] = data["session"]["count"]
        await asyncio.sleep(0)

    asyncio.run(bot.polling(timeout=1, request_timeout=10))
"""


@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_a_bot_killed_mid_run_loses_no_finished_update(kind: str, tmp_path: Path, api: FakeBotAPI) -> None:
    """Each round: a bot process counts, is killed with SIGKILL at a random moment, and the
    stored count is at least every count it finished (and at most one more, in flight); the
    next process goes on from there."""
    store = f"file:{tmp_path / 'sessions'}" if kind == "file" else f"sqlite:{tmp_path / 'sessions.db'}"
    progress = tmp_path / "progress"
    rng = random.Random(7)
    stored = 0
    for _round in range(2):
        for _ in range(300):
            api.push("/count")
        bot = fork_python(COUNTER, api.url, store, str(progress), api.token, stderr=subprocess.PIPE)
        try:
            deadline = time.monotonic() + DEADLINE
            while len(_lines(progress)) < 5 and bot.poll() is None and time.monotonic() < deadline:
                time.sleep(0.005)
            time.sleep(rng.uniform(0, 0.05))
        finally:
            bot.send_signal(signal.SIGKILL)
            _, err = bot.communicate(timeout=DEADLINE)
        assert bot.returncode == -signal.SIGKILL, err
        finished = _lines(progress)
        progress.unlink()
        assert finished, err
        assert finished == list(range(stored + 1, stored + 1 + len(finished)))  # went on from the stored count
        storage: Storage = (
            FileStorage(tmp_path / "sessions") if kind == "file" else SQLiteStorage(tmp_path / "sessions.db")
        )
        value = storage.read("42")
        assert value is not None
        assert finished[-1] <= value["count"] <= finished[-1] + 1
        stored = value["count"]


def _lines(path: Path) -> list[int]:
    """The counts in ``path``, one a line; a line the kill cut short is left out."""
    if not path.exists():
        return []
    return [int(line) for line in path.read_text().split("\n")[:-1]]


def test_an_update_still_running_when_its_loop_ends_leaves_no_lock() -> None:
    # asyncio.run cancels what is left when its main coroutine returns: a bot stopped mid-update.
    storage = Spy()
    bot = AsyncTeleBot(TOKEN)
    bot.setup_middleware(AsyncSessionMiddleware(initial=lambda: {"count": 0}, storage=storage))
    entered = asyncio.Event()

    @bot.message_handler(commands=["hang"])
    async def hang(message: Message, session: dict[str, int]) -> None:
        session["count"] = 99
        entered.set()
        await asyncio.sleep(DEADLINE)

    async def main() -> None:
        asyncio.get_running_loop().create_task(bot.process_new_updates([text_update("/hang")]))
        await asyncio.wait_for(entered.wait(), DEADLINE)

    asyncio.run(main())
    assert storage.count("write") == 0
    assert lock_is_free(storage, "42")
