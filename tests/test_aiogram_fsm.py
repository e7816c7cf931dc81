"""simplesession.contrib.aiogram's FSM storage and event isolation: aiogram's semantics, keys that
honour every field, conversations that outlive the process, and locks that hold across processes."""

from __future__ import annotations

import asyncio
import functools
import json
import subprocess
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from conftest import make_storage
from fakebotapi import FakeBotAPI
from helpers import fork_python
from hypothesis import given
from hypothesis import strategies as st
from test_aiogram import bot_for, message

from simplesession import FileStorage, MemoryStorage, SessionDataError, Storage, open_storage

# As in test_aiogram.py: aiogram (and simplesession.contrib.aiogram) only where a test runs.
if TYPE_CHECKING:
    from aiogram import Bot, Dispatcher, Router
    from aiogram.fsm.context import FSMContext
    from aiogram.fsm.state import State
    from aiogram.fsm.storage.base import StorageKey
    from aiogram.types import Message

KINDS = ["memory", "file", "sqlite", "redis", "postgres"]
BOT_ID = 123456  # the fake server's token names this bot
TIMEOUT = 60.0


def run(main: Coroutine[Any, Any, None]) -> None:
    async def bounded() -> None:
        await asyncio.wait_for(main, TIMEOUT)

    asyncio.run(bounded())


# -- keys ------------------------------------------------------------------------------------------


def test_the_key_names_the_bot_chat_and_user_and_every_other_field_that_is_set() -> None:
    from aiogram.fsm.storage.base import StorageKey

    from simplesession.contrib.aiogram import fsm_key

    assert fsm_key(StorageKey(bot_id=1, chat_id=-100, user_id=7)) == "aiogram:1:-100:7"
    full = StorageKey(bot_id=1, chat_id=2, user_id=3, thread_id=0, business_connection_id="a:b/c", destiny="x=y")
    assert fsm_key(full, prefix="bot:") == "bot:1:2:3:thread=0:business=a%3Ab%2Fc:destiny=x%3Dy"
    assert fsm_key(StorageKey(bot_id=1, chat_id=2, user_id=3, destiny="scenes_history")) == (
        "aiogram:1:2:3:destiny=scenes_history"
    )
    with pytest.raises(TypeError, match="chat_id must be an int"):
        fsm_key(StorageKey(bot_id=1, chat_id="2", user_id=3))  # type: ignore[arg-type]


def storage_keys() -> st.SearchStrategy[StorageKey]:
    from aiogram.fsm.storage.base import StorageKey

    return st.builds(
        StorageKey,
        bot_id=st.integers(),
        chat_id=st.integers(),
        user_id=st.integers(),
        thread_id=st.none() | st.integers(),
        business_connection_id=st.none() | st.text(),
        destiny=st.sampled_from(["default", "scenes_history", "", ":", "%3A"]) | st.text(),
    )


keys = st.deferred(storage_keys)


@given(keys, keys)
def test_distinct_storage_keys_never_share_a_record(one: StorageKey, other: StorageKey) -> None:
    from simplesession.contrib.aiogram import fsm_key

    assert (fsm_key(one) == fsm_key(other)) == (one == other)


# -- aiogram's semantics ---------------------------------------------------------------------------


@functools.cache
def form() -> tuple[State, State]:
    """The states of a form, name then age, in a StatesGroup named Form."""
    from aiogram.fsm.state import State, StatesGroup

    class Form(StatesGroup):
        name = State()
        age = State()

    return Form.name, Form.age


def chat_key() -> StorageKey:
    """The key of chat 42's conversation with the fake server's bot."""
    from aiogram.fsm.storage.base import StorageKey

    return StorageKey(bot_id=BOT_ID, chat_id=42, user_id=42)


