"""The key -> file name mapping: injective, reversible, safe."""

from __future__ import annotations

import random
import re

from simplesession.keys import MAX_STEM, encode_key, key_from_name

SAFE_NAME = re.compile(r"[kh][a-z0-9_~-]*\.json\Z")


def random_keys(count: int) -> list[str]:
    rng = random.Random(42)
    alphabet = "aAzZ09-_~.:/\\ \x00é\u0301ΩЖ中🐍\U0010fffd"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60))) for _ in range(count)]


def test_names_are_distinct_safe_and_reversible() -> None:
    keys = set(random_keys(5000)) | {"", "a", "A", "~61", "a" * MAX_STEM, "a" * (MAX_STEM + 1)}
    names: dict[str, str] = {}
    for key in keys:
        shard, name = encode_key(key)
        assert re.fullmatch(r"[0-9a-f]{2}", shard)
        assert SAFE_NAME.match(name), name
        assert name.lower() not in names, (key, names.get(name.lower()))
        names[name.lower()] = key
        if name.startswith("k"):
            assert key_from_name(name) == key
        else:
            assert key_from_name(name) is None
            assert len(name) == 1 + 64 + 5


def test_plain_chat_ids_keep_readable_names() -> None:
    assert encode_key("123456789")[1] == "k123456789.json"
    assert encode_key("-100123")[1] == "k-100123.json"
    assert encode_key("Chat:42")[1] == "k~43hat~3a42.json"


def test_only_canonical_names_decode() -> None:
    assert key_from_name("k~61.json") is None  # would alias "a"
    assert key_from_name("k~zz.json") is None
    assert key_from_name("k~c3.json") is None  # half a UTF-8 character
    assert key_from_name("README") is None
    assert key_from_name("ka.json") == "a"
