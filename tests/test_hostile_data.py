"""Hostile session data and keys: deep nesting, sizes at the limit, non-JSON numbers and text,
subclasses of JSON types, long and strange keys; in every storage and through the bot loop."""

from __future__ import annotations

import collections
import enum
import functools
import io
import json
import logging
import sys
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simplesession import (
    Bot,
    Context,
    FileStorage,
    MemoryStorage,
    RedisStorage,
    SessionDataError,
    SessionKeyError,
    Storage,
    session,
)
from simplesession.session import DEFAULT_MAX_SIZE


def views(storage: Storage) -> list[Storage]:
    """``storage`` and a fresh object on the same sessions (no cache: what disk or server hold)."""
    if isinstance(storage, FileStorage):
        return [storage, FileStorage(storage.directory, cache_size=0)]
    if isinstance(storage, RedisStorage):
        return [storage, RedisStorage(storage.client, prefix=storage.prefix)]
    return [storage]


def assert_reads_everywhere(storage: Storage, key: str, expected: Any) -> None:
    for view in views(storage):
        got = view.read(key)
        assert got == expected
        assert type(got) is type(expected)


@functools.cache  # built once: a 100,000-level value costs more to build (and free) than to refuse
def nested(depth: int, kind: str = "list") -> Any:
    """A value ``depth`` levels deep; shared between the tests, so never to be changed."""
    value: Any = "bottom"
    for i in range(depth):
        value = [value] if kind == "list" else {f"level{i}": value}
    return value


def depth_of(value: Any) -> int:
    depth = 0
    while type(value) in (list, dict):
        value = value[0] if type(value) is list else next(iter(value.values()))
        depth += 1
    return depth


def at_stack_depth(frames: int, action: Callable[[], Any]) -> Any:
    """Run ``action`` with ``frames`` more frames on the stack, as a deeper caller would."""
    if frames == 0:
        return action()
    return at_stack_depth(frames - 1, action)


def corrupt_files(storage: Storage) -> list[Path]:
    if not isinstance(storage, FileStorage):
        return []
    folder = storage.directory / "corrupt"
    return list(folder.iterdir()) if folder.exists() else []


# -- deep nesting ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["list", "dict"])
@pytest.mark.parametrize("depth", [sys.getrecursionlimit() + 1, 100_000])
def test_nesting_beyond_the_recursion_limit_is_refused_with_session_data_error(
    storage: Storage, depth: int, kind: str
) -> None:
    storage.write("k", {"ok": 1})
    with pytest.raises(SessionDataError, match="nested too deeply") as info:
        storage.write("k", {"deep": nested(depth, kind)})
    assert info.value.key == "k"
    assert_reads_everywhere(storage, "k", {"ok": 1})
    assert corrupt_files(storage) == []


@pytest.mark.parametrize("kind", ["list", "dict"])
def test_a_couple_of_hundred_levels_round_trip_even_from_a_deep_caller(storage: Storage, kind: str) -> None:
    value = {"deep": nested(200, kind)}
    storage.write("k", value)
    for view in views(storage):
        assert at_stack_depth(200, lambda: view.read("k")) == value  # noqa: B023 - called at once
    assert corrupt_files(storage) == []


