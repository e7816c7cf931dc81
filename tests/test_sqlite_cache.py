"""SQLiteStorage's front cache: a hit with nothing committed since needs no read of the database,
and is never stale, whoever commits (another process, a sqlite3 shell, a sweep) and whenever."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python

from simplesession import Bot, Context, SQLiteStorage, session
from simplesession.storage import _sqlite_wal, sqlite


@contextlib.contextmanager
def statements(storage: SQLiteStorage) -> Iterator[list[str]]:
    """The SQL this thread's connection of ``storage`` runs while the block runs."""
    ran: list[str] = []
    conn = storage._connection()
    conn.set_trace_callback(ran.append)
    try:
        yield ran
    finally:
        conn.set_trace_callback(None)


def hand_edit(path: Path, count: int) -> None:
    """Set session '42''s count as a human would, in a sqlite3 shell: a connection of its own
    (whose commit reaches this process's connections through the same shared WAL index as
    another process's would)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE sessions SET value = json_set(value, '$.count', ?) WHERE key = '42'", (count,))


def test_a_hit_with_nothing_committed_since_runs_no_statement(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "sessions.db")
    storage.write("42", {"count": 1})
    storage.write("7", {"count": 7})
    assert storage.read("42") == {"count": 1}  # found current once: the header is noted
    with statements(storage) as ran:
        for _ in range(3):
            assert storage.read("42") == {"count": 1}
            assert storage.read("7") == {"count": 7}
    assert ran == []


def test_read_only_updates_through_session_run_no_statement(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "sessions.db")
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"count": 0}, storage=storage, sweep_interval=None))
    seen: list[int] = []

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    @bot.command("show")
    def show(ctx: Context) -> None:
        seen.append(ctx.session["count"])

    message = {"message_id": 1, "chat": {"id": 42}}
    bot.handle_update({"update_id": 1, "message": {**message, "text": "/count"}})
    with statements(storage) as ran:
        for n in range(2, 6):
            bot.handle_update({"update_id": n, "message": {**message, "text": "/show"}})
    assert seen == [1, 1, 1, 1]
    assert ran == []


@pytest.mark.parametrize("cache_size", [1024, 0])
def test_a_hand_edit_after_quiet_hits_is_read_next(tmp_path: Path, cache_size: int) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=cache_size)
    storage.write("42", {"count": 1})
    for _ in range(3):
        assert storage.read("42") == {"count": 1}
    hand_edit(path, 5)
    assert storage.read("42") == {"count": 5}
    hand_edit(path, 6)
    assert storage.read("42") == {"count": 6}


def test_writes_and_a_sweep_of_another_process_are_read_next(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", {"count": 1})
    storage.write("7", {"count": 7})
    assert storage.read("42") == {"count": 1}
    assert storage.read("42") == {"count": 1}
    other = """
        import sys, time
        from simplesession import SQLiteStorage
        storage = SQLiteStorage(sys.argv[1])
        with storage.lock("42"):
            storage.write("42", {"count": 2})
        time.sleep(0.05)
        storage.sweep(0.01)
        """
    done = run_python(other, str(path))
    assert done.returncode == 0, done.stderr
    assert storage.read("42") is None
    assert storage.read("7") is None


def test_a_hand_edit_landing_just_after_a_write_is_not_hidden_by_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # After its own commit, the storage reads the header again; an edit committed in between
    # must not pass for its own write (the change counter then went up by two).
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", {"count": 1})
    header = _sqlite_wal.read_header
    calls = 0

    def edited_in_between(fd: int | None) -> bytes | None:
        nonlocal calls
        calls += 1
        if calls == 2:  # the read after the write's commit
            hand_edit(path, 9)
        return header(fd)

    monkeypatch.setattr(sqlite, "read_header", edited_in_between)
    storage.write("42", {"count": 2})
    monkeypatch.setattr(sqlite, "read_header", header)
    assert calls == 2
    assert storage.read("42") == {"count": 9}


def test_a_write_noted_current_is_read_next_once_another_commits(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", {"count": 1})
    with statements(storage) as ran:
        assert storage.read("42") == {"count": 1}  # its own write, and nothing since
    assert ran == []
    hand_edit(path, 3)
    assert storage.read("42") == {"count": 3}


def test_without_the_wal_index_to_read_every_hit_reads_the_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Where the "-shm" file cannot be opened (or read), hits go the long way, and stay current.
    monkeypatch.setattr(_sqlite_wal, "open_header", lambda path: None)
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", {"count": 1})
    assert storage.read("42") == {"count": 1}
    with statements(storage) as ran:
        assert storage.read("42") == {"count": 1}
    assert len(ran) == 1
    hand_edit(path, 4)
    assert storage.read("42") == {"count": 4}


def test_each_thread_reads_the_header_of_its_own_connection(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path)
    storage.write("42", {"count": 1})
    assert storage.read("42") == {"count": 1}
    found: list[Any] = []

    def other_thread() -> None:
        found.append(storage.read("42"))
        hand_edit(path, 8)
        found.append(storage.read("42"))

    thread = threading.Thread(target=other_thread)
    thread.start()
    thread.join(timeout=60)
    assert found == [{"count": 1}, {"count": 8}]
    assert storage.read("42") == {"count": 8}


def wal_checkpoint(path: Path) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` from a connection of its own: (busy, log, checkpointed)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as db:
        return db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # type: ignore[no-any-return]


@pytest.mark.parametrize("cache_size", [1024, 0])
@pytest.mark.parametrize("reader", ["idle", "ended"])
def test_a_read_held_open_is_ended_soon_after_its_thread_goes_idle_or_ends(
    tmp_path: Path, cache_size: int, reader: str
) -> None:
    # Reads are held open between statements while nothing is committed; one left so by an
    # idle thread (or a thread that ended) would keep checkpoints from emptying the WAL.
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=cache_size)
    for n in range(50):
        storage.write(str(n), {"count": n})
    SQLiteStorage(path, cache_size=0).write("other", {"count": 0})  # after which the next read is a new one
    done, stay = threading.Event(), threading.Event()

    def read() -> None:
        for n in range(50):
            storage.read(str(n))
        done.set()
        if reader == "idle":
            stay.wait(timeout=60)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        assert done.wait(timeout=60)
        if reader == "ended":
            thread.join(timeout=60)
        deadline = time.monotonic() + 10 * _sqlite_wal.HOLD + 5
        while (result := wal_checkpoint(path))[0] and time.monotonic() < deadline:
            time.sleep(_sqlite_wal.HOLD / 5)
        assert result[0] == 0, "a read was still held open"
        assert Path(f"{path}-wal").stat().st_size == 0
    finally:
        stay.set()
        thread.join(timeout=60)
    assert [storage.read(str(n)) for n in (0, 49)] == [{"count": 0}, {"count": 49}]


def test_a_read_held_open_never_shows_what_was_committed_after_it_began(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=0)  # every read runs its statement
    storage.write("42", {"count": 1})
    storage.write("7", {"count": 7})
    assert storage.read("7") == {"count": 7}  # the read is held open from here
    held = storage._link().held
    assert held is not None
    hand_edit(path, 2)
    assert storage.read("42") == {"count": 2}
    assert storage._link().held not in (None, held)  # a new read, begun after the edit
    with statements(storage) as ran:
        assert storage.read("42") == {"count": 2}
        assert storage.read("7") == {"count": 7}
    assert [sql.split()[0] for sql in ran] == ["SELECT", "SELECT"]  # both in the read held open


@pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="needs SIGSTOP")
def test_a_process_stopped_with_a_read_held_open_holds_up_no_other(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=0)
    storage.write("42", {"count": 1})
    reader = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from simplesession import SQLiteStorage\n"
            "storage = SQLiteStorage(sys.argv[1], cache_size=0)\n"
            "assert storage.read('42') == {'count': 1}\n"
            "print('held', storage._link().held is not None, flush=True)\n"
            "time.sleep(60)\n",
            str(path),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert reader.stdout is not None
        assert reader.stdout.readline().strip() == "held True"
        os.kill(reader.pid, signal.SIGSTOP)  # its read stays held: no thread of it runs
        for n in range(2, 40):
            with storage.lock("42"):
                storage.write("42", {"count": n})
            assert storage.read("42") == {"count": n}
        assert SQLiteStorage(path, cache_size=0).read("42") == {"count": 39}
        assert wal_checkpoint(path)[0] == 1  # only emptying the WAL waits for it
    finally:
        os.kill(reader.pid, signal.SIGCONT)
        reader.kill()
        reader.wait(timeout=60)
    deadline = time.monotonic() + 10
    while wal_checkpoint(path)[0] and time.monotonic() < deadline:
        time.sleep(0.01)
    assert wal_checkpoint(path)[0] == 0
