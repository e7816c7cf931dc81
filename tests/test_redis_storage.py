"""RedisStorage on a real Redis server: the format, expiry, corrupt values, locks across processes."""

from __future__ import annotations

import io
import json
import logging
import os
import select
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from typing import Any, cast

import forkserver
import pytest
import redis
from helpers import INCREMENTER, fork_python, run_forked, run_python
from redisserver import free_port
from test_file_storage import HOSTILE_KEYS

from simplesession import (
    Bot,
    Context,
    CorruptSessionError,
    LockTimeout,
    RedisStorage,
    SessionError,
    StorageError,
    session,
)

# Takes the lock of "k", says so, and holds it until a line arrives on stdin.
HOLDER = """
    import sys
    from simplesession import RedisStorage

    storage = RedisStorage(sys.argv[1], prefix=sys.argv[2], lock_expiry=float(sys.argv[3]))
    with storage.lock("k"):
        print("locked", flush=True)
        sys.stdin.readline()
    print("released", flush=True)
"""


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as conn:
        yield conn


@pytest.fixture
def storage(redis_url: str, redis_prefix: str) -> RedisStorage:
    return RedisStorage(redis_url, prefix=redis_prefix)


def raw_name(storage: RedisStorage, key: str) -> bytes:
    return storage._name(key)


def names(client: redis.Redis, pattern: str) -> list[bytes]:
    return sorted({bytes(name) for name in client.scan_iter(match=pattern)})  # SCAN may return a key twice


def start_holder(redis_url: str, prefix: str, lock_expiry: float) -> forkserver.Process:
    holder = fork_python(
        HOLDER,
        redis_url,
        prefix,
        str(lock_expiry),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], 30)
    line = holder.stdout.readline() if ready else ""
    if line != "locked\n":
        holder.kill()
        _, err = holder.communicate(timeout=30)
        pytest.fail(f"the holder did not take the lock: {line!r} {err}")
    return holder


def stop(process: forkserver.Process) -> None:
    if process.poll() is None:
        process.kill()
    process.communicate(timeout=30)


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("simplesession")]


# -- format, keys, expiry ---------------------------------------------------------------------


def test_value_is_the_json_document_of_a_session_file(storage: RedisStorage, client: redis.Redis) -> None:
    storage.write("chat:42", {"count": 3, "name": "Zoë"}, version=2)
    raw = client.get(raw_name(storage, "chat:42"))
    assert isinstance(raw, bytes)
    assert "Zoë" in raw.decode("utf-8")  # UTF-8, not \u-escaped
    assert json.loads(raw) == {"format": 1, "key": "chat:42", "data": {"count": 3, "name": "Zoë"}, "version": 2}
    storage.write("plain", [1])
    assert json.loads(client.get(raw_name(storage, "plain")) or b"") == {"format": 1, "key": "plain", "data": [1]}


def test_versions_round_trip_with_their_type(storage: RedisStorage) -> None:
    storage.write("a", {"v": 1}, version=3)
    storage.write("b", {"v": 2}, version=2.5)
    storage.write("c", {"v": 3})
    assert storage.read_versioned("a") == ({"v": 1}, 3)
    assert storage.read_versioned("b") == ({"v": 2}, 2.5)
    assert storage.read_versioned("c") == ({"v": 3}, None)
    assert storage.read_versioned("missing") is None
    found = storage.read_versioned("a")
    assert found is not None
    assert type(found[1]) is int
    with pytest.raises(TypeError, match="version"):
        storage.write("a", {}, version="4")  # type: ignore[arg-type]
    assert storage.read_versioned("a") == ({"v": 1}, 3)


def test_session_idle_longer_than_ttl_expires(redis_url: str, redis_prefix: str) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix, ttl=0.3)
    storage.write("k", {"n": 1})
    time.sleep(0.5)
    assert storage.read("k") is None
    assert not storage.has("k")
    assert list(storage.keys()) == []


