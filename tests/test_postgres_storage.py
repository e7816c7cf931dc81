"""PostgresStorage on a real server: the table, pools, the server's clock, set-aside values, locks, the middleware."""

from __future__ import annotations

import logging
import os
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
from conftest import postgres_storage
from helpers import run_python
from pgserver import drop_tables
from psycopg import sql
from psycopg_pool import ConnectionPool
from redisserver import free_port

from simplesession import (
    LockLost,
    LockTimeout,
    PostgresStorage,
    StorageError,
)

Make = Callable[..., PostgresStorage]


@pytest.fixture
def make(request: pytest.FixtureRequest) -> Make:
    """Makes a PostgresStorage, each on a table of its own (``table=`` names one to share)."""
    return lambda **options: postgres_storage(request, **options)


@pytest.fixture
def conn(postgres_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(postgres_url, autocommit=True) as connection:
        yield connection


def rows(conn: psycopg.Connection[Any], query: str, table: str, *params: Any) -> list[Any]:
    return conn.execute(sql.SQL(query).format(t=sql.Identifier(table)), params).fetchall()


def holder_pid(conn: psycopg.Connection[Any], storage: PostgresStorage, key: str) -> int:
    """The server process whose transaction holds ``key``'s advisory lock."""
    found = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1 AND granted"
        " AND ((classid::bigint << 32) | objid::bigint) = %s",
        [storage._lock_id(key)],
    ).fetchone()
    assert found is not None, f"nobody holds the lock of {key!r}"
    return int(found[0])


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("simplesession")]


def update(n: int, chat: int = 42, text: str = "/count", user: int = 7) -> dict[str, Any]:
    message = {"message_id": n, "chat": {"id": chat, "type": "group"}, "from": {"id": user}, "text": text}
    return {"update_id": n, "message": message}


# -- the table ----------------------------------------------------------------------------------------


def test_a_row_holds_the_key_its_version_last_use_and_document_readable_in_sql(
    make: Make, conn: psycopg.Connection[Any]
) -> None:
    storage = make()
    storage.write("42", {"count": 3}, version=2)
    storage.write("plain", "text")
    found = rows(conn, "SELECT key, version, used, document, now() FROM {t} ORDER BY key", storage.table)
    (key, version, used, document, now), plain = found
    assert (key, version) == ("42", 2)
    assert document == '{"format":1,"key":"42","version":2,"data":{"count":3}}\n'
    assert abs((now - used).total_seconds()) < 5  # the server's clock
    assert plain[:2] == ("plain", None)


def test_keys_with_nul_backslashes_and_of_any_length_round_trip(make: Make, conn: psycopg.Connection[Any]) -> None:
    storage = make()
    keys = ["nul\x00byte", "\\0", "back\\slash", "\x00", "x" * 10_000, "🐍" * 3000, ""]
    for i, key in enumerate(keys):
        storage.write(key, i)
    assert sorted(storage.keys()) == sorted(keys)
    assert [storage.read(key) for key in keys] == list(range(len(keys)))
    shown = {key for (key,) in rows(conn, "SELECT key FROM {t}", storage.table)}
    assert {"nul\\0byte", "\\\\0", "back\\\\slash"} <= shown  # text cannot hold NUL: it is written \0


def test_storages_on_one_table_share_it_and_its_locks_whatever_the_table_is_called(
    make: Make, postgres_url: str
) -> None:
    one = make()
    two = PostgresStorage(postgres_url, table="public." + one.table, lock_timeout=0.1)
    try:
        one.write("k", 1)
        assert two.read("k") == 1
        assert one.lock_name("k") == two.lock_name("k")
        with one.lock("k", holder="first"), pytest.raises(LockTimeout), two.lock("k", holder="second"):
            pass
        with one.lock("k"), two.lock("k"):  # one holder: the lock taken by one, written through the other
            two.write("k", 2)
        assert one.read("k") == 2
    finally:
        two.close()


