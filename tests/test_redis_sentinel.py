"""RedisStorage through Sentinel on 127.0.0.1: a master, a replica, a sentinel, and a forced failover."""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis
from helpers import fork_python
from redis.sentinel import Sentinel
from redisserver import SentinelSet

from simplesession import RedisStorage, StorageError

# Updates of chat 7 through the middleware for argv[4] seconds, each adding 1, on a Sentinel
# client; prints how many were acknowledged (returned) and how many failed.
COUNTER = """
    import io, sys, time
    from redis.sentinel import Sentinel
    from simplesession import Bot, RedisStorage, StorageError, session

    port, service, prefix, seconds = int(sys.argv[1]), sys.argv[2], sys.argv[3], float(sys.argv[4])
    client = Sentinel([("127.0.0.1", port)], socket_timeout=1).master_for(service, socket_timeout=1)
    storage = RedisStorage(client, prefix=prefix, lock_timeout=5, lock_expiry=2)
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"n": 0}, storage=storage))

    @bot.command("count")
    def count(ctx):
        ctx.session["n"] += 1

    acknowledged = failed = 0
    deadline = time.monotonic() + seconds
    print("started", flush=True)
    while time.monotonic() < deadline:
        message = {"message_id": 1, "chat": {"id": 7, "type": "private"}, "text": "/count"}
        try:
            bot.handle_update({"update_id": 1, "message": message})
        except StorageError:
            failed += 1
            time.sleep(0.05)
        else:
            acknowledged += 1
    print(acknowledged, failed, flush=True)
"""


@pytest.fixture
def sentinel_client(sentinel_set: SentinelSet) -> Iterator[redis.Redis]:
    sentinel: Any = cast(Any, Sentinel)([("127.0.0.1", sentinel_set.sentinel)], socket_timeout=2)
    client = sentinel.master_for(sentinel_set.service, socket_timeout=2)
    yield client
    client.close()


@pytest.fixture
def prefix() -> str:
    return f"simplesession-test:{uuid.uuid4().hex}:"


def test_a_sentinel_client_works_and_the_server_names_the_sentinels_and_the_service(
    sentinel_set: SentinelSet, sentinel_client: redis.Redis, prefix: str
) -> None:
    storage = RedisStorage(sentinel_client, prefix=prefix)
    assert storage.server == f"redis+sentinel://127.0.0.1:{sentinel_set.sentinel}/{sentinel_set.service}/0"
    assert storage.wait_replicas == 1
    with storage.lock("k"):
        storage.write("k", {"n": 1})
    assert storage.read("k") == {"n": 1}
    figures = {figure.name: figure.value for figure in storage.about()}
    assert figures["master"] == f"127.0.0.1:{sentinel_set.master()}"
    replica = redis.Redis(port=sentinel_set.ports["replica"])
    assert replica.get(storage._name("k"))  # acknowledged, so on the replica already
    replica.close()


def test_a_write_too_few_replicas_confirm_fails_saying_so(sentinel_client: redis.Redis, prefix: str) -> None:
    storage = RedisStorage(sentinel_client, prefix=prefix, wait_replicas=2, lock_timeout=1)
    with pytest.raises(StorageError, match=r"only [01] of 2 replica\(s\) confirmed it") as info:
        storage.write("k", 1)
    assert "not acknowledged" in str(info.value)


def test_a_forced_failover_loses_no_acknowledged_update(sentinel_set: SentinelSet, prefix: str) -> None:
    seconds = 3.0
    args = (str(sentinel_set.sentinel), sentinel_set.service, prefix, str(seconds))
    counters = [fork_python(COUNTER, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    try:
        for counter in counters:
            assert counter.stdout is not None
            assert counter.stdout.readline() == "started\n"
        time.sleep(0.8)  # updates flow
        new_master = sentinel_set.fail_over()
        outputs = [counter.communicate(timeout=60) for counter in counters]
    finally:
        for counter in counters:
            if counter.poll() is None:
                counter.kill()
                counter.communicate(timeout=30)
    acknowledged = failed = 0
    for counter, (out, err) in zip(counters, outputs, strict=True):
        assert counter.returncode == 0, err
        done, lost = map(int, out.split())
        acknowledged, failed = acknowledged + done, failed + lost
    on_new_master = redis.Redis(port=new_master)
    stored = RedisStorage(on_new_master, prefix=prefix, wait_replicas=0).read("7")
    on_new_master.close()
    assert stored is not None
    # Every update that returned is there; one that failed may or may not have been kept.
    assert acknowledged <= stored["n"] <= acknowledged + failed, (acknowledged, failed, stored)
    assert acknowledged > 0
