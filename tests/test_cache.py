from __future__ import annotations

import pytest

from simplesession.cache import LRUCache


def test_least_recently_used_entry_is_evicted() -> None:
    cache: LRUCache[str, int] = LRUCache(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # "b" is now the oldest
    cache.put("c", 3)
    assert cache.get("b") is None
    assert (cache.get("a"), cache.get("c")) == (1, 3)
    assert len(cache) == 2


def test_size_zero_keeps_nothing() -> None:
    cache: LRUCache[str, int] = LRUCache(0)
    cache.put("a", 1)
    assert cache.get("a") is None


def test_discard_and_clear() -> None:
    cache: LRUCache[str, int] = LRUCache(5)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.discard("a")
    cache.discard("missing")
    assert cache.get("a") is None
    cache.clear()
    assert len(cache) == 0


@pytest.mark.parametrize("bad", [-1, 1.5, "10", None])
def test_bad_size_is_refused(bad: object) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        LRUCache(bad)  # type: ignore[arg-type]
