"""Property-based tests: key names, JSON round trips, and storages against a dict model.

Hypothesis draws the keys, values and operation sequences. Every test keeps its example
count modest and has no deadline, so the file runs in seconds; each example gets places
of its own (a fresh folder, a fresh Redis prefix), so examples cannot leak into each other.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import psycopg_pool
import pytest
import redis
from conftest import sqlite_idle
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simplesession import (
    Context,
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    RedisStorage,
    SQLiteStorage,
    Storage,
    session,
)
from simplesession.keys import MAX_STEM, encode_key, is_hashed_name, key_from_name


# Function-scoped fixtures (the Redis URL's users) are fine here: every example makes its
# own place and cleans it up.
def bounded(examples: int) -> settings:
    return settings(max_examples=examples, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


SAFE_NAME = re.compile(r"[kh][a-z0-9_~-]*\.json\Z")
ECRYPTFS_NAME_MAX = 143
TTL = 3600.0


# -- strategies ---------------------------------------------------------------------------------

keys_text = st.one_of(
    st.text(),
    st.text(min_size=MAX_STEM - 10, max_size=3 * MAX_STEM),  # around the switch to hashed names
    st.text(alphabet="~kh.json/\\\x00aA1-_ :", max_size=40),  # the escape character, prefixes, separators
    st.text(alphabet=st.characters(max_codepoint=0x7F)),
)

surrogates = st.characters(categories=["Cs"])

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**512), max_value=2**512),
    st.sampled_from([2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**300, -(10**300)]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(),
    st.text(alphabet='\x00\x1f"\\\u2028\u2029\ufeff\uffff\U0010ffff\u0301é🐍中'),
)


def json_values(max_leaves: int = 25) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6),
        max_leaves=max_leaves,
    )


session_values = json_values().filter(lambda v: v is not None)  # None means "delete"
versions = st.one_of(st.none(), st.integers(-(10**9), 10**9), st.floats(allow_nan=False, allow_infinity=False))


def same(a: Any, b: Any) -> bool:
    """Equal with the same types all the way down, dict key order and the sign of zero included."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return a == b and math.copysign(1, a) == math.copysign(1, b)
    return bool(a == b)


# -- places: one storage's sessions, seen through several storage objects ----------------------


