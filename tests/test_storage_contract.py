"""The storage contract, run against every adapter."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from simplesession import LockTimeout, SessionDataError, Storage

VALUES: list[Any] = [
    {"count": 0},
    {"nested": {"list": [1, 2.5, "three", True, None, {"deep": []}]}},
    [1, "two", [3]],
    "just a string",
    "Ünïcödé ✓ 🐍 中文",
    0,
    -(2**70),
    3.141592653589793,
    1e-300,
    True,
    False,
    {},
    [],
    "",
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_written_value_reads_back_equal(storage: Storage, value: Any) -> None:
    storage.write("chat", value)
    got = storage.read("chat")
    assert got == value
    assert type(got) is type(value)


def test_missing_key_reads_as_none(storage: Storage) -> None:
    assert storage.read("nobody") is None
    assert not storage.has("nobody")


def test_write_replaces_previous_value(storage: Storage) -> None:
    storage.write("k", {"v": 1})
    storage.write("k", {"v": 2})
    assert storage.read("k") == {"v": 2}


def test_delete_removes_and_missing_delete_is_fine(storage: Storage) -> None:
    storage.write("k", {"v": 1})
    storage.delete("k")
    assert storage.read("k") is None
    assert not storage.has("k")
    storage.delete("k")
    storage.delete("never-there")


def test_writing_none_deletes(storage: Storage) -> None:
    storage.write("k", [1])
    storage.write("k", None)
    assert not storage.has("k")
    assert list(storage.keys()) == []


def test_has_tracks_writes_and_deletes(storage: Storage) -> None:
    assert not storage.has("k")
    storage.write("k", 0)
    assert storage.has("k")


def test_keys_lists_every_stored_key_once(storage: Storage) -> None:
    keys = [str(i) for i in range(50)] + ["user:1", "Chat", "chat"]
    for key in keys:
        storage.write(key, {"k": key})
    storage.delete("7")
    listed = list(storage.keys())
    assert sorted(listed) == sorted(k for k in keys if k != "7")
    assert len(listed) == len(set(listed))


def test_mutating_a_written_value_does_not_change_storage(storage: Storage) -> None:
    value: Any = {"items": [1, 2], "inner": {"a": 1}}
    storage.write("k", value)
    value["items"].append(3)
    value["inner"]["a"] = 99
    value["new"] = True
    assert storage.read("k") == {"items": [1, 2], "inner": {"a": 1}}


def test_mutating_a_read_value_does_not_change_storage(storage: Storage) -> None:
    storage.write("k", {"items": [1, 2], "inner": {"a": 1}})
    got: Any = storage.read("k")
    got["items"].append(3)
    got["inner"]["a"] = 99
    assert storage.read("k") == {"items": [1, 2], "inner": {"a": 1}}


@pytest.mark.parametrize(
    ("value", "where"),
    [
        ({"items": [1, 2, object()]}, "session['items'][2]"),
        ({"t": (1, 2)}, "session['t']"),
        ({"a": {1: "x"}}, "session['a']"),
        ({"s": {1, 2}}, "session['s']"),
        ({"f": float("nan")}, "session['f']"),
        ({"f": [float("inf")]}, "session['f'][0]"),
        ({"b": b"bytes"}, "session['b']"),
        ({"u": "lone \udc80 surrogate"}, "session['u']"),
    ],
)
def test_non_json_data_is_refused_and_stored_value_kept(storage: Storage, value: Any, where: str) -> None:
    storage.write("k", {"ok": 1})
    with pytest.raises(SessionDataError) as info:
        storage.write("k", value)
    assert isinstance(info.value, TypeError)
    assert where in str(info.value)
    assert "'k'" in str(info.value)
    assert info.value.key == "k"
    assert info.value.where == where
    assert storage.read("k") == {"ok": 1}


def test_subclasses_of_json_types_are_refused(storage: Storage) -> None:
    import enum

    class Color(enum.IntEnum):
        RED = 1

    with pytest.raises(SessionDataError, match=r"session\['c'\]"):
        storage.write("k", {"c": Color.RED})
    assert storage.read("k") is None


def test_non_string_key_is_refused(storage: Storage) -> None:
    with pytest.raises(TypeError, match="must be a str"):
        storage.write(42, {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="must be a str"):
        storage.read(42)  # type: ignore[arg-type]


def test_lock_is_reentrant_in_one_thread(storage: Storage) -> None:
    with storage.lock("k"), storage.lock("k"):
        storage.write("k", 1)
    assert storage.read("k") == 1


def test_lock_excludes_another_thread_until_released(storage: Storage) -> None:
    storage.lock_timeout = 0.2
    outcome: list[str] = []

    def contender() -> None:
        try:
            with storage.lock("k"):
                outcome.append("acquired")
        except LockTimeout as exc:
            outcome.append(f"timeout: {exc}")

    with storage.lock("k"):
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join(10)
    assert len(outcome) == 1
    assert outcome[0].startswith("timeout: ")
    assert "'k'" in outcome[0]

    thread = threading.Thread(target=contender)
    thread.start()
    thread.join(10)
    assert outcome[1] == "acquired"


def test_lock_timeout_is_a_timeout_and_a_storage_error(storage: Storage) -> None:
    storage.lock_timeout = 0.05
    caught: list[BaseException] = []

    def contender() -> None:
        try:
            with storage.lock("k"):
                pass
        except BaseException as exc:
            caught.append(exc)

    with storage.lock("k"):
        thread = threading.Thread(target=contender)
        thread.start()
        thread.join(10)
    (error,) = caught
    assert isinstance(error, LockTimeout)
    assert isinstance(error, TimeoutError)
    assert error.key == "k"
    assert error.timeout == 0.05


def test_other_keys_stay_free_while_one_is_locked(storage: Storage) -> None:
    storage.lock_timeout = 2
    done = threading.Event()

    def other() -> None:
        with storage.lock("other-key"):
            storage.write("other-key", 1)
        done.set()

    with storage.lock("k"):
        thread = threading.Thread(target=other)
        thread.start()
        assert done.wait(10)
        thread.join(10)
    assert storage.read("other-key") == 1


def test_four_threads_of_locked_increments_lose_no_update(storage: Storage) -> None:
    def worker() -> None:
        for _ in range(250):
            with storage.lock("counter"):
                value = storage.read("counter") or {"n": 0}
                value["n"] += 1
                storage.write("counter", value)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not any(t.is_alive() for t in threads)
    assert storage.read("counter") == {"n": 1000}
