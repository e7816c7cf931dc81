"""The session middleware, semantics by semantics, with spy storages that count calls."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from helpers import PlainStorage, full_path
from hookstorage import HookStorage

from simplesession import (
    Context,
    FileStorage,
    LockTimeout,
    MemoryStorage,
    SessionDataError,
    SessionError,
    SessionKeyError,
    lazy_session,
    multi_session,
    session,
)
from simplesession.session import SessionMiddleware
from simplesession.storage import Version


class SpyStorage(MemoryStorage):
    """A MemoryStorage that records every call."""

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        self.events: list[tuple[str, str]] = []
        self.on_lock: Callable[[str], None] | None = None

    def count(self, kind: str) -> int:
        return sum(1 for event, _ in self.events if event == kind)

    def read(self, key: str) -> Any | None:
        self.events.append(("read", key))
        return super().read(key)

    def write(self, key: str, value: Any, *, version: Version | None = None) -> None:
        self.events.append(("write", key))
        super().write(key, value, version=version)

    def delete(self, key: str) -> None:
        self.events.append(("delete", key))
        super().delete(key)

    @contextmanager
    def lock(self, key: str) -> Iterator[None]:  # type: ignore[override]
        with super().lock(key):
            self.events.append(("lock", key))
            if self.on_lock is not None:
                self.on_lock(key)
            try:
                yield
            finally:
                self.events.append(("unlock", key))


def message(chat_id: int = 42, text: str = "hi", user_id: int = 7, update_id: int = 1) -> dict[str, Any]:
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "chat": {"id": chat_id, "type": "private"},
            "from": {"id": user_id, "is_bot": False, "first_name": "U"},
            "text": text,
        },
    }


INLINE_QUERY = {"update_id": 9, "inline_query": {"id": "q", "from": {"id": 7}, "query": "x", "offset": ""}}


def run(mw: SessionMiddleware, update: dict[str, Any], handler: Callable[[Context], object]) -> Context:
    ctx = Context(update)
    mw(ctx, lambda: handler(ctx))
    return ctx


def bump(ctx: Context) -> None:
    ctx.session["count"] += 1


# -- 1. initial is a factory ------------------------------------------------------------


def test_initial_is_called_for_every_new_session() -> None:
    calls: list[int] = []

    def initial() -> dict[str, Any]:
        calls.append(1)
        return {"count": 0, "items": []}

    storage = SpyStorage()
    mw = session(initial=initial, storage=storage)
    run(mw, message(chat_id=1), lambda ctx: ctx.session["items"].append("one"))
    run(mw, message(chat_id=2), lambda ctx: None)
    assert len(calls) == 2
    assert storage.read("1") == {"count": 0, "items": ["one"]}
    assert storage.read("2") is None  # untouched initial: nothing stored


@pytest.mark.parametrize("bad", [{"count": 0}, [], 0, "x"])
def test_non_callable_initial_is_refused_at_construction(bad: Any) -> None:
    with pytest.raises(TypeError, match="initial must be a function"):
        session(initial=bad)


def test_without_initial_a_new_session_is_none_until_assigned() -> None:
    storage = SpyStorage()
    mw = session(storage=storage)
    seen: list[Any] = []

    def handler(ctx: Context) -> None:
        seen.append(ctx.session)
        ctx.session = {"set": True}

    run(mw, message(), handler)
    assert seen == [None]
    assert storage.read("42") == {"set": True}


# -- 2. keys --------------------------------------------------------------------------


def test_default_key_is_the_chat_id() -> None:
    storage = SpyStorage()
    ctx = run(session(initial=lambda: {"count": 0}, storage=storage), message(chat_id=-1001), bump)
    assert ctx.session_key == "-1001"
    assert storage.read("-1001") == {"count": 1}


def test_callback_query_uses_the_chat_of_its_message() -> None:
    storage = SpyStorage()
    update = {
        "update_id": 3,
        "callback_query": {"id": "c", "from": {"id": 7}, "data": "x", "message": {"chat": {"id": 55}}},
    }
    ctx = run(session(initial=lambda: {"count": 0}, storage=storage), update, bump)
    assert ctx.session_key == "55"


def test_update_without_chat_has_no_session_and_does_no_io() -> None:
    storage = SpyStorage()
    mw = session(initial=lambda: {"count": 0}, storage=storage)
    errors: list[SessionKeyError] = []

    def handler(ctx: Context) -> None:
        assert ctx.session_key is None
        with pytest.raises(SessionKeyError) as info:
            ctx.session  # noqa: B018
        errors.append(info.value)
        with pytest.raises(SessionKeyError):
            ctx.session = {"x": 1}

    run(mw, INLINE_QUERY, handler)
    assert errors
    assert "no chat" in str(errors[0])
    assert "get_session_key" in str(errors[0])
    assert storage.events == []


def test_get_session_key_returning_none_means_no_session() -> None:
    storage = SpyStorage()
    mw = session(initial=dict, storage=storage, get_session_key=lambda ctx: None)
    messages: list[str] = []

    def handler(ctx: Context) -> None:
        try:
            ctx.session  # noqa: B018
        except SessionKeyError as exc:
            messages.append(str(exc))

    run(mw, message(), handler)
    assert "get_session_key returned None" in messages[0]
    assert storage.events == []


def test_custom_key_per_user_and_per_user_in_chat() -> None:
    storage = SpyStorage()
    per_user = session(initial=lambda: {"count": 0}, storage=storage, get_session_key=lambda c: str(c.from_id))
    run(per_user, message(chat_id=1, user_id=7), bump)
    run(per_user, message(chat_id=2, user_id=7), bump)
    assert storage.read("7") == {"count": 2}

    def user_in_chat(ctx: Context) -> str | None:
        return None if ctx.from_id is None or ctx.chat_id is None else f"{ctx.from_id}/{ctx.chat_id}"

    per_member = session(initial=lambda: {"count": 0}, storage=storage, get_session_key=user_in_chat)
    ctx = run(per_member, message(chat_id=1, user_id=7), bump)
    assert ctx.session_key == "7/1"
    assert storage.read("7/1") == {"count": 1}


def test_key_function_returning_a_non_string_is_a_clear_error() -> None:
    mw = session(initial=dict, storage=SpyStorage(), get_session_key=lambda ctx: ctx.from_id)  # type: ignore[arg-type,return-value]
    with pytest.raises(SessionKeyError, match="must return a str or None, not int"):
        run(mw, message(), lambda ctx: None)


def test_prefix_goes_before_every_key() -> None:
    storage = SpyStorage()
    ctx = run(session(initial=lambda: {"count": 0}, storage=storage, prefix="bot1:"), message(chat_id=5), bump)
    assert ctx.session_key == "bot1:5"
    assert list(storage.keys()) == ["bot1:5"]


# -- 3. write-back only on change -----------------------------------------------------


def test_read_only_handler_writes_nothing() -> None:
    storage = SpyStorage()
    storage.write("42", {"count": 3})
    storage.events.clear()
    seen: list[int] = []
    run(
        session(initial=lambda: {"count": 0}, storage=storage), message(), lambda ctx: seen.append(ctx.session["count"])
    )
    assert seen == [3]
    assert storage.count("read") == 1
    assert storage.count("write") == 0


def test_untouched_initial_creates_no_file(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    run(session(initial=lambda: {"count": 0}, storage=storage), message(), lambda ctx: ctx.session)
    assert list(storage.keys()) == []
    assert not any(p.suffix == ".json" for p in tmp_path.rglob("*"))


def test_changed_session_is_written_once() -> None:
    storage = SpyStorage()
    mw = session(initial=lambda: {"count": 0}, storage=storage)
    run(mw, message(), bump)
    run(mw, message(), bump)
    assert storage.count("write") == 2
    assert storage.read("42") == {"count": 2}


def test_replacing_the_session_object_is_written() -> None:
    storage = SpyStorage()
    mw = session(initial=lambda: {"count": 0}, storage=storage)

    def handler(ctx: Context) -> None:
        ctx.session = {"fresh": [1, 2]}

    run(mw, message(), handler)
    assert storage.read("42") == {"fresh": [1, 2]}


def test_non_json_session_is_refused_with_its_place_and_stored_value_kept() -> None:
    storage = SpyStorage()
    storage.write("42", {"count": 1})
    storage.events.clear()
    mw = session(initial=lambda: {"count": 0}, storage=storage)

    def handler(ctx: Context) -> None:
        ctx.session["tags"] = {"a", "b"}

    with pytest.raises(SessionDataError, match=r"session\['tags'\] is a set"):
        run(mw, message(), handler)
    assert storage.events[-1] == ("unlock", "42")
    assert storage.count("write") == 0
    assert storage.read("42") == {"count": 1}


# -- 4. None deletes -------------------------------------------------------------------


def test_assigning_none_deletes_the_stored_session() -> None:
    storage = SpyStorage()
    storage.write("42", {"count": 9})
    mw = session(initial=lambda: {"count": 0}, storage=storage)

    def handler(ctx: Context) -> None:
        ctx.session = None

    run(mw, message(), handler)
    assert storage.count("delete") == 1
    assert not storage.has("42")
    ctx = run(mw, message(), lambda ctx: None)
    assert ctx.session == {"count": 0}


def test_assigning_none_to_a_new_session_deletes_nothing() -> None:
    storage = SpyStorage()

    def handler(ctx: Context) -> None:
        ctx.session = None

    run(session(initial=dict, storage=storage), message(), handler)
    assert storage.count("delete") == 0
    assert storage.count("write") == 0


# -- 5. a raising handler --------------------------------------------------------------


def test_raising_handler_writes_nothing_and_releases_the_lock() -> None:
    storage = SpyStorage(lock_timeout=0.5)
    storage.write("42", {"count": 1})
    storage.events.clear()
    mw = session(initial=lambda: {"count": 0}, storage=storage)

    def handler(ctx: Context) -> None:
        ctx.session["count"] = 100
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run(mw, message(), handler)
    assert storage.count("write") == 0
    assert storage.read("42") == {"count": 1}
    assert storage.events[-2] == ("unlock", "42")
    got: list[str] = []

    def take_lock() -> None:
        with storage.lock("42"):
            got.append("locked")

    thread = threading.Thread(target=take_lock)
    thread.start()
    thread.join(5)
    assert got == ["locked"]


# -- 6. lock held from load to write-back ----------------------------------------------


def test_lock_is_held_from_load_to_write_back() -> None:
    storage = SpyStorage(lock_timeout=0.1)
    mw = session(initial=lambda: {"count": 0}, storage=storage)
    contender: list[str] = []

    def handler(ctx: Context) -> None:
        bump(ctx)

        def try_lock() -> None:
            try:
                with storage.lock("42"):
                    contender.append("got it")
            except LockTimeout:
                contender.append("timed out")

        thread = threading.Thread(target=try_lock)
        thread.start()
        thread.join(5)

    run(mw, message(), handler)
    assert contender == ["timed out"]
    kinds = [event for event, _ in storage.events]
    assert kinds[:2] == ["lock", "read"]
    assert kinds[-2:] == ["write", "unlock"]


def test_storage_without_lock_still_works() -> None:
    plain = PlainStorage()
    run(session(initial=lambda: {"count": 0}, storage=plain), message(), bump)
    assert plain.values == {"42": {"count": 1}}


def test_storage_without_the_three_methods_is_refused() -> None:
    with pytest.raises(TypeError, match="read, write and delete"):
        session(storage={})  # type: ignore[arg-type]


# -- 10. lazy sessions -----------------------------------------------------------------


def test_lazy_session_untouched_does_no_io_and_takes_no_lock() -> None:
    storage = SpyStorage()
    run(lazy_session(initial=lambda: {"count": 0}, storage=storage), message(), lambda ctx: None)
    assert storage.events == []


def test_lazy_session_loads_on_first_touch_and_writes_back() -> None:
    storage = SpyStorage()
    mw = lazy_session(initial=lambda: {"count": 0}, storage=storage)
    order: list[str] = []

    def handler(ctx: Context) -> None:
        order.append(f"before:{len(storage.events)}")
        bump(ctx)
        bump(ctx)

    run(mw, message(), handler)
    assert order == ["before:0"]
    assert [e for e, _ in storage.events] == ["lock", "read", "write", "unlock"]
    assert storage.read("42") == {"count": 2}


@pytest.mark.parametrize("multi", [False, True], ids=["single", "multi"])
def test_a_lazy_session_first_touched_after_its_update_is_refused_and_locks_nothing(
    tmp_path: Path, multi: bool
) -> None:
    storage = FileStorage(tmp_path, lock_timeout=0)
    options: dict[str, Any] = {"initial": lambda: {"count": 0}, "storage": storage, "lazy": True, "prefix": ""}
    mw = multi_session(chat=options) if multi else session(**options)

    def chat_session(ctx: Context) -> Any:
        return ctx.session.chat if multi else ctx.session

    kept = run(mw, message(), lambda ctx: None)  # a handler that keeps ctx for later
    with pytest.raises(SessionError, match="after its update had ended"):
        chat_session(kept)
    # Had it loaded, it would hold the chat's lock for ever: another thread could not get in.
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(run(mw, message(), lambda ctx: chat_session(ctx)["count"])))
    thread.start()
    thread.join(timeout=30)
    assert len(got) == 1


# -- 11. session_key -------------------------------------------------------------------


def test_session_key_without_middleware_is_a_clear_error() -> None:
    with pytest.raises(SessionError, match="install the middleware"):
        Context(message()).session  # noqa: B018


# -- multi sessions --------------------------------------------------------------------


def test_multi_fragments_have_their_own_storage_key_and_initial() -> None:
    users, chats = SpyStorage(), SpyStorage()
    mw = multi_session(
        user={
            "initial": lambda: {"name": "", "language": "en"},
            "storage": users,
            "get_session_key": lambda c: str(c.from_id),
        },
        chat={"initial": lambda: {"settings": {"muted": False}}, "storage": chats},
    )

    def handler(ctx: Context) -> None:
        ctx.session.user["name"] = "Ann"
        ctx.session.chat["settings"]["muted"] = True

    ctx = run(mw, message(chat_id=42, user_id=7), handler)
    assert ctx.session_key == {"user": "user:7", "chat": "chat:42"}
    assert users.read("user:7") == {"name": "Ann", "language": "en"}
    assert chats.read("chat:42") == {"settings": {"muted": True}}
    assert sorted(dir(ctx.session)) == ["chat", "user"]


def test_multi_fragments_can_share_one_storage_by_their_prefixes(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    mw = multi_session(
        a={"initial": lambda: {"n": 0}, "storage": storage}, b={"initial": lambda: {"n": 10}, "storage": storage}
    )

    def handler(ctx: Context) -> None:
        ctx.session.a["n"] += 1
        ctx.session.b["n"] += 1

    run(mw, message(chat_id=1), handler)
    assert sorted(storage.keys()) == ["a:1", "b:1"]
    assert storage.read("a:1") == {"n": 1}
    assert storage.read("b:1") == {"n": 11}


def test_multi_assigning_none_deletes_every_fragment() -> None:
    storage = SpyStorage()
    storage.write("a:42", {"x": 1})
    storage.write("b:42", {"y": 1})
    mw = multi_session(a={"storage": storage}, b={"storage": storage})

    def handler(ctx: Context) -> None:
        ctx.session = None

    run(mw, message(), handler)
    assert list(storage.keys()) == []


def test_multi_assigning_none_to_one_fragment_deletes_only_it() -> None:
    storage = SpyStorage()
    storage.write("a:42", {"x": 1})
    storage.write("b:42", {"y": 1})
    mw = multi_session(a={"storage": storage}, b={"storage": storage})

    def handler(ctx: Context) -> None:
        ctx.session.a = None

    run(mw, message(), handler)
    assert list(storage.keys()) == ["b:42"]


def test_multi_fragment_without_key_fails_alone() -> None:
    storage = SpyStorage()
    mw = multi_session(
        chat={"initial": lambda: {"n": 0}, "storage": storage},
        user={"initial": lambda: {"n": 0}, "storage": storage, "get_session_key": lambda c: None},
    )

    def handler(ctx: Context) -> None:
        ctx.session.chat["n"] += 1
        with pytest.raises(SessionKeyError):
            ctx.session.user  # noqa: B018

    run(mw, message(), handler)
    assert storage.read("chat:42") == {"n": 1}


def test_multi_unknown_fragment_and_bad_options_are_clear_errors() -> None:
    with pytest.raises(TypeError, match="unknown option"):
        multi_session(user={"initail": dict})
    with pytest.raises(TypeError, match="must be a dict"):
        multi_session(user=dict)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="initial must be a function"):
        multi_session(user={"initial": {}})
    mw = multi_session(user={"storage": SpyStorage()})
    with pytest.raises(AttributeError, match="no session fragment 'usr'"):
        run(mw, message(), lambda ctx: ctx.session.usr)


def test_multi_raising_handler_writes_no_fragment() -> None:
    storage = SpyStorage()
    mw = multi_session(a={"initial": dict, "storage": storage}, b={"initial": dict, "storage": storage})

    def handler(ctx: Context) -> None:
        ctx.session.a["x"] = 1
        ctx.session.b["y"] = 1
        raise RuntimeError("no")

    with pytest.raises(RuntimeError):
        run(mw, message(), handler)
    assert storage.count("write") == 0
    assert storage.count("lock") == storage.count("unlock") == 2


def test_multi_takes_locks_in_one_order_so_crossed_keys_never_deadlock() -> None:
    # Two fragments keyed by user and by chat in one storage, no prefixes: update A locks
    # keys "1" and "2", update B "2" and "1". Taken in fragment order they would deadlock.
    storage = SpyStorage(lock_timeout=2)
    barrier = threading.Barrier(2, timeout=0.3)
    first_lock = threading.local()

    def on_lock(key: str) -> None:
        if not getattr(first_lock, "done", False):
            first_lock.done = True
            # Make both updates hold a first lock at the same time (when order allows it).
            with contextlib.suppress(threading.BrokenBarrierError):
                barrier.wait()

    storage.on_lock = on_lock
    mw = multi_session(
        user={
            "initial": lambda: {"n": 0},
            "storage": storage,
            "prefix": "",
            "get_session_key": lambda c: str(c.from_id),
        },
        chat={"initial": lambda: {"n": 0}, "storage": storage, "prefix": ""},
    )
    errors: list[BaseException] = []

    def update(chat_id: int, user_id: int) -> None:
        def handler(ctx: Context) -> None:
            ctx.session.user["n"] += 1
            ctx.session.chat["n"] += 1

        try:
            run(mw, message(chat_id=chat_id, user_id=user_id), handler)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=update, args=(2, 1)), threading.Thread(target=update, args=(1, 2))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == []
    assert storage.read("1") == {"n": 2}
    assert storage.read("2") == {"n": 2}


# -- default storage and corrupt files -------------------------------------------------


def test_default_storage_is_a_file_storage_in_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMPLESESSION_DIR", str(tmp_path / "data"))
    mw = session(initial=lambda: {"count": 0})
    run(mw, message(chat_id=3), bump)
    assert FileStorage(tmp_path / "data").read("3") == {"count": 1}


def test_corrupt_session_file_gives_a_fresh_session_and_keeps_the_bytes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FileStorage(tmp_path)
    path = storage.path("42")
    path.parent.mkdir(parents=True)
    path.write_bytes(b'{"format": 1, "key": "42", "data": {"count": 5')
    mw = session(initial=lambda: {"count": 0}, storage=storage)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        ctx = run(mw, message(), bump)
    assert ctx.session == {"count": 1}
    assert storage.read("42") == {"count": 1}
    (kept,) = (tmp_path / "corrupt").iterdir()
    assert kept.read_bytes() == b'{"format": 1, "key": "42", "data": {"count": 5'
    assert any(r.levelno == logging.ERROR and "corrupt" in r.getMessage() for r in caplog.records)


# -- the built-in storages' direct way in ---------------------------------------------


@pytest.fixture
def replaced(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The files that writes replace, in order."""
    files: list[str] = []
    real_replace = os.replace

    def spy_replace(src: str, dst: str, **kwargs: Any) -> None:
        files.append(full_path(dst, kwargs.get("dst_dir_fd")))
        real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", spy_replace)
    return files