def test_a_table_of_another_shape_is_refused_and_left_alone(postgres_url: str, conn: psycopg.Connection[Any]) -> None:
    table = f"test_{uuid.uuid4().hex}"
    conn.execute(sql.SQL("CREATE TABLE {} (key text, value text)").format(sql.Identifier(table)))
    try:
        with pytest.raises(StorageError, match="not a simplesession table") as info:
            PostgresStorage(postgres_url, table=table)
        assert table in str(info.value)
        assert rows(conn, "SELECT count(*) FROM {t}", table) == [(0,)]
    finally:
        drop_tables(postgres_url, table)


def test_a_table_name_is_checked(postgres_url: str) -> None:
    for bad in ("", "a.b.c", ".x", "x" * 58, "nul\x00", "50%", "two words", "1st", 'quo"te'):
        with pytest.raises(ValueError, match="table must be"):
            PostgresStorage(postgres_url, table=bad)
    with pytest.raises(TypeError, match="table must be a str"):
        PostgresStorage(postgres_url, table=1)  # type: ignore[arg-type]


# -- pools and connections ----------------------------------------------------------------------------


def discard_all(conn: psycopg.Connection[Any]) -> None:
    conn.execute("DISCARD ALL")  # what some pools do to a connection given back: prepared statements gone


POOLS = {
    "autocommit": {"kwargs": {"autocommit": True}},
    "transactions": {"kwargs": {"autocommit": False}},
    "no-prepared-statements": {"kwargs": {"autocommit": True, "prepare_threshold": None}},
    "discard-all": {"kwargs": {"autocommit": True}, "reset": discard_all},
}


@pytest.mark.parametrize("options", list(POOLS.values()), ids=list(POOLS))
def test_works_on_a_pool_of_ones_own_which_close_leaves_open(
    make: Make, postgres_url: str, options: dict[str, Any]
) -> None:
    table = make().table
    with ConnectionPool(postgres_url, min_size=1, max_size=2, open=True, **options) as pool:
        storage = PostgresStorage(pool, table=table)
        storage.write("k", {"n": 0})
        for _ in range(8):  # over the same connections again and again
            with storage.lock("k"):
                storage.write("k", {"n": storage.read("k")["n"] + 1})  # type: ignore[index]
        assert storage.read("k") == {"n": 8}
        assert sorted(storage.keys()) == ["k"]
        storage.close()
        with pool.connection() as conn:
            assert conn.execute("SELECT 1").fetchone() == (1,)
    assert make(table=table).read("k") == {"n": 8}


def test_a_pool_with_no_free_connection_is_an_error_saying_so(make: Make, postgres_url: str) -> None:
    table = make().table
    with ConnectionPool(postgres_url, min_size=1, max_size=1, timeout=0.2, open=True) as pool:
        storage = PostgresStorage(pool, table=table)
        with storage.lock("a"), pytest.raises(StorageError, match="no connection of its pool was free"):
            storage.read("b")  # the one connection holds the lock of "a"


def test_close_closes_the_pool_a_storage_made_and_with_closes_it_too(make: Make, postgres_url: str) -> None:
    with PostgresStorage(postgres_url, table=make().table) as storage:
        storage.write("k", 1)
    with pytest.raises(StorageError):
        storage.read("k")


@pytest.mark.skipif(not hasattr(os, "fork"), reason="uses fork")
def test_a_forked_child_makes_a_pool_of_its_own_and_holds_none_of_the_parents_locks(make: Make) -> None:
    storage = make(lock_timeout=0.2)
    storage.write("k", 1)
    with storage.lock("k"):
        pid = os.fork()
        if pid == 0:  # the child: the parent's connections are not its own, nor is the lock
            code = 1
            try:
                assert storage.read("k") == 1
                try:
                    with storage.lock("k"):
                        pass
                except LockTimeout:
                    storage.write("child", 2)
                    code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        assert storage.read("k") == 1  # the parent's connections still work
    assert done, "the child hung"
    assert os.waitstatus_to_exitcode(status) == 0
    assert storage.read("child") == 2


