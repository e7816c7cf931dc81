"""SQLiteStorage across real OS processes: locks, the front cache, SIGKILL in the middle of writes, fork."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
from helpers import INCREMENTER, fork_python, kill_writers

from simplesession import LockTimeout, SQLiteStorage

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX processes and signals")


@pytest.mark.parametrize("cache_size", [1024, 0])
def test_four_processes_of_locked_increments_lose_no_update(tmp_path: Path, cache_size: int) -> None:
    path = str(tmp_path / "sessions.db")
    options = json.dumps({"cache_size": cache_size})
    procs = [fork_python(INCREMENTER, f"sqlite:{path}", options, "250", stderr=subprocess.PIPE) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert SQLiteStorage(path).read("counter") == {"n": 1000}


BOT = """
    import io, sys
    from simplesession import Bot, SQLiteStorage, session

    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"count": 0}, storage=SQLiteStorage(sys.argv[1])))

    @bot.command("count")
    def count(ctx):
        ctx.session["count"] += 1

    for n in range(int(sys.argv[2])):
        bot.handle_update({"update_id": n, "message": {"message_id": n, "chat": {"id": 42}, "text": "/count"}})
"""


def test_bots_in_three_processes_counting_one_chat_through_the_middleware_lose_no_update(tmp_path: Path) -> None:
    path = str(tmp_path / "sessions.db")
    procs = [fork_python(BOT, path, "100", stderr=subprocess.PIPE) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert SQLiteStorage(path, cache_size=0).read("42") == {"count": 300}


def test_a_warm_cache_sees_what_another_process_wrote(tmp_path: Path) -> None:
    path = str(tmp_path / "sessions.db")
    writer = fork_python(
        """
        import sys
        from simplesession import SQLiteStorage
        storage = SQLiteStorage(sys.argv[1])
        for line in sys.stdin:
            n = int(line)
            storage.write("k", {"v": f"x{n:03d}"})
            storage.write("k", {"v": f"y{n:03d}"})  # the same size, as fast as it goes
            print("done", flush=True)
        """,
        path,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    storage = SQLiteStorage(path)
    try:
        for n in range(20):
            storage.write("k", {"v": f"a{n:03d}"})
            assert storage.read("k") == {"v": f"a{n:03d}"}  # now a cache hit
            writer.stdin.write(f"{n}\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "done\n"
            assert storage.read("k") == {"v": f"y{n:03d}"}, f"stale value in round {n}"
    finally:
        writer.stdin.close()
        writer.wait(30)


HOLDER = """
    import sys
    from simplesession import SQLiteStorage
    storage = SQLiteStorage(sys.argv[1])
    with storage.lock("k"):
        storage.write("k", {"held": True})
        print("holding", flush=True)
        sys.stdin.readline()
"""


def test_a_lock_held_by_another_process_times_out_and_keeps_no_other_key_waiting(tmp_path: Path) -> None:
    path = str(tmp_path / "sessions.db")
    holder = fork_python(HOLDER, path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdin is not None
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "holding\n"
        storage = SQLiteStorage(path, lock_timeout=0.3)
        with pytest.raises(LockTimeout) as info, storage.lock("k"):
            pass
        assert info.value.path is not None
        assert info.value.path.startswith(f"{path}-locks")
        started = time.monotonic()
        for n in range(20):  # no transaction of the holder's keeps these waiting
            with storage.lock(f"other-{n}"):
                storage.write(f"other-{n}", n)
        assert time.monotonic() - started < 10
    finally:
        holder.stdin.close()
        assert holder.wait(30) == 0
    with storage.lock("k"):
        assert storage.read("k") == {"held": True}


def test_the_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    path = str(tmp_path / "sessions.db")
    holder = fork_python(HOLDER, path, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert holder.stdout is not None
    assert holder.stdout.readline() == "holding\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    with SQLiteStorage(path, lock_timeout=1).lock("k"):
        pass


WRITER = """
    import os, sys
    from simplesession import SQLiteStorage
    storage = SQLiteStorage(sys.argv[1])
    progress = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    start = int(sys.argv[3])
    padding = "p" * 20000  # a value over several pages: a torn write would show
    for i in range(start, start + 10**6):
        storage.write(f"key{i % 5}", {"i": i, "pad": padding})
        os.write(progress, b"%d\\n" % i)
"""


def test_sigkill_during_writes_leaves_old_or_new_values_never_torn_nor_lost(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    progress = tmp_path / "progress"

    def check_whole() -> None:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
            for (value,) in db.execute("SELECT value FROM sessions"):
                json.loads(value)  # every value whole
            assert db.execute("SELECT count(*) FROM set_aside").fetchone() == (0,)

    kill_writers(
        lambda first: fork_python(WRITER, str(path), str(progress), str(first)),
        progress,
        rounds=12,
        seed=1234,
        check_whole=check_whole,
        read=lambda key: SQLiteStorage(path, cache_size=0).read(key),
    )


def test_a_forked_child_opens_a_connection_of_its_own_and_both_go_on(tmp_path: Path) -> None:
    storage = SQLiteStorage(tmp_path / "sessions.db")
    storage.write("parent", 1)
    inherited = storage._connection()
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            os.close(read)
            fresh = storage._connection() is not inherited
            storage.write("child", 2)
            status = 0 if fresh and storage.read("parent") == 1 else 3
        finally:
            os._exit(status)
    os.close(write)
    os.close(read)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage._connection() is inherited
    assert storage.read("child") == 2
    storage.write("parent", 3)
    assert SQLiteStorage(tmp_path / "sessions.db", cache_size=0).read("parent") == 3
