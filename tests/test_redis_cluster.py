"""RedisStorage on a real 3-primary Redis Cluster on 127.0.0.1: slots, listings, locks, the command line."""

from __future__ import annotations

import io
import json
import subprocess
import uuid
from collections.abc import Iterator
from typing import Any

import forkserver
import pytest
import redis
import redis.cluster
from helpers import INCREMENTER, fork_python, run_forked

from simplesession import Bot, Context, LockLost, RedisStorage, multi_session

SESSIONS = [f"chat:{i}" for i in range(30)]
# Keys whose braces would end a hash tag early, or leave it empty.
BRACED = ["", "}", "{", "}{", "a}b{c", "{s:x}", "}:lock", "x}:aside:1"]


@pytest.fixture
def cluster_url(redis_cluster_ports: list[int]) -> str:
    return f"redis+cluster://127.0.0.1:{redis_cluster_ports[0]}"


@pytest.fixture
def client(redis_cluster_ports: list[int]) -> Iterator[Any]:
    # Any: redis-py types few of its cluster methods.
    conn = redis.cluster.RedisCluster(host="127.0.0.1", port=redis_cluster_ports[0])
    yield conn
    conn.close()


@pytest.fixture
def prefix(client: Any) -> Iterator[str]:
    prefix = f"simplesession-test:{uuid.uuid4().hex}:"
    yield prefix
    for node in client.get_primaries():
        node_client = client.get_redis_connection(node)
        for name in list(node_client.scan_iter(match=prefix + "*", count=1000)):
            node_client.delete(name)


@pytest.fixture
def storage(cluster_url: str, prefix: str) -> RedisStorage:
    return RedisStorage(cluster_url, prefix=prefix)


def per_primary(client: Any, prefix: str) -> list[int]:
    """How many keys with ``prefix`` each primary holds."""
    counts = []
    for node in client.get_primaries():
        counts.append(len(list(client.get_redis_connection(node).scan_iter(match=prefix + "*", count=1000))))
    return counts


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return forkserver.run(["-m", "simplesession", *args], input=stdin, timeout=60)


def test_a_sessions_value_lock_and_set_aside_keys_share_one_slot(storage: RedisStorage, client: Any) -> None:
    for key in [*BRACED, "chat:1", "é"]:
        slot = client.keyslot(storage._name(key))
        aside_name = storage._name(key) + b":aside:20240101T000000Z-abcdef"
        assert client.keyslot(storage._lock_name(key)) == slot, key
        assert client.keyslot(aside_name) == slot, key
        with storage.lock(key):
            storage.write(key, {"key": key})
        assert storage.read(key) == {"key": key}
    assert sorted(storage.keys()) == sorted([*BRACED, "chat:1", "é"])


def test_keys_stats_and_the_sweep_cover_every_primary(storage: RedisStorage, client: Any) -> None:
    for key in SESSIONS:
        storage.write(key, {"key": key})
    assert sum(1 for count in per_primary(client, storage.prefix) if count) >= 2  # spread over the primaries
    assert sorted(storage.keys()) == sorted(SESSIONS)
    assert storage.stats().sessions == len(SESSIONS)
    assert storage.sweep().scanned == len(SESSIONS)


def test_a_corrupt_value_is_set_aside_in_its_slot_and_the_chat_goes_on(
    storage: RedisStorage, client: Any, caplog: pytest.LogCaptureFixture
) -> None:
    client.set(storage._name("k"), b"garbage")
    assert storage.read("k") is None
    [aside] = [f for f in storage.stats().details if f.name == "set_aside"]
    assert aside.value == 1
    assert any("garbage" not in r.getMessage() and "'k'" in r.getMessage() for r in caplog.records)
    storage.write("k", {"n": 1})
    assert storage.read("k") == {"n": 1}


