"""Reads are bounded: in depth (the same limit as writes, however high the recursion limit) and in
size (a storage's ``max_size``, checked before a stored value is loaded), with peak memory measured
in a child process."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import run_python

from simplesession import (
    Context,
    FileStorage,
    MemoryStorage,
    RedisStorage,
    SessionDataError,
    Storage,
    data,
    session,
)
from simplesession.data import DEFAULT_MAX_SIZE
from simplesession.session import SessionMiddleware


def errors_logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("simplesession")]


def deep_document(key: str, depth: int) -> bytes:
    return b'{"format":1,"key":"%s","data":' % key.encode() + b"[" * depth + b"]" * depth + b"}"


# -- depth ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [data.MAX_DEPTH + 1, 900, 100_000])
def test_a_stored_value_nested_deeper_than_writes_allow_is_set_aside_on_every_storage(
    storage: Storage, depth: int, caplog: pytest.LogCaptureFixture
) -> None:
    storage.write("k", {"n": 0})
    storage._put("k", deep_document("k", depth))
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read_for_session("k") is None
    [message] = errors_logged(caplog)
    assert "'k'" in message
    storage.write("k", {"n": 1})  # the chat goes on
    assert storage.read("k") == {"n": 1}


def test_the_deepest_value_a_write_accepts_reads_back_and_one_level_more_does_not(storage: Storage) -> None:
    deepest: object = "bottom"
    for _ in range(data.MAX_DEPTH):
        deepest = [deepest]
    storage.write("k", deepest)
    assert storage.read("k") == deepest
    storage._put("k", b'{"format":1,"key":"k","data":[' + data.encode(deepest) + b"]}")
    assert storage.read("k") is None


@pytest.mark.parametrize("depth", [900, 100_000])
def test_a_deep_file_is_set_aside_without_recursing_even_under_a_raised_recursion_limit(
    tmp_path: Path, depth: int
) -> None:
    # The JSON decoder recurses in C as deep as the recursion limit lets it: a bot that raised
    # the limit must not crash on a hostile file (the C stack would overflow long before).
    storage = FileStorage(tmp_path)
    storage.write("k", {"n": 0})
    hostile = deep_document("k", depth)
    storage.path("k").write_bytes(hostile)
    result = run_python(
        """
        import sys
        from simplesession import FileStorage
        sys.setrecursionlimit(1_000_000)
        storage = FileStorage(sys.argv[1])
        print(storage.read("k"), storage.read_for_session("k"))
        """,
        str(tmp_path),
    )
    assert (result.returncode, result.stdout) == (0, "None None\n"), result.stderr
    assert "nests more than 256 levels" in result.stderr
    [moved] = (tmp_path / "corrupt").iterdir()
    assert moved.read_bytes() == hostile


@pytest.mark.parametrize(
    ("text", "nesting"),
    [
        ("1", 0),
        ('{"a": [1, {"b": []}], "c": {}}', 4),
        ('["[[[[", "]]]]", "\\"[", "\\\\", {"x": "{{"}]', 2),
        ("[[]]" * 10 + "[" * 40 + "]" * 40, 40),
    ],
)
def test_the_nesting_of_json_text_is_measured_outside_its_strings(text: str, nesting: int) -> None:
    assert data._nesting(text) == nesting


# -- size -----------------------------------------------------------------------------------------


def test_a_session_of_exactly_max_size_is_stored_and_one_byte_more_is_refused_by_the_storage(
    storage_with: Callable[..., Storage],
) -> None:
    small = storage_with(max_size=100)
    fitting = "x" * 98  # 100 bytes of JSON with its quotes
    small.write("k", fitting)
    assert small.read("k") == fitting
    with pytest.raises(SessionDataError, match="101 bytes"):
        small.write("k", fitting + "y")
    assert small.read("k") == fitting


def test_a_key_whose_json_is_over_max_size_is_refused_so_every_stored_session_can_be_listed(
    storage_with: Callable[..., Storage],
) -> None:
    small = storage_with(max_size=200)
    small.write("k" * 198, 1)
    with pytest.raises(SessionDataError, match="its key takes 201 bytes"):
        small.write("k" * 199, 1)
    assert sorted(small.keys()) == ["k" * 198]


@pytest.mark.parametrize("size", [1, 1000])
def test_a_stored_value_over_max_size_is_set_aside_unread_and_the_key_starts_afresh(
    storage_with: Callable[..., Storage], size: int, caplog: pytest.LogCaptureFixture
) -> None:
    small = storage_with(max_size=100)
    small.write("k", "fits")
    small._put("k", b'{"format":1,"key":"k","data":"' + b"x" * (100 + size) + b'"}\n')
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert small.read_for_session("k") is None
    [message] = errors_logged(caplog)
    assert "'k'" in message
    assert "max_size=100" in message
    assert "k" not in list(small.keys())
    small.write("k", "again")
    assert small.read("k") == "again"


def test_max_size_must_be_a_positive_number_of_bytes(tmp_path: Path) -> None:
    for bad in (0, -1, 1.5, "1MB", True, None):
        with pytest.raises(ValueError, match="max_size must be a number of bytes > 0"):
            FileStorage(tmp_path, max_size=bad)  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="max_size"):
            MemoryStorage(max_size=bad)  # type: ignore[arg-type]


def run_update(mw: SessionMiddleware, handler: Callable[[Context], object]) -> None:
    ctx = Context({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 42}, "text": "x"}})
    mw(ctx, lambda: handler(ctx))


def grow_to(size: int) -> Callable[[Context], None]:
    def handler(ctx: Context) -> None:
        ctx.session = "x" * (size - 2)  # with its quotes

    return handler


def test_the_middleware_refuses_what_its_storage_would_naming_the_storages_limit(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, max_size=4096)
    mw = session(storage=storage, sweep_interval=None)  # the middleware's own default is 1 MiB
    assert mw.fragments[0].max_size == 4096
    run_update(mw, grow_to(4096))
    with pytest.raises(SessionDataError, match=r"over the storage's max_size=4,096.*give the storage a larger"):
        run_update(mw, grow_to(4097))
    assert storage.read("42") == "x" * 4094


def test_the_default_storage_takes_sessions_as_big_as_the_middleware_allows() -> None:
    mw = session(max_size=3 << 20, sweep_interval=None)
    assert mw.fragments[0].storage.max_size == 3 << 20  # type: ignore[attr-defined]
    run_update(mw, grow_to(2 << 20))
    small = session(max_size=4096, sweep_interval=None)
    assert small.fragments[0].storage.max_size == DEFAULT_MAX_SIZE  # type: ignore[attr-defined]
    assert small.fragments[0].max_size == 4096


# -- peak memory of a read, measured in a child process ---------------------------------------------

MEASURE_READ = """
import resource, sys
from simplesession import FileStorage, RedisStorage

