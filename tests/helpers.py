"""Helpers for tests: real OS processes, and a storage of a user's own."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import forkserver

# A process of locked read-change-write increments of one key: argv is the store's URL (as
# open_storage takes it), its options as JSON, and how many increments to make.
INCREMENTER = """
    import json, sys
    from simplesession import open_storage

    storage = open_storage(sys.argv[1], **json.loads(sys.argv[2]))
    for _ in range(int(sys.argv[3])):
        with storage.lock("counter"):
            value = storage.read("counter") or {"n": 0}
            value["n"] += 1
            storage.write("counter", value)
"""


def run_python(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (a real OS process) and return its result."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )


def full_path(path: Any, dir_fd: int | None = None) -> str:
    """The path that a call of ``os`` names: ``path``, relative to the folder open as ``dir_fd`` if any."""
    name = str(os.fspath(path))
    if dir_fd is None:
        return name
    return os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), name)


def start_python(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        text=True,
        env=os.environ.copy(),
        **kwargs,
    )


def fork_python(code: str, *args: str, **kwargs: Any) -> forkserver.Process:
    """As :func:`start_python` (``text=True``), in a process forked from an interpreter that has the
    package imported (forkserver.py): a real OS process, without the wait for a fresh import."""
    return forkserver.popen(["-c", textwrap.dedent(code), *args], text=True, env=os.environ.copy(), **kwargs)


def run_forked(code: str, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """As :func:`run_python`, in a process forked from an interpreter that has the package imported."""
    return forkserver.run(["-c", textwrap.dedent(code), *args], timeout=timeout, env=os.environ.copy())


class PlainStorage:
    """A storage as a user would write one: just read, write and delete on a dict."""

    def __init__(self, values: dict[str, Any] | None = None) -> None:
        self.values: dict[str, Any] = dict(values or {})

    def read(self, key: str) -> Any:
        return self.values.get(key)

    def write(self, key: str, value: Any) -> None:
        self.values[key] = value

    def delete(self, key: str) -> None:
        self.values.pop(key, None)


def kill_writers(
    start: Callable[[int], Any],
    progress: Path,
    *,
    rounds: int,
    seed: int,
    check_whole: Callable[[], None],
    read: Callable[[str], Any],
) -> None:
    """Kill a writer with SIGKILL at a random moment, ``rounds`` times, and check what it left.

    ``start(first)`` starts the writer: it writes ``{"i": i, ...}`` to ``key{i % 5}`` for ``i``
    from ``first`` on, appending ``i`` to ``progress`` after each write returned. After each
    kill ``check_whole()`` checks that every stored value is whole, and every key must read
    (``read(key)``) as its last completed write, or for one key the write in flight: old or
    new, never torn, and nothing that returned is lost.
    """
    rng = random.Random(seed)
    next_i = 0
    expected: dict[str, int] = {}
    for _round in range(rounds):
        writer = start(next_i)
        deadline = time.monotonic() + 30
        while not (progress.exists() and progress.stat().st_size > 0) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))
        writer.send_signal(signal.SIGKILL)
        assert writer.wait(30) == -signal.SIGKILL

        done = [int(line) for line in progress.read_text().split()]
        progress.unlink()
        assert done, "the writer never completed a write"
        for i in done:
            expected[f"key{i % 5}"] = i
        in_flight = done[-1] + 1
        check_whole()
        for key, last_done in expected.items():
            got = read(key)
            assert got is not None
            allowed = {last_done, in_flight} if f"key{in_flight % 5}" == key else {last_done}
            assert got["i"] in allowed, (key, got["i"], allowed)
            if got["i"] == in_flight:
                expected[key] = in_flight
        next_i = in_flight + 1
    assert len(expected) == 5