def test_a_pooled_connection_the_server_closed_is_replaced_without_an_error(
    make: Make, postgres_url: str, conn: psycopg.Connection[Any]
) -> None:
    name = f"pooled_{uuid.uuid4().hex}"
    storage = make()
    with PostgresStorage(f"{postgres_url}?application_name={name}", table=storage.table) as named:
        named.write("k", 1)
        # Its idle connections, ended as a restart or an idle timeout would end them.
        ended = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = %s", [name]
        ).fetchone()
        assert ended is not None
        assert ended[0] >= 1
        time.sleep(0.1)
        assert named.read("k") == 1
        with named.lock("k"):
            named.write("k", 2)
        assert named.read("k") == 2


def test_the_connections_a_storage_makes_are_named_for_pg_stat_activity(
    make: Make, conn: psycopg.Connection[Any]
) -> None:
    make().write("k", 1)
    found = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'simplesession'").fetchone()
    assert found is not None
    assert found[0] >= 1


def test_an_unreachable_server_is_a_storage_error_naming_it_without_the_password() -> None:
    port = free_port()
    with pytest.raises(StorageError) as info:
        PostgresStorage(f"postgresql://someone:s3cret@127.0.0.1:{port}/db")
    message = str(info.value)
    assert f"127.0.0.1:{port}" in message
    assert "is the server running" in message
    assert "s3cret" not in message
    assert isinstance(info.value, OSError)


