"""SQLiteStorage's reads: what a row edited by hand reads as, and which sessions the cache keeps.

A read decodes a row's data in C and checks it by its bytes alone when they show it keeps
the rules of writing (the short way), else by the walk every storage uses (the long way).
Both must give the same answer for every row, which is what these tests hold them to.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from conftest import sqlite_idle

from simplesession import SQLiteStorage
from simplesession.data import MAX_DEPTH
from simplesession.storage.document import BadDocument, join_document, session_of
from simplesession.storage.locks import stripe_of
from simplesession.storage.stripes import FileStripes

DEEP = MAX_DEPTH + 1
# Data JSON as a hand edit could leave it: each must read as the rules of writing say.
EDITS = [
    '{"count":1,"tags":["a","b"]}',
    '{"name":"Jos\u00e9 \u2603 \U0001f600"}',  # UTF-8 as such
    '{"name":"\\u00e9"}',  # an escape: the long way, the same value
    '{"smile":"\\ud83d\\ude00"}',  # a pair of surrogates: one character
    '{"lone":"\\ud800"}',  # a lone surrogate: not a session
    '{"\\udc00":1}',  # a key with a lone surrogate
    '"\\\\ud800"',  # an escaped backslash, then text: fine
    "[" * MAX_DEPTH + "]" * MAX_DEPTH,  # as deep as a session may be
    "[" * DEEP + "]" * DEEP,  # one level more
    "[" + "[]," * 300 + "[]]",  # many brackets, shallow
    '{"pad":"' + "x" * 600 + '","deep":' + "[" * DEEP + "]" * DEEP + "}",
    "[1.5, 2e3, -0.0, 1e308]",
    "[1e999]",  # inf
    "-1e400",
    "1" + "0" * 400 + ".5",  # beyond a float, with no exponent
    "1" + "0" * 400,  # an int of 401 digits: fine
    "9" * 5000,  # beyond Python's digits for an int
    "NaN",
    "[Infinity]",
    "null",
    '{"a":1} ',  # JSON with a space after it
    ' {"a":1}',
    '{"a":1}x',
    "{'a':1}",
    '{"a":"tab\there"}',  # a control character in a string
    "",
    "true",
    '"text"',
    "0",
]


@contextlib.contextmanager
def database(path: Path) -> Any:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        yield db


def long_way(key: str, text: str) -> Any:
    """What the walk every storage uses reads ``text`` as: the data, or ``BadDocument``."""
    try:
        return session_of(join_document(key, None, text.encode("utf-8", "surrogatepass")), key, 1 << 20)[0]
    except BadDocument:
        return BadDocument


@pytest.mark.parametrize("cache_size", [1024, 0])
@pytest.mark.parametrize("text", EDITS)
def test_a_row_edited_by_hand_reads_as_the_rules_of_writing_say(
    tmp_path: Path, text: str, cache_size: int, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=cache_size)
    storage.write("k", {"before": True})
    with database(path) as db:
        db.execute(
            "UPDATE sessions SET value = CAST(? AS TEXT) WHERE key = 'k'", (text.encode("utf-8", "surrogatepass"),)
        )
    fresh = SQLiteStorage(path, cache_size=cache_size)  # nothing cached: the row is read
    expected = long_way("k", text)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        for reader in (storage, fresh):
            if expected is BadDocument:
                assert reader.read("k") is None
            else:
                got = reader.read("k")
                assert got == expected
                assert type(got) is type(expected)
    with database(path) as db:
        aside = db.execute("SELECT count(*) FROM set_aside").fetchone()[0]
    assert aside == (1 if expected is BadDocument else 0)


def test_a_version_edited_by_hand_reads_as_the_long_way_reads_it(tmp_path: Path) -> None:
    path = tmp_path / "sessions.db"
    storage = SQLiteStorage(path, cache_size=0)
    storage.write("k", {"v": 1}, version=2)
    assert storage.read_versioned("k") == ({"v": 1}, 2)
    for edited, expected in (("2.5", 2.5), ("3", 3), ("1e3", 1000.0)):
        with database(path) as db:
            db.execute("UPDATE sessions SET version = ? WHERE key = 'k'", (edited,))
        assert storage.read_versioned("k") == ({"v": 1}, expected)


# -- which sessions the cache keeps --------------------------------------------------------------


class CountingStorage(SQLiteStorage):
    """Counts the reads of a row's value (a cache hit reads only its stamp)."""

    rows = 0

    def _get_parts(self, key: str) -> Any:
        self.rows += 1
        return super()._get_parts(key)


def test_while_the_cache_has_room_a_first_read_keeps_the_session(tmp_path: Path) -> None:
    SQLiteStorage(tmp_path / "s.db").write("k", {"v": 1})
    storage = CountingStorage(tmp_path / "s.db", cache_size=4)
    for _ in range(5):
        assert storage.read("k") == {"v": 1}
    assert storage.rows == 1


def test_a_full_cache_keeps_a_session_at_its_second_read_and_one_read_once_pushes_none_out(tmp_path: Path) -> None:
    path = tmp_path / "s.db"
    storage = CountingStorage(path, cache_size=2)
    for key in "abcde":
        storage.write(key, key)  # the cache holds d and e
    assert [storage.read(k) for k in "de"] == ["d", "e"]
    assert storage.rows == 0
    assert storage.read("a") == "a"  # read once: remembered, not kept
    assert [storage.read(k) for k in "de"] == ["d", "e"]
    assert storage.rows == 1
    assert storage.read("a") == "a"  # read again: kept, in place of d, the least recently used
    assert storage.read("a") == "a"
    assert storage.rows == 2
    assert storage.read("e") == "e"
    assert storage.rows == 2
    assert storage.read("d") == "d"
    assert storage.rows == 3


def test_a_session_left_out_of_the_cache_is_the_callers_own(tmp_path: Path) -> None:
    # The one read that is not kept hands out the decoded value itself; changing it changes
    # nothing stored or cached, also when the read refreshes the idle clock.
    path = tmp_path / "s.db"
    storage = SQLiteStorage(path, cache_size=1, ttl=100)
    storage.write("a", {"n": 1})
    storage.write("b", {"n": 2})  # the cache is full, with b
    sqlite_idle(storage, "a", 50)  # old enough that a read refreshes its idle clock
    for _ in range(3):
        got = storage.read("a")
        assert got == {"n": 1}
        got["n"] = 99
    assert storage.read("b") == {"n": 2}


def test_the_lock_of_a_key_is_its_stripes_file(tmp_path: Path) -> None:
    import zlib

    stripes = FileStripes(str(tmp_path / "locks"), lambda key: None)
    for number in range(2000):
        key = f"{number * 7919}:\u00e9" if number % 3 else str(number)
        gate = stripes.gate(key)
        assert gate.name == stripes.path(key)
        assert gate.name.endswith(f"{stripe_of(zlib.crc32(key.encode('utf-8'))):03x}.lock")
