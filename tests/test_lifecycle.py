"""TTL, the sweep, migrations, validation and the size limit."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
import types
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from helpers import PlainStorage, fork_python

import simplesession.storage.memory as memory_module
from simplesession import (
    Context,
    FileStorage,
    MemoryStorage,
    MigrationError,
    SessionDataError,
    lazy_session,
    session,
)
from simplesession.session import SessionMiddleware
from simplesession.storage.file import DEBRIS_AGE, LOCK_STRIPES, TEMP_PREFIX


def message(chat_id: int = 42, text: str = "/count", update_id: int = 1) -> dict[str, Any]:
    return {"update_id": update_id, "message": {"message_id": 1, "chat": {"id": chat_id}, "text": text}}


def run(mw: SessionMiddleware, handler: Callable[[Context], object], chat_id: int = 42) -> Context:
    ctx = Context(message(chat_id))
    mw(ctx, lambda: handler(ctx))
    return ctx


def age(path: Path, seconds: float) -> None:
    """Make a file look last used ``seconds`` ago."""
    then = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(then, then))


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


# -- TTL --------------------------------------------------------------------------------


def test_file_session_idle_longer_than_ttl_reads_as_missing_before_any_sweep(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, ttl=60)
    storage.write("old", {"v": 1})
    storage.write("new", {"v": 2})
    assert storage.read("old") == {"v": 1}  # warm in the cache, too
    age(storage.path("old"), 61)
    assert storage.read("old") is None
    assert storage.read_versioned("old") is None
    assert not storage.has("old")
    assert list(storage.keys()) == ["new"]
    assert FileStorage(tmp_path, ttl=60).read("old") is None
    assert storage.path("old").exists()  # reading never deletes; the sweep does
    assert FileStorage(tmp_path).read("old") == {"v": 1}  # without a ttl it is still there


def test_reading_keeps_a_file_session_alive_without_rewriting_it(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, ttl=100)
    storage.write("k", {"v": 1})
    path = storage.path("k")
    before = path.stat()
    age(path, 50)
    assert storage.read("k") == {"v": 1}
    after = path.stat()
    assert after.st_ino == before.st_ino  # the same file: refreshed, not rewritten
    assert time.time() - after.st_mtime < 5
    age(path, 99)  # 99 s after that read: still alive
    assert storage.read("k") == {"v": 1}


def test_recent_reads_do_not_touch_the_file(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, ttl=1000)
    storage.write("k", 1)
    path = storage.path("k")
    age(path, 5)  # under 1 % of the ttl
    mtime = path.stat().st_mtime_ns
    for _ in range(3):
        assert storage.read("k") == 1
    assert path.stat().st_mtime_ns == mtime


def test_memory_session_expires_when_idle_and_reads_keep_it_alive(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = FakeClock()
    monkeypatch.setattr(memory_module, "time", clock)
    storage = MemoryStorage(ttl=timedelta(seconds=10))
    storage.write("read-often", 1)
    storage.write("idle", 2)
    for _ in range(5):
        clock.now += 6
        assert storage.read("read-often") == 1
    assert storage.read("idle") is None
    assert list(storage.keys()) == ["read-often"]
    assert storage.sweep().removed == 1


@pytest.mark.parametrize("bad", [0, -1, float("inf"), float("nan")])
def test_ttl_must_be_a_positive_duration(tmp_path: Path, bad: float) -> None:
    with pytest.raises(ValueError, match="ttl must be a positive duration"):
        FileStorage(tmp_path, ttl=bad)
    with pytest.raises(ValueError, match="ttl"):
        session(ttl=bad)


def test_ttl_of_the_wrong_type_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="ttl must be seconds"):
        MemoryStorage(ttl="30d")  # type: ignore[arg-type]


def test_session_ttl_is_the_storage_ttl() -> None:
    mw = session(ttl=timedelta(days=1))
    assert isinstance(mw.fragments[0].storage, FileStorage)
    assert mw.fragments[0].storage.ttl == 86400
    storage = MemoryStorage()
    session(ttl=30, storage=storage)
    assert storage.ttl == 30
    session(ttl=30, storage=storage)  # the same again is fine
    with pytest.raises(ValueError, match="conflicts"):
        session(ttl=60, storage=storage)

    with pytest.raises(TypeError, match="ttl needs a storage with expiry"):
        session(ttl=30, storage=PlainStorage())


def test_expired_session_starts_afresh_through_the_middleware(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    mw = session(initial=lambda: {"count": 0}, storage=storage, ttl=3600)

    def bump(ctx: Context) -> None:
        ctx.session["count"] += 1

    run(mw, bump)
    run(mw, bump)
    age(storage.path("42"), 3601)
    assert run(mw, bump).session == {"count": 1}


# -- the sweep ----------------------------------------------------------------------------


def make_sessions(storage: FileStorage, idle: int, live: int) -> int:
    size = 0
    for i in range(idle):
        storage.write(f"idle{i}", {"i": i})
        size += storage.path(f"idle{i}").stat().st_size
        age(storage.path(f"idle{i}"), 7200)
    for i in range(live):
        storage.write(f"live{i}", {"i": i})
    return size


def test_sweep_removes_idle_sessions_and_reports_figures(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    idle_bytes = make_sessions(storage, idle=30, live=20)
    report = storage.sweep(ttl=3600)
    assert (report.scanned, report.removed, report.bytes_freed, report.debris, report.in_use) == (
        50,
        30,
        idle_bytes,
        0,
        0,
    )
    assert sorted(storage.keys()) == sorted(f"live{i}" for i in range(20))
    assert storage.sweep(ttl=3600).removed == 0


def test_sweep_dry_run_removes_nothing(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    make_sessions(storage, idle=5, live=5)
    report = storage.sweep(ttl=3600, dry_run=True)
    assert (report.scanned, report.removed) == (10, 5)
    assert len(list(FileStorage(tmp_path).keys())) == 10


def test_sweep_uses_the_storage_ttl_and_without_one_keeps_sessions(tmp_path: Path) -> None:
    make_sessions(FileStorage(tmp_path), idle=3, live=1)
    assert FileStorage(tmp_path).sweep().removed == 0
    assert FileStorage(tmp_path, ttl=3600).sweep().removed == 3


def test_sweep_removes_debris_of_crashed_writers_and_stray_lock_files(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("k", 1)
    with storage.lock("k"):
        pass
    folder = storage.path("k").parent
    old_temp = folder / f"{TEMP_PREFIX}999-1"
    old_temp.write_bytes(b"half a write")
    age(old_temp, DEBRIS_AGE + 60)
    fresh_temp = folder / f"{TEMP_PREFIX}999-2"  # a write under way right now
    fresh_temp.write_bytes(b"{}")
    stray = tmp_path / ".locks" / f"{LOCK_STRIPES + 5:03x}.lock"
    stray.write_bytes(b"")
    (tmp_path / "corrupt").mkdir()
    (tmp_path / "corrupt" / "kept.json.20260101T000000Z-abc").write_bytes(b"kept")
    report = storage.sweep(ttl=3600)
    assert report.debris == 2
    assert report.bytes_freed == len(b"half a write")
    assert not old_temp.exists()
    assert not stray.exists()
    assert fresh_temp.exists()
    assert (tmp_path / "corrupt" / "kept.json.20260101T000000Z-abc").exists()
    assert len(list((tmp_path / ".locks").iterdir())) == 1
    assert storage.read("k") == 1


def test_sweep_keeps_an_idle_session_that_an_update_holds_locked(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    make_sessions(storage, idle=3, live=0)
    held = threading.Event()
    release = threading.Event()

    def holder() -> None:
        with storage.lock("idle1"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    assert held.wait(10)
    try:
        report = FileStorage(tmp_path).sweep(ttl=3600)
    finally:
        release.set()
        thread.join(10)
    assert (report.removed, report.in_use) == (2, 1)
    assert list(storage.keys()) == ["idle1"]


def test_sweep_keeps_a_session_written_after_it_was_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path)
    make_sessions(storage, idle=1, live=0)
    real_list = FileStorage._list

    def listing_then_a_write(self: FileStorage, *args: Any) -> Any:
        page = real_list(self, *args)  # the listing saw the session idle...
        if page:
            storage.write("idle0", {"i": "fresh"})  # ...then an update wrote it
        return page

    monkeypatch.setattr(FileStorage, "_list", listing_then_a_write)
    report = FileStorage(tmp_path).sweep(ttl=3600)
    monkeypatch.undo()
    assert (report.removed, report.in_use) == (0, 1)
    assert storage.read("idle0") == {"i": "fresh"}


def test_middleware_sweeps_in_slices_of_one_shard_per_update(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path, ttl=3600)
    make_sessions(storage, idle=40, live=0)
    for shard in range(256):  # a missing folder is not listed: let every slice list one
        (tmp_path / f"{shard:02x}").mkdir(mode=0o700, exist_ok=True)
    mw = session(initial=lambda: {"n": 0}, storage=storage, sweep_interval=0.001)
    listings: list[str] = []
    real_scandir = os.scandir

    def counting_scandir(path: Any) -> Any:
        listings.append(str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", counting_scandir)
    time.sleep(0.002)  # let the first pass fall due
    per_update: list[int] = []
    for _ in range(300):
        before = len(listings)
        run(mw, lambda ctx: ctx.session, chat_id=1)
        per_update.append(len(listings) - before)
        time.sleep(0.00001)
    monkeypatch.undo()
    assert max(per_update) <= 1  # no update pays for more than one slice
    assert sum(per_update) >= 257  # yet a whole pass got done
    assert list(storage.keys()) == []


def test_middleware_without_sweep_interval_never_sweeps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path, ttl=3600)
    make_sessions(storage, idle=3, live=0)
    mw = session(initial=dict, storage=storage, sweep_interval=None)
    for _ in range(50):
        run(mw, lambda ctx: None)
        time.sleep(0.0001)
    assert len(list(FileStorage(tmp_path).keys())) == 3  # the files are all still there
    assert FileStorage(tmp_path).sweep(ttl=3600).removed == 3


BOT = """
    import json, sys, time
    from simplesession import Bot, FileStorage, session

    directory, seconds = sys.argv[1], float(sys.argv[2])
    bot = Bot(output=open("/dev/null", "w"))
    bot.use(session(initial=lambda: {"count": 0}, storage=FileStorage(directory), ttl=1.0, sweep_interval=None))
    log = []

    @bot.command("count")
    def count(ctx):
        ctx.session["count"] += 1
        log.append([ctx.chat_id, ctx.session["count"]])

    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        for chat in range(10):
            n += 1
            bot.handle_update({"update_id": n, "message": {"message_id": n, "chat": {"id": chat}, "text": "/count"}})
        time.sleep(0.02)
    print(json.dumps(log))