@pytest.mark.parametrize("kind", KINDS)
def test_states_and_data_behave_as_aiograms_own_storages(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    from aiogram.fsm.state import State

    from simplesession.contrib.aiogram import SessionStorage

    storage = make_storage(kind, tmp_path / "fsm", request)
    fsm, key = SessionStorage(storage), chat_key()
    name = fsm.key(key)

    async def main() -> None:
        assert await fsm.get_state(key) is None
        assert await fsm.get_data(key) == {}
        assert await fsm.get_value(key, "x", "default") == "default"
        await fsm.set_state(key, form()[0])
        assert await fsm.get_state(key) == "Form:name"
        assert storage.read(name) == {"state": "Form:name", "data": {}}
        data = await fsm.update_data(key, {"name": "Ann"})
        data["name"] = "changed"  # a copy: the stored data stays
        assert await fsm.get_data(key) == {"name": "Ann"}
        assert await fsm.get_value(key, "name") == "Ann"
        await fsm.set_data(key, {"age": 30})
        assert storage.read(name) == {"state": "Form:name", "data": {"age": 30}}
        await fsm.set_state(key, "Other:step")
        await fsm.set_state(key, None)
        assert storage.read(name) == {"state": None, "data": {"age": 30}}
        await fsm.set_data(key, {})  # neither state nor data: the record goes
        assert storage.read(name) is None
        await fsm.set_state(key, State())  # aiogram's default_state: none
        assert storage.read(name) is None

    run(main())


def test_data_that_is_not_json_or_not_a_dict_is_refused_and_nothing_is_stored() -> None:
    from simplesession.contrib.aiogram import SessionStorage

    storage = MemoryStorage()
    fsm, key = SessionStorage(storage), chat_key()

    async def main() -> None:
        await fsm.set_data(key, {"n": 1})
        with pytest.raises(SessionDataError, match=r"\['when'\] is a set"):
            await fsm.update_data(key, {"when": {1, 2}})
        with pytest.raises(TypeError, match="FSM data must be a dict, not list"):
            await fsm.set_data(key, [1, 2])  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="a state is a str"):
            await fsm.set_state(key, 5)  # type: ignore[arg-type]
        assert await fsm.get_data(key) == {"n": 1}

    run(main())
    with pytest.raises(TypeError, match="needs a simplesession storage"):
        SessionStorage({})  # type: ignore[arg-type]


def test_a_record_of_another_shape_is_set_aside_and_reads_as_empty(tmp_path: Path) -> None:
    from simplesession.contrib.aiogram import SessionStorage

    storage = FileStorage(tmp_path)
    fsm, key = SessionStorage(storage), chat_key()
    storage.write(fsm.key(key), ["not", "a", "record"])

    async def main() -> None:
        assert await fsm.get_state(key) is None
        await fsm.update_data(key, {"n": 1})
        assert await fsm.get_data(key) == {"n": 1}

    run(main())
    kept = list((tmp_path / "corrupt").iterdir())  # kept for a human
    assert len(kept) == 1
    assert json.loads(kept[0].read_text())["data"] == ["not", "a", "record"]


# -- a conversation ---------------------------------------------------------------------------------


def form_router() -> Router:
    from aiogram import Router
    from aiogram.filters import Command

    name_state, age_state = form()
    router = Router()

    @router.message(Command("start"))
    async def start(message: Any, state: FSMContext) -> None:
        await state.set_state(name_state)
        await message.answer("Your name?")

    @router.message(name_state)
    async def name(message: Any, state: FSMContext) -> None:
        await state.update_data(name=message.text)
        await state.set_state(age_state)
        await message.answer("Your age?")

    @router.message(age_state)
    async def age(message: Any, state: FSMContext) -> None:
        data = await state.update_data(age=int(message.text))
        await state.clear()
        await message.answer(f"{data['name']} is {data['age']}")

    return router


def dispatcher(storage: Storage) -> Dispatcher:
    from aiogram import Dispatcher

    from simplesession.contrib.aiogram import SessionIsolation, SessionStorage

    dp = Dispatcher(storage=SessionStorage(storage), events_isolation=SessionIsolation(storage))
    dp.include_router(form_router())
    return dp


@pytest.mark.parametrize("kind", KINDS)
def test_a_conversation_goes_on_after_a_restart(
    kind: str, tmp_path: Path, request: pytest.FixtureRequest, api: FakeBotAPI
) -> None:
    from simplesession.contrib.aiogram import fsm_key

    storage = make_storage(kind, tmp_path / "fsm", request)
    name = fsm_key(chat_key())

    async def before(bot: Bot) -> None:
        dp = dispatcher(storage)
        await dp.feed_raw_update(bot, message(1, "/start"))
        await dp.feed_raw_update(bot, message(2, "Ann"))
        await dp.emit_shutdown(bot=bot)  # as a stopping bot does: closes the FSM storage

    async def after(bot: Bot) -> None:
        # A new storage object on the same place (the memory's is its object; each postgres one gets a table).
        same_place = kind in ("memory", "postgres")
        dp = dispatcher(storage if same_place else make_storage(kind, tmp_path / "fsm", request))
        await dp.feed_raw_update(bot, message(3, "30"))

    async def with_bot(part: Any) -> None:
        bot = bot_for(api)
        try:
            await part(bot)
        finally:
            await bot.session.close()

    run(with_bot(before))
    assert storage.read(name) == {"state": "Form:age", "data": {"name": "Ann"}}
    run(with_bot(after))
    assert [sent["text"] for sent in api.sent] == ["Your name?", "Your age?", "Ann is 30"]
    assert storage.read(name) is None  # state.clear() leaves nothing behind