def test_any_value_that_write_accepts_reads_back_from_a_deeper_caller(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    accepted, refused = 1, 20_000  # the deepest value write accepts here, by bisection
    while refused - accepted > 1:
        middle = (accepted + refused) // 2
        try:
            storage.write("probe", nested(middle))
        except SessionDataError:
            refused = middle
        else:
            accepted = middle
    storage.write("k", nested(accepted))
    for view in views(storage):
        got = at_stack_depth(50, lambda: view.read("k"))  # noqa: B023 - called at once
        assert depth_of(got) == accepted
    assert corrupt_files(storage) == []


def test_file_nested_too_deeply_to_parse_is_moved_aside_not_a_crash(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FileStorage(tmp_path)
    path = storage.path("k")
    path.parent.mkdir(parents=True)
    hostile = b'{"format":1,"key":"k","data":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    path.write_bytes(hostile)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("k") is None
    (moved,) = corrupt_files(storage)
    assert moved.read_bytes() == hostile
    assert any("'k'" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


# -- size at the limit ------------------------------------------------------------------------------


def encoded_size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8"))


def run_update(mw: Any, handler: Callable[[Context], object], chat_id: int = 42) -> None:
    ctx = Context({"update_id": 1, "message": {"message_id": 1, "chat": {"id": chat_id}, "text": "x"}})
    mw(ctx, lambda: handler(ctx))


FILLERS = {
    "ascii": "x",  # 1 byte each
    "two-byte": "é",  # the limit counts UTF-8 bytes, not characters
    "four-byte": "🐍",
    "escaped": "\x01",  # written as \u0001: 6 bytes each
}


@pytest.mark.parametrize("filler", list(FILLERS))
def test_session_of_exactly_max_size_is_stored_and_one_byte_more_is_refused(
    storage: Storage, filler: str, caplog: pytest.LogCaptureFixture
) -> None:
    limit = 4096
    storage.write("42", {"notes": "before"})
    mw = session(storage=storage, max_size=limit, sweep_interval=None)
    char = FILLERS[filler]
    room = limit - encoded_size({"notes": ""})
    width = encoded_size(char) - 2  # without the quotes
    count, rest = divmod(room, width)
    fitting = {"notes": char * count + "y" * rest}
    assert encoded_size(fitting) == limit

    def assign(value: Any) -> Callable[[Context], None]:
        def handler(ctx: Context) -> None:
            ctx.session = value

        return handler

    run_update(mw, assign(fitting))
    assert_reads_everywhere(storage, "42", fitting)
    over = {"notes": fitting["notes"] + "y"}
    with pytest.raises(SessionDataError) as info:
        run_update(mw, assign(over))
    assert f"{limit + 1:,} bytes" in str(info.value)
    assert f"max_size={limit:,}" in str(info.value)
    assert info.value.key == "42"
    assert_reads_everywhere(storage, "42", fitting)


def test_session_just_under_the_default_max_size_round_trips_and_just_over_is_refused(storage: Storage) -> None:
    mw = session(storage=storage, sweep_interval=None)
    fitting = {"notes": "é" * ((DEFAULT_MAX_SIZE - encoded_size({"notes": ""})) // 2)}
    assert DEFAULT_MAX_SIZE - 1 <= encoded_size(fitting) <= DEFAULT_MAX_SIZE

    def store(value: Any) -> Callable[[Context], None]:
        def handler(ctx: Context) -> None:
            ctx.session = value

        return handler

    run_update(mw, store(fitting))
    assert_reads_everywhere(storage, "42", fitting)
    with pytest.raises(SessionDataError, match=r"max_size=1,048,576"):
        run_update(mw, store({"notes": fitting["notes"] + "éé"}))
    assert_reads_everywhere(storage, "42", fitting)


# -- values that are not JSON data ----------------------------------------------------------------


class Color(enum.IntEnum):
    RED = 1


class Flag(enum.IntFlag):
    A = 1


class Text(str):
    pass


class Number(float):
    pass


class Items(list):  # type: ignore[type-arg]
    pass


REFUSED: dict[str, tuple[Any, str]] = {
    "nan at the top": (float("nan"), "session"),
    "infinity in a list in a dict": ({"a": [{"b": float("-inf")}]}, "session['a'][0]['b']"),
    "high surrogate": ({"s": "\ud800"}, "session['s']"),
    "surrogate pair as two code points": (["\ud83d\udc0d"], "session[0]"),
    "surrogate at the top": ("x\udfff", "session"),
    "none as a dict key": ({None: 1}, "session"),
    "float as a dict key": ({"a": {1.5: 1}}, "session['a']"),
    "bool as a dict key": ({True: 1}, "session"),
    "tuple as a dict key": ({(1, 2): 1}, "session"),
    "bytes as a dict key": ({b"k": 1}, "session"),
    "str and int keys that would collide": ({"1": "a", 1: "b"}, "session"),
    "IntEnum": ({"c": Color.RED}, "session['c']"),
    "IntFlag": ({"f": Flag.A}, "session['f']"),
    "IntEnum as a dict key": ({Color.RED: 1}, "session"),
    "str subclass": ({"t": Text("hi")}, "session['t']"),
    "str subclass as a dict key": ({Text("k"): 1}, "session"),
    "float subclass": ([Number(1.5)], "session[0]"),
    "list subclass": ({"l": Items([1])}, "session['l']"),
    "OrderedDict": ({"o": collections.OrderedDict(a=1)}, "session['o']"),
    "defaultdict": ({"d": collections.defaultdict(list)}, "session['d']"),
    "Counter": ({"c": collections.Counter("aab")}, "session['c']"),
}

REFUSED_BUT_RAISING_OTHERWISE = [
    pytest.param({"\udc80": 1}, "session", id="surrogate in a dict key"),
    pytest.param({"n": [10**5000]}, "session['n'][0]", id="int too long for json"),
]


@pytest.mark.parametrize(
    ("value", "where"),
    [pytest.param(*case, id=name) for name, case in REFUSED.items()] + REFUSED_BUT_RAISING_OTHERWISE,
)
def test_value_that_is_not_json_data_is_refused_naming_its_place_and_nothing_changes(
    storage: Storage, value: Any, where: str
) -> None:
    storage.write("k", {"ok": 1})
    with pytest.raises(SessionDataError) as info:
        storage.write("k", value)
    assert isinstance(info.value, TypeError)
    assert info.value.key == "k"
    assert info.value.where == where
    assert where in str(info.value)
    assert_reads_everywhere(storage, "k", {"ok": 1})


def test_bool_int_and_float_keep_their_types_from_the_cache_and_from_disk(storage: Storage) -> None:
    value = {"true": True, "one": 1, "false": False, "zero": 0, "one_float": 1.0, "minus_zero": -0.0}
    storage.write("k", value)
    for view in views(storage):
        got = view.read("k")
        assert got == value
        assert [type(v) for v in got.values()] == [bool, int, bool, int, float, float]
        assert str(got["minus_zero"]) == "-0.0"


def test_longest_int_json_can_encode_round_trips(storage: Storage) -> None:
    digits = sys.get_int_max_str_digits() or 4300
    value = {"n": -(10 ** (digits - 1)), "m": 10**digits - 1}
    storage.write("k", value)
    assert_reads_everywhere(storage, "k", value)


# -- keys -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [121, 10_000, 200_000])
def test_very_long_keys_round_trip_list_and_delete(storage: Storage, length: int) -> None:
    long_key = "k" * (length - 1) + "!"
    similar = "k" * length  # differs in its last character only
    storage.write(long_key, {"which": "long"})
    storage.write(similar, {"which": "similar"})
    assert_reads_everywhere(storage, long_key, {"which": "long"})
    assert_reads_everywhere(storage, similar, {"which": "similar"})
    for view in views(storage):
        assert sorted(view.keys()) == sorted([long_key, similar])
    if isinstance(storage, FileStorage):
        assert all(len(p.name.encode()) <= 143 for p in storage.directory.rglob("*.json"))
    storage.delete(long_key)
    assert_reads_everywhere(storage, long_key, None)
    assert_reads_everywhere(storage, similar, {"which": "similar"})


@functools.lru_cache(maxsize=1)
def every_kind_of_character() -> list[str]:
    """One character of each Unicode category (surrogates excepted), then awkward ones."""
    by_category: dict[str, str] = {}
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category != "Cs" and category not in by_category:
            by_category[category] = chr(code)
    awkward = '\x00\t\n\r\x7f/\\.:*?"<>|~%\u00a0\u200b\u200d\u202e\u2028\u2029\ufeff\ufffe\uffff\U0010ffff'
    return sorted(set(by_category.values()) | set(awkward) | {chr(c) for c in range(0x300)})


def test_keys_made_of_every_kind_of_character_round_trip_and_stay_distinct(storage: Storage) -> None:
    chars = every_kind_of_character()
    keys = list(dict.fromkeys([*chars, "".join(chars), "e\u0301", "\u00e9", "ß", "SS", "ss", "İ", "i\u0307"]))
    for i, key in enumerate(keys):
        storage.write(key, i)
    for view in views(storage):
        assert sorted(view.keys()) == sorted(keys)
        for i, key in enumerate(keys):
            assert view.read(key) == i, repr(key)
    if isinstance(storage, FileStorage):
        files = [p for p in storage.directory.rglob("*") if p.is_file() and p.suffix == ".json"]
        assert len(files) == len(keys)
        assert all(storage.directory in p.parents for p in files)


def test_key_with_a_lone_surrogate_through_the_middleware_is_a_clear_error(tmp_path: Path) -> None:
    mw = session(storage=FileStorage(tmp_path), get_session_key=lambda ctx: "user\udc80", sweep_interval=None)
    with pytest.raises((SessionKeyError, ValueError), match="surrogate"):
        run_update(mw, lambda ctx: ctx.session)
    assert not tmp_path.exists() or [p for p in tmp_path.rglob("*.json")] == []


def test_key_with_a_lone_surrogate_through_the_middleware_is_a_session_key_error(tmp_path: Path) -> None:
    mw = session(storage=FileStorage(tmp_path), get_session_key=lambda ctx: "user\udc80", sweep_interval=None)
    with pytest.raises(SessionKeyError, match="surrogate"):
        run_update(mw, lambda ctx: ctx.session)


# -- through the bot loop ---------------------------------------------------------------------------------

POISONS: dict[str, Callable[[], Any]] = {
    "nan": lambda: float("nan"),
    "infinity": lambda: [float("inf")],
    "a set": lambda: {1, 2},
    "a tuple": lambda: (1, 2),
    "bytes": lambda: b"raw",
    "nesting deeper than the recursion limit": lambda: nested(100_000),
    "a lone surrogate": lambda: "\udc80",
    "an int dict key": lambda: {1: "one"},
    "an IntEnum": lambda: Color.RED,
    "a str subclass": lambda: Text("x"),
    "an OrderedDict": lambda: collections.OrderedDict(a=1),
    "a defaultdict": lambda: collections.defaultdict(int),
    "more than max_size": lambda: "x" * 5000,
    "a surrogate dict key": lambda: {"\udc80": 1},
    "an int too long for json": lambda: 10**5000,
}


@pytest.mark.parametrize(
    "poison",
    list(POISONS),
)
@pytest.mark.parametrize("kind", ["memory", "file", "redis"])
def test_bot_loop_logs_a_handler_storing_hostile_data_and_goes_on_with_the_session_unchanged(
    kind: str, poison: str, tmp_path: Path, request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture
) -> None:
    make = POISONS[poison]
    storage: Storage
    if kind == "memory":
        storage = MemoryStorage()
    elif kind == "file":
        storage = FileStorage(tmp_path)
    else:
        storage = RedisStorage(request.getfixturevalue("redis_url"), prefix=request.getfixturevalue("redis_prefix"))
    out = io.StringIO()
    bot = Bot(input=io.StringIO("/count\n/poison\n/count\n"), output=out)
    bot.use(session(initial=lambda: {"count": 0}, storage=storage, max_size=4096, sweep_interval=None))

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1
        ctx.reply(f"count={ctx.session['count']}")

    @bot.command("poison")
    def poisoned(ctx: Context) -> None:
        ctx.session["count"] = 1000
        ctx.session["bad"] = make()

    with caplog.at_level(logging.ERROR, logger="simplesession"):
        bot.start()
    assert out.getvalue().splitlines() == ["count=1", "count=2"]
    (record,) = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert record.name == "simplesession.bot"
    assert "update 2" in record.getMessage()
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], SessionDataError), record.exc_info[1]
    assert_reads_everywhere(storage, "1", {"count": 2})
    assert corrupt_files(storage) == []