# Under a cap on its address space, a read that loaded what it should not fails here at once.
resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
kind, where, key, max_size = sys.argv[1:5]
if kind == "files":
    storage = FileStorage(where, max_size=int(max_size))
else:
    storage = RedisStorage(where, prefix=sys.argv[5], max_size=int(max_size))


def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))


with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")  # the peak so far is forgotten: what follows is the read's
before = peak()
found = storage.read_for_session(key)
print(found is not None, peak() - before)
"""


def measure_read(kind: str, where: str, key: str, *prefix: str, max_size: int = DEFAULT_MAX_SIZE) -> tuple[bool, int]:
    """Whether a read in a child process found a session, and by how many bytes it raised its peak memory."""
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("measuring a process's peak memory needs Linux's /proc/self/clear_refs")
    result = run_python(MEASURE_READ, kind, where, key, str(max_size), *prefix, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    found, grew = result.stdout.split()
    return found == "True", int(grew)


FLAT_48_MIB = b'{"format":1,"key":"big","data":[' + b"[]," * (16 << 20) + b"[]]}\n"


def test_a_48_mib_file_costs_next_to_no_memory_and_is_set_aside_unread(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.path("big").parent.mkdir(parents=True)
    storage.path("big").write_bytes(FLAT_48_MIB)
    found, grew = measure_read("files", str(tmp_path), "big")
    assert not found
    assert grew < 4 << 20
    [moved] = (tmp_path / "corrupt").iterdir()
    assert moved.stat().st_size == len(FLAT_48_MIB)


def test_a_48_mib_redis_value_is_never_fetched_and_is_set_aside(redis_url: str, redis_prefix: str) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    storage.client.set(storage._name("big"), FLAT_48_MIB)
    found, grew = measure_read("redis", redis_url, "big", redis_prefix)
    assert not found
    assert grew < 4 << 20
    [aside] = storage.client.keys(storage._name("big") + b":aside:*")
    assert storage.client.strlen(aside) == len(FLAT_48_MIB)


# JSON's smallest values cost the most as Python objects: "[]" is 2 bytes of text and about 90
# bytes as a list, and a read holds two of each (the cache's and the caller's copy).
MOST_BYTES_PER_BYTE = 128
LIMIT = 256 << 10  # the default's cost is four times this; measured smaller to keep the test fast


def just_under(limit: int, unit: bytes, last: bytes) -> bytes:
    """A list of as many ``unit`` as fit in ``limit`` bytes of JSON, ending in ``last``."""
    data = b"[" + unit * ((limit - 2 - len(last)) // len(unit)) + last + b"]"
    assert limit - len(unit) < len(data) <= limit
    return data


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(just_under(LIMIT, b"[],", b"[]"), id="wide"),
        pytest.param(just_under(LIMIT, b"[" * 255 + b"]" * 255 + b",", b"1"), id="deep"),
    ],
)
def test_reading_a_session_just_under_the_limit_takes_a_bounded_multiple_of_it(tmp_path: Path, data: bytes) -> None:
    storage = FileStorage(tmp_path)
    storage.path("k").parent.mkdir(parents=True)
    storage.path("k").write_bytes(b'{"format":1,"key":"k","data":' + data + b"}\n")
    found, grew = measure_read("files", str(tmp_path), "k", max_size=LIMIT)
    assert found
    assert grew < MOST_BYTES_PER_BYTE * LIMIT