"""

# Sweeps until its stdin closes (the bot is done), at most a minute.
SWEEPER = """
    import sys, threading, time
    from simplesession import FileStorage
    storage = FileStorage(sys.argv[1])
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()
    print("sweeping", flush=True)
    deadline = time.monotonic() + 60
    removed = 0
    while not done.is_set() and time.monotonic() < deadline:
        removed += storage.sweep(ttl=1.0).removed
    print(removed)
"""


def test_sweep_process_racing_a_bot_process_loses_no_live_session(tmp_path: Path) -> None:
    # Ten chats are updated every few milliseconds, so none is ever idle for the 1 s ttl;
    # ten more sessions are idle from the start. The sweeper must remove exactly those.
    storage = FileStorage(tmp_path)
    for i in range(10):
        storage.write(str(100 + i), {"count": 5})
        age(storage.path(str(100 + i)), 10)
    sweeper = fork_python(SWEEPER, str(tmp_path), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert sweeper.stdout is not None
    assert sweeper.stdout.readline() == "sweeping\n"  # so the bot's whole run (2 x the ttl) races it
    bot = fork_python(BOT, str(tmp_path), "2", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    bot_out, bot_err = bot.communicate(timeout=60)
    sweep_out, sweep_err = sweeper.communicate(timeout=60)
    assert bot.returncode == 0, bot_err
    assert sweeper.returncode == 0, sweep_err
    log = json.loads(bot_out)
    updates: dict[int, list[int]] = {}
    for chat, count in log:
        updates.setdefault(chat, []).append(count)
    assert sorted(updates) == list(range(10))
    for chat, counts in updates.items():
        assert counts == list(range(1, len(counts) + 1)), f"chat {chat} lost its session mid-run"
    final = FileStorage(tmp_path, cache_size=0)
    assert {k: final.read(k) for k in sorted(final.keys())} == {str(c): {"count": len(n)} for c, n in updates.items()}
    assert int(sweep_out) >= 10


# -- migrations ---------------------------------------------------------------------------


def file_doc(storage: FileStorage, key: str) -> dict[str, Any]:
    return json.loads(storage.path(key).read_text())  # type: ignore[no-any-return]


def test_migrations_run_in_numeric_order_from_the_stored_version(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"count": 3}, version=1)
    storage.write("7", {"count": 1})  # no version: the oldest
    calls: list[Any] = []

    def step(version: Any) -> Callable[[Any], Any]:
        def migrate(data: Any) -> Any:
            calls.append(version)
            return {**data, "steps": [*data.get("steps", []), version]}

        return migrate

    migrations = {10: step(10), 2: step(2), 1.5: step(1.5), 9: step(9), 1: step(1)}
    mw = session(initial=lambda: {"count": 0}, storage=storage, migrations=migrations)
    ctx = run(mw, lambda ctx: ctx.session)
    assert ctx.session == {"count": 3, "steps": [1.5, 2, 9, 10]}
    assert file_doc(storage, "42")["version"] == 10
    assert file_doc(storage, "42")["data"] == {"count": 3, "steps": [1.5, 2, 9, 10]}
    calls.clear()
    ctx = run(mw, lambda ctx: ctx.session, chat_id=7)
    assert calls == [1, 1.5, 2, 9, 10]
    assert file_doc(storage, "7")["version"] == 10
    calls.clear()
    run(mw, lambda ctx: ctx.session)
    run(mw, lambda ctx: ctx.session, chat_id=7)
    assert calls == []  # never migrated twice


def test_new_sessions_are_stored_at_the_newest_version(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    mw = session(initial=lambda: {"count": 0}, storage=storage, migrations={1: dict, 2.5: dict})

    def bump(ctx: Context) -> None:
        ctx.session["count"] += 1

    run(mw, bump)
    assert file_doc(storage, "42")["version"] == 2.5
    assert storage.read_versioned("42") == ({"count": 1}, 2.5)


def test_failing_migration_leaves_stored_data_untouched_and_names_the_version(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, lock_timeout=1)
    storage.write("42", {"count": 3}, version=1)
    before = storage.path("42").read_bytes()

    def broken(data: Any) -> Any:
        raise KeyError("premium")

    mw = session(initial=dict, storage=storage, migrations={1: dict, 2: lambda d: {**d, "a": 1}, 3: broken})
    with pytest.raises(MigrationError, match="migration to version 3 failed for session '42'") as info:
        run(mw, lambda ctx: None)
    assert info.value.version == 3
    assert info.value.key == "42"
    assert storage.path("42").read_bytes() == before
    with storage.lock("42"):  # released
        pass


def test_session_from_a_newer_schema_is_refused_not_mangled(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"count": 3}, version=7)
    mw = session(initial=dict, storage=storage, migrations={1: dict, 2: dict})
    with pytest.raises(MigrationError, match="version 7, newer"):
        run(mw, lambda ctx: None)
    assert storage.read_versioned("42") == ({"count": 3}, 7)


@pytest.mark.parametrize("bad", [{"2": dict}, {True: dict}, {float("nan"): dict}])
def test_migration_versions_must_be_numbers(bad: Any) -> None:
    with pytest.raises(TypeError, match="versions are numbers"):
        session(migrations=bad, storage=MemoryStorage())


def test_migrations_need_a_versioned_storage() -> None:
    with pytest.raises(TypeError, match="records versions"):
        session(migrations={1: dict}, storage=PlainStorage())
    with pytest.raises(TypeError, match="must be a function"):
        session(migrations={1: "upgrade"}, storage=MemoryStorage())  # type: ignore[dict-item]


def test_migrations_work_on_memory_storage() -> None:
    storage = MemoryStorage()
    storage.write("42", {"count": 3})
    mw = session(initial=dict, storage=storage, migrations={2: lambda d: {**d, "premium": False}})
    assert run(mw, lambda ctx: None).session == {"count": 3, "premium": False}
    assert storage.read_versioned("42") == ({"count": 3, "premium": False}, 2)


def test_the_seeds_migrating_adapter_works_as_written(tmp_path: Path) -> None:
    # The seed's pattern: a storage object of one's own whose read() upgrades old data.
    storage = FileStorage(tmp_path)
    storage.write("42", {"count": 5})

    class Migrating:
        def read(self, key: str) -> Any:
            old = storage.read(key)
            if old and "premium" not in old:
                return {**old, "premium": False}
            return old

        write = storage.write
        delete = storage.delete

    mw = session(initial=lambda: {"count": 0, "premium": False}, storage=Migrating())

    def bump(ctx: Context) -> None:
        ctx.session["count"] += 1

    assert run(mw, bump).session == {"count": 6, "premium": False}
    assert storage.read("42") == {"count": 6, "premium": False}


# -- validation ---------------------------------------------------------------------------


def test_validate_may_fix_the_loaded_data(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"count": "3"})

    def validate(data: Any) -> Any:
        return {**data, "count": int(data["count"])}

    ctx = run(session(initial=dict, storage=storage, validate=validate), lambda ctx: None)
    assert ctx.session == {"count": 3}
    assert storage.read("42") == {"count": 3}


def test_validate_returning_none_keeps_the_data_unwritten(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"count": 3})
    mtime = storage.path("42").stat().st_mtime_ns
    seen: list[Any] = []
    mw = session(initial=dict, storage=storage, validate=seen.append)
    assert run(mw, lambda ctx: None).session == {"count": 3}
    assert seen == [{"count": 3}]
    assert storage.path("42").stat().st_mtime_ns == mtime


def test_validation_failure_sets_the_data_aside_and_starts_afresh(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"count": -5})

    def validate(data: Any) -> None:
        if data["count"] < 0:
            raise ValueError("count is negative")

    mw = session(initial=lambda: {"count": 0}, storage=storage, validate=validate)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        ctx = run(mw, lambda ctx: None)
    assert ctx.session == {"count": 0}
    assert storage.read("42") is None
    (kept,) = (tmp_path / "corrupt").iterdir()
    assert json.loads(kept.read_text())["data"] == {"count": -5}
    (record,) = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert "count is negative" in record.getMessage()
    assert "'42'" in record.getMessage()


def test_validation_failure_on_memory_and_custom_storages_keeps_the_data(caplog: pytest.LogCaptureFixture) -> None:
    memory = MemoryStorage()
    memory.write("42", {"bad": True})

    def refuse(data: Any) -> None:
        raise ValueError("no")

    run(session(initial=dict, storage=memory, validate=refuse), lambda ctx: None)
    assert memory.set_aside_values == {"42": [{"bad": True}]}

    plain = PlainStorage({"42": {"bad": True}})
    run(session(initial=dict, storage=plain, validate=refuse), lambda ctx: None)
    (aside,) = plain.values
    assert aside.startswith("42~set-aside~")
    assert plain.values[aside] == {"bad": True}


# -- size ----------------------------------------------------------------------------------


def test_session_over_max_size_is_refused_and_nothing_stored(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"notes": "small"})
    mw = session(initial=dict, storage=storage, max_size=1000)

    def grow(ctx: Context) -> None:
        ctx.session["notes"] = "x" * 2000

    with pytest.raises(SessionDataError) as info:
        run(mw, grow)
    assert "2,012 bytes" in str(info.value)
    assert "max_size=1,000" in str(info.value)
    assert storage.read("42") == {"notes": "small"}


def test_session_over_half_max_size_logs_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    mw = session(initial=dict, storage=MemoryStorage(), max_size=1000)

    def grow(ctx: Context) -> None:
        ctx.session["notes"] = "x" * 600

    with caplog.at_level(logging.WARNING, logger="simplesession"):
        run(mw, grow)
    assert any("over half of max_size" in r.getMessage() for r in caplog.records)


def test_max_size_none_leaves_the_storages_limit_and_bad_values_are_refused() -> None:
    def grow(ctx: Context) -> None:
        ctx.session["notes"] = "x" * (2 << 20)

    with pytest.raises(SessionDataError, match=r"over the storage's max_size=1,048,576"):
        run(session(initial=dict, storage=MemoryStorage(), max_size=None), grow)
    storage = MemoryStorage(max_size=4 << 20)
    run(session(initial=dict, storage=storage, max_size=None), grow)
    stored: Any = storage.read("42")
    assert len(stored["notes"]) == 2 << 20
    run(session(initial=dict, storage=PlainStorage(), max_size=None), grow)  # a storage of your own: no limit
    for bad in (0, -1, 1.5, "1MB"):
        with pytest.raises(ValueError, match="max_size"):
            session(max_size=bad, storage=storage)  # type: ignore[arg-type]


def test_default_max_size_is_one_mebibyte() -> None:
    mw = lazy_session(initial=dict, storage=MemoryStorage())
    assert mw.fragments[0].max_size == 1 << 20


def test_the_middleware_sweeps_hourly_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path, ttl=60)
    make_sessions(storage, idle=2, live=0)
    clock = [time.monotonic()]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], strftime=time.strftime, gmtime=time.gmtime)
    monkeypatch.setattr(sys.modules["simplesession.session"], "time", fake_time)
    mw = session(initial=dict, storage=storage)
    clock[0] += 3599
    for _ in range(300):
        run(mw, lambda ctx: None)
    assert storage.path("idle0").exists()  # not yet an hour: nothing swept
    clock[0] += 2
    for _ in range(300):
        clock[0] += 10
        run(mw, lambda ctx: None)
    assert not storage.path("idle0").exists()
    assert not storage.path("idle1").exists()
