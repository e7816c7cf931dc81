"""What one update sends to Redis, counted by the server itself (``INFO commandstats``)."""

from __future__ import annotations

import io
import json
import threading
from collections.abc import Callable, Iterator

import pytest
import redis

from simplesession import Bot, Context, RedisStorage, session

# What the scripts run inside the server: counted there, but not sent by the client.
INSIDE_SCRIPTS = {"set", "get", "getex", "strlen", "del", "pexpire"}
OWN = {"info", "config|resetstat"}  # the counting itself


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as conn:
        yield conn


def sent(client: redis.Redis, action: Callable[[], object]) -> dict[str, int]:
    """The calls of each command that the server ran while ``action`` ran."""
    client.config_resetstat()
    action()
    stats = client.info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(figures["calls"]) for name, figures in stats.items()}
    return {name: count for name, count in calls.items() if name not in OWN}


@pytest.fixture
def bot(redis_url: str, redis_prefix: str) -> Bot:
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"count": 0}, storage=RedisStorage(redis_url, prefix=redis_prefix, ttl=3600)))

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    @bot.command("look")
    def look(ctx: Context) -> None:
        assert ctx.session["count"] >= 0

    @bot.command("forget")
    def forget(ctx: Context) -> None:
        ctx.session = None

    return bot


def update(bot: Bot, text: str) -> Callable[[], None]:
    message = {"message_id": 1, "chat": {"id": 42, "type": "private"}, "text": text}
    return lambda: bot.handle_update({"update_id": 1, "message": message})


@pytest.mark.parametrize("text", ["/count", "/look"])
def test_an_update_sends_two_commands_whether_it_writes_or_only_reads(bot: Bot, client: redis.Redis, text: str) -> None:
    update(bot, "/count")()  # the scripts are loaded, the session exists
    counted = sent(client, update(bot, text))
    assert counted.pop("evalsha") == 2  # lock and read; write back (or not) and release
    assert set(counted) <= INSIDE_SCRIPTS, counted


def test_an_update_of_a_new_chat_sends_two_commands(bot: Bot, client: redis.Redis, redis_prefix: str) -> None:
    update(bot, "/count")()
    client.delete(redis_prefix + "{s:42}")
    counted = sent(client, update(bot, "/count"))
    assert counted.pop("evalsha") == 2
    assert set(counted) <= INSIDE_SCRIPTS, counted


def test_an_update_that_deletes_its_session_sends_three_commands(bot: Bot, client: redis.Redis) -> None:
    update(bot, "/count")()
    counted = sent(client, update(bot, "/forget"))
    assert counted.pop("evalsha") == 3  # lock and read; the delete, fenced; the release
    assert set(counted) <= INSIDE_SCRIPTS, counted


def test_a_write_back_waiting_for_the_release_is_read_by_its_holder_alone_and_never_dropped(
    redis_url: str, redis_prefix: str
) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    storage.write("k", {"n": 0})
    seen = []

    def another_thread() -> None:
        seen.append(storage.read("k"))  # not yet sent: the stored value
        storage.write("k", {"n": 5})  # races the holder, as any write without the lock does

    with storage.lock("k"):
        storage.write_for_session("k", {"n": 1}, b'{"n":1}', None)  # what the middleware does
        assert storage.read("k") == {"n": 1}  # the holder reads its own write
        thread = threading.Thread(target=another_thread)
        thread.start()
        thread.join(30)
    assert seen == [{"n": 0}]
    assert storage.read("k") == {"n": 1}  # sent with the release, after the other write


def test_updates_go_on_when_the_server_has_forgotten_the_scripts(
    bot: Bot, client: redis.Redis, redis_prefix: str
) -> None:
    update(bot, "/count")()
    client.script_flush()  # as a restarted server, or one a failover brought in
    update(bot, "/count")()
    update(bot, "/look")()
    counted = sent(client, update(bot, "/count"))
    assert counted.pop("evalsha") == 2
    stored = json.loads(client.get(redis_prefix + "{s:42}") or b"null")
    assert stored["data"] == {"count": 3}
