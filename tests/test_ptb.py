"""python-telegram-bot: SessionPersistence under a real Application, polling a fake Bot API on loopback.

Every Application here runs with python-telegram-bot's own concurrency turned on
(``concurrent_updates``), on FileStorage, SQLiteStorage and RedisStorage, and is started afresh
on a new storage object over the same store to stand for a restart.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import json
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from fakebotapi import FakeBotAPI
from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.ext import (
    Application,
    ApplicationBuilder,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ConversationHandler,
    MessageHandler,
    PersistenceInput,
    filters,
)

from simplesession import FileStorage, MemoryStorage, RedisStorage, SessionDataError, SQLiteStorage, Storage
from simplesession.contrib.ptb import DEFAULT_UPDATE_INTERVAL, SessionPersistence

Context = ContextTypes.DEFAULT_TYPE
WAIT = 30.0  # seconds any one wait may take on a busy machine, before the test fails
INTERVAL = 0.05  # update_interval of the Applications here: runs of update_persistence come quickly


@pytest.fixture(params=["file", "sqlite", "redis"])
def open_store(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Storage]:
    """Opens the test's store, a new storage object each time (a restarted bot's)."""
    if request.param == "file":
        return lambda: FileStorage(tmp_path / "sessions")
    if request.param == "sqlite":
        return lambda: SQLiteStorage(tmp_path / "sessions.db")
    url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
    return lambda: RedisStorage(url, prefix=prefix)


@pytest.fixture
def api() -> Iterator[FakeBotAPI]:
    with FakeBotAPI() as server:
        yield server


def build(
    api: FakeBotAPI, persistence: SessionPersistence, *, callback_data: bool = False
) -> Application[Any, Any, Any, Any, Any, Any]:
    builder = (
        ApplicationBuilder()
        .token(api.token)
        .base_url(api.url + "/bot")
        .concurrent_updates(True)
        # Replies to concurrent updates go out at once: more than the one connection PTB
        # keeps by default, and no giving up while the fake server is busy.
        .connection_pool_size(8)
        .pool_timeout(WAIT)
        .persistence(persistence)
    )
    if callback_data:
        builder = builder.arbitrary_callback_data(True)
    return builder.build()


@asynccontextmanager
async def running(
    app: Application[Any, Any, Any, Any, Any, Any], initialized: Callable[[], object] | None = None
) -> AsyncIterator[None]:
    """The Application polling, as ``run_polling`` runs it (``initialized()`` called once it
    has loaded its data); stopped, and its persistence updated and flushed, at the end."""
    await app.initialize()
    if initialized is not None:
        initialized()
    assert app.updater is not None
    await app.updater.start_polling(poll_interval=0, timeout=1)
    await app.start()
    try:
        yield
    finally:
        await app.updater.stop()
        await app.stop()
        await app.shutdown()


async def sent(api: FakeBotAPI, n: int) -> list[str]:
    """The texts of the first ``n`` messages the bot sent, once it has sent them."""
    await asyncio.to_thread(api.wait_for_sent, n, WAIT)
    return [message["text"] for message in api.sent]


async def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT} s"
        await asyncio.sleep(0.01)


def counter(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    """/count adds one to the chat's count and replies with it; /forget drops the chat's data."""

    async def count(update: Update, context: Context) -> None:
        assert context.chat_data is not None
        assert update.effective_message is not None
        context.chat_data["count"] = context.chat_data.get("count", 0) + 1  # no await in between
        await update.effective_message.reply_text(f"count={context.chat_data['count']}")

    async def forget(update: Update, context: Context) -> None:
        assert update.effective_chat is not None
        assert update.effective_message is not None
        context.application.drop_chat_data(update.effective_chat.id)
        await update.effective_message.reply_text("forgotten")

    app.add_handler(CommandHandler("count", count))
    app.add_handler(CommandHandler("forget", forget))


# -- counts, restarts, drops -----------------------------------------------------------------


def test_fifty_concurrent_updates_of_one_chat_count_exactly_and_survive_a_restart(
    api: FakeBotAPI, open_store: Callable[[], Storage]
) -> None:
    async def first_run() -> list[str]:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL))
        counter(app)
        async with running(app):
            for _ in range(50):
                api.push_command("/count")
            return await sent(api, 50)

    replies = asyncio.run(first_run())
    assert sorted(replies) == sorted(f"count={n}" for n in range(1, 51))
    assert open_store().read("ptb:chat:42") == {"count": 50}

    async def second_run() -> dict[int, Any]:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL))
        counter(app)
        async with running(app):
            loaded = copy.deepcopy(dict(app.chat_data))  # its dicts are live
            api.push_command("/count")
            await sent(api, 51)
        return loaded

    assert asyncio.run(second_run()) == {42: {"count": 50}}  # the chat id an int, as PTB keeps it
    assert api.sent[-1]["text"] == "count=51"
    assert open_store().read("ptb:chat:42") == {"count": 51}


def test_chats_and_users_are_sessions_of_their_own_written_while_the_bot_runs(
    api: FakeBotAPI, open_store: Callable[[], Storage]
) -> None:
    chats = [42, -1001, 7]

    async def main() -> None:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL))
        counter(app)

        async def seen(update: Update, context: Context) -> None:
            assert context.user_data is not None
            assert context.bot_data is not None
            context.user_data["seen"] = context.user_data.get("seen", 0) + 1
            context.bot_data["updates"] = context.bot_data.get("updates", 0) + 1

        app.add_handler(MessageHandler(filters.ALL, seen), group=1)
        async with running(app):
            for round_ in range(10):
                for chat in chats:
                    api.push_command("/count", chat, user_id=500 + round_ % 2)
            await sent(api, 30)
            # Written by the runs of update_persistence, before the Application stops.
            store = open_store()
            await until(lambda: all(store.read(f"ptb:chat:{chat}") == {"count": 10} for chat in chats), "chat writes")
            await until(lambda: store.read("ptb:bot") == {"updates": 30}, "the bot_data write")

    asyncio.run(main())
    store = open_store()
    assert sorted(store.keys()) == sorted(
        ["ptb:bot", "ptb:user:500", "ptb:user:501", *(f"ptb:chat:{chat}" for chat in chats)]
    )
    assert store.read("ptb:user:500") == store.read("ptb:user:501") == {"seen": 15}


def test_a_dropped_chat_stays_dropped_after_a_restart(api: FakeBotAPI, open_store: Callable[[], Storage]) -> None:
    async def run(*pushes: tuple[str, int]) -> dict[int, Any]:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL))
        counter(app)
        async with running(app):
            loaded = copy.deepcopy(dict(app.chat_data))  # its dicts are live
            before = len(api.sent)
            for text, chat in pushes:
                api.push_command(text, chat)
                await sent(api, before + 1)  # one at a time: /forget after /count
                before += 1
        return loaded

    asyncio.run(run(("/count", 1), ("/count", 2), ("/count", 2)))
    assert open_store().read("ptb:chat:2") == {"count": 2}
    assert asyncio.run(run(("/forget", 2))) == {1: {"count": 1}, 2: {"count": 2}}
    assert open_store().read("ptb:chat:2") is None
    assert asyncio.run(run()) == {1: {"count": 1}}
    assert asyncio.run(run(("/count", 2))) == {1: {"count": 1}}
    assert api.sent[-1]["text"] == "count=1"  # a new start, not the dropped count


def test_a_raising_handler_keeps_its_changes_as_ptb_keeps_them(
    api: FakeBotAPI, open_store: Callable[[], Storage]
) -> None:
    # chat_data is a live dict: what a handler changed before it raised stays changed in
    # memory, and is stored as python-telegram-bot hands it over. Nothing can undo it here.
    errors: list[object] = []

    async def main() -> None:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL))
        counter(app)

        async def broken(update: Update, context: Context) -> None:
            assert context.chat_data is not None
            context.chat_data["count"] = context.chat_data.get("count", 0) + 100
            raise RuntimeError("the handler failed")

        async def on_error(update: object, context: Context) -> None:
            errors.append(context.error)
            assert update is not None

        app.add_handler(CommandHandler("broken", broken))
        app.add_error_handler(on_error)
        async with running(app):
            api.push_command("/count")
            await sent(api, 1)
            api.push_command("/broken")
            await until(lambda: len(errors) == 1, "error")
            api.push_command("/count")
            await sent(api, 2)

    asyncio.run(main())
    assert [str(error) for error in errors] == ["the handler failed"]
    assert [message["text"] for message in api.sent] == ["count=1", "count=102"]
    assert open_store().read("ptb:chat:42") == {"count": 102}


# -- data that is not JSON ---------------------------------------------------------------------


def test_data_that_is_not_json_is_refused_naming_the_chat_and_place_and_the_others_are_written(
    api: FakeBotAPI, open_store: Callable[[], Storage]
) -> None:
    errors: list[BaseException] = []

    async def main() -> None:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL))
        counter(app)

        async def remember(update: Update, context: Context) -> None:
            assert context.chat_data is not None
            assert update.effective_message is not None
            context.chat_data["events"] = [{"at": datetime.datetime(2024, 1, 2, tzinfo=datetime.timezone.utc)}]
            await update.effective_message.reply_text("remembered")

        async def on_error(update: object, context: Context) -> None:
            assert update is None  # raised by a run of update_persistence, not by an update
            assert context.error is not None
            errors.append(context.error)

        app.add_handler(CommandHandler("remember", remember))
        app.add_error_handler(on_error)
        async with running(app):
            api.push_command("/count", 7)
            await sent(api, 1)
            await until(lambda: open_store().read("ptb:chat:7") == {"count": 1}, "the first write")
            api.push_command("/remember", 7)
            api.push_command("/count", 42)
            await sent(api, 3)
            await until(lambda: bool(errors), "the refusal")

    asyncio.run(main())
    error = errors[0]
    assert isinstance(error, SessionDataError)
    assert error.key == "ptb:chat:7"
    assert error.where == "chat_data['events'][0]['at']"
    assert str(error).startswith(
        "cannot store chat_data of chat 7 ('ptb:chat:7'): chat_data['events'][0]['at'] is a datetime.datetime;"
    )
    assert error.__cause__ is None
    assert error.__context__ is None
    store = open_store()
    assert store.read("ptb:chat:7") == {"count": 1}  # as it was
    assert store.read("ptb:chat:42") == {"count": 1}


def test_int_keys_in_chat_data_are_refused_rather_than_turned_into_strings(tmp_path: Path) -> None:
    persistence = SessionPersistence(FileStorage(tmp_path))
    with pytest.raises(SessionDataError) as refused:
        asyncio.run(persistence.update_user_data(5, {"scores": {1: "a"}}))
    assert refused.value.where == "user_data['scores']"
    assert "user_data['scores'] has a key 1 of type int (JSON keys are strings)" in str(refused.value)
    assert "user_data of user 5 ('ptb:user:5')" in str(refused.value)
    assert list(FileStorage(tmp_path).keys()) == []


# -- conversations and callback data --------------------------------------------------------------


ASK = 1


def order_conversation(app: Application[Any, Any, Any, Any, Any, Any]) -> None:
    async def start(update: Update, context: Context) -> int:
        assert update.effective_message is not None
        await update.effective_message.reply_text("What size?")
        return ASK

    async def size(update: Update, context: Context) -> int:
        assert update.effective_message is not None
        await update.effective_message.reply_text(f"{update.effective_message.text} it is")
        return ConversationHandler.END

    app.add_handler(
        ConversationHandler(
            entry_points=[CommandHandler("order", start)],
            states={ASK: [MessageHandler(filters.TEXT & ~filters.COMMAND, size)]},
            fallbacks=[],
            name="order",
            persistent=True,
        )
    )


def test_a_conversation_goes_on_after_a_restart_and_its_key_comes_back_a_tuple(
    api: FakeBotAPI, open_store: Callable[[], Storage]
) -> None:
    async def run(text: str, n: int) -> dict[Any, object]:
        persistence = SessionPersistence(open_store(), update_interval=INTERVAL)
        app = build(api, persistence)
        order_conversation(app)
        async with running(app):
            loaded = await persistence.get_conversations("order")
            api.push_command(text, 42, user_id=9)
            await sent(api, n)
        return loaded

    assert asyncio.run(run("/order", 1)) == {}
    assert open_store().read("ptb:conv:order:[42,9]") == {"name": "order", "key": [42, 9], "state": ASK}
    assert asyncio.run(run("large", 2)) == {(42, 9): ASK}
    assert [message["text"] for message in api.sent] == ["What size?", "large it is"]
    assert open_store().read("ptb:conv:order:[42,9]") is None  # ended: deleted


def test_conversation_keys_of_ints_and_strs_and_names_with_colons_come_back_as_they_were(tmp_path: Path) -> None:
    async def main() -> None:
        persistence = SessionPersistence(FileStorage(tmp_path))
        await persistence.update_conversation("a", (1, "2", -3), "one")
        await persistence.update_conversation("a:b", (1,), {"step": 2})
        await persistence.update_conversation("a", ("x:[1]",), 3)
        again = SessionPersistence(FileStorage(tmp_path))
        assert await again.get_conversations("a") == {(1, "2", -3): "one", ("x:[1]",): 3}
        assert await again.get_conversations("a:b") == {(1,): {"step": 2}}
        assert await again.get_conversations("c") == {}
        with pytest.raises(TypeError, match="a conversation key is a tuple of ints and strs"):
            await persistence.update_conversation("a", (1.5,), 1)  # type: ignore[arg-type]

    asyncio.run(main())


def test_callback_data_types_come_back_as_ptb_hands_them_over(tmp_path: Path) -> None:
    handed: Any = ([("kb1", 1700000000.5, {"b1": {"choice": [1, 2]}, "b2": "plain"})], {"q1": "kb1"})

    async def main() -> Any:
        await SessionPersistence(FileStorage(tmp_path)).update_callback_data(handed)
        return await SessionPersistence(FileStorage(tmp_path)).get_callback_data()

    assert asyncio.run(main()) == handed  # a tuple of a list of tuples, and a dict
    assert FileStorage(tmp_path).read("ptb:callback_data") == {
        "keyboards": [["kb1", 1700000000.5, {"b1": {"choice": [1, 2]}, "b2": "plain"}]],
        "queries": {"q1": "kb1"},
    }


def test_callback_data_survives_a_restart(api: FakeBotAPI, open_store: Callable[[], Storage]) -> None:
    pytest.importorskip("cachetools", reason="arbitrary_callback_data needs python-telegram-bot[callback-data]")

    async def first() -> None:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL), callback_data=True)

        async def menu(update: Update, context: Context) -> None:
            assert update.effective_message is not None
            button = InlineKeyboardButton("Pick", callback_data={"choice": [1, 2]})
            await update.effective_message.reply_text("Menu", reply_markup=InlineKeyboardMarkup([[button]]))

        app.add_handler(CommandHandler("menu", menu))
        async with running(app):
            api.push_command("/menu")
            await sent(api, 1)

    asyncio.run(first())
    stored = open_store().read("ptb:callback_data")
    assert stored is not None
    [(_, _, buttons)] = stored["keyboards"]  # one keyboard, its one button's data by PTB's id
    assert list(buttons.values()) == [{"choice": [1, 2]}]
    markup = json.loads(api.sent[0]["reply_markup"])
    token = markup["inline_keyboard"][0][0]["callback_data"]  # what Telegram sees: PTB's id for the data
    picked: list[object] = []

    async def second() -> None:
        app = build(api, SessionPersistence(open_store(), update_interval=INTERVAL), callback_data=True)

        async def pick(update: Update, context: Context) -> None:
            assert update.callback_query is not None
            picked.append(update.callback_query.data)

        app.add_handler(CallbackQueryHandler(pick))
        async with running(app):
            user = {"id": 42, "is_bot": False, "first_name": "Tester"}
            message = {"message_id": 1, "date": 0, "chat": {"id": 42, "type": "private"}, "text": "Menu"}
            api.push(
                {"callback_query": {"id": "q1", "from": user, "chat_instance": "c", "message": message, "data": token}}
            )
            await until(lambda: bool(picked), "the button's data")

    asyncio.run(second())
    assert picked == [{"choice": [1, 2]}]


# -- the persistence's own guarantees, without an Application ------------------------------------


class SpyStorage(MemoryStorage):
    """A MemoryStorage that records what it is asked, and in which thread."""

    def __init__(self) -> None:
        super().__init__()
        self.events: list[tuple[str, str, int]] = []

    def write(self, key: str, value: Any, **options: Any) -> None:
        self.events.append(("write", key, threading.get_ident()))
        super().write(key, value, **options)

    def delete(self, key: str) -> None:
        self.events.append(("delete", key, threading.get_ident()))
        super().delete(key)

    def read(self, key: str) -> Any | None:
        self.events.append(("read", key, threading.get_ident()))
        return super().read(key)

    @contextmanager
    def lock(self, key: str, **options: Any) -> Iterator[None]:  # type: ignore[override]
        self.events.append(("lock", key, threading.get_ident()))
        try:
            with super().lock(key, **options):
                yield
        finally:
            self.events.append(("unlock", key, threading.get_ident()))


def test_storage_io_runs_in_worker_threads_each_lock_released_by_the_thread_that_took_it() -> None:
    storage = SpyStorage()

    async def main() -> int:
        persistence = SessionPersistence(storage)
        await asyncio.gather(
            persistence.update_chat_data(1, {"a": 1}),
            persistence.update_user_data(2, {"b": 2}),
            persistence.update_bot_data({"c": 3}),
            persistence.update_conversation("talk", (1, 2), 1),
            persistence.drop_chat_data(3),
        )
        await persistence.get_chat_data()
        await persistence.flush()
        return threading.get_ident()

    loop_thread = asyncio.run(main())
    assert storage.events
    assert all(thread != loop_thread for _, _, thread in storage.events)
    held: dict[str, int] = {}
    for event, key, thread in storage.events:
        if event == "lock":
            held[key] = thread
        elif event == "unlock":
            assert held.pop(key) == thread
        elif event in ("write", "delete"):
            assert held.get(key) == thread, f"{event} of {key} outside its lock"
    assert held == {}


def test_a_write_waiting_for_its_lock_does_not_block_the_event_loop(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with storage.lock("ptb:chat:1"):
            taken.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(WAIT)

    async def main() -> int:
        write = asyncio.ensure_future(SessionPersistence(storage).update_chat_data(1, {"a": 1}))
        ticks = 0
        while ticks < 20:  # the loop runs on while the write waits
            await asyncio.sleep(0.001)
            ticks += 1
        assert not write.done()
        release.set()
        await write
        return ticks

    try:
        assert asyncio.run(main()) == 20
    finally:
        release.set()
        holder.join(WAIT)
    assert FileStorage(tmp_path).read("ptb:chat:1") == {"a": 1}


def hold_then_run(storage: Storage, key: str, calls: Callable[[], list[Awaitable[None]]]) -> None:
    """Start ``calls()`` (in that order) while another thread holds ``key``'s lock, then let them go."""
    taken, release = threading.Event(), threading.Event()

    def hold() -> None:
        with storage.lock(key):
            taken.set()
            release.wait(WAIT)

    holder = threading.Thread(target=hold)
    holder.start()
    taken.wait(WAIT)

    async def main() -> None:
        tasks = [asyncio.ensure_future(call) for call in calls()]
        await asyncio.sleep(0.05)  # every call's thread is waiting for the lock now
        release.set()
        await asyncio.gather(*tasks)

    try:
        asyncio.run(main())
    finally:
        release.set()
        holder.join(WAIT)