def test_import_works_without_psycopg_and_postgres_storage_says_how_to_install_it() -> None:
    result = run_python(
        """
        import sys
        import simplesession
        assert "psycopg" not in sys.modules, "importing simplesession imported psycopg"
        sys.modules["psycopg"] = None  # as if it were not installed
        try:
            simplesession.PostgresStorage("postgresql://127.0.0.1/db")
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "PostgresStorage needs psycopg 3 and psycopg_pool: pip install 'simplesession[postgres]'\n"


# -- sizes, clocks, values set aside ------------------------------------------------------------------


def test_a_stored_value_over_max_size_is_never_sent_and_set_aside_whole(
    make: Make, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    storage = make(max_size=1000)
    storage.write("k", {"n": 1})
    huge = '{"format":1,"key":"k","data":"' + "x" * 20_000_000 + '"}\n'
    rows(conn, "UPDATE {t} SET document = %s RETURNING 1", storage.table, huge)
    tracemalloc.start()
    try:
        with caplog.at_level(logging.ERROR, logger="simplesession"):
            assert storage.read("k") is None
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000  # 20 MB were never loaded
    [message] = errors_logged(caplog)
    assert "max_size=1,000" in message
    assert f"{storage.table}_aside" in message
    kept = rows(conn, "SELECT key, octet_length(document) FROM {t}", storage.table + "_aside")
    assert kept == [("k", len(huge))]
    storage.write("k", {"n": 2})
    assert storage.read("k") == {"n": 2}


def test_values_set_aside_keep_their_row_and_are_counted(
    make: Make, conn: psycopg.Connection[Any], caplog: pytest.LogCaptureFixture
) -> None:
    storage = make()
    storage._put("k", b'{"format":1,"key":"k","data":{"n":NaN}}')
    storage._set_used("k", time.time() - 3600)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("k") is None
    ((key, document, moved, age),) = rows(
        conn, "SELECT key, document, moved, extract(epoch FROM now() - used) FROM {t}", storage.table + "_aside"
    )
    assert (key, document) == ("k", '{"format":1,"key":"k","data":{"n":NaN}}')
    assert moved is not None
    assert 3500 < age < 3700  # its last use, as it was
    assert storage.stats().details[0].value == 1
    assert storage.set_aside("k", "again") is None


def test_ttl_is_kept_by_the_servers_clock_and_the_sweep_goes_in_pages(
    make: Make, conn: psycopg.Connection[Any]
) -> None:
    storage = make(ttl=3600)
    for i in range(1100):
        storage.write(f"idle-{i}", i)
    storage.write("fresh", 1)
    rows(conn, "UPDATE {t} SET used = now() - interval '2 hours' WHERE key LIKE 'idle-%%' RETURNING 1", storage.table)
    assert storage.read("idle-7") is None
    assert list(storage.keys()) == ["fresh"]
    slices = list(storage.sweep_slices())
    assert len(slices) == 3  # 1101 rows, 500 a page
    assert sum(part.removed for part in slices) == 1100
    assert rows(conn, "SELECT key FROM {t}", storage.table) == [("fresh",)]


def test_stats_are_counted_by_the_server(make: Make) -> None:
    storage = make()
    for key in ("a", "b"):
        storage.write(key, {"key": key})
    stats = storage.stats()
    sizes = [info.size for info in map(storage.describe, "ab") if info is not None]
    assert (stats.sessions, stats.bytes) == (2, sum(sizes))
    assert stats.oldest is not None
    assert stats.newest is not None
    assert time.time() - 60 < stats.oldest <= stats.newest < time.time() + 60


# -- locks ----------------------------------------------------------------------------------------------


def test_lock_timeout_names_the_key_the_lock_and_the_server(make: Make) -> None:
    storage = make(lock_timeout=0.05)
    with storage.lock("k", holder="first"), pytest.raises(LockTimeout) as info, storage.lock("k", holder="second"):
        pass
    assert "'k'" in str(info.value)
    assert "advisory lock" in str(info.value)
    assert info.value.path == storage.server
    assert "@127.0.0.1:" in storage.server


def test_a_holder_whose_connection_the_server_ended_gets_lock_lost_and_writes_nothing(
    make: Make, conn: psycopg.Connection[Any]
) -> None:
    storage = make()
    storage.write("k", {"n": 5})
    # The write-back goes with the release: that is where the loss shows.
    lock = storage.lock("k")
    lock.__enter__()
    storage.write("k", {"n": 6})
    conn.execute("SELECT pg_terminate_backend(%s)", [holder_pid(conn, storage, "k")])
    with pytest.raises(LockLost) as info:
        lock.__exit__(None, None, None)
    assert "nothing was written" in str(info.value)
    assert info.value.key == "k"
    assert storage.read("k") == {"n": 5}
    # A read under a lost lock says so at once, and the release has nothing more to say.
    with storage.lock("k"):
        storage.write("k", {"n": 7})
        conn.execute("SELECT pg_terminate_backend(%s)", [holder_pid(conn, storage, "k")])
        with pytest.raises(LockLost):
            storage.read("k")
    assert storage.read("k") == {"n": 5}
    with storage.lock("k"):  # the next update goes on
        storage.write("k", {"n": 8})
    assert storage.read("k") == {"n": 8}


def test_a_write_back_the_server_refuses_at_the_release_is_an_error_and_nothing_is_written(
    make: Make, conn: psycopg.Connection[Any]
) -> None:
    storage = make()
    storage.write("k", {"n": 5})
    conn.execute(
        sql.SQL("ALTER TABLE {} ADD CHECK (octet_length(document) < 100)").format(sql.Identifier(storage.table))
    )
    lock = storage.lock("k")
    lock.__enter__()
    storage.write("k", {"n": 6, "pad": "x" * 200})
    with pytest.raises(StorageError, match="could not write session 'k'"):
        lock.__exit__(None, None, None)
    assert storage.read("k") == {"n": 5}
    with storage.lock("k"):  # the connection went back clean
        storage.write("k", {"n": 7})
    assert storage.read("k") == {"n": 7}