class Place:
    """The sessions of one example: ``open()`` gives another storage object on them."""

    def __init__(
        self,
        kind: str,
        redis_url: str | None,
        ttl: float | None = None,
        pool: tuple[psycopg_pool.ConnectionPool, str] | None = None,
    ) -> None:
        self.kind = kind
        self.ttl = ttl
        self._folder: str | None = None
        self._client: redis.Redis | None = None
        self._prefix = f"simplesession-prop:{uuid.uuid4().hex}:"
        self._memory: MemoryStorage | None = None
        self._pool: psycopg_pool.ConnectionPool | None = None
        if kind.startswith(("file", "sqlite")):
            self._folder = tempfile.mkdtemp(prefix="simplesession-prop-")
        elif kind == "redis":
            assert redis_url is not None
            self._client = redis.Redis.from_url(redis_url)
        elif kind == "memory":
            self._memory = MemoryStorage(ttl=ttl)
        elif kind == "postgres":
            assert pool is not None
            self._pool, self._table = pool
        else:
            raise ValueError(kind)

    def open(self, *, cache: bool = True) -> Storage:
        """A storage object on this place's sessions (for memory there is only the one)."""
        if self._memory is not None:
            return self._memory
        if self._client is not None:
            return RedisStorage(self._client, prefix=self._prefix, ttl=self.ttl)
        if self._pool is not None:  # one pool for all: a storage object costs no connection of its own
            return PostgresStorage(self._pool, table=self._table, ttl=self.ttl)
        assert self._folder is not None
        cache_size = 1024 if cache and not self.kind.endswith("-nocache") else 0
        if self.kind.startswith("sqlite"):
            return SQLiteStorage(os.path.join(self._folder, "sessions.db"), cache_size=cache_size, ttl=self.ttl)
        return FileStorage(self._folder, cache_size=cache_size, ttl=self.ttl)

    def fresh(self) -> Storage:
        """A new storage object without a cache: what another process would read."""
        return self.open(cache=False)

    def close(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
        if self._client is not None:
            for name in list(self._client.scan_iter(match=self._prefix + "*", count=1000)):
                self._client.delete(name)
            self._client.close()
        if self._pool is not None:
            with self._pool.connection() as conn:  # the module's table, emptied for the next example
                conn.execute(f'TRUNCATE "{self._table}", "{self._table}_aside"'.encode())


PlaceMaker = Callable[..., "contextlib.AbstractContextManager[Place]"]


@pytest.fixture(scope="module")
def postgres_pool(postgres_url: str) -> Iterator[tuple[psycopg_pool.ConnectionPool, str]]:
    """A pool and a table for the examples, one after the other: made once, emptied after each."""
    table = f"prop_{uuid.uuid4().hex}"
    with psycopg_pool.ConnectionPool(postgres_url, min_size=1, max_size=8, kwargs={"autocommit": True}) as pool:
        PostgresStorage(pool, table=table)
        yield pool, table
        with pool.connection() as conn:
            conn.execute(f'DROP TABLE "{table}", "{table}_aside"'.encode())


@pytest.fixture
def places(request: pytest.FixtureRequest) -> PlaceMaker:
    """``places(kind, ttl=None)``: a context manager giving a fresh :class:`Place`."""

    @contextlib.contextmanager
    def make(kind: str, ttl: float | None = None) -> Iterator[Place]:
        url = request.getfixturevalue("redis_url") if kind == "redis" else None
        pool = request.getfixturevalue("postgres_pool") if kind == "postgres" else None
        place = Place(kind, url, ttl, pool)
        try:
            yield place
        finally:
            place.close()

    return make


# -- keys -> file names ---------------------------------------------------------------------------


@bounded(300)
@given(st.lists(keys_text, min_size=1, max_size=30, unique=True))
def test_key_names_are_injective_safe_and_reversible(keys: list[str]) -> None:
    root = os.path.join(os.sep, "data", "sessions")
    by_folded_name: dict[str, str] = {}
    for key in keys:
        shard, name = encode_key(key)
        assert re.fullmatch(r"[0-9a-f]{2}", shard)
        assert SAFE_NAME.match(name), name
        assert len(name.encode()) <= ECRYPTFS_NAME_MAX
        path = os.path.normpath(os.path.join(root, shard, name))
        assert os.path.dirname(path) == os.path.join(root, shard)  # never leaves its folder
        # Distinct even where the filesystem folds case (names are ASCII, so no normal forms).
        assert name.isascii()
        assert name.lower() not in by_folded_name, (key, by_folded_name.get(name.lower()))
        by_folded_name[name.lower()] = key
        if name.startswith("k"):
            assert key_from_name(name) == key
        else:
            assert is_hashed_name(name)
            assert key_from_name(name) is None


@bounded(300)
@given(st.text())
def test_any_file_name_decodes_to_nothing_or_to_the_key_with_that_very_name(text: str) -> None:
    for name in (text, f"k{text}.json", f"k{text.lower()}.json"):
        key = key_from_name(name)
        if key is not None:
            assert encode_key(key)[1] == name


STORAGE_KINDS = ["memory", "file", "file-nocache", "redis", "sqlite", "postgres"]


@bounded(40)
@pytest.mark.parametrize("kind", STORAGE_KINDS)
@given(prefix=st.text(max_size=10), surrogate=surrogates, suffix=st.text(max_size=10))
def test_keys_with_lone_surrogates_are_refused_with_a_value_error_and_create_nothing(
    places: PlaceMaker, kind: str, prefix: str, surrogate: str, suffix: str
) -> None:
    key = prefix + surrogate + suffix
    with pytest.raises(ValueError, match="surrogate") as info:
        encode_key(key)
    assert not isinstance(info.value, UnicodeError)
    with places(kind) as place:
        storage = place.open()
        actions: list[Callable[[], object]] = [
            lambda: storage.write(key, {"v": 1}),
            lambda: storage.read(key),
            lambda: storage.has(key),
            lambda: storage.delete(key),
            lambda: storage.lock(key).__enter__(),
        ]
        for action in actions:
            with pytest.raises(ValueError, match="surrogate") as info:
                action()
            assert not isinstance(info.value, UnicodeError)
        assert list(place.fresh().keys()) == []
        if isinstance(storage, FileStorage):
            assert not storage.directory.exists() or [p for p in storage.directory.rglob("*") if p.is_file()] == []


# -- JSON values round-trip identically -------------------------------------------------------------


@bounded(60)
@pytest.mark.parametrize("kind", STORAGE_KINDS)
@given(value=session_values, version=versions)
def test_any_json_value_round_trips_identically_from_the_cache_and_from_disk(
    places: PlaceMaker, kind: str, value: Any, version: float | None
) -> None:
    with places(kind) as place:
        storage = place.open()
        storage.write("k", value, version=version)
        for reader in (storage, storage, place.open(), place.fresh()):  # twice: the second is a cache hit
            got = reader.read("k")
            assert same(got, value), (got, value)
            versioned = reader.read_versioned("k")
            assert versioned is not None
            assert same(versioned[0], value)
            assert same(versioned[1], version)


@bounded(40)
@pytest.mark.parametrize("kind", STORAGE_KINDS)
@given(value=session_values)
def test_any_json_value_round_trips_identically_through_the_middleware(
    places: PlaceMaker, kind: str, value: Any
) -> None:
    with places(kind) as place:
        writer = session(storage=place.open(), sweep_interval=None)
        ctx = Context({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 5}, "text": "x"}})

        def assign() -> None:
            ctx.session = value

        writer(ctx, assign)
        for storage in (place.open(), place.fresh()):
            seen: list[Any] = []
            reader = session(storage=storage, sweep_interval=None)
            ctx = Context({"update_id": 2, "message": {"message_id": 2, "chat": {"id": 5}, "text": "x"}})
            reader(ctx, lambda: seen.append(ctx.session))  # noqa: B023 - called at once
            assert same(seen[0], value), (seen[0], value)


# -- random operations against a dict model ----------------------------------------------------------

