"""Fenced writes on Redis: a holder that lost its lock (paused, cut off) writes nothing and says so."""

from __future__ import annotations

import io
import logging
import select
import signal
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import forkserver
import pytest
import redis
from helpers import fork_python, run_forked
from redisserver import StallingProxy

from simplesession import Bot, Context, LockLost, RedisStorage, StorageError, multi_session, session

# One update of chat 7 through the middleware that stops, holding the lock, after loading
# its session ("loaded N"), until a line arrives on stdin; then it adds 1000 (or deletes).
HOLDER = """
    import io, sys
    from simplesession import Bot, LockLost, RedisStorage, session

    url, prefix, expiry, action = sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4]
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"n": 0}, storage=RedisStorage(url, prefix=prefix, lock_expiry=expiry)))

    @bot.command("count")
    def count(ctx):
        print("loaded", ctx.session["n"], flush=True)
        sys.stdin.readline()
        if action == "delete":
            ctx.session = None
        else:
            ctx.session["n"] += 1000

    message = {"message_id": 1, "chat": {"id": 7, "type": "private"}, "text": "/count"}
    try:
        bot.handle_update({"update_id": 1, "message": message})
    except LockLost as error:
        print("LockLost:", error, flush=True)
    else:
        print("written", flush=True)
"""

# N updates of chat 7 through the middleware, each adding 1; waits for the lock as long as needed.
COUNTER = """
    import io, sys
    from simplesession import Bot, RedisStorage, session

    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"n": 0}, storage=RedisStorage(sys.argv[1], prefix=sys.argv[2], lock_timeout=60)))

    @bot.command("count")
    def count(ctx):
        ctx.session["n"] += 1

    for n in range(int(sys.argv[3])):
        message = {"message_id": n, "chat": {"id": 7, "type": "private"}, "text": "/count"}
        bot.handle_update({"update_id": n, "message": message})
"""

UPDATES = 10
EXPIRY = 1.0


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as conn:
        yield conn


def start_holder(url: str, prefix: str, action: str) -> forkserver.Process:
    holder = fork_python(
        HOLDER, url, prefix, str(EXPIRY), action, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert holder.stdout is not None
    ready, _, _ = select.select([holder.stdout], [], [], 30)
    line = holder.stdout.readline() if ready else ""
    if line != "loaded 0\n":
        holder.kill()
        _, err = holder.communicate(timeout=30)
        pytest.fail(f"the holder did not load its session: {line!r} {err}")
    return holder


def count_elsewhere(redis_url: str, prefix: str) -> None:
    """UPDATES updates in another process, which get the lock once the holder's has expired."""
    result = run_forked(COUNTER, redis_url, prefix, str(UPDATES))
    assert result.returncode == 0, result.stderr


def finish(holder: forkserver.Process) -> str:
    try:
        out, err = holder.communicate("go\n", timeout=30)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.communicate(timeout=30)
    assert holder.returncode == 0, err
    return str(out)


def stored(redis_url: str, prefix: str) -> Any:
    return RedisStorage(redis_url, prefix=prefix).read("7")


@pytest.mark.parametrize("action", ["write", "delete"])
def test_a_holder_paused_past_lock_expiry_writes_nothing_and_its_update_fails_saying_so(
    redis_url: str, redis_prefix: str, action: str
) -> None:
    RedisStorage(redis_url, prefix=redis_prefix).write("7", {"n": 0})  # so that there is something to delete
    holder = start_holder(redis_url, redis_prefix, action)
    holder.send_signal(signal.SIGSTOP)  # a GC pause, a frozen VM: its lock renewals stop too
    try:
        count_elsewhere(redis_url, redis_prefix)
    finally:
        holder.send_signal(signal.SIGCONT)
    out = finish(holder)
    assert out.startswith("LockLost: the lock of session '7'")
    assert "nothing was written" in out
    assert stored(redis_url, redis_prefix) == {"n": UPDATES}  # every acknowledged update, none undone


def test_a_holder_cut_off_past_lock_expiry_writes_nothing_once_its_connection_comes_back(
    redis_url: str, redis_prefix: str
) -> None:
    port = urlsplit(redis_url).port
    assert port is not None
    with StallingProxy(port) as proxy:
        holder = start_holder(proxy.url, redis_prefix, "write")
        proxy.stall()  # the holder's connections stay open, but nothing gets through
        try:
            count_elsewhere(redis_url, redis_prefix)
            assert holder.stdin is not None
            holder.stdin.write("go\n")  # its write-back now waits in the cut-off connection
            holder.stdin.flush()
        finally:
            proxy.resume()
        out = finish(holder)
    assert out.startswith("LockLost: the lock of session '7'")
    assert stored(redis_url, redis_prefix) == {"n": UPDATES}


def take_over(client: redis.Redis, storage: RedisStorage, key: str) -> None:
    """What the server does when a holder's lock expires and another holder takes it."""
    client.set(storage._lock_name(key), b"another holder's token")


def test_a_write_or_delete_under_a_lost_lock_is_refused_and_the_value_stays(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    storage.write("k", {"n": 1})
    with storage.lock("k"):
        storage.write("k", {"n": 2})  # fenced, and still ours
        take_over(client, storage, "k")
        client.set(storage._name("k"), b'{"format": 1, "key": "k", "data": {"n": 3}}')  # the new holder's write
        with pytest.raises(LockLost, match="nothing was written") as info:
            storage.write("k", {"n": 4})
        with pytest.raises(LockLost):
            storage.delete("k")
    assert isinstance(info.value, StorageError)
    assert info.value.key == "k"
    assert storage.read("k") == {"n": 3}
    assert client.get(storage._lock_name("k")) == b"another holder's token"  # not ours to release


def test_an_update_that_only_read_under_a_lost_lock_succeeds_and_logs_the_loss(
    redis_url: str, redis_prefix: str, client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    storage.write("7", {"n": 5})
    bot = Bot(output=io.StringIO())
    bot.use(session(storage=storage))
    seen = []

    @bot.command("look")
    def look(ctx: Context) -> None:
        seen.append(ctx.session["n"])
        take_over(client, storage, "7")

    bot.handle_update({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 7}, "text": "/look"}})
    assert seen == [5]
    assert any("expired while held" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


def test_a_multi_session_whose_one_lock_was_lost_writes_the_other_releases_both_and_fails(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix, lock_timeout=1)
    bot = Bot(output=io.StringIO())
    bot.use(multi_session(a={"storage": storage, "initial": dict}, b={"storage": storage, "initial": dict}))

    @bot.command("both")
    def both(ctx: Context) -> None:
        ctx.session.a["n"] = ctx.session.b["n"] = 1
        take_over(client, storage, "b:7")

    with pytest.raises(LockLost, match="'b:7'"):
        bot.handle_update({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 7}, "text": "/both"}})
    assert storage.read("a:7") == {"n": 1}
    assert storage.read("b:7") is None
    client.delete(storage._lock_name("b:7"))
    for key in ("a:7", "b:7"):
        with storage.lock(key):  # this process let go of both
            pass
