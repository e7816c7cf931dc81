"""JSON data checks: what is refused, and how the refusal reads."""

from __future__ import annotations

import json
from typing import Any

import pytest

from simplesession import SessionDataError
from simplesession.data import check_copy, copy, decode, encode
from simplesession.storage.document import data_json, decode_document, document_of


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


def test_decode_reads_utf8_with_or_without_a_bom_and_utf16() -> None:
    # A session file saved by a text editor may carry a BOM or be UTF-16; JSON allows both.
    text = '{"name":"Zoë"}'
    for raw in (text.encode(), b"\xef\xbb\xbf" + text.encode(), text.encode("utf-16")):
        assert decode(raw) == {"name": "Zoë"}
    assert decode(text) == {"name": "Zoë"}


@pytest.mark.parametrize("raw", [b'{"a":NaN}', b'{"a":Infinity}', b'{"a":1} x', b""])
def test_decode_refuses_what_is_not_strict_json(raw: bytes) -> None:
    with pytest.raises(ValueError, match=r"is not JSON|Expecting value|Extra data"):
        decode(raw)


def test_encode_refuses_a_value_that_contains_itself_without_hanging() -> None:
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises((ValueError, RecursionError)):
        encode(loop)
    with pytest.raises(SessionDataError, match="nested too deeply"):
        check_copy(loop)


def test_document_data_slice_is_the_datas_own_json() -> None:
    value = {"count": 3, "name": "Zoë", "tags": ["a", "b"]}
    raw = encode(value)
    for version in (None, 2, 1.5):
        document = document_of("chat 42", raw, version)
        assert decode_document(document, "chat 42") == ("chat 42", value, version)
        assert data_json(document, "chat 42", version) == raw
        assert data_json(document, "chat 42", 3) is None  # another version: not this document
        assert data_json(document, "chat 43", version) is None


def test_document_data_slice_is_none_for_documents_written_otherwise() -> None:
    # Hand-edited documents decode, but their data cannot be cut out as it is.
    doc = {"format": 1, "key": "k", "data": {"count": 3}}
    spaced = json.dumps(doc).encode()
    indented = json.dumps(doc, indent=2).encode()
    for document in (spaced, indented, indented + b"\n"):
        assert decode_document(document, "k") == ("k", {"count": 3}, None)
        assert data_json(document, "k", None) is None