MODEL_KEYS = ["a", "A", "chat:1", "", "~61", "ka", "é", "e\u0301", "x" * (MAX_STEM + 10), "../up", "1"]
model_keys = st.sampled_from(MODEL_KEYS)
small_values = json_values(max_leaves=6).filter(lambda v: v is not None)


def op(name: str, *parts: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    return st.tuples(st.just(name), *parts)


operations = st.lists(
    st.one_of(
        op("write", model_keys, small_values),
        op("write_other", model_keys, small_values),
        op("write_none", model_keys),
        op("read", model_keys),
        op("read_other", model_keys),
        op("read_fresh", model_keys),
        op("has", model_keys),
        op("delete", model_keys),
        op("delete_other", model_keys),
        op("keys"),
        op("locked_update", model_keys, small_values),
        op("age", model_keys),
        op("sweep"),
        op("sweep_ttl"),
    ),
    max_size=30,
)


def age(storage: Storage, key: str) -> bool:
    """Make ``key``'s session look idle for two hours; whether it could be (Redis cannot)."""
    if isinstance(storage, FileStorage):
        then = time.time_ns() - int(2 * TTL * 1e9)
        with contextlib.suppress(FileNotFoundError):
            os.utime(storage.path(key), ns=(then, then))
        return True
    if isinstance(storage, SQLiteStorage):
        sqlite_idle(storage, key, 2 * TTL)
        return True
    if isinstance(storage, MemoryStorage):
        item = storage._items.get(key)
        if item is not None:
            storage._items[key] = item._replace(used=item.used - 2 * TTL)
        return True
    if isinstance(storage, PostgresStorage):
        storage._set_used(key, time.time() - 2 * TTL)
        return True
    return False


MODEL_KINDS = [
    pytest.param("memory", None, id="memory"),
    pytest.param("memory", TTL, id="memory-ttl"),
    pytest.param("file", None, id="file"),
    pytest.param("file-nocache", None, id="file-nocache"),
    pytest.param("file", TTL, id="file-ttl"),
    pytest.param("file-nocache", TTL, id="file-nocache-ttl"),
    pytest.param("redis", None, id="redis"),
    pytest.param("sqlite", None, id="sqlite"),
    pytest.param("sqlite-nocache", TTL, id="sqlite-nocache-ttl"),
    pytest.param("sqlite", TTL, id="sqlite-ttl"),
    pytest.param("postgres", None, id="postgres"),
    pytest.param("postgres", TTL, id="postgres-ttl"),
]


@bounded(40)
@pytest.mark.parametrize(("kind", "ttl"), MODEL_KINDS)
@given(ops=operations)
def test_random_operations_match_a_dict_model(
    places: PlaceMaker, kind: str, ttl: float | None, ops: list[tuple[Any, ...]]
) -> None:
    with places(kind, ttl) as place:
        storage, other = place.open(), place.open()
        model: dict[str, Any] = {}
        aged: set[str] = set()  # keys whose sessions look idle for longer than TTL

        def visible(key: str) -> Any:
            if key not in model or (ttl is not None and key in aged):
                return None
            return model[key]

        def removed_by_sweep() -> int:
            gone = [key for key in model if key in aged]
            for key in gone:
                del model[key]
            aged.clear()
            return len(gone)

        for step in ops:
            name, *args = step
            if name in ("write", "write_other"):
                key, value = args
                (storage if name == "write" else other).write(key, value)
                model[key] = value
                aged.discard(key)
            elif name in ("write_none", "delete", "delete_other"):
                (key,) = args
                if name == "write_none":
                    storage.write(key, None)
                else:
                    (storage if name == "delete" else other).delete(key)
                model.pop(key, None)
                aged.discard(key)
            elif name in ("read", "read_other", "read_fresh"):
                (key,) = args
                reader = {"read": storage, "read_other": other, "read_fresh": place.fresh()}[name]
                assert same(reader.read(key), visible(key)), step
            elif name == "has":
                (key,) = args
                assert storage.has(key) is (visible(key) is not None), step
            elif name == "keys":
                listed = list(storage.keys())
                assert len(listed) == len(set(listed))
                assert sorted(listed) == sorted(k for k in model if visible(k) is not None), step
            elif name == "locked_update":
                key, value = args
                with storage.lock(key), other.lock(key):  # reentrant, also through another object
                    assert same(storage.read(key), visible(key)), step
                    storage.write(key, value)
                model[key] = value
                aged.discard(key)
            elif name == "age":
                (key,) = args
                if key in model and age(storage, key):
                    aged.add(key)
            elif name == "sweep":
                report = storage.sweep()
                assert report.removed == (removed_by_sweep() if ttl is not None else 0), step
                assert report.in_use == 0
            elif name == "sweep_ttl":
                report = storage.sweep(ttl=TTL)
                assert report.removed == removed_by_sweep(), step
                assert report.in_use == 0
            else:  # pragma: no cover
                raise AssertionError(name)
        final = place.fresh()
        assert sorted(final.keys()) == sorted(k for k in model if visible(k) is not None)
        for key in MODEL_KEYS:
            assert same(final.read(key), visible(key)), key
