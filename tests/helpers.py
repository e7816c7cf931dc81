"""Helpers for tests: real OS processes, and a storage of a user's own."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from typing import Any

import forkserver


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
