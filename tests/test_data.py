"""JSON data checks: what is refused, and how the refusal reads."""

from __future__ import annotations

from typing import Any

import pytest

from simplesession import SessionDataError
from simplesession.data import check_copy, copy, encode


def test_check_copy_returns_an_independent_equal_copy() -> None:
    value: Any = {"a": [1, {"b": "c"}], "d": None}
    copied = check_copy(value)
    assert copied == value
    copied["a"][1]["b"] = "changed"
    assert value["a"][1]["b"] == "c"


def test_copy_is_deep() -> None:
    value = {"a": [[1]]}
    copied = copy(value)
    copied["a"][0].append(2)
    assert value == {"a": [[1]]}


def test_refusal_names_key_place_and_type() -> None:
    with pytest.raises(SessionDataError) as info:
        check_copy({"items": [1, 2, {"when": object}]}, key="42")
    message = str(info.value)
    assert "session '42'" in message
    assert "session['items'][2]['when']" in message
    assert "type" in message
    assert "JSON" in message


def test_refusal_of_a_foreign_class_names_its_module() -> None:
    import datetime

    with pytest.raises(SessionDataError, match=r"session\['at'\] is a datetime\.datetime"):
        check_copy({"at": datetime.datetime(2026, 1, 1)})


def test_too_deep_nesting_is_refused_not_crashing() -> None:
    deep: Any = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(SessionDataError, match="nested too deeply"):
        check_copy({"deep": deep}, key="k")


def test_encoding_is_compact_utf8() -> None:
    assert encode({"name": "Zoë", "n": [1, 2]}) == '{"name":"Zoë","n":[1,2]}'.encode()
