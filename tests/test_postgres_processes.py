"""PostgresStorage across real OS processes: lost updates, SIGKILL, holders the server cut off or that were paused."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import postgres_storage
from helpers import INCREMENTER, fork_python, kill_writers, run_forked
from psycopg import sql

from simplesession import PostgresStorage

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX processes and signals")


# Loads chat 7's session, adds 100, says "holding" and waits for a line on stdin before the
# write-back; then says how that went.
HOLDER = """
    import sys
    from simplesession import Context, LockLost, PostgresStorage, session

    storage = PostgresStorage(sys.argv[1], table=sys.argv[2], lock_expiry=float(sys.argv[3]))
    mw = session(initial=lambda: {"n": 0}, storage=storage, sweep_interval=None)
    ctx = Context({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 7}, "text": "/hold"}})

    def hold():
        ctx.session["n"] += 100
        print("holding", flush=True)
        sys.stdin.readline()

    try:
        mw(ctx, hold)
    except LockLost as exc:
        print("lost:", exc, flush=True)
    else:
        print("written", flush=True)
"""

# Another update of chat 7, waiting at most sys.argv[3] seconds for its lock: prints the count.
NEXT = """
    import sys
    from simplesession import Context, PostgresStorage, session

    storage = PostgresStorage(sys.argv[1], table=sys.argv[2], lock_timeout=float(sys.argv[3]))
    mw = session(initial=lambda: {"n": 0}, storage=storage, sweep_interval=None)
    ctx = Context({"update_id": 2, "message": {"message_id": 2, "chat": {"id": 7}, "text": "/count"}})

    def count():
        ctx.session["n"] += 1
        print(ctx.session["n"])

    mw(ctx, count)