def test_file_storage_through_the_middleware_writes_only_changes(tmp_path: Path, replaced: list[str]) -> None:
    storage = FileStorage(tmp_path)
    mw = session(initial=lambda: {"count": 0}, storage=storage)
    run(mw, message(), bump)
    run(mw, message(), lambda ctx: ctx.session["count"])
    run(mw, message(), lambda ctx: ctx.session)
    run(mw, message(), bump)
    assert replaced == [str(storage.path("42"))] * 2
    assert FileStorage(tmp_path, cache_size=0).read("42") == {"count": 2}


def test_a_storage_subclass_that_overrides_read_is_honoured(tmp_path: Path) -> None:
    class Upgrading(FileStorage):
        def read(self, key: str) -> Any | None:
            old = super().read(key)
            return {**old, "premium": False} if old is not None and "premium" not in old else old

    storage = Upgrading(tmp_path)
    FileStorage(tmp_path).write("42", {"count": 1})
    ctx = run(session(initial=lambda: {"count": 0, "premium": False}, storage=storage), message(), bump)
    assert ctx.session == {"count": 2, "premium": False}
    assert FileStorage(tmp_path).read("42") == {"count": 2, "premium": False}


def test_reordering_a_sessions_keys_counts_as_a_change() -> None:
    storage = SpyStorage()
    storage.write("42", {"a": 1, "b": 2})
    storage.events.clear()

    def reorder(ctx: Context) -> None:
        ctx.session = {"b": 2, "a": 1}

    run(session(storage=storage), message(), reorder)
    assert storage.count("write") == 1
    stored: Any = storage.read("42")
    assert list(stored) == ["b", "a"]


