"""Reads are bounded: in depth (the same limit as writes, however high the recursion limit) and in
size (a storage's ``max_size``, checked before a stored value is loaded), with peak memory measured
in a child process."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from helpers import run_python

from simplesession import FileStorage, Storage, data


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