# -- locks -----------------------------------------------------------------------------------------


def shared_lock_keys(storage: Storage) -> tuple[int, StorageKey]:
    """A chat whose session key and FSM record have one lock in ``storage`` (one of its lock
    files), and another FSM key that shares the lock of that chat's record."""
    from aiogram.fsm.storage.base import StorageKey

    from simplesession.contrib.aiogram import fsm_key

    chats = range(1, 100_000)
    chat = next(c for c in chats if storage.lock_name(str(c)) == storage.lock_name(fsm_key(StorageKey(BOT_ID, c, c))))
    record = storage.lock_name(fsm_key(StorageKey(BOT_ID, chat, chat)))
    other = next(
        StorageKey(BOT_ID, chat, chat, destiny=f"d{i}")
        for i in range(100_000)
        if storage.lock_name(fsm_key(StorageKey(BOT_ID, chat, chat, destiny=f"d{i}"))) == record
    )
    return chat, other


def test_a_record_whose_lock_the_update_holds_changes_without_waiting_for_itself(tmp_path: Path) -> None:
    from aiogram.fsm.storage.base import StorageKey

    from simplesession.contrib.aiogram import SessionIsolation, SessionStorage, fsm_key

    storage = FileStorage(tmp_path, lock_timeout=30)
    fsm, isolation = SessionStorage(storage), SessionIsolation(storage)
    chat, other = shared_lock_keys(storage)
    key = StorageKey(BOT_ID, chat, chat)

    async def main() -> None:
        async with isolation.lock(key):
            # Its own record, and one of another destiny (as aiogram's scenes keep) on the same lock file.
            await asyncio.wait_for(fsm.update_data(key, {"n": 1}), 5)
            await asyncio.wait_for(fsm.update_data(other, {"n": 2}), 5)
        await asyncio.wait_for(fsm.update_data(other, {"m": 3}), 5)  # and, with no lock held, its own

    run(main())
    assert storage.read(fsm_key(key)) == {"state": None, "data": {"n": 1}}
    assert storage.read(fsm_key(other)) == {"state": None, "data": {"n": 2, "m": 3}}


def test_a_session_on_the_fsm_storage_that_shares_its_lock_is_taken_again_by_the_update(
    tmp_path: Path, api: FakeBotAPI
) -> None:
    """The isolation holds the record's lock file, which is also the chat's session's: the
    update's task enters it again, as a thread may, instead of waiting for itself."""
    from simplesession.contrib.aiogram import SessionMiddleware

    storage = FileStorage(tmp_path, lock_timeout=30)
    chat, _ = shared_lock_keys(storage)

    async def main() -> None:
        bot = bot_for(api)
        try:
            dp = dispatcher(storage)
            dp.update.outer_middleware(SessionMiddleware(storage=storage, initial=lambda: {"n": 0}))

            @dp.message()
            async def count(message: Message, session: dict[str, int]) -> None:
                session["n"] += 1

            for update_id in (1, 2):
                await asyncio.wait_for(dp.feed_raw_update(bot, message(update_id, "/start", chat=chat)), 5)
        finally:
            await bot.session.close()

    run(main())
    assert storage.read(str(chat)) == {"n": 2}


ISOLATED_INCREMENTS = """
    import asyncio, sys
    from aiogram.fsm.storage.base import StorageKey
    from simplesession import open_storage
    from simplesession.contrib.aiogram import SessionIsolation, SessionStorage

    storage = open_storage(sys.argv[1])
    fsm, isolation = SessionStorage(storage), SessionIsolation(storage)
    key = StorageKey(bot_id=1, chat_id=42, user_id=42)

    async def increments(coroutine, times):
        for i in range(times):
            async with isolation.lock(key):
                n = (await fsm.get_data(key)).get("n", 0)
                await asyncio.sleep(0)  # the other coroutines run here
                await fsm.set_data(key, {"n": n + 1})
            # update_data without the isolation: a read-modify-write under the record's own lock
            await fsm.update_data(StorageKey(1, 7, 7), {f"{sys.argv[2]}-{coroutine}-{i}": i})

    async def main():
        await asyncio.gather(*(increments(c, int(sys.argv[4])) for c in range(int(sys.argv[3]))))

    asyncio.run(main())
"""