@pytest.mark.parametrize("rounds", range(5))
def test_the_latest_call_for_a_key_wins_whichever_thread_gets_the_lock_first(tmp_path: Path, rounds: int) -> None:
    storage = FileStorage(tmp_path)
    persistence = SessionPersistence(storage)
    hold_then_run(storage, "ptb:chat:1", lambda: [persistence.update_chat_data(1, {"n": n}) for n in range(8)])
    assert storage.read("ptb:chat:1") == {"n": 7}
    # A write handed over before a drop never lands after it: the dropped chat stays dropped.
    hold_then_run(
        storage, "ptb:chat:1", lambda: [persistence.update_chat_data(1, {"n": 8}), persistence.drop_chat_data(1)]
    )
    assert storage.read("ptb:chat:1") is None


def test_what_is_already_stored_is_not_written_again_and_an_empty_dict_creates_nothing() -> None:
    storage = SpyStorage()

    async def main() -> None:
        persistence = SessionPersistence(storage)
        await persistence.update_chat_data(1, {})
        await persistence.update_bot_data({})
        await persistence.update_chat_data(2, {"a": 1})
        await persistence.update_chat_data(2, {"a": 1})
        again = SessionPersistence(storage)
        await again.get_chat_data()
        await again.update_chat_data(2, {"a": 1})
        await again.update_chat_data(2, {})  # emptied: stored as it is
        await again.drop_chat_data(2)
        await again.update_chat_data(2, {"a": 1})  # after a drop, written anew

    asyncio.run(main())
    writes = [(event, key) for event, key, _ in storage.events if event in ("write", "delete")]
    assert writes == [
        ("write", "ptb:chat:2"),
        ("write", "ptb:chat:2"),
        ("delete", "ptb:chat:2"),
        ("write", "ptb:chat:2"),
    ]


