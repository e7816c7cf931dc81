"""What bounds a RedisStorage: a server that stops answering, and the redis-py releases it runs on."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from redisserver import StallingProxy

from simplesession import Bot, Context, RedisStorage, StorageError, session

OLDEST_VARIABLE = "SIMPLESESSION_TEST_OLDEST_REDIS_PY"
PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
# Far beyond lock_timeout: without socket timeouts the update would wait for ever.
PATIENCE = 20


def updating(bot: Bot) -> tuple[threading.Thread, list[BaseException | None]]:
    """One update of chat 7 running in a thread, and what it raised (``None``: nothing)."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            bot.handle_update({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 7}, "text": "/count"}})
        except BaseException as exc:
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


@pytest.fixture
def proxy(redis_url: str) -> Iterator[StallingProxy]:
    port = urlsplit(redis_url).port
    assert port is not None
    with StallingProxy(port) as made:
        yield made


@pytest.mark.parametrize("when", ["before the update", "during the update"])
def test_an_update_fails_within_about_lock_timeout_when_the_server_stops_answering(
    proxy: StallingProxy, redis_prefix: str, when: str
) -> None:
    storage = RedisStorage(proxy.url, prefix=redis_prefix, lock_timeout=1)
    storage.write("7", {"n": 1})
    bot = Bot(output=io.StringIO())
    bot.use(session(storage=storage))

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["n"] += 1
        if when == "during the update":
            proxy.stall()  # the write-back and the release get no answer

    if when == "before the update":
        proxy.stall()
    try:
        thread, outcome = updating(bot)
        thread.join(PATIENCE)
        assert not thread.is_alive(), "the update waited for a server that had stopped answering"
    finally:
        proxy.resume()
    [error] = outcome
    assert isinstance(error, StorageError)
    assert "is the server running and reachable?" in str(error)
    if when == "during the update":
        assert "it may have been done" in str(error)  # the server may yet run what it was sent


def test_the_oldest_redis_py_supported_runs_fenced_updates_on_a_server_and_on_a_cluster(
    redis_url: str, redis_prefix: str, redis_cluster_ports: list[int]
) -> None:
    folder = os.environ.get(OLDEST_VARIABLE)
    if not folder:
        why = f"${OLDEST_VARIABLE} names no folder with the oldest redis-py (.ci/run installs it there)"
        if os.environ.get("CI"):
            pytest.fail(f"CI must test the oldest redis-py, but {why}")
        pytest.skip(why)
    floor = re.search(r'redis = \["redis>=([0-9.]+),', PYPROJECT.read_text("utf-8"))
    assert floor is not None, "the redis extra states no oldest release"
    cluster = f"redis+cluster://127.0.0.1:{redis_cluster_ports[0]}"
    code = """
import io, sys
import redis
from simplesession import Bot, LockLost, RedisStorage, session

print(redis.__version__)
for url in sys.argv[1:3]:
    storage = RedisStorage(url, prefix=sys.argv[3])
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"n": 0}, storage=storage))

    @bot.command("count")
    def count(ctx):
        ctx.session["n"] += 1

    for n in range(5):
        bot.handle_update({"update_id": n, "message": {"message_id": n, "chat": {"id": n % 2}, "text": "/count"}})
    assert storage.read("0") == {"n": 3} and storage.read("1") == {"n": 2}
    assert sorted(storage.keys()) == ["0", "1"] and storage.stats().sessions == 2
    with storage.lock("0"):
        storage.client.set(storage._lock_name("0"), b"another holder's token")
        try:
            storage.write("0", {"n": 100})
        except LockLost:
            pass
        else:
            raise AssertionError("a write under a lost lock went through")
    storage.client.delete(storage._lock_name("0"))
    storage.client.set(storage._name("1"), b"garbage")
    assert storage.read("1") is None and storage.read("0") == {"n": 3}
    print("ok", storage.server)
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([folder, *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code, redis_url, cluster, redis_prefix],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    version, *results = done.stdout.splitlines()
    assert version == floor.group(1)
    assert [line.split()[0] for line in results] == ["ok", "ok"]