"""

# Writes key{i % 5} = {"i": i, ...} for i = argv[4], argv[4] + 1, ..., half of them under the
# key's lock, and appends each i to the progress file once its write has returned.
WRITER = """
    import os, sys
    from simplesession import PostgresStorage

    storage = PostgresStorage(sys.argv[1], table=sys.argv[2])
    progress = os.open(sys.argv[3], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    i = int(sys.argv[4])
    while True:
        key = f"key{i % 5}"
        if i % 2:
            with storage.lock(key):
                storage.write(key, {"i": i, "pad": "p" * 3000})
        else:
            storage.write(key, {"i": i, "pad": "p" * 3000})
        os.write(progress, f"{i}\\n".encode())
        i += 1
"""


@pytest.fixture
def storage(request: pytest.FixtureRequest) -> PostgresStorage:
    return postgres_storage(request)


@pytest.fixture
def conn(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


class Holder:
    """The HOLDER script in a process of its own, holding chat 7's lock once started."""

    def __init__(self, url: str, table: str, lock_expiry: float) -> None:
        self.process = fork_python(
            HOLDER, url, table, str(lock_expiry), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if line != "holding\n":
            self.process.kill()
            pytest.fail(f"the holder did not take the lock: {line!r} {self.process.communicate(timeout=30)}")

    def finish(self) -> tuple[str, str]:
        """Let it write back; what it said, and its stderr."""
        out, err = self.process.communicate("go on\n", timeout=60)
        assert self.process.returncode == 0, err
        return out, err

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.communicate(timeout=30)


@pytest.fixture
def holders() -> Iterator[Callable[..., Holder]]:
    started: list[Holder] = []

    def start(*args: Any) -> Holder:
        started.append(Holder(*args))
        return started[-1]

    yield start
    for holder in started:
        holder.stop()


def next_update(url: str, table: str, lock_timeout: float) -> str:
    result = run_forked(NEXT, url, table, str(lock_timeout))
    assert result.returncode == 0, result.stderr
    return result.stdout


def holder_pid(conn: psycopg.Connection[Any], storage: PostgresStorage, key: str) -> int:
    found = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND ((classid::bigint << 32) | objid::bigint) = %s",
        [storage._lock_id(key)],
    ).fetchone()
    assert found is not None, f"nobody holds the lock of {key!r}"
    return int(found[0])


def test_four_processes_of_locked_increments_lose_no_update(storage: PostgresStorage, postgres_url: str) -> None:
    options = json.dumps({"table": storage.table})
    procs = [fork_python(INCREMENTER, postgres_url, options, "250", stderr=subprocess.PIPE) for _ in range(4)]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(30)
    assert storage.read("counter") == {"n": 1000}


def test_sigkill_during_writes_leaves_old_or_new_values_never_torn(
    storage: PostgresStorage, postgres_url: str, conn: psycopg.Connection[Any], tmp_path: Path
) -> None:
    progress = tmp_path / "progress"

    def check_whole() -> None:
        table = sql.Identifier(storage.table)
        for (document,) in conn.execute(sql.SQL("SELECT document FROM {}").format(table)):
            assert json.loads(document)["format"] == 1  # whole
        aside = sql.Identifier(storage.table + "_aside")
        assert conn.execute(sql.SQL("SELECT count(*) FROM {}").format(aside)).fetchone() == (0,)

    kill_writers(
        lambda first: fork_python(WRITER, postgres_url, storage.table, str(progress), str(first)),
        progress,
        rounds=6,
        seed=4321,
        check_whole=check_whole,
        read=storage.read,
    )


def test_sigkill_of_a_holder_writes_nothing_and_frees_its_lock_at_once(
    storage: PostgresStorage, postgres_url: str, holders: Callable[..., Holder]
) -> None:
    storage.write("7", {"n": 5})
    holder = holders(postgres_url, storage.table, 60.0)
    holder.process.send_signal(signal.SIGKILL)
    holder.process.wait(30)
    assert storage.read("7") == {"n": 5}
    # Far sooner than lock_expiry: the server ends a session whose client is gone, and its lock.
    assert next_update(postgres_url, storage.table, 5.0) == "6\n"
    assert storage.read("7") == {"n": 6}


def test_a_holder_whose_connection_the_server_ended_writes_nothing_stale_and_gets_lock_lost(
    storage: PostgresStorage, postgres_url: str, conn: psycopg.Connection[Any], holders: Callable[..., Holder]
) -> None:
    storage.write("7", {"n": 5})
    holder = holders(postgres_url, storage.table, 60.0)
    conn.execute("SELECT pg_terminate_backend(%s)", [holder_pid(conn, storage, "7")])
    assert next_update(postgres_url, storage.table, 5.0) == "6\n"  # another update goes on
    out, _ = holder.finish()
    assert out.startswith("lost: the lock of session '7'")
    assert "nothing was written" in out
    assert storage.read("7") == {"n": 6}  # not the holder's stale 105


def test_a_paused_holder_loses_its_lock_after_lock_expiry_and_writes_nothing_stale(
    storage: PostgresStorage, postgres_url: str, holders: Callable[..., Holder]
) -> None:
    storage.write("7", {"n": 5})
    holder = holders(postgres_url, storage.table, 1.0)
    holder.process.send_signal(signal.SIGSTOP)
    try:
        # The server ends the silent holder's transaction after lock_expiry; the update waits for that.
        assert next_update(postgres_url, storage.table, 30.0) == "6\n"
    finally:
        holder.process.send_signal(signal.SIGCONT)
    out, _ = holder.finish()
    assert out.startswith("lost: the lock of session '7'")
    assert storage.read("7") == {"n": 6}
    assert next_update(postgres_url, storage.table, 5.0) == "7\n"


def test_a_live_holder_keeps_its_lock_longer_than_lock_expiry(
    storage: PostgresStorage, postgres_url: str, holders: Callable[..., Holder]
) -> None:
    storage.write("7", {"n": 5})
    holder = holders(postgres_url, storage.table, 0.3)
    result = run_forked(NEXT, postgres_url, storage.table, "1.2")  # 4 x lock_expiry
    assert result.returncode != 0
    assert "LockTimeout" in result.stderr
    out, err = holder.finish()
    assert out == "written\n", err
    assert storage.read("7") == {"n": 105}