def test_loaded_ids_are_ints_and_what_is_not_ptb_data_is_left_alone_or_set_aside(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FileStorage(tmp_path)
    storage.write("ptb:chat:-100", {"a": 1})
    storage.write("ptb:chat:07", {"not": "canonical"})
    storage.write("ptb:chat:x", {"not": "an id"})
    storage.write("ptb:user:5", ["not", "a", "dict"])
    storage.write("ptb:bot", {"b": 2})
    storage.write("other:chat:1", {"someone": "else"})

    async def main() -> tuple[Any, ...]:
        persistence = SessionPersistence(storage)
        return (
            await persistence.get_chat_data(),
            await persistence.get_user_data(),
            await persistence.get_bot_data(),
            await persistence.get_callback_data(),
        )

    chats, users, bot, callback_data = asyncio.run(main())
    assert chats == {-100: {"a": 1}}
    assert users == {}
    assert bot == {"b": 2}
    assert callback_data is None
    assert storage.read("ptb:chat:07") == {"not": "canonical"}  # left where it is, with a warning
    assert "'ptb:chat:07': not a chat id" in caplog.text
    assert storage.read("ptb:user:5") is None  # set aside, kept for a human
    assert "user_data is a list, not a dict" in caplog.text
    assert storage.read("other:chat:1") == {"someone": "else"}


def test_a_prefix_keeps_two_bots_apart_on_one_storage(tmp_path: Path) -> None:
    async def main() -> None:
        one, two = SessionPersistence(FileStorage(tmp_path)), SessionPersistence(FileStorage(tmp_path), prefix="two:")
        await one.update_chat_data(1, {"bot": 1})
        await two.update_chat_data(1, {"bot": 2})
        assert await SessionPersistence(FileStorage(tmp_path)).get_chat_data() == {1: {"bot": 1}}
        assert await SessionPersistence(FileStorage(tmp_path), prefix="two:").get_chat_data() == {1: {"bot": 2}}

    asyncio.run(main())
    assert sorted(FileStorage(tmp_path).keys()) == ["ptb:chat:1", "two:chat:1"]


def test_construction_checks_the_storage_and_keeps_ptb_options() -> None:
    persistence = SessionPersistence(MemoryStorage(), store_data=PersistenceInput(bot_data=False))
    assert persistence.update_interval == DEFAULT_UPDATE_INTERVAL
    assert persistence.store_data.bot_data is False
    assert SessionPersistence(MemoryStorage(), update_interval=0.5).update_interval == 0.5

    class ReadWriteDelete:
        def read(self, key: str) -> Any:
            return None

        def write(self, key: str, value: Any) -> None:
            pass

        def delete(self, key: str) -> None:
            pass

    with pytest.raises(TypeError, match="SessionPersistence needs a storage with keys, lock"):
        SessionPersistence(ReadWriteDelete())  # type: ignore[arg-type]
