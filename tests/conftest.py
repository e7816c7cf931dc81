from __future__ import annotations

import contextlib
import gc
import itertools
import os
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import forkserver
import pytest
from botrunner import JOIN_TIMEOUT, Started
from fakebotapi import FakeBotAPI
from hookstorage import HookStorage
from pgserver import drop_tables, postgres_server
from redisserver import SentinelSet, redis_cluster, redis_sentinel, redis_server

from simplesession import FileStorage, MemoryStorage, PostgresStorage, RedisStorage, SQLiteStorage, Storage
from simplesession.bot import Bot

# -- how the test processes share the files (pyproject.toml: -n 3 --dist loadfile) ----------------

# Files that run in one process, so that they share what is costly to start: aiogram takes
# seconds of CPU to import, in the test process and in its fork server (aiogram_forks).
SAME_PROCESS = {"test_aiogram_fsm.py": "test_aiogram.py"}

# The files that take longest, longest first, as measured (three processes on two cores). A
# process that is done with its file takes the next one; starting with these leaves the short
# files for the end, where the others would otherwise wait for one to finish a long one.
LONGEST_FIRST = [
    "test_aiogram.py",
    "test_properties.py",
    "test_readme.py",
    "test_storage_contract.py",
    "test_aio.py",
    "test_soak.py",
    "test_ptb.py",
    "test_hostile_data.py",
    "test_runner.py",
    "test_redis_sentinel.py",
    "test_bench_smoke.py",
    "test_examples.py",
    "test_cli_copy.py",
    "test_bot_untrusted_server.py",
    "test_cli.py",
    "test_redis_storage.py",
    "test_ptb_processes.py",
    "test_postgres_processes.py",
    "test_sqlite_storage.py",
    "test_redis_connections.py",
    "test_redis_cluster.py",
    "test_redis_bounds.py",
    "test_trust_fs.py",
    "test_crash.py",
    "test_postgres_storage.py",
    "test_bounded_reads.py",
    "test_redis_fencing.py",
    "test_telebot_states.py",
    "test_telebot.py",
    "test_lifecycle.py",
    "test_telebot_async.py",
    "test_sqlite_reads.py",
    "test_file_storage_processes.py",
]


def pytest_configure(config: pytest.Config) -> None:
    if hasattr(config.option, "loadscopereorder"):
        # xdist sends the files in the order of the collection (below), not by their number of tests.
        config.option.loadscopereorder = False


@pytest.hookimpl(trylast=True)
def pytest_unconfigure() -> None:
    # The interpreter's last garbage collections on the way out go through every object the
    # run made (with aiogram and the other frameworks imported, hundreds of thousands): a
    # second or more for each test process, which the run waits for. Nothing left then
    # needs collecting.
    gc.freeze()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    for name, other in SAME_PROCESS.items():
        rank[name] = rank.get(other, len(LONGEST_FIRST))
    items.sort(key=lambda item: rank.get(item.path.name, len(LONGEST_FIRST)))  # stable: in a file, as written


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """--dist loadfile, with the files of SAME_PROCESS sent to one process as one."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling  # type: ignore[import-untyped]

    class Scheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path: str = super()._split_scope(nodeid)
            folder, slash, name = path.rpartition("/")
            return folder + slash + SAME_PROCESS.get(name, name)

    return Scheduling(config, log)


@pytest.fixture(scope="module", autouse=True)
def _long_lived_objects_frozen() -> None:
    # What is alive as a test file starts (imports, session fixtures, caches) lives on to
    # the end of the run: frozen, the collector does not go through it again at each full
    # collection (a test process holds hundreds of thousands of such objects, aiogram's
    # models among them). What the tests make after this is collected as before.
    gc.collect()
    gc.freeze()


@pytest.fixture(scope="session")
def _homes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("homes")


@pytest.fixture(autouse=True)
def _isolated_data_dir(_homes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may touch the user's real data folder: point both the override and the
    # platform's own data folder into a temporary directory. (mkdtemp, as tmp_path_factory's
    # numbered folders list every folder made before: a cost that grows with every test.)
    home = Path(tempfile.mkdtemp(prefix="home-", dir=_homes))
    monkeypatch.setenv("SIMPLESESSION_DIR", str(home / "default-sessions"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg-data"))
    monkeypatch.setenv("HOME", str(home))


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis server for the whole test session: $SIMPLESESSION_TEST_REDIS_URL, or one started here."""
    with redis_server() as url:
        yield url


@pytest.fixture(scope="session")
def redis_cluster_ports() -> Iterator[list[int]]:
    """The ports of a 3-primary Redis Cluster on 127.0.0.1, made for the test session."""
    with redis_cluster() as ports:
        yield ports


@pytest.fixture
def sentinel_set() -> Iterator[SentinelSet]:
    """A master, a replica and a sentinel on 127.0.0.1, made for one test (failovers change them)."""
    with redis_sentinel() as made:
        yield made