def test_reads_keep_a_session_alive(redis_url: str, redis_prefix: str) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix, ttl=0.3)
    storage.write("k", {"n": 1})
    for _ in range(6):  # 0.6 s in all, twice the ttl
        time.sleep(0.1)
        assert storage.read("k") == {"n": 1}


def test_without_ttl_sessions_never_expire(storage: RedisStorage, client: redis.Redis) -> None:
    storage.write("k", 1)
    assert client.pttl(raw_name(storage, "k")) == -1
    assert storage.read("k") == 1
    assert client.pttl(raw_name(storage, "k")) == -1


def test_keys_escapes_glob_characters_in_the_prefix(redis_url: str, redis_prefix: str) -> None:
    globby = RedisStorage(redis_url, prefix=redis_prefix + "a*[b]?\\")
    # Its keys would match globby's prefix taken as a pattern.
    lookalike = RedisStorage(redis_url, prefix=redis_prefix + "aXXbY")
    globby.write("mine", 1)
    lookalike.write("theirs", 2)
    assert list(globby.keys()) == ["mine"]
    assert list(lookalike.keys()) == ["theirs"]
    assert globby.read("mine") == 1


def test_storages_with_different_prefixes_do_not_see_each_others_keys(redis_url: str, redis_prefix: str) -> None:
    one = RedisStorage(redis_url, prefix=redis_prefix + "one:")
    two = RedisStorage(redis_url, prefix=redis_prefix + "two:")
    one.write("shared", "one")
    one.write("only-one", 1)
    two.write("shared", "two")
    assert sorted(one.keys()) == ["only-one", "shared"]
    assert list(two.keys()) == ["shared"]
    two.delete("shared")
    assert one.read("shared") == "one"


def test_keys_lists_each_key_once_over_many_scan_pages(storage: RedisStorage) -> None:
    keys = [f"chat:{i}" for i in range(1200)]
    for key in keys:
        storage.write(key, 0)
    listed = list(storage.keys())
    assert len(listed) == len(set(listed))
    assert sorted(listed) == sorted(keys)


def test_hostile_keys_round_trip_and_do_not_collide(storage: RedisStorage) -> None:
    for i, key in enumerate(HOSTILE_KEYS):
        storage.write(key, {"i": i})
    for i, key in enumerate(HOSTILE_KEYS):
        assert storage.read(key) == {"i": i}, key
    assert sorted(storage.keys()) == sorted(HOSTILE_KEYS)


def test_sweep_counts_sessions_and_leaves_expiry_to_redis(storage: RedisStorage) -> None:
    for key in ("a", "b", "c"):
        storage.write(key, 1)
    report = storage.sweep(ttl=0.001)
    assert (report.scanned, report.removed, report.in_use) == (3, 0, 0)
    assert sorted(storage.keys()) == ["a", "b", "c"]


# -- corrupt values -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"\xff\xfe garbage",
        b"{not json",
        b"",
        b"[1, 2]",
        b'{"format": 1, "key": "k"}',
        b'{"format": 1, "key": "other", "data": {"n": 1}}',
        b'{"format": 99, "key": "k", "data": {"n": 1}}',
    ],
    ids=["garbage", "not-json", "empty", "other-json", "no-data", "other-key", "other-format"],
)
def test_corrupt_value_is_set_aside_logged_and_reads_as_missing(
    storage: RedisStorage, client: redis.Redis, caplog: pytest.LogCaptureFixture, raw: bytes
) -> None:
    storage.write("good", 1)
    client.set(raw_name(storage, "k"), raw, px=60_000)
    assert storage.read("k") is None
    assert not storage.has("k")
    [aside] = names(client, f"{storage.prefix}{{s:k}}:aside:*")
    assert client.get(aside) == raw  # kept as it was
    assert client.pttl(aside) == -1  # kept for good, not expired with the session
    assert list(storage.keys()) == ["good"]
    [message] = errors_logged(caplog)
    assert "'k'" in message
    assert aside.decode() in message
    storage.write("k", {"n": 2})  # the chat goes on
    assert storage.read("k") == {"n": 2}


