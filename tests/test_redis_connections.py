"""The connections a RedisStorage's updates go out on: found broken and opened afresh, never
shared by two calls at once nor with a forked child, no more than its threads, and through a
client's own command path when that path must see every call."""

from __future__ import annotations

import contextlib
import functools
import gc
import io
import os
import signal
import socket
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from typing import Any, ClassVar, cast
from urllib.parse import urlsplit

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry
from redisserver import StallingProxy

from simplesession import Bot, Context, RedisStorage, StorageError, session


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    with redis.Redis.from_url(redis_url) as conn:
        yield conn


def counting_bot(storage: RedisStorage) -> Bot:
    bot = Bot(output=io.StringIO())
    bot.use(session(initial=lambda: {"n": 0}, storage=storage))

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["n"] += 1

    return bot


def count(bot: Bot, chat: int = 1, times: int = 1) -> None:
    for n in range(times):
        bot.handle_update({"update_id": n, "message": {"message_id": n, "chat": {"id": chat}, "text": "/count"}})


def test_an_update_after_the_server_closed_the_storages_connections_goes_through(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    bot = counting_bot(storage)
    count(bot, 1)
    # As a server's idle timeout, or a restart, does: every connection but this test's own.
    assert client.client_kill_filter(_type="normal", skipme=True) >= 1
    count(bot, 1)
    assert storage.read("1") == {"n": 2}


def test_a_reply_that_came_too_late_is_never_taken_for_the_next_calls(redis_url: str, redis_prefix: str) -> None:
    port = urlsplit(redis_url).port
    assert port is not None
    with StallingProxy(port) as proxy:
        storage = RedisStorage(proxy.url, prefix=redis_prefix, lock_timeout=1)
        bot = counting_bot(storage)
        count(bot, 7)

        @bot.command("stall")
        def stall(ctx: Context) -> None:
            ctx.session["n"] += 1
            proxy.stall()  # the write-back and the release get no answer in time

        with pytest.raises(StorageError):
            bot.handle_update({"update_id": 9, "message": {"message_id": 9, "chat": {"id": 7}, "text": "/stall"}})
        proxy.resume()  # the server now runs the write-back it was sent, and answers: too late
        count(bot, 7, 3)
        assert storage.read("7") == {"n": 5}


class DroppingProxy:
    """A TCP proxy on 127.0.0.1 that cuts the first connection to send an ``EVALSHA``, before
    passing it on: a call lost on the way, as a network blip loses one."""

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._dropped = False
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        for sock in [self._listener, *self._sockets]:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
                upstream.settimeout(None)
                self._sockets += [client, upstream]
                for source, sink in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if not self._dropped and b"EVALSHA" in data:
                    self._dropped = True
                    break
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)


@pytest.mark.parametrize("retries", [0, 1])
def test_a_client_of_yours_retries_a_lost_call_as_its_retry_policy_says(
    redis_url: str, redis_prefix: str, retries: int
) -> None:
    port = urlsplit(redis_url).port
    assert port is not None
    proxy = DroppingProxy(port)
    try:
        client = redis.Redis(port=proxy.port, socket_timeout=5, retry=Retry(NoBackoff(), retries))
        bot = counting_bot(RedisStorage(client, prefix=redis_prefix))
        if retries:
            count(bot, 1)
            assert RedisStorage(redis_url, prefix=redis_prefix).read("1") == {"n": 1}
        else:
            with pytest.raises(StorageError, match="is the server running and reachable"):
                count(bot, 1)
    finally:
        proxy.close()


def test_threads_share_a_storage_each_with_a_connection_of_its_own_and_no_more(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    name = f"simplesession-test-{uuid.uuid4().hex[:12]}"
    storage = RedisStorage(f"{redis_url}?client_name={name}", prefix=redis_prefix)
    bot = counting_bot(storage)
    threads = [threading.Thread(target=count, args=(bot, chat % 2, 50)) for chat in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(thread.is_alive() for thread in threads)
    assert (storage.read("0"), storage.read("1")) == ({"n": 100}, {"n": 100})
    # One per thread at most, and one more for the lock's renewals if they ever ran.
    assert len([c for c in client.client_list() if c.get("name") == name]) <= len(threads) + 1


def test_storages_made_and_dropped_one_after_another_on_one_client_of_yours_keep_one_connection(
    redis_url: str, redis_prefix: str, client: redis.Redis
) -> None:
    name = f"simplesession-test-{uuid.uuid4().hex[:12]}"
    yours = redis.Redis.from_url(f"{redis_url}?client_name={name}")
    for _ in range(10):
        storage = RedisStorage(yours, prefix=redis_prefix)
        count(counting_bot(storage))
        del storage
        gc.collect()
    assert RedisStorage(yours, prefix=redis_prefix).read("1") == {"n": 10}
    # The storages' one and the pool's own, which the read above used.
    assert len([c for c in client.client_list() if c.get("name") == name]) <= 2
    yours.close()


def test_a_dropped_storage_made_from_a_url_leaves_its_client_and_connections_to_be_freed(
    redis_url: str, redis_prefix: str
) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    count(counting_bot(storage), 1)
    pool = weakref.ref(storage.client.connection_pool)
    del storage
    for _ in range(3):  # a storage and its locks refer to one another: the collector frees them
        gc.collect()
    assert pool() is None


def test_a_forked_child_and_its_parent_each_update_on_connections_of_their_own(
    redis_url: str, redis_prefix: str
) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    bot = counting_bot(storage)
    count(bot, 1)  # the parent has a connection it keeps for the next calls
    pid = os.fork()
    if pid == 0:  # the child: had it the parent's connection, their replies would cross
        code = 1
        try:
            count(bot, 2, 200)
            code = 0
        finally:
            os._exit(code)
    try:
        count(bot, 1, 200)
    finally:
        deadline = time.monotonic() + 60
        done, status = os.waitpid(pid, os.WNOHANG)
        while not done and time.monotonic() < deadline:
            time.sleep(0.01)
            done, status = os.waitpid(pid, os.WNOHANG)
        if not done:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
    assert done, "the child hung"
    assert os.waitstatus_to_exitcode(status) == 0
    assert (storage.read("1"), storage.read("2")) == ({"n": 201}, {"n": 200})


class Logged(redis.Redis):
    """A client whose own ``execute_command`` notes every command."""

    seen: ClassVar[list[str]] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.seen.append(str(args[0]))
        return cast(Any, super()).execute_command(*args, **options)


@pytest.mark.parametrize("how", ["a subclass", "patched in place, as tracers do"])
def test_a_client_whose_command_path_is_replaced_sees_every_call_of_an_update(
    redis_url: str, redis_prefix: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    seen: list[str] = []
    if how == "a subclass":
        client: redis.Redis = Logged.from_url(redis_url)
        seen = Logged.seen
    else:
        original: Any = redis.Redis.execute_command

        @functools.wraps(original)
        def traced(self: redis.Redis, *args: Any, **options: Any) -> Any:
            seen.append(str(args[0]))
            return original(self, *args, **options)

        monkeypatch.setattr(redis.Redis, "execute_command", traced)
        client = redis.Redis.from_url(redis_url)
    bot = counting_bot(RedisStorage(client, prefix=redis_prefix))
    count(bot, 1)
    seen.clear()
    count(bot, 1)
    assert seen == ["EVALSHA", "EVALSHA"]