@pytest.fixture
def redis_prefix(redis_url: str) -> Iterator[str]:
    """A key prefix of this test's own on the test server; its keys are deleted afterwards."""
    import redis

    prefix = f"simplesession-test:{uuid.uuid4().hex}:"  # no glob characters, so it can be a pattern
    yield prefix
    with redis.Redis.from_url(redis_url) as client:
        for name in list(client.scan_iter(match=prefix + "*", count=1000)):
            client.delete(name)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A PostgreSQL server for the whole test session: $SIMPLESESSION_TEST_POSTGRES_URL, or a cluster made here."""
    with postgres_server() as url:
        yield url


def postgres_storage(request: pytest.FixtureRequest, **options: Any) -> PostgresStorage:
    """A PostgresStorage on a table of this test's own (or ``table=``), closed and dropped afterwards."""
    url, table = request.getfixturevalue("postgres_url"), options.pop("table", f"test_{uuid.uuid4().hex}")
    storage = PostgresStorage(url, table=table, **options)

    def finish() -> None:
        storage.close()
        drop_tables(url, table)

    request.addfinalizer(finish)
    return storage


STORAGES = ["memory", "file", "file-nocache", "redis", "hooks", "sqlite", "postgres"]


def make_storage(kind: str, directory: Path, request: pytest.FixtureRequest, **options: Any) -> Storage:
    """A storage of ``kind`` (one of STORAGES) with the base's ``options`` (``max_size=``, ...)."""
    if kind == "redis":
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        return RedisStorage(url, prefix=prefix + directory.name + ":", **options)
    if kind == "memory":
        return MemoryStorage(**options)
    if kind == "file":
        return FileStorage(directory, **options)
    if kind == "file-nocache":
        return FileStorage(directory, cache_size=0, **options)
    if kind == "hooks":
        return HookStorage(**options)
    if kind == "sqlite":
        return SQLiteStorage(directory / "sessions.db", **options)
    if kind == "postgres":
        return postgres_storage(request, **options)
    raise ValueError(kind)


@pytest.fixture(params=STORAGES)
def storage_kind(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def storage(storage_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Every storage adapter, each on its own empty place."""
    return make_storage(storage_kind, tmp_path / "sessions", request)


@pytest.fixture
def storage_with(storage_kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> Callable[..., Storage]:
    """Makes a storage of every kind, with options (``max_size=``, ...), each on its own empty place."""
    made = itertools.count()
    return lambda **options: make_storage(storage_kind, tmp_path / f"with-{next(made)}", request, **options)


def make_idle(storage: Storage, key: str, seconds: float) -> None:
    """Make ``key``'s session look unused for ``seconds``, as each storage keeps its idle clock."""
    if isinstance(storage, FileStorage):
        then = time.time_ns() - int(seconds * 1e9)
        os.utime(storage.path(key), ns=(then, then))
    elif isinstance(storage, MemoryStorage):
        item = storage._items[key]
        storage._items[key] = item._replace(used=item.used - seconds)
    elif isinstance(storage, HookStorage):
        document, used, serial = storage._docs[key]
        storage._docs[key] = (document, used - seconds, serial)
    elif isinstance(storage, SQLiteStorage):
        sqlite_idle(storage, key, seconds)
    elif isinstance(storage, RedisStorage):
        # Redis's idle clock is the key's expiry: what is left of the ttl.
        assert storage.ttl is not None
        left = storage.ttl - seconds
        name = storage._name(key)
        if left > 0:
            storage.client.pexpire(name, int(left * 1000))
        else:
            storage.client.pexpire(name, 1)
            time.sleep(0.01)
    elif isinstance(storage, PostgresStorage):
        storage._set_used(key, time.time() - seconds)  # the hook of restore()
    else:
        raise TypeError(storage)


def sqlite_idle(storage: SQLiteStorage, key: str, seconds: float) -> None:
    """Make ``key``'s session in ``storage`` look unused for ``seconds``, through a connection of its own."""
    with contextlib.closing(sqlite3.connect(storage.database, isolation_level=None)) as db:
        db.execute("UPDATE sessions SET used = ? WHERE key = ?", (time.time() - seconds, key))


@pytest.fixture
def api() -> Iterator[FakeBotAPI]:
    with FakeBotAPI() as server:
        yield server


@pytest.fixture
def run() -> Iterator[Callable[[Bot], Started]]:
    started: list[Started] = []

    def start(bot: Bot) -> Started:
        started.append(Started(bot))
        return started[-1]

    yield start
    # A failed test must not leave a bot polling in the background.
    for running in started:
        running.bot.stop()
        running.thread.join(JOIN_TIMEOUT)


@pytest.fixture(scope="session")
def aiogram_forks() -> Iterator[forkserver.ForkServer]:
    """A fork server that has aiogram imported too: importing it takes seconds, forking
    milliseconds. One for the test session, shared by the aiogram test files (SAME_PROCESS)."""
    server = forkserver.ForkServer([*forkserver.PRELOAD, "aiogram", "aiogram.types", "simplesession.contrib.aiogram"])
    yield server
    server.close()


@pytest.fixture
def forked(aiogram_forks: forkserver.ForkServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """Processes this test starts with helpers.fork_python or forkserver.popen have aiogram imported."""
    monkeypatch.setattr(forkserver, "_server", aiogram_forks)