def test_value_of_another_redis_type_is_set_aside(
    storage: RedisStorage, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client.hset(raw_name(storage, "k"), "field", "value")
    assert storage.read("k") is None
    [aside] = names(client, f"{storage.prefix}{{s:k}}:aside:*")
    assert client.hget(aside, "field") == b"value"
    assert len(errors_logged(caplog)) == 1


def test_set_aside_moves_the_value_and_says_where(
    storage: RedisStorage, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    storage.write("k", {"n": 1})
    original = client.get(raw_name(storage, "k"))
    aside = storage.set_aside("k", "validate() refused it")
    assert aside is not None
    assert aside.startswith(f"{storage.prefix}{{s:k}}:aside:")
    assert client.get(aside) == original
    assert storage.read("k") is None
    assert list(storage.keys()) == []
    [message] = errors_logged(caplog)
    assert "validate() refused it" in message
    assert storage.set_aside("k", "again") is None


def test_value_that_cannot_be_set_aside_is_a_corrupt_session_error(
    storage: RedisStorage, client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    client.set(raw_name(storage, "k"), b"garbage")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise redis.ResponseError("NOPERM this user has no permissions to run the 'rename' command")

    monkeypatch.setattr(storage, "_set_aside", refuse)
    with pytest.raises(CorruptSessionError, match="'k'") as info:
        storage.read("k")
    assert "NOPERM" in str(info.value)


# -- locks ----------------------------------------------------------------------------------------


def test_three_processes_of_locked_increments_lose_no_update(redis_url: str, redis_prefix: str) -> None:
    options = json.dumps({"prefix": redis_prefix})
    procs = [
        fork_python(
            INCREMENTER,
            redis_url,
            options,
            "150",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    try:
        for proc in procs:
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == 0, err
    finally:
        for proc in procs:
            stop(proc)
    assert RedisStorage(redis_url, prefix=redis_prefix).read("counter") == {"n": 450}


def test_lock_of_a_killed_holder_frees_itself_after_lock_expiry(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    holder = start_holder(redis_url, redis_prefix, lock_expiry=1.0)
    try:
        holder.send_signal(signal.SIGKILL)
        holder.wait(30)
    finally:
        stop(holder)
    assert client.exists(f"{redis_prefix}{{s:k}}:lock")  # a dead holder releases nothing
    contender = RedisStorage(redis_url, prefix=redis_prefix, lock_timeout=0.2)
    with pytest.raises(LockTimeout), contender.lock("k"):
        pass
    contender.lock_timeout = 3  # 3 x lock_expiry: the lock must free itself before
    with contender.lock("k"):
        contender.write("k", "mine")
    assert contender.read("k") == "mine"


def test_live_holder_keeps_its_lock_longer_than_lock_expiry(redis_url: str, redis_prefix: str) -> None:
    holder = start_holder(redis_url, redis_prefix, lock_expiry=0.4)
    try:
        contender = RedisStorage(redis_url, prefix=redis_prefix, lock_timeout=1.0)  # 2.5 x lock_expiry
        with pytest.raises(LockTimeout), contender.lock("k"):
            pass
        assert holder.stdin is not None
        out, err = holder.communicate("release\n", timeout=30)
    finally:
        stop(holder)
    assert holder.returncode == 0, err
    assert out == "released\n"
    assert "expired while held" not in err
    contender.lock_timeout = 10
    with contender.lock("k"):
        pass


def test_lock_timeout_names_the_key_and_the_server(redis_url: str, redis_prefix: str) -> None:
    holder = start_holder(redis_url, redis_prefix, lock_expiry=30)
    try:
        contender = RedisStorage(redis_url, prefix=redis_prefix, lock_timeout=0.1)
        with pytest.raises(LockTimeout) as info, contender.lock("k"):
            pass
    finally:
        stop(holder)
    assert "'k'" in str(info.value)
    assert contender.server in str(info.value)
    assert info.value.key == "k"
    assert info.value.path == contender.server
    assert info.value.timeout == 0.1


def test_lock_is_reentrant_across_storages_on_one_server_and_prefix(redis_url: str, redis_prefix: str) -> None:
    one = RedisStorage(redis_url, prefix=redis_prefix, lock_timeout=0.5)
    two = RedisStorage(redis_url, prefix=redis_prefix, lock_timeout=0.5)
    assert one.lock("k").name == two.lock("k").name
    with one.lock("k"), two.lock("k"):
        two.write("k", 1)
    with two.lock("k"):  # released for real
        pass


def test_lock_names_order_locks_by_server_prefix_and_key(storage: RedisStorage) -> None:
    assert storage.lock("a").name == f"redis:{storage.server}:{storage.prefix}lock:a"
    assert storage.lock("a").name < storage.lock("b").name


# -- the server, the client, the package ---------------------------------------------------------


def test_unreachable_server_is_a_storage_error_naming_the_address() -> None:
    port = free_port()
    storage = RedisStorage(f"redis://127.0.0.1:{port}/0", lock_timeout=1)
    actions: list[Any] = [
        lambda: storage.read("k"),
        lambda: storage.write("k", 1),
        lambda: storage.delete("k"),
        lambda: list(storage.keys()),
        lambda: storage.lock("k").__enter__(),
    ]
    for action in actions:
        with pytest.raises(StorageError) as info:
            action()
        assert isinstance(info.value, OSError)
        assert isinstance(info.value, SessionError)
        assert f"127.0.0.1:{port}" in str(info.value)
        assert "Connection refused" in str(info.value)


def test_works_with_a_client_object_and_with_a_url(redis_url: str, redis_prefix: str, client: redis.Redis) -> None:
    by_client = RedisStorage(client, prefix=redis_prefix)
    by_url = RedisStorage(redis_url, prefix=redis_prefix)
    assert by_client.server == by_url.server
    by_client.write("k", {"from": "client"})
    assert by_url.read("k") == {"from": "client"}
    assert by_client.client is client


def test_a_client_that_decodes_responses_is_refused(redis_url: str) -> None:
    with (
        redis.Redis.from_url(redis_url, decode_responses=True) as decoding,
        pytest.raises(ValueError, match="decode_responses=False"),
    ):
        RedisStorage(decoding)


def test_a_url_that_is_not_a_redis_url_is_refused_without_echoing_it() -> None:
    with pytest.raises(ValueError, match="not a Redis URL") as info:
        RedisStorage("http://user:secret@example.org/")
    assert "secret" not in str(info.value)


def test_import_works_without_redis_and_redis_storage_says_how_to_install_it() -> None:
    result = run_python(
        """
        import sys
        import simplesession
        assert "redis" not in sys.modules, "importing simplesession imported redis"
        sys.modules["redis"] = None  # as if it were not installed
        try:
            simplesession.RedisStorage("redis://127.0.0.1:6379/0")
        except ImportError as error:
            print(error)
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "RedisStorage needs the redis package: pip install 'simplesession[redis]'\n"


# -- through the middleware ---------------------------------------------------------------------------


def test_bot_sessions_on_redis_count_from_two_threads(redis_url: str, redis_prefix: str) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"count": 0}, storage=storage))

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    def worker(first: int) -> None:
        for n in range(first, first + 100):
            message = {"message_id": n, "chat": {"id": 42, "type": "group"}, "text": "/count"}
            bot.handle_update({"update_id": n, "message": message})

    threads = [threading.Thread(target=worker, args=(i * 100,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert RedisStorage(redis_url, prefix=redis_prefix).read("42") == {"count": 200}


def test_forked_child_does_not_inherit_the_parents_locks(storage: RedisStorage) -> None:
    storage.lock_timeout = 0.2
    with storage.lock("k"):
        pid = os.fork()
        if pid == 0:  # the child: the lock is the parent's, so it must time out
            code = 1
            try:
                with storage.lock("k"):
                    pass
            except LockTimeout:
                code = 0
            finally:
                os._exit(code)
        deadline = time.monotonic() + 30
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert done, "the child hung"
    assert os.waitstatus_to_exitcode(status) == 0


# -- the key layout before hash tags --------------------------------------------------------------


def old_name(prefix: str, key: str) -> bytes:
    return f"{prefix}s:{key}".encode()


def test_upgrade_moves_sessions_of_the_old_layout_with_their_expiry_and_keeps_newer_ones(
    storage: RedisStorage, client: redis.Redis
) -> None:
    def document(key: str, n: int) -> bytes:
        return json.dumps({"format": 1, "key": key, "data": {"n": n}}).encode()

    client.set(old_name(storage.prefix, "a"), document("a", 1))
    client.set(old_name(storage.prefix, "b:é"), document("b:é", 2), px=600_000)
    client.set(old_name(storage.prefix, "c"), document("c", 3))
    storage.write("c", {"n": 30})  # a bot of this release wrote it already: it is newer
    assert sorted(storage.keys()) == ["c"]
    assert next(f for f in storage.stats().details if f.name == "old_layout").value == 3

    assert storage.upgrade(dry_run=True) == (2, 1)
    assert client.exists(old_name(storage.prefix, "a"))  # a dry run moves nothing
    assert storage.upgrade() == (2, 1)
    assert sorted(storage.keys()) == ["a", "b:é", "c"]
    assert (storage.read("a"), storage.read("b:é"), storage.read("c")) == ({"n": 1}, {"n": 2}, {"n": 30})
    assert 590_000 < client.pttl(storage._name("b:é")) <= 600_000
    assert client.pttl(storage._name("a")) == -1
    assert client.get(old_name(storage.prefix, "c")) == document("c", 3)  # kept for a human
    assert storage.upgrade() == (0, 1)


def test_the_upgrade_command_moves_the_old_layout_and_says_how_much(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    client.set(old_name(redis_prefix, "42"), b'{"format": 1, "key": "42", "data": {"count": 7}}')
    command = ["--redis", redis_url, "--prefix", redis_prefix]
    stats = run_forked("from simplesession.cli import main; raise SystemExit(main())", *command, "stats")
    assert "old layout:    1 (keys " in stats.stdout
    done = run_forked("from simplesession.cli import main; raise SystemExit(main())", *command, "upgrade")
    assert (done.returncode, done.stdout) == (0, "moved 1 session to the current layout\n"), done.stderr
    assert RedisStorage(redis_url, prefix=redis_prefix).read("42") == {"count": 7}


# -- where a storage is, and whose its locks are ------------------------------------------------


def test_a_sentinel_clients_storage_names_its_sentinels_and_service_and_has_locks_of_its_own(
    storage: RedisStorage,
) -> None:
    from redis.sentinel import Sentinel

    port = free_port()  # nothing listens: making the storage asks no server
    sentinel: Any = cast(Any, Sentinel)([("127.0.0.1", port)])
    by_sentinel = RedisStorage(sentinel.master_for("bots"), prefix=storage.prefix)
    assert by_sentinel.server == f"redis+sentinel://127.0.0.1:{port}/bots/0"
    assert "localhost" not in by_sentinel.server
    assert by_sentinel.lock_name("k") != storage.lock_name("k")
    replica = RedisStorage(sentinel.slave_for("bots"), prefix=storage.prefix)
    assert replica.server.endswith("?role=replica")


def test_clients_whose_place_cannot_be_told_never_share_locks(storage: RedisStorage) -> None:
    one, two = redis.Redis(), redis.Redis()
    for client in (one, two):  # pools that say nothing of where they connect
        client.connection_pool.connection_kwargs.clear()
    first, second = RedisStorage(one, prefix="p:"), RedisStorage(two, prefix="p:")
    assert first.server != second.server
    assert first.lock_name("k") != second.lock_name("k")
    assert "6379" not in first.server
