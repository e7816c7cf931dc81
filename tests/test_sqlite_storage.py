"""SQLiteStorage in one process: what the file holds, where it is, what it trusts, and damage.

The contract every storage keeps is in test_storage_contract.py (parametrised over it);
real processes, kills and forks are in test_sqlite_processes.py.
"""

from __future__ import annotations

import contextlib
import gc
import io
import json
import logging
import os
import shutil
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import sqlite_idle
from helpers import run_python

from simplesession import (
    Bot,
    Context,
    LockTimeout,
    SQLiteStorage,
    StorageError,
    lazy_session,
    multi_session,
    session,
)
from simplesession.storage import default_database, sqlite

NOBODY = 65534
as_root = pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="needs root (another user)")


@contextlib.contextmanager
def database(path: Path) -> Iterator[sqlite3.Connection]:
    """A connection of the test's own, as a human's sqlite3 shell would have."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        yield db


def update(chat: int, text: str = "/count", update_id: int = 1) -> dict[str, Any]:
    return {"update_id": update_id, "message": {"message_id": update_id, "chat": {"id": chat}, "text": text}}


def counting_bot(mw: Any) -> Bot:
    bot = Bot(output=io.StringIO())
    bot.use(mw)

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    return bot


# -- what the file holds -------------------------------------------------------------------------


def test_sessions_are_rows_of_readable_json_with_their_key_version_and_last_use(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    before = time.time()
    storage.write("42", {"count": 1, "name": "Zoë"}, version=3)
    storage.write("chat:7", [1, 2])
    with database(path) as db:
        rows = db.execute("SELECT key, version, used, typeof(value), value FROM sessions ORDER BY key").fetchall()
    assert [row[:2] for row in rows] == [("42", "3"), ("chat:7", None)]
    assert all(before - 1 <= row[2] <= time.time() + 1 for row in rows)
    assert [row[3] for row in rows] == ["text", "text"]
    assert [json.loads(row[4]) for row in rows] == [{"count": 1, "name": "Zoë"}, [1, 2]]
    if shutil.which("sqlite3"):  # what a human types
        shown = subprocess.run(
            ["sqlite3", str(path), "select key, version, value from sessions order by key"],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout
        assert shown == '42|3|{"count":1,"name":"Zoë"}\nchat:7||[1,2]\n'


def test_a_session_edited_by_hand_in_sql_is_read_as_edited(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", {"count": 1}, version=2)
    assert storage.read("42") == {"count": 1}  # cached
    with database(path) as db:
        db.execute("""UPDATE sessions SET value = json_set(value, '$.count', 5) WHERE key = '42'""")
    assert storage.read_versioned("42") == ({"count": 5}, 2)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=oct)
def test_the_database_is_private_whatever_the_umask_and_in_wal_mode(tmp_path: Path, umask: int) -> None:
    path = tmp_path / "new" / "deeper" / "sessions.db"
    old = os.umask(umask)
    try:
        storage = SQLiteStorage(path)
        assert storage.missing() == "it does not exist"
        with storage.lock("42"):
            storage.write("42", {"count": 1})
    finally:
        os.umask(old)
    assert storage.missing() is None
    for made in (tmp_path / "new", path.parent, Path(f"{path}-locks")):
        assert stat.S_IMODE(made.stat().st_mode) == 0o700, made
    for made in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        assert stat.S_IMODE(made.stat().st_mode) == 0o600, made
    with database(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(("fsync", "level"), [(False, 1), (True, 2)], ids=["NORMAL", "FULL"])
def test_fsync_makes_every_commit_durable(tmp_path: Path, fsync: bool, level: int) -> None:
    storage = SQLiteStorage(tmp_path / "sessions.db", fsync=fsync)
    storage.write("42", 1)
    assert storage._connection().execute("PRAGMA synchronous").fetchone() == (level,)


def test_the_default_database_is_beside_the_default_file_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMPLESESSION_DIR", str(tmp_path / "bot" / "sessions"))
    assert default_database() == tmp_path / "bot" / "sessions.db"
    SQLiteStorage().write("42", 1)
    assert (tmp_path / "bot" / "sessions.db").is_file()
    monkeypatch.delenv("SIMPLESESSION_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert SQLiteStorage(app_name="mybot").database == tmp_path / "data" / "mybot" / "sessions.db"


def test_an_sqlite_too_old_for_the_schema_is_refused_saying_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sqlite3, "sqlite_version_info", (3, 30, 1))
    monkeypatch.setattr(sqlite3, "sqlite_version", "3.30.1")
    with pytest.raises(
        StorageError, match=r"needs SQLite 3\.31 or later.*has 3\.30\.1: use a newer Python, or FileStorage"
    ):
        SQLiteStorage()


# -- concurrency within a process ----------------------------------------------------------------------


def test_each_thread_has_a_connection_of_its_own(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "sessions.db")
    seen: list[object] = []
    threads = [threading.Thread(target=lambda: seen.append(storage._connection())) for _ in range(3)]
    for thread in threads:
        thread.start()
        thread.join(30)
    assert len({id(conn) for conn in seen}) == 3


def test_a_transaction_left_open_elsewhere_makes_a_write_fail_clearly_after_the_busy_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "BUSY_TIMEOUT", 0.2)
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", 1)
    with database(path) as db:
        db.execute("BEGIN IMMEDIATE")  # a shell holding the write lock
        with pytest.raises(StorageError, match=r"stayed locked by another connection.*transaction left open") as info:
            storage.write("42", 2)
        assert info.value.path == str(path)
        db.execute("ROLLBACK")
    storage.write("42", 3)
    assert storage.read("42") == 3


# -- set aside, damage, and what is not ours -------------------------------------------------------------


def test_a_corrupt_value_is_moved_to_the_set_aside_table_and_kept(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", {"count": 1}, version=2)
    with database(path) as db:
        db.execute("UPDATE sessions SET value = '{not json' WHERE key = '42'")
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("42") is None
    [message] = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert "'42'" in message
    assert "set_aside" in message
    with database(path) as db:
        assert db.execute("SELECT key, version, value FROM set_aside").fetchall() == [("42", "2", "{not json")]
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (0,)
    assert storage.stats().details[0].value == 1


def test_a_value_too_big_for_a_session_is_never_loaded_and_is_kept_aside(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    SQLiteStorage(path).write("k", "small")
    big = "[" + "[]," * (16 << 20) + "[]]"  # 48 MiB
    with database(path) as db:
        db.execute("UPDATE sessions SET value = ? WHERE key = 'k'", (big,))
    if Path("/proc/self/clear_refs").exists():
        measured = run_python(MEASURE_READ, str(path), timeout=120)
        assert measured.returncode == 0, measured.stderr[-2000:]
        found, grew = measured.stdout.split()
        assert found == "False"
        assert int(grew) < 4 << 20
    assert SQLiteStorage(path).read("k") is None
    with database(path) as db:
        assert db.execute("SELECT key, length(value) FROM set_aside").fetchall() == [("k", len(big))]


MEASURE_READ = """
import resource, sys
from simplesession import SQLiteStorage

resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
storage = SQLiteStorage(sys.argv[1])
storage.set_aside_corrupt = False  # only the read is measured: a move copies the value within SQLite
storage.read("other")  # the connection is opened before the measure


def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
before = peak()
found = storage.read_for_session("k")
print(found is not None, peak() - before)
"""


def damaged(path: Path) -> None:
    """A database of 3,000 sessions, then cut in half, as a full disk or a bad copy leaves one."""
    storage = SQLiteStorage(path)
    for n in range(3000):
        storage.write(str(n), {"n": n, "pad": "x" * 100})
    del storage
    gc.collect()  # its connection is closed (sqlite3's are freed by the collector), which ends the WAL
    assert not Path(f"{path}-wal").exists()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_damaged_database_gives_a_clear_error_naming_it_and_is_never_overwritten(tmp_path: Path, damage: str) -> None:
    path = tmp_path / "sessions.db"
    if damage == "garbage":
        path.write_bytes(os.urandom(3) + b"not a database at all" * 500)
    else:
        damaged(path)
    before = path.read_bytes()
    storage = SQLiteStorage(path)
    actions: list[Callable[[], object]] = [
        lambda: storage.read("1"),
        lambda: storage.write("1", {"n": -1}),
        lambda: storage.delete("1"),
        lambda: list(storage.keys()),
        lambda: storage.sweep(ttl=1),
    ]
    for action in actions:
        with pytest.raises(StorageError) as info:
            action()
        message = str(info.value)
        assert str(path) in message
        assert "damaged or is not an SQLite database" in message
        assert "left as it is" in message
        assert info.value.path == str(path)
    assert path.read_bytes() == before


def test_a_database_whose_sessions_table_is_another_apps_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with database(path) as db:
        db.execute("CREATE TABLE sessions (id INTEGER PRIMARY KEY, user TEXT)")
    with pytest.raises(StorageError, match="table 'sessions' or 'set_aside' that simplesession did not make"):
        SQLiteStorage(path).read("42")


def test_a_folder_where_the_database_belongs_is_refused(tmp_path: Path) -> None:
    (tmp_path / "sessions.db").mkdir()
    storage = SQLiteStorage(tmp_path / "sessions.db")
    assert storage.missing() == "it is not a file"
    with pytest.raises(StorageError, match="is not a file"):
        storage.read("42")


# -- links and folders of other users -------------------------------------------------------------------


def test_a_link_where_the_database_belongs_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "empty.txt"
    target.write_bytes(b"")  # SQLite would make a database of an empty file
    folder = tmp_path / "store"
    folder.mkdir(mode=0o700)
    (folder / "sessions.db").symlink_to(target)
    storage = SQLiteStorage(folder / "sessions.db")
    actions: list[Callable[[], object]] = [lambda: storage.read("42"), lambda: storage.write("42", 1)]
    for action in actions:
        with pytest.raises(StorageError, match="is a link where the database belongs"):
            action()
    assert target.read_bytes() == b""
    assert sorted(p.name for p in outside.iterdir()) == ["empty.txt"]


def test_a_link_where_the_lock_folder_belongs_is_refused_and_nothing_outside_is_touched(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    path = tmp_path / "store" / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", 1)
    Path(f"{path}-locks").symlink_to(outside)
    with pytest.raises(StorageError, match="is a link where the store keeps a folder of its own"):
        storage.lock("42").__enter__()
    assert list(outside.iterdir()) == []


@as_root
def test_a_folder_or_database_of_another_user_is_refused_unless_trusted(tmp_path: Path) -> None:
    folder = tmp_path / "bot"
    path = folder / "sessions.db"
    SQLiteStorage(path).write("42", {"balance": 1_000_000})
    os.chown(folder, NOBODY, NOBODY)
    for storage in (SQLiteStorage(path), SQLiteStorage(path, cache_size=0)):
        with pytest.raises(StorageError, match=rf"{folder} belongs to .*{NOBODY}.*trust_folder=True"):
            storage.read("42")
    os.chown(folder, 0, 0)
    os.chown(path, NOBODY, NOBODY)
    with pytest.raises(StorageError, match=rf"{path} belongs to .*{NOBODY}"):
        SQLiteStorage(path).read("42")
    assert SQLiteStorage(path, trust_folder=True).read("42") == {"balance": 1_000_000}


def test_a_folder_others_may_write_to_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "bot"
    SQLiteStorage(folder / "sessions.db").write("42", 1)
    folder.chmod(0o777)
    with pytest.raises(StorageError, match=r"can be written by .*every user.*chmod go-w"):
        SQLiteStorage(folder / "sessions.db").read("42")
    assert SQLiteStorage(folder / "sessions.db", trust_folder=True).read("42") == 1


# -- through the middleware -----------------------------------------------------------------------------


def test_session_counts_and_a_slow_update_of_one_chat_holds_up_no_other(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "sessions.db", lock_timeout=0.3)
    bot = counting_bot(session(initial=lambda: {"count": 0}, storage=storage))
    entered, leave = threading.Event(), threading.Event()

    @bot.command("slow")
    def slow(ctx: Context) -> None:
        ctx.session["count"] += 100
        entered.set()
        leave.wait(30)

    slow_update = threading.Thread(target=bot.handle_update, args=(update(1, "/slow"),))
    slow_update.start()
    try:
        assert entered.wait(30)
        for n in range(5):
            bot.handle_update(update(2, update_id=n))  # another chat: not held up
        with pytest.raises(LockTimeout):
            bot.handle_update(update(1))  # the same chat waits for it
    finally:
        leave.set()
        slow_update.join(30)
    assert storage.read("1") == {"count": 100}
    assert storage.read("2") == {"count": 5}


def test_lazy_session_untouched_opens_nothing(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "store" / "sessions.db")
    bot = Bot(output=io.StringIO())
    bot.use(lazy_session(initial=lambda: {"count": 0}, storage=storage))

    @bot.command("hello")
    def hello(ctx: Context) -> None:
        ctx.reply("hi")

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    bot.handle_update(update(42, "/hello"))
    assert not (tmp_path / "store").exists()
    bot.handle_update(update(42, "/count"))
    assert storage.read("42") == {"count": 1}


def test_multi_session_keeps_each_fragment_in_its_own_rows(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "sessions.db")
    mw = multi_session(
        chat={"initial": lambda: {"count": 0}, "storage": storage, "prefix": "chat:"},
        user={"initial": lambda: {"seen": 0}, "storage": storage, "prefix": "user:", "get_session_key": lambda c: "7"},
    )
    bot = Bot(output=io.StringIO())
    bot.use(mw)

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session.chat["count"] += 1
        ctx.session.user["seen"] += 1

    for n in range(3):
        bot.handle_update(update(42, update_id=n))
    assert sorted(storage.keys()) == ["chat:42", "user:7"]
    assert storage.read("chat:42") == {"count": 3}
    assert storage.read("user:7") == {"seen": 3}


def test_the_middleware_sweeps_idle_sessions_by_itself_in_pages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "PAGE", 3)
    storage = SQLiteStorage(tmp_path / "sessions.db")
    for n in range(10):
        storage.write(str(n), {"count": 0})
    for n in range(7):
        sqlite_idle(storage, str(n), 7200)
    assert len(list(storage.sweep_slices(ttl=3600, dry_run=True))) == 4  # 10 sessions, 3 a page
    bot = counting_bot(session(initial=lambda: {"count": 0}, storage=storage, ttl=3600, sweep_interval=0.001))
    for n in range(20):
        bot.handle_update(update(9, update_id=n))
        time.sleep(0.002)
    assert sorted(storage.keys(), key=int) == ["7", "8", "9"]
    with database(tmp_path / "sessions.db") as db:
        assert db.execute("SELECT count(*) FROM sessions").fetchone() == (3,)
    assert storage.read("9") == {"count": 20}


def _open_together(path: Path, threads: int = 8) -> list[BaseException]:
    """What ``threads`` threads meet reading and writing a new database, started at once."""
    storage = SQLiteStorage(path)
    start = threading.Barrier(threads)
    failures: list[BaseException] = []

    def reader(n: int) -> None:
        try:
            start.wait(10)
            for i in range(5):
                storage.read(str(n))
                storage.write(str(n), {"i": i})
        except BaseException as exc:
            failures.append(exc)

    running = [threading.Thread(target=reader, args=(n,)) for n in range(threads)]
    for thread in running:
        thread.start()
    for thread in running:
        thread.join(30)
    return failures


def test_threads_opening_a_new_database_together_all_get_it(tmp_path: Path) -> None:
    """A new bot's worker threads open their connections at once, while others already read:
    switching the database to WAL waits for them instead of failing "database is locked"."""
    for attempt in range(20):
        assert _open_together(tmp_path / f"new-{attempt}.db") == []


@pytest.mark.parametrize("end", ["-wal", "-shm"])
@pytest.mark.parametrize("planted", ["link", "pipe"])
def test_a_link_or_pipe_where_sqlites_own_files_belong_is_refused_naming_it(
    tmp_path: Path, end: str, planted: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    target = outside / "target"
    target.write_bytes(b"x" * 100)
    path = tmp_path / "store" / "sessions.db"
    SQLiteStorage(path).write("42", {"count": 1})
    gc.collect()  # the connection goes, and SQLite removes its -wal and -shm files
    beside = Path(f"{path}{end}")
    beside.unlink(missing_ok=True)
    if planted == "link":
        beside.symlink_to(target)
    else:
        os.mkfifo(beside)
    with pytest.raises(StorageError, match=f"sessions.db{end} is (a link|not a file) where the database's"):
        SQLiteStorage(path).read("42")
    assert target.read_bytes() == b"x" * 100
    beside.unlink()
    assert SQLiteStorage(path).read("42") == {"count": 1}
