"""The storage contract, run against every adapter."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import make_idle
from hookstorage import HookStorage

from simplesession import (
    FileStorage,
    LockTimeout,
    MemoryStorage,
    PostgresStorage,
    RedisStorage,
    SessionDataError,
    SQLiteStorage,
    Storage,
    data,
)
from simplesession.storage.locks import Holder

VALUES: list[Any] = [
    {"count": 0},
    {"nested": {"list": [1, 2.5, "three", True, None, {"deep": []}]}},
    [1, "two", [3]],
    "just a string",
    "Ünïcödé ✓ 🐍 中文",
    0,
    -(2**70),
    3.141592653589793,
    1e-300,
    True,
    False,
    {},
    [],
    "",
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_written_value_reads_back_equal(storage: Storage, value: Any) -> None:
    storage.write("chat", value)
    got = storage.read("chat")
    assert got == value
    assert type(got) is type(value)


def test_missing_key_reads_as_none(storage: Storage) -> None:
    assert storage.read("nobody") is None
    assert not storage.has("nobody")


def test_write_replaces_previous_value(storage: Storage) -> None:
    storage.write("k", {"v": 1})
    storage.write("k", {"v": 2})
    assert storage.read("k") == {"v": 2}


def test_delete_removes_and_missing_delete_is_fine(storage: Storage) -> None:
    storage.write("k", {"v": 1})
    storage.delete("k")
    assert storage.read("k") is None
    assert not storage.has("k")
    storage.delete("k")
    storage.delete("never-there")


def test_writing_none_deletes(storage: Storage) -> None:
    storage.write("k", [1])
    storage.write("k", None)
    assert not storage.has("k")
    assert list(storage.keys()) == []


def test_has_tracks_writes_and_deletes(storage: Storage) -> None:
    assert not storage.has("k")
    storage.write("k", 0)
    assert storage.has("k")


def test_keys_lists_every_stored_key_once(storage: Storage) -> None:
    keys = [str(i) for i in range(50)] + ["user:1", "Chat", "chat"]
    for key in keys:
        storage.write(key, {"k": key})
    storage.delete("7")
    listed = list(storage.keys())
    assert sorted(listed) == sorted(k for k in keys if k != "7")
    assert len(listed) == len(set(listed))


def test_mutating_a_written_value_does_not_change_storage(storage: Storage) -> None:
    value: Any = {"items": [1, 2], "inner": {"a": 1}}
    storage.write("k", value)
    value["items"].append(3)
    value["inner"]["a"] = 99
    value["new"] = True
    assert storage.read("k") == {"items": [1, 2], "inner": {"a": 1}}


def test_mutating_a_read_value_does_not_change_storage(storage: Storage) -> None:
    storage.write("k", {"items": [1, 2], "inner": {"a": 1}})
    got: Any = storage.read("k")
    got["items"].append(3)
    got["inner"]["a"] = 99
    assert storage.read("k") == {"items": [1, 2], "inner": {"a": 1}}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"items": [1, 2, object()]}, "session['items'][2]"),
        ({"t": (1, 2)}, "session['t']"),
        ({"a": {1: "x"}}, "session['a']"),
        ({"s": {1, 2}}, "session['s']"),
        ({"f": float("nan")}, "session['f']"),
        ({"f": [float("inf")]}, "session['f'][0]"),
        ({"b": b"bytes"}, "session['b']"),
        ({"u": "lone \udc80 surrogate"}, "session['u']"),
    ],
)
def test_non_json_data_is_refused_and_stored_value_kept(storage: Storage, value: Any, where: str) -> None:
    storage.write("k", {"ok": 1})
    with pytest.raises(SessionDataError) as info:
        storage.write("k", value)
    assert isinstance(info.value, TypeError)
    assert where in str(info.value)
    assert "'k'" in str(info.value)
    assert info.value.key == "k"
    assert info.value.where == where
    assert storage.read("k") == {"ok": 1}


def test_subclasses_of_json_types_are_refused(storage: Storage) -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    with pytest.raises(SessionDataError, match=r"session\['c'\]"):
        storage.write("k", {"c": Color.RED})
    assert storage.read("k") is None


def test_non_string_key_is_refused(storage: Storage) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        storage.write(42, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str"):
        storage.read(42)  # type: ignore[arg-type]


def test_lock_is_reentrant_in_one_thread(storage: Storage) -> None:
    with storage.lock("k"), storage.lock("k"):
        storage.write("k", 1)
    assert storage.read("k") == 1


def test_lock_excludes_another_thread_until_released(storage: Storage) -> None:
    storage.lock_timeout = 0.2
    outcome: list[str] = []

    def contender() -> None:
        try:
            with storage.lock("k"):
                outcome.append("acquired")
        except LockTimeout as exc:
            outcome.append(f"timeout: {exc}")

    with storage.lock("k"):
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join(10)
    assert len(outcome) == 1
    assert outcome[0].startswith("timeout: ")
    assert "'k'" in outcome[0]

    thread = threading.Thread(target=contender)
    thread.start()
    thread.join(10)
    assert outcome[1] == "acquired"


def test_lock_timeout_is_a_timeout_and_a_storage_error(storage: Storage) -> None:
    storage.lock_timeout = 0.05
    caught: list[BaseException] = []

    def contender() -> None:
        try:
            with storage.lock("k"):
                pass
        except BaseException as exc:
            caught.append(exc)

    with storage.lock("k"):
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join(10)
    (error,) = caught
    assert isinstance(error, LockTimeout)
    assert isinstance(error, TimeoutError)
    assert error.key == "k"
    assert error.timeout == 0.05


def test_other_keys_stay_free_while_one_is_locked(storage: Storage) -> None:
    storage.lock_timeout = 2
    done = threading.Event()

    def other() -> None:
        with storage.lock("other-key"):
            storage.write("other-key", 1)
        done.set()

    with storage.lock("k"):
        thread = threading.Thread(target=other)
        thread.start()
        assert done.wait(10)
        thread.join(10)
    assert storage.read("other-key") == 1


def test_four_threads_of_locked_increments_lose_no_update(storage: Storage) -> None:
    def worker() -> None:
        for _ in range(250):
            with storage.lock("counter"):
                value = storage.read("counter") or {"n": 0}
                value["n"] += 1
                storage.write("counter", value)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert storage.read("counter") == {"n": 1000}


# -- versions ------------------------------------------------------------------------------


def test_versions_are_kept_beside_the_value_with_their_type(storage: Storage) -> None:
    assert storage.records_versions
    storage.write("k", {"a": 1}, version=2)
    assert storage.read_versioned("k") == ({"a": 1}, 2)
    storage.write("k", {"a": 2}, version=1.5)
    found = storage.read_versioned("k")
    assert found == ({"a": 2}, 1.5)
    assert type(found[1]) is float
    storage.write("k", {"a": 3})
    assert storage.read_versioned("k") == ({"a": 3}, None)
    assert storage.read_versioned("nobody") is None


@pytest.mark.parametrize("version", [True, "2", float("nan"), float("inf"), [1]], ids=repr)
def test_a_version_that_is_not_a_finite_number_is_refused_and_the_value_kept(storage: Storage, version: Any) -> None:
    storage.write("k", {"a": 1}, version=1)
    with pytest.raises(TypeError, match="version"):
        storage.write("k", {"a": 2}, version=version)
    assert storage.read_versioned("k") == ({"a": 1}, 1)


# -- setting aside -------------------------------------------------------------------------


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("simplesession")]


def test_set_aside_keeps_the_value_out_of_reach_logs_and_the_key_starts_afresh(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    storage.write("k", {"a": 1})
    storage.write("other", 1)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        where = storage.set_aside("k", "a test refused it")
    assert where
    assert storage.read("k") is None
    assert not storage.has("k")
    assert list(storage.keys()) == ["other"]
    [message] = errors_logged(caplog)
    assert "'k'" in message
    assert "a test refused it" in message
    assert where in message
    assert storage.set_aside("k", "again") is None  # nothing left to move
    storage.write("k", {"a": 2})
    assert storage.read("k") == {"a": 2}


HOSTILE_DOCUMENTS = {
    "not-json": b"{not json",
    "empty": b"",
    "not-a-document": b"[1, 2]",
    "no-data": b'{"format":1,"key":"k"}',
    "another-key": b'{"format":1,"key":"other","data":{"n":1}}',
    "another-format": b'{"format":99,"key":"k","data":{"n":1}}',
    "bad-version": b'{"format":1,"key":"k","version":"2","data":{"n":1}}',
    "huge-version": b'{"format":1,"key":"k","version":' + b"9" * 400 + b',"data":{"n":1}}\n',
    "too-deep": b'{"format":1,"key":"k","data":' + b"[" * 300 + b"]" * 300 + b"}",
    "lone-surrogate": b'{"format":1,"key":"k","data":{"name":"\\ud800"}}',
    "lone-surrogate-key": b'{"format":1,"key":"k","data":{"\\udfff":1}}',
    "infinite": b'{"format":1,"key":"k","data":{"n":1e400}}',
    "nan": b'{"format":1,"key":"k","data":{"n":NaN}}',
}


@pytest.mark.parametrize("document", list(HOSTILE_DOCUMENTS.values()), ids=list(HOSTILE_DOCUMENTS))
def test_a_stored_value_that_breaks_the_rules_of_writing_is_set_aside_and_the_key_starts_afresh(
    storage: Storage, document: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    # What another writer, a hand edit or an older release left: read by the rules of writing.
    storage.write("k", {"n": 0})
    assert storage.read("k") == {"n": 0}  # now in the cache, where there is one
    storage._put("k", document)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("k") is None
        assert not storage.has("k")
        assert storage.read_for_session("k") is None
    [message] = errors_logged(caplog)
    assert "'k'" in message
    assert "k" not in list(storage.keys())
    storage.write("k", {"n": 2})  # the chat goes on
    assert storage.read("k") == {"n": 2}


def test_a_storage_refuses_a_write_over_its_max_size_and_keeps_the_value(storage: Storage) -> None:
    assert storage.max_size == data.DEFAULT_MAX_SIZE
    storage.write("k", {"n": 1})
    with pytest.raises(SessionDataError, match=r"over the storage's max_size=1,048,576") as info:
        storage.write("k", "x" * 2 * data.DEFAULT_MAX_SIZE)
    assert info.value.key == "k"
    assert "nothing was stored" in str(info.value)
    with pytest.raises(SessionDataError, match="max_size"):
        storage.write_for_session("k", "x" * data.DEFAULT_MAX_SIZE, data.encode("x" * data.DEFAULT_MAX_SIZE), None)
    assert storage.read("k") == {"n": 1}


def test_a_storage_told_not_to_set_aside_reports_a_corrupt_value_and_leaves_it_where_it_is(
    storage: Storage, caplog: pytest.LogCaptureFixture
) -> None:
    storage.write("k", {"n": 0})
    assert storage.set_aside_corrupt  # by default a read moves it
    storage.set_aside_corrupt = False  # as a backup reads
    storage._put("k", b"{not json")
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("k") is None
    [message] = errors_logged(caplog)
    assert "'k'" in message
    assert "left it" in message
    assert storage._get("k") is not None  # still there
    assert "k" in list(storage.keys())
    storage.set_aside("k", "asked for")  # an explicit call moves it all the same
    assert storage._get("k") is None


# -- ttl and the sweep ---------------------------------------------------------------------


def test_ttl_a_session_idle_longer_reads_as_missing_and_reads_keep_it_alive(storage: Storage) -> None:
    storage.ttl = 100
    storage.write("read-often", 1)
    storage.write("idle", 2)
    make_idle(storage, "read-often", 60)
    assert storage.read("read-often") == 1  # resets its idle clock
    make_idle(storage, "idle", 101)
    make_idle(storage, "read-often", 60)
    assert storage.read("read-often") == 1
    assert storage.read("idle") is None
    assert not storage.has("idle")
    assert list(storage.keys()) == ["read-often"]


def test_a_ttl_that_is_not_a_positive_duration_is_refused(storage: Storage) -> None:
    for bad in (0, -1, float("nan"), float("inf"), True):
        with pytest.raises((ValueError, TypeError)):
            storage.ttl = bad
    assert storage.ttl is None
    storage.ttl = timedelta(minutes=1)
    assert storage.ttl == 60.0


def test_use_ttl_gives_a_storage_the_middlewares_ttl_unless_it_has_another(storage: Storage) -> None:
    storage.use_ttl(None, "session()")
    assert storage.ttl is None
    storage.use_ttl(30.0, "session()")
    assert storage.ttl == 30.0
    storage.use_ttl(30.0, "session()")
    with pytest.raises(ValueError, match=r"session\(\): ttl=60.0 conflicts with the storage's own ttl=30.0"):
        storage.use_ttl(60.0, "session()")


def test_sweep_removes_idle_sessions_keeps_fresh_and_held_ones(storage: Storage) -> None:
    storage.ttl = 100
    for key in ("idle", "held", "fresh"):
        storage.write(key, {"k": key})
    make_idle(storage, "idle", 150)
    make_idle(storage, "held", 150)
    storage.write("fresh", {"k": "fresh"})  # used since
    with storage.lock("held", holder=Holder("an update")):
        preview = storage.sweep(ttl=100, dry_run=True)
        report = storage.sweep()
    if storage.expires_by_itself:
        # The place expired the idle ones itself; the sweep only counts what is left.
        assert (report.removed, report.in_use) == (0, 0)
        assert report.scanned == preview.scanned == 1
        assert sorted(storage.keys()) == ["fresh"]
        return
    assert (preview.scanned, preview.removed, preview.in_use) == (3, 1, 1)
    assert (report.scanned, report.removed, report.in_use) == (3, 1, 1)
    assert report.bytes_freed > 0
    assert sorted(storage.keys()) == ["fresh"]  # held reads as missing, idle as it is
    assert storage.read("fresh") == {"k": "fresh"}
    assert storage.sweep(ttl=1000).removed == 0  # held's turn comes when no update holds it
    assert storage.sweep().removed == 1


def test_sweep_runs_in_slices_and_reports_its_progress(storage: Storage) -> None:
    storage.write("a", 1)
    slices = list(storage.sweep_slices())
    assert len(slices) == storage.sweep_size
    assert sum(part.scanned for part in slices) == 1
    seen: list[tuple[int, int]] = []
    report = storage.sweep(progress=lambda done, total: seen.append((done, total)))
    assert report.scanned == 1
    assert report.removed == 0  # no ttl: sessions are kept
    assert seen[-1] == (storage.sweep_size, storage.sweep_size)
    assert [done for done, _ in seen] == list(range(1, storage.sweep_size + 1))
    assert storage.read("a") == 1


# -- what a storage reports ----------------------------------------------------------------


def test_stats_count_the_sessions_and_their_bytes(storage: Storage) -> None:
    before = time.time()
    for key in ("a", "b", "c"):
        storage.write(key, {"key": key})
    stats = storage.stats()
    assert stats.sessions == 3
    sizes = [info.size for info in map(storage.describe, "abc") if info is not None]
    assert stats.bytes == sum(sizes) > 0
    if not storage.expires_by_itself:
        assert stats.oldest is not None
        assert stats.newest is not None
        assert before - 1 <= stats.oldest <= stats.newest <= time.time() + 1
    assert all(isinstance(figure.name, str) for figure in stats.details)


def test_a_store_in_the_current_layout_has_nothing_to_upgrade_and_keeps_every_session(storage: Storage) -> None:
    storage.write("a", {"n": 1}, version=2)
    storage.write("b", [1])
    assert storage.upgrade(dry_run=True) == (0, 0)
    assert storage.upgrade() == (0, 0)
    assert sorted(storage.keys()) == ["a", "b"]
    assert storage.read_versioned("a") == ({"n": 1}, 2)


def test_describe_says_where_a_session_is_and_what_it_takes(storage: Storage) -> None:
    assert storage.describe("k") is None
    storage.ttl = 3600
    storage.write("k", {"a": 1})
    info = storage.describe("k")
    assert info is not None
    assert info.where == storage.where("k")
    assert info.size > len('{"a":1}')
    now = time.time()
    if storage.expires_by_itself:
        assert info.used is None
    else:
        assert info.used is not None
        assert now - 5 < info.used <= now + 1
    assert info.expires is not None
    assert now + 3600 - 5 < info.expires <= now + 3600 + 1


def test_a_storage_says_where_it_is(storage: Storage, tmp_path: Path) -> None:
    storage.write("k", 1)
    assert storage.missing() is None
    assert storage.location
    assert storage.where("k")
    assert isinstance(storage.kind, str)
    assert isinstance(storage.expires_by_itself, bool)
    about = storage.about()
    assert about
    assert all(isinstance(figure.name, str) for figure in about)
    path = storage.path("k")
    assert (path is not None) == isinstance(storage, FileStorage)
    if path is not None:
        assert path.is_file()
        assert str(path) == storage.where("k")


# -- locks ---------------------------------------------------------------------------------


def test_lock_names_are_the_same_for_a_key_and_order_locks(storage: Storage) -> None:
    assert storage.lock_name("k") == storage.lock_name("k") == storage.lock("k").name
    assert isinstance(storage.lock_name("k"), str)
    names = {storage.lock_name(str(i)) for i in range(50)}
    assert len(names) > 1


def test_lock_timeout_is_checked_and_can_be_given_per_lock(storage: Storage) -> None:
    bad_timeouts: list[Any] = [-1, "1", True, float("nan")]
    for bad in bad_timeouts:
        with pytest.raises(ValueError, match="lock_timeout"):
            storage.lock_timeout = bad
        with pytest.raises(ValueError, match="lock_timeout"):
            storage.lock("k", timeout=bad)
    storage.lock_timeout = 30
    with storage.lock("k", holder=Holder("first")):
        start = time.monotonic()
        with pytest.raises(LockTimeout), storage.lock("k", timeout=0, holder=Holder("second")):
            pass
        assert time.monotonic() - start < 5


def test_two_holders_in_one_thread_exclude_each_other(storage: Storage) -> None:
    first, second = Holder("first"), Holder("second")
    with storage.lock("k", holder=first):
        with storage.lock("k", holder=first):  # re-entry of one holder only counts
            pass
        with pytest.raises(LockTimeout), storage.lock("k", timeout=0.05, holder=second):
            pass
    with storage.lock("k", timeout=0, holder=second):
        pass


def test_a_lock_taken_in_one_thread_can_be_released_in_another(storage: Storage) -> None:
    lock = storage.lock("k", timeout=1)
    lock.__enter__()
    released = threading.Thread(target=lock.__exit__, args=(None, None, None))
    released.start()
    released.join(10)
    # Free again for every other holder: this thread's, and another thread's.
    with storage.lock("k", timeout=0):
        pass
    outcome: list[str] = []

    def take() -> None:
        with storage.lock("k", timeout=1):
            outcome.append("taken")

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    assert outcome == ["taken"]


def test_coroutines_with_holders_of_their_own_lose_no_update(storage: Storage) -> None:
    # One event loop: each coroutine waits for the lock in a worker thread, and gives it
    # back from the loop's thread.
    async def increment() -> None:
        lock = storage.lock("counter", timeout=30, holder=Holder())
        await asyncio.to_thread(lock.__enter__)
        try:
            value = storage.read("counter") or 0
            await asyncio.sleep(0.001)
            storage.write("counter", value + 1)
        finally:
            lock.__exit__(None, None, None)

    async def main() -> None:
        await asyncio.gather(*(increment() for _ in range(20)))

    asyncio.run(main())
    assert storage.read("counter") == 20


# -- the session middleware's way in -------------------------------------------------------


def test_what_the_middleware_writes_it_reads_back_with_its_json_as_a_private_copy(storage: Storage) -> None:
    assert storage.read_for_session("k") is None
    value: dict[str, Any] = {"items": [1, 2], "name": "Zoë"}
    raw = data.encode(value)
    storage.write_for_session("k", data.check_copy(value), raw, 3)  # the middleware hands over its own copy
    got = storage.read_for_session("k", versions=True)
    assert got == (value, 3, raw)
    assert got is not None
    got[0]["items"].append(3)
    assert storage.read_versioned("k") == (value, 3)
    assert storage.read_for_session("k") == (value, 3, raw)


# -- one interface -------------------------------------------------------------------------

BACKEND_EXTRAS = {
    FileStorage: {"directory", "fsync"},
    MemoryStorage: {"set_aside_values"},
    RedisStorage: {"client", "server", "prefix", "lock_expiry"},
    HookStorage: {"clock", "aside"},
    SQLiteStorage: set(),
    PostgresStorage: {"server", "table", "lock_expiry"},
}


def test_close_gives_back_what_a_storage_keeps_open_once_or_twice(storage_with: Any) -> None:
    with storage_with() as storage:  # closed at the end of the block
        storage.write("k", 1)
        assert storage.read("k") == 1
    storage.close()


def test_every_member_of_the_base_is_tried_here_on_every_storage() -> None:
    # As cachelib's interface test: the contract is the base's, and this file tries all of it.
    members = {name for name in dir(Storage) if not name.startswith("_")}
    source = Path(__file__).read_text("utf-8")
    untried = sorted(name for name in members if f".{name}" not in source)
    assert untried == []


@pytest.mark.parametrize("cls", list(BACKEND_EXTRAS), ids=lambda cls: cls.__name__)
def test_a_backend_adds_no_public_method_to_the_base(cls: type[Storage], tmp_path: Path) -> None:
    # So what the middleware and the command line can call is what the base defines.
    extra = {name for name in dir(cls) if not name.startswith("_")} - set(dir(Storage))
    assert extra <= BACKEND_EXTRAS[cls]
    assert not any(callable(getattr(cls, name, None)) for name in extra)


def test_restore_keeps_the_version_and_the_idle_clock_it_is_given(storage_with: Any) -> None:
    # What a copy between stores relies on: the session expires when it would have where it was.
    day = 86400.0
    storage = storage_with(ttl=30 * day)
    used = time.time() - 3 * day
    storage.restore("moved", {"n": 1}, version=2, used=used)
    storage.restore("fresh", {"n": 2})
    for key, when in (("moved", used), ("fresh", time.time())):
        info = storage.describe(key)  # which, unlike a read, leaves the clock alone
        assert info is not None
        # Places that expire sessions themselves report the expiry instead of the last use.
        last = info.used if info.used is not None else info.expires - 30 * day
        assert abs(last - when) < 60, key
    assert storage.read_versioned("moved") == ({"n": 1}, 2)
    storage.restore("moved", None)
    assert storage.read("moved") is None
