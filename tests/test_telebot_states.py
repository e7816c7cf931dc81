"""pyTelegramBotAPI states on simplesession's storages: StateStorage (TeleBot) and AsyncStateStorage (AsyncTeleBot)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from pathlib import Path
from typing import Any, cast

import pytest
from conftest import make_storage
from fakebotapi import FakeBotAPI
from helpers import PlainStorage
from telebot import TeleBot, apihelper, asyncio_filters, asyncio_helper, custom_filters
from telebot.async_telebot import AsyncTeleBot
from telebot.asyncio_storage import StateMemoryStorage as AsyncStateMemoryStorage
from telebot.states import State, StatesGroup
from telebot.storage import StateMemoryStorage
from telebot.types import Message, Update

from simplesession import LockTimeout, MemoryStorage, SessionDataError, Storage
from simplesession.contrib.telebot import AsyncStateStorage, StateStorage

TOKEN = "123456:fake-TOKEN"
BOT_ID = 123456  # telebot passes the id in its token as bot_id
DEADLINE = 30.0


class Form(StatesGroup):
    name = State()
    age = State()


@pytest.fixture(params=["memory", "file", "sqlite"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Storage]:
    """Opens this test's storage; again after a restart, a new object on the same files (for
    memory, the same object: a restart of the bot, not of the process)."""
    kind: str = request.param
    opened: list[Storage] = []

    def open_storage() -> Storage:
        if kind != "memory" or not opened:
            opened.append(make_storage(kind, tmp_path / "sessions", request))
        return opened[-1]

    return open_storage


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeBotAPI]:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with FakeBotAPI(TOKEN) as server:
        monkeypatch.setattr(apihelper, "API_URL", server.url + "/bot{0}/{1}")
        monkeypatch.setattr(asyncio_helper, "API_URL", server.url + "/bot{0}/{1}")
        yield server


def text_update(text: str, update_id: int = 1, chat_id: int = 42, user_id: int = 7) -> Update:
    message = {"message_id": update_id, "date": 0, "chat": {"id": chat_id, "type": "private"}, "text": text}
    message["from"] = {"id": user_id, "is_bot": False, "first_name": "U"}
    return cast(Update, Update.de_json({"update_id": update_id, "message": message}))


def sender(message: Message) -> int:
    assert message.from_user is not None
    return message.from_user.id


def retrieved(bot: TeleBot, user_id: int, chat_id: int) -> AbstractContextManager[dict[str, Any]]:
    """``bot.retrieve_data(...)``, typed as what it returns (telebot annotates a dict)."""
    return cast(AbstractContextManager[dict[str, Any]], bot.retrieve_data(user_id, chat_id))


def retrieved_async(bot: AsyncTeleBot, user_id: int, chat_id: int) -> AbstractAsyncContextManager[dict[str, Any]]:
    """``bot.retrieve_data(...)`` of an AsyncTeleBot, typed as what it returns."""
    return cast(AbstractAsyncContextManager[dict[str, Any]], bot.retrieve_data(user_id, chat_id))


def lock_is_free(storage: Storage, key: str) -> bool:
    try:
        with storage.lock(key, timeout=5):
            return True
    except LockTimeout:
        return False


# -- the same answers as telebot's own storages ------------------------------------------------


def exercise(states: Any) -> list[object]:
    """A run of every method; what each call returned (or the error it raised)."""
    answers: list[object] = []

    def step(method: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        try:
            answers.append(copy.deepcopy(method(*args, **kwargs)))
        except RuntimeError:
            answers.append(RuntimeError)

    step(states.get_state, 42, 7)
    step(states.get_data, 42, 7)
    step(states.set_data, 42, 7, "name", "Ann")  # no state yet
    step(states.reset_data, 42, 7)
    step(states.delete_state, 42, 7)
    step(states.save, 42, 7, {"x": 1})
    step(states.set_state, 42, 7, Form.name, bot_id=BOT_ID)
    step(states.get_state, 42, 7, bot_id=BOT_ID)
    step(states.set_data, 42, 7, "name", "Ann", bot_id=BOT_ID)
    step(states.set_data, 42, 7, "name", "Bob")  # another record: no bot id
    step(states.get_data, 42, 7, bot_id=BOT_ID)
    with states.get_interactive_data(42, 7, bot_id=BOT_ID) as data:
        data["city"] = "Rome"
    step(states.get_data, 42, 7, bot_id=BOT_ID)
    step(states.set_state, 42, 7, "plain", bot_id=BOT_ID)
    step(states.get_data, 42, 7, bot_id=BOT_ID)  # a new state keeps the data
    step(states.set_state, 42, 7, "topic", message_thread_id=5, bot_id=BOT_ID)
    step(states.set_state, 42, 7, "shop", business_connection_id="b1", bot_id=BOT_ID)
    step(states.get_state, 42, 7, message_thread_id=5, bot_id=BOT_ID)
    step(states.get_state, 42, 7, business_connection_id="b1", bot_id=BOT_ID)
    step(states.get_state, 42, 8, bot_id=BOT_ID)
    step(states.save, 42, 7, {"x": 1}, None, None, BOT_ID)
    step(states.get_data, 42, 7, bot_id=BOT_ID)
    step(states.reset_data, 42, 7, bot_id=BOT_ID)
    step(states.get_data, 42, 7, bot_id=BOT_ID)
    step(states.delete_state, 42, 7, bot_id=BOT_ID)
    step(states.get_state, 42, 7, bot_id=BOT_ID)
    step(states.get_state, 42, 7, message_thread_id=5, bot_id=BOT_ID)
    return answers


def test_state_storage_answers_as_telebots_memory_storage(place: Callable[[], Storage]) -> None:
    assert exercise(StateStorage(place())) == exercise(StateMemoryStorage())


def test_async_state_storage_answers_as_telebots_async_memory_storage(place: Callable[[], Storage]) -> None:
    class Blocking:
        """The async methods, called one at a time on a loop of their own."""

        def __init__(self, states: Any) -> None:
            self.states = states

        def __getattr__(self, name: str) -> Callable[..., Any]:
            method = getattr(self.states, name)
            return lambda *args, **kwargs: asyncio.run(method(*args, **kwargs))

        @contextlib.contextmanager
        def get_interactive_data(self, *args: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
            # telebot's async context reads on entry and writes on exit: one loop for all.
            loop = asyncio.new_event_loop()
            try:
                context = self.states.get_interactive_data(*args, **kwargs)
                yield loop.run_until_complete(context.__aenter__())
                loop.run_until_complete(context.__aexit__(None, None, None))
            finally:
                loop.close()

    assert exercise(Blocking(AsyncStateStorage(place()))) == exercise(Blocking(AsyncStateMemoryStorage()))


def test_records_are_kept_under_documented_keys() -> None:
    storage = MemoryStorage()
    states = StateStorage(storage)
    states.set_state(42, 7, Form.name, bot_id=BOT_ID)
    states.set_state(-100, 7, "x", message_thread_id=5, bot_id=BOT_ID)
    states.set_state(42, 7, "y", business_connection_id="b1", bot_id=BOT_ID)
    StateStorage(storage, prefix="other:").set_state(42, 7, "z")
    assert sorted(storage.keys()) == [
        "other:/42/7",
        f"state:{BOT_ID}/-100/7/thread:5",
        f"state:{BOT_ID}/42/7",
        f"state:{BOT_ID}/42/7/business:b1",
    ]
    assert storage.read(f"state:{BOT_ID}/42/7") == {"state": "Form:name", "data": {}}  # the State's name


# -- a conversation survives a restart ---------------------------------------------------------


def conversation_bot(states: StateStorage) -> TeleBot:
    """/start asks a name, then an age, then sums up: the state and data live in ``states``."""
    bot = TeleBot(TOKEN, threaded=False, state_storage=states)
    bot.add_custom_filter(custom_filters.StateFilter(bot))

    @bot.message_handler(commands=["start"])
    def start(message: Message) -> None:
        bot.set_state(sender(message), Form.name, message.chat.id)
        bot.send_message(message.chat.id, "Your name?")

    @bot.message_handler(state=Form.name)
    def name(message: Message) -> None:
        bot.add_data(sender(message), message.chat.id, name=message.text)
        bot.set_state(sender(message), Form.age, message.chat.id)
        bot.send_message(message.chat.id, "Your age?")

    @bot.message_handler(state=Form.age)
    def age(message: Message) -> None:
        with retrieved(bot, sender(message), message.chat.id) as data:
            data["age"] = int(message.text or "0")
            summary = f"{data['name']}, {data['age']}"
        bot.send_message(message.chat.id, summary)
        bot.delete_state(sender(message), message.chat.id)

    return bot


def test_a_conversation_survives_a_restart_of_the_bot(place: Callable[[], Storage], api: FakeBotAPI) -> None:
    bot = conversation_bot(StateStorage(place()))
    bot.process_new_updates([text_update("/start", 1)])
    bot.process_new_updates([text_update("Ann", 2)])
    assert place().read(f"state:{BOT_ID}/42/7") == {"state": "Form:age", "data": {"name": "Ann"}}
    bot = conversation_bot(StateStorage(place()))  # a new bot, a new storage object on the same place
    bot.process_new_updates([text_update("33", 3)])
    assert [message["text"] for message in api.sent] == ["Your name?", "Your age?", "Ann, 33"]
    assert place().read(f"state:{BOT_ID}/42/7") is None  # delete_state: the conversation is over


def async_conversation_bot(states: AsyncStateStorage) -> AsyncTeleBot:
    bot = AsyncTeleBot(TOKEN, state_storage=states)
    bot.add_custom_filter(asyncio_filters.StateFilter(bot))

    @bot.message_handler(commands=["start"])
    async def start(message: Message) -> None:
        await bot.set_state(sender(message), Form.name, message.chat.id)
        await bot.send_message(message.chat.id, "Your name?")

    @bot.message_handler(state=Form.name)
    async def name(message: Message) -> None:
        await bot.add_data(sender(message), message.chat.id, name=message.text)
        await bot.set_state(sender(message), Form.age, message.chat.id)
        await bot.send_message(message.chat.id, "Your age?")

    @bot.message_handler(state=Form.age)
    async def age(message: Message) -> None:
        async with retrieved_async(bot, sender(message), message.chat.id) as data:
            data["age"] = int(message.text or "0")
            summary = f"{data['name']}, {data['age']}"
        await bot.send_message(message.chat.id, summary)
        await bot.delete_state(sender(message), message.chat.id)

    return bot


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


def test_an_async_conversation_survives_a_restart_of_the_bot(place: Callable[[], Storage], api: FakeBotAPI) -> None:
    bot = async_conversation_bot(AsyncStateStorage(place()))
    api.push("/start", user_id=7)
    asyncio.run(poll_until(bot, lambda: len(api.sent) == 1))
    api.push("Ann", user_id=7)  # one at a time: a state filter sees the state the last update left
    asyncio.run(poll_until(bot, lambda: len(api.sent) == 2))
    assert place().read(f"state:{BOT_ID}/42/7") == {"state": "Form:age", "data": {"name": "Ann"}}
    bot = async_conversation_bot(AsyncStateStorage(place()))
    api.push("33", user_id=7)
    asyncio.run(poll_until(bot, lambda: len(api.sent) == 3))
    assert [message["text"] for message in api.sent] == ["Your name?", "Your age?", "Ann, 33"]
    assert place().read(f"state:{BOT_ID}/42/7") is None


# -- concurrent changes of one record lose nothing ------------------------------------------------

THREADS, TIMES = 8, 25


def test_threads_adding_data_to_one_record_lose_nothing(place: Callable[[], Storage]) -> None:
    bot = TeleBot(TOKEN, threaded=False, state_storage=StateStorage(place()))
    bot.set_state(7, Form.name, 42)

    def work(thread: int) -> None:
        for i in range(TIMES):
            field: dict[str, Any] = {f"t{thread}-{i}": i}
            bot.add_data(7, 42, **field)
            with retrieved(bot, 7, 42) as data:
                count = data.get("count", 0)
                time.sleep(0.0001)  # another thread runs here; it must wait for the lock
                data["count"] = count + 1

    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(DEADLINE)
    with retrieved(bot, 7, 42) as data:
        assert data.pop("count") == THREADS * TIMES
        assert len(data) == THREADS * TIMES
    assert bot.get_state(7, 42) == "Form:name"


def test_coroutines_adding_data_to_one_record_lose_nothing(place: Callable[[], Storage]) -> None:
    states = AsyncStateStorage(place())
    bot = AsyncTeleBot(TOKEN, state_storage=states)

    async def work(task: int) -> None:
        for i in range(TIMES):
            field: dict[str, Any] = {f"t{task}-{i}": i}
            await bot.add_data(7, 42, **field)
            async with retrieved_async(bot, 7, 42) as data:
                count = data.get("count", 0)
                await asyncio.sleep(0)  # another coroutine runs here; it must wait for the lock
                data["count"] = count + 1

    async def main() -> dict[str, Any]:
        await bot.set_state(7, Form.name, 42)
        await asyncio.wait_for(asyncio.gather(*(work(t) for t in range(THREADS))), DEADLINE)
        return await states.get_data(42, 7, bot_id=BOT_ID)

    data = asyncio.run(main())
    assert data.pop("count") == THREADS * TIMES
    assert len(data) == THREADS * TIMES


# -- retrieve_data ---------------------------------------------------------------------------


def test_a_retrieve_data_block_that_raises_writes_nothing_and_frees_the_key() -> None:
    storage = MemoryStorage()
    bot = TeleBot(TOKEN, threaded=False, state_storage=StateStorage(storage))
    bot.set_state(7, Form.name, 42)
    bot.add_data(7, 42, name="Ann")

    def fails() -> None:
        with retrieved(bot, 7, 42) as data:
            data["name"] = "Bob"
            raise RuntimeError("handler failed")

    with pytest.raises(RuntimeError, match="handler failed"):
        fails()
    with retrieved(bot, 7, 42) as data:
        assert data == {"name": "Ann"}
    assert lock_is_free(storage, f"state:{BOT_ID}/42/7")


def test_a_retrieve_data_block_may_change_the_state_of_its_own_key() -> None:
    storage = MemoryStorage()
    bot = TeleBot(TOKEN, threaded=False, state_storage=StateStorage(storage))
    bot.set_state(7, Form.name, 42)
    with retrieved(bot, 7, 42) as data:
        data["name"] = "Ann"
        bot.set_state(7, Form.age, 42)  # the thread holds the key already: no wait
    assert storage.read(f"state:{BOT_ID}/42/7") == {"state": "Form:age", "data": {"name": "Ann"}}
    assert lock_is_free(storage, f"state:{BOT_ID}/42/7")


def test_an_async_retrieve_data_block_may_change_the_state_of_its_own_key() -> None:
    storage = MemoryStorage(lock_timeout=5)
    bot = AsyncTeleBot(TOKEN, state_storage=AsyncStateStorage(storage))

    async def main() -> None:
        await bot.set_state(7, Form.name, 42)
        async with retrieved_async(bot, 7, 42) as data:
            data["name"] = "Ann"
            await asyncio.wait_for(bot.set_state(7, Form.age, 42), DEADLINE)  # the task holds the key
        # and a raising block writes nothing
        with pytest.raises(RuntimeError, match="handler failed"):
            await fails()

    async def fails() -> None:
        async with retrieved_async(bot, 7, 42) as data:
            data["name"] = "Bob"
            raise RuntimeError("handler failed")

    asyncio.run(main())
    assert storage.read(f"state:{BOT_ID}/42/7") == {"state": "Form:age", "data": {"name": "Ann"}}
    assert lock_is_free(storage, f"state:{BOT_ID}/42/7")


# -- refusals that say why ---------------------------------------------------------------------


def test_data_that_is_not_json_is_refused_and_the_record_kept() -> None:
    storage = MemoryStorage()
    states = StateStorage(storage)
    states.set_state(42, 7, "s")
    with pytest.raises(SessionDataError):
        states.set_data(42, 7, "when", {1, 2})
    assert storage.read("state:/42/7") == {"state": "s", "data": {}}


def test_a_storage_without_locks_a_state_without_a_name_and_a_shared_prefix_are_refused() -> None:
    with pytest.raises(TypeError, match="storages"):
        StateStorage(PlainStorage())  # type: ignore[arg-type]
    storage = MemoryStorage()
    states = StateStorage(storage)
    with pytest.raises(TypeError, match="StatesGroup"):
        states.set_state(42, 7, State())
    storage.write("state:/42/7", {"count": 1})  # a session, say, under the states' prefix
    with pytest.raises(ValueError, match="prefix of its own"):
        states.get_state(42, 7)
