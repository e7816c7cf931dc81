"""SQLiteStorage's reads held open and its front cache, under what a user may do around them:
forks, checkpoints and edits from outside, storages and threads dropped while a read is held."""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from simplesession import SQLiteStorage


def wal_checkpoint(path: Path) -> tuple[int, int, int]:
    """``PRAGMA wal_checkpoint(TRUNCATE)`` from a connection of its own: (busy, log, checkpointed)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None, timeout=0)) as db:
        return db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()  # type: ignore[no-any-return]


def hand_edit(path: Path, count: int) -> None:
    """Set session '42''s count from a connection of its own, as a sqlite3 shell would."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("UPDATE sessions SET value = json_set(value, '$.count', ?) WHERE key = '42'", (count,))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_child_forked_while_a_read_is_held_open_can_still_empty_the_wal(tmp_path: Path) -> None:
    # SQLite counts a process's read locks in the process: a read held open at the fork
    # would be counted in the child for ever, without the lock, and hold back its checkpoints.
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=0)
    storage.write("42", {"count": 1})
    hand_edit(path, 2)  # after which the next read is a new one, held open
    assert storage.read("42") == {"count": 2}
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        status = 1
        try:
            storage.write("42", {"count": 3})
            busy = wal_checkpoint(path)[0]
            status = 0 if busy == 0 and os.path.getsize(f"{path}-wal") == 0 else 3
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.read("42") == {"count": 3}


def lengthen_the_wal(path: Path, *, copy_back: bool) -> None:
    """Commit 1,100 pages from outside, none checkpointed; then, with ``copy_back``, copy
    them all back into the database (the WAL stays that long until the next commit)."""
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.execute("PRAGMA wal_autocheckpoint = 0")
        db.execute("CREATE TABLE filler (x BLOB)")
        db.execute(
            "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 1100) "
            "INSERT INTO filler SELECT randomblob(4000) FROM n"
        )
        if copy_back:
            assert db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0


def test_no_read_is_held_open_while_the_wal_is_long_enough_to_be_checkpointed(tmp_path: Path) -> None:
    # SQLite checkpoints just after a commit, when a thread reading without pause would
    # always still hold the read it began before it: the WAL would then never be copied
    # back whole, and would grow for as long as that thread reads.
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=0)
    storage.write("42", {"count": 1})
    lengthen_the_wal(path, copy_back=False)
    assert os.path.getsize(f"{path}-wal") > 1000 * 4096
    assert storage.read("42") == {"count": 1}
    assert wal_checkpoint(path)[0] == 0  # at once: no read held back the checkpoint
    assert os.path.getsize(f"{path}-wal") == 0
    assert storage.read("42") == {"count": 1}
    hand_edit(path, 2)
    assert storage.read("42") == {"count": 2}
    assert storage._link().held is not None  # a short WAL again: reads are held open again


def test_reads_are_held_open_on_a_long_wal_once_it_is_all_copied_back(tmp_path: Path) -> None:
    # A read begun on a WAL that is all in the database reads the database alone: holding it
    # keeps back neither a checkpoint nor the WAL's restart by the next commit.
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=0)
    storage.write("42", {"count": 1})
    lengthen_the_wal(path, copy_back=True)
    assert storage.read("42") == {"count": 1}
    assert storage._link().held is not None
    assert wal_checkpoint(path)[0] == 0  # at once, with the read held open
    assert os.path.getsize(f"{path}-wal") == 0
    hand_edit(path, 3)
    assert storage.read("42") == {"count": 3}