@pytest.mark.usefixtures("forked")
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_isolation_holds_across_processes_of_coroutines(kind: str, tmp_path: Path) -> None:
    """2 processes x 8 coroutines x 25 locked increments of one key: exactly 400; and 400
    update_data calls of another key from them all: no key lost."""
    from aiogram.fsm.storage.base import StorageKey

    from simplesession.contrib.aiogram import fsm_key

    store = f"file:{tmp_path / 'fsm'}" if kind == "file" else f"sqlite:{tmp_path / 'fsm.db'}"
    procs = [fork_python(ISOLATED_INCREMENTS, store, str(p), "8", "25", stderr=subprocess.PIPE) for p in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    with open_storage(store) as storage:
        assert storage.read(fsm_key(StorageKey(1, 42, 42))) == {"state": None, "data": {"n": 400}}
        merged = storage.read(fsm_key(StorageKey(1, 7, 7)))
    assert merged is not None
    assert len(merged["data"]) == 400


COUNTING_BOT = """
    import asyncio, sys
    from aiogram import Bot, Dispatcher
    from simplesession import open_storage
    from simplesession.contrib.aiogram import SessionIsolation, SessionMiddleware, SessionStorage

    fsm_store, session_store, first, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    storage = open_storage(fsm_store)
    dp = Dispatcher(storage=SessionStorage(storage), events_isolation=SessionIsolation(storage))
    # Chat 42 has no session, so only the isolation keeps its updates apart.
    sessions = open_storage(session_store)
    key = lambda ctx: None if ctx.chat_id == 42 else str(ctx.chat_id)
    dp.update.outer_middleware(SessionMiddleware(initial=lambda: {"n": 0}, storage=sessions, get_session_key=key))

    @dp.message()
    async def count_both(message, state, session):
        n = (await state.get_data()).get("n", 0)
        if message.chat.id != 42:
            session["n"] += 1
        await asyncio.sleep(0)  # the other updates run here
        await state.update_data(n=n + 1)

    def update(i, chat):
        sender = {"id": chat, "is_bot": False, "first_name": "T"}
        text = {"chat": {"id": chat, "type": "private"}, "from": sender, "text": "x"}
        return {"update_id": i, "message": {"message_id": i, "date": 0, **text}}

    async def main():
        bot = Bot("123456:fake-TOKEN")  # feed_raw_update: nothing is sent
        updates = [update(i, 42 + i % 2) for i in range(first, first + count)]
        await asyncio.gather(*(dp.feed_raw_update(bot, u) for u in updates))
        await bot.session.close()

    asyncio.run(main())
"""


@pytest.mark.usefixtures("forked")
@pytest.mark.parametrize("kind", ["file", "sqlite"])
def test_the_fsm_and_the_session_of_one_chat_count_exactly_across_processes(kind: str, tmp_path: Path) -> None:
    """Two bot processes, each feeding 200 concurrent updates of two chats to its Dispatcher."""
    from aiogram.fsm.storage.base import StorageKey

    from simplesession.contrib.aiogram import fsm_key

    if kind == "file":
        stores = [f"file:{tmp_path / 'fsm'}", f"file:{tmp_path / 'sessions'}"]
    else:
        stores = [f"sqlite:{tmp_path / 'fsm.db'}", f"sqlite:{tmp_path / 'sessions.db'}"]
    procs = [fork_python(COUNTING_BOT, *stores, str(200 * p), "200", stderr=subprocess.PIPE) for p in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=TIMEOUT)
        assert proc.returncode == 0, err
    with open_storage(stores[0]) as fsm, open_storage(stores[1]) as sessions:
        for chat in (42, 43):
            assert fsm.read(fsm_key(StorageKey(BOT_ID, chat, chat))) == {"state": None, "data": {"n": 200}}
        assert sessions.read("43") == {"n": 200}
        assert list(sessions.keys()) == ["43"]


def test_isolation_refuses_what_is_not_a_storage() -> None:
    from simplesession.contrib.aiogram import SessionIsolation

    with pytest.raises(TypeError, match="needs a simplesession storage"):
        SessionIsolation(json)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="prefix must be a str"):
        SessionIsolation(MemoryStorage(), prefix=None)  # type: ignore[arg-type]
