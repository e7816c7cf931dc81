from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any

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


def test_threads_getting_putting_and_discarding_at_once_see_only_their_keys_values_and_the_size_holds() -> None:
    # Lookups take no lock: an entry removed by another thread between finding and moving it
    # must neither raise nor come back, and eviction must keep the cache at its size.
    cache: LRUCache[str, tuple[str, int]] = LRUCache(2)
    keys = ["a", "b", "c"]  # few keys and a smaller cache: threads meet on the same entries
    failures: list[BaseException] = []
    wrong: list[tuple[str, tuple[str, int]]] = []
    start = threading.Barrier(4)

    def hammer(seed: int) -> None:
        try:
            start.wait(timeout=10)
            for n in range(5_000):
                key = keys[(n * 7 + seed) % len(keys)]
                if n % 5 == 0:
                    cache.discard(key)
                elif n % 2 == 0:
                    cache.put(key, (key, n))
                else:
                    found = cache.get(key)
                    if found is not None and found[0] != key:
                        wrong.append((key, found))
        except BaseException as exc:
            failures.append(exc)

    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible, between the calls too
    try:
        threads = [threading.Thread(target=hammer, args=(seed,)) for seed in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    finally:
        sys.setswitchinterval(old)
    assert not failures
    assert not wrong
    assert len(cache) <= 2
    cache.put("last", ("last", 0))
    assert cache.get("last") == ("last", 0)


def test_an_entry_removed_by_another_thread_between_lookup_and_reordering_is_no_error() -> None:
    # The interleaving a lock-free lookup allows, made certain: a discard right after the
    # lookup found the entry.
    class Racing(OrderedDict[str, int]):
        def get(self, key: str, default: Any = None) -> Any:
            value = super().get(key, default)
            self.pop(key, None)
            return value

    cache: LRUCache[str, int] = LRUCache(4)
    cache.put("a", 1)
    cache._data = Racing(cache._data)
    assert cache.get("a") == 1  # what was found, though gone by now
    assert cache.get("a") is None
    cache.put("a", 2)
    assert len(cache) == 1