def test_processes_incrementing_through_the_cluster_lose_no_update(cluster_url: str, prefix: str) -> None:
    options = json.dumps({"prefix": prefix})
    procs = [
        fork_python(
            INCREMENTER,
            cluster_url,
            options,
            "60",
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert RedisStorage(cluster_url, prefix=prefix).read("counter") == {"n": 180}


def test_writes_under_a_lost_lock_are_refused_on_a_cluster(storage: RedisStorage, client: Any) -> None:
    storage.write("k", 1)
    with storage.lock("k"):
        client.set(storage._lock_name("k"), b"another holder's token")
        with pytest.raises(LockLost):
            storage.write("k", 2)
    assert storage.read("k") == 1


def test_every_command_line_command_covers_every_primary(cluster_url: str, prefix: str, client: Any) -> None:
    storage = RedisStorage(cluster_url, prefix=prefix)
    for key in SESSIONS:
        storage.write(key, {"key": key})
    where = ("--redis", cluster_url, "--prefix", prefix)
    listed = cli(*where, "ls")
    assert (listed.returncode, listed.stdout.split()) == (0, sorted(SESSIONS)), listed.stderr
    stats = cli(*where, "stats", "--json")
    assert json.loads(stats.stdout)["sessions"] == len(SESSIONS), stats.stderr
    exported = cli(*where, "export")
    assert sorted(json.loads(line)["key"] for line in exported.stdout.splitlines()) == sorted(SESSIONS)
    shown = cli(*where, "show", "chat:7")
    assert json.loads(shown.stdout) == {"key": "chat:7"}, shown.stderr
    assert cli(*where, "rm", "chat:7").returncode == 0
    assert cli(*where, "sweep").returncode == 0
    other = ("--redis", cluster_url, "--prefix", prefix + "copy:")
    imported = cli(*other, "import", stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert sorted(RedisStorage(cluster_url, prefix=prefix + "copy:").keys()) == sorted(SESSIONS)
    assert sorted(storage.keys()) == sorted(set(SESSIONS) - {"chat:7"})


def test_the_server_names_every_primary_and_cluster_locks_are_not_another_servers(
    storage: RedisStorage, redis_cluster_ports: list[int], redis_url: str
) -> None:
    assert storage.server.startswith("redis+cluster://")
    assert all(f"127.0.0.1:{port}" in storage.server for port in redis_cluster_ports)
    single = RedisStorage(redis_url, prefix=storage.prefix, lock_timeout=1)
    assert storage.lock_name("k") != single.lock_name("k")
    with storage.lock("k"), single.lock("k"):  # the second is taken, not entered again
        assert single.client.exists(single._lock_name("k"))
        assert storage.client.exists(storage._lock_name("k"))
    bot = Bot(output=io.StringIO())
    bot.use(multi_session(a={"storage": storage, "prefix": ""}, b={"storage": single, "prefix": ""}))

    @bot.command("both")
    def both(ctx: Context) -> None:
        ctx.session.a = {"on": "cluster"}
        ctx.session.b = {"on": "server"}

    bot.handle_update({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 5}, "text": "/both"}})
    assert (storage.read("5"), single.read("5")) == ({"on": "cluster"}, {"on": "server"})
    single.delete("5")


def test_upgrade_moves_the_old_layout_across_slots(storage: RedisStorage, client: Any) -> None:
    old: dict[str, Any] = {key: {"key": key} for key in SESSIONS[:10]}
    for key, data in old.items():
        document = json.dumps({"format": 1, "key": key, "data": data}).encode()
        client.set(f"{storage.prefix}s:{key}".encode(), document)
    assert storage.upgrade() == (10, 0)
    listed = list(storage.keys())
    assert {key: storage.read(key) for key in listed} == old
    assert sum(per_primary(client, storage.prefix)) == 10  # the old names are gone


def test_waiting_for_replicas_is_refused_on_a_cluster_saying_so(cluster_url: str) -> None:
    with pytest.raises(ValueError, match="on a cluster it must be 0"):
        RedisStorage(cluster_url, wait_replicas=1)


def test_a_cluster_address_that_answers_nothing_is_a_storage_error() -> None:
    result = run_forked(
        """
        from simplesession import RedisStorage, StorageError
        try:
            RedisStorage("redis+cluster://127.0.0.1:1", lock_timeout=1)
        except StorageError as error:
            print("StorageError", error)
        """
    )
    assert result.stdout.startswith("StorageError could not reach the Redis cluster"), result.stderr


def test_a_cluster_url_names_a_store_for_open_storage_and_the_store_option(cluster_url: str, prefix: str) -> None:
    from simplesession.storage.urls import open_storage

    storage = open_storage(cluster_url, prefix=prefix)
    assert isinstance(storage, RedisStorage)
    assert storage.server.startswith("redis+cluster://")
    for key in SESSIONS:
        storage.write(key, 1)
    listed = cli("--store", cluster_url, "--prefix", prefix, "ls")
    assert (listed.returncode, listed.stdout.split()) == (0, sorted(SESSIONS)), listed.stderr