@pytest.mark.parametrize("migrations", [None, {2: lambda value: value}], ids=["unversioned", "versioned"])
def test_a_session_read_from_its_file_and_left_alone_is_not_rewritten(
    tmp_path: Path, replaced: list[str], migrations: dict[Version, Callable[[Any], Any]] | None
) -> None:
    FileStorage(tmp_path).write(
        "42", {"count": 1, "name": "Zoë", "tags": ["a"]}, version=None if migrations is None else 2
    )
    replaced.clear()
    for cache_size in (1024, 0):  # a cold cache: the session comes from its file
        mw = session(storage=FileStorage(tmp_path, cache_size=cache_size), migrations=migrations)
        run(mw, message(), lambda ctx: ctx.session["tags"])
        run(mw, message(), lambda ctx: ctx.session["tags"])
    assert replaced == []
    run(session(storage=FileStorage(tmp_path), migrations=migrations), message(), bump)
    assert replaced == [str(FileStorage(tmp_path).path("42"))]


def test_a_hand_formatted_session_file_is_rewritten_only_when_changed(tmp_path: Path, replaced: list[str]) -> None:
    storage = FileStorage(tmp_path)
    path = storage.path("42")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"format": 1, "key": "42", "data": {"count": 1}}, indent=2), encoding="utf-8")
    seen = run(session(storage=storage), message(), lambda ctx: ctx.session["count"])
    assert seen.session == {"count": 1}
    assert replaced == []
    run(session(storage=FileStorage(tmp_path)), message(), bump)
    assert replaced == [str(path)]
    assert path.read_bytes() == b'{"format":1,"key":"42","data":{"count":2}}\n'


# -- any storage -------------------------------------------------------------------------------


def test_every_option_works_on_a_storage_written_with_only_the_hooks(caplog: pytest.LogCaptureFixture) -> None:
    # The middleware calls only what the base defines, so a new backend needs nothing here.
    storage = HookStorage()
    storage.write("42", {"count": 1})  # from before migrations
    mw = session(
        initial=lambda: {"count": 0, "premium": False},
        storage=storage,
        ttl=100,
        migrations={1: lambda old: {**old, "premium": False}},
        sweep_interval=0.001,
    )
    assert storage.ttl == 100  # the middleware's, given to a storage that had none
    assert run(mw, message(), bump).session == {"count": 2, "premium": False}
    assert storage.read_versioned("42") == ({"count": 2, "premium": False}, 1)
    run(mw, message(), lambda ctx: ctx.session["count"])  # only reads
    assert storage.read_versioned("42") == ({"count": 2, "premium": False}, 1)
    storage.write("7", {"count": -1, "premium": False}, version=1)

    def refuse(value: Any) -> None:
        if value["count"] < 0:
            raise ValueError("negative")

    checked = session(initial=lambda: {"count": 0}, storage=storage, validate=refuse, sweep_interval=None)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert run(checked, message(chat_id=7), lambda ctx: None).session == {"count": 0}
    assert storage.aside["7"]  # set aside, kept
    assert any("'7'" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    storage.clock += 200  # every session is idle now
    assert run(mw, message(), lambda ctx: None).session == {"count": 0, "premium": False}
    for _ in range(3):  # the automatic sweep, one slice an update
        time.sleep(0.002)
        run(mw, message(chat_id=99), lambda ctx: None)
    assert list(storage.keys()) == []
    seen: list[Any] = []
    run(lazy_session(storage=storage, initial=dict), message(), lambda ctx: seen.append(ctx.session))
    assert seen == [{}]
    assert run(mw, message(), bump).session == storage.read("42") == {"count": 1, "premium": False}


def test_threads_counting_one_chat_on_a_storage_of_your_own_lose_no_update() -> None:
    # A storage with only read, write and delete is locked per key within the process.
    plain = PlainStorage()
    mw = session(initial=lambda: {"count": 0}, storage=plain)

    def slow_bump(ctx: Context) -> None:
        count = ctx.session["count"]
        time.sleep(0.001)  # another thread's update would get in here
        ctx.session["count"] = count + 1

    def worker() -> None:
        for _ in range(25):
            run(mw, message(), slow_bump)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not any(thread.is_alive() for thread in threads)
    assert plain.values == {"42": {"count": 100}}
