"""Real OS processes that start in milliseconds: forked from an interpreter that has the package imported.

A fresh ``python -m simplesession`` spends most of its time importing; the command line's
tests start over a hundred of them. The fork server is one interpreter, started on first
use and kept for the test run, that has imported the package and the command line. Each
request forks it into a new process of its own (its own pid, exit status and signals)
with the caller's stdin, stdout and stderr, environment, working folder and umask, which
runs as ``python -c``, ``python -m`` or ``python script.py`` would: a fresh ``__main__``, the same
``sys.argv`` and ``sys.path[0]``, standard streams made as the interpreter makes them, and
the interpreter's ending (threads joined, ``atexit``, streams flushed, exit status, death
by SIGINT after an unhandled ``KeyboardInterrupt``).

What a fork cannot give is a fresh start of the interpreter: the package is not imported
anew (imports are tested in fresh interpreters elsewhere), every process has the server's
hash seed, and what an interpreter takes from the environment at start-up (``$PYTHON...``,
the locale, the folders a relative ``$PYTHONPATH`` names from the working folder) is the
server's. So a request that differs there runs in a fresh interpreter instead, as does
every request where ``os.fork`` is missing. The server's own code is forkserver_child.py.
"""

from __future__ import annotations

import atexit
import contextlib
import io
import json
import os
import select
import selectors
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any, Protocol

# Where the server starts: where the tests started, so that it imports the package they import.
LAUNCH_DIR = os.getcwd()
# What the processes import anyway; "?": if installed (RedisStorage imports redis when made,
# PostgresStorage psycopg and psycopg_pool: dozens of the processes work on PostgreSQL).
PRELOAD = ["simplesession", "simplesession.cli", "redis?", "psycopg?", "psycopg_pool?"]
START_TIMEOUT = 60.0

# The server's code, run with -c as the tests' processes run theirs: sys.path[0] is then the
# working folder, as it is for the tests (python -m pytest), not the folder of a script.
SERVER = (Path(__file__).parent / "forkserver_child.py").read_text("utf-8")


def _startup_variables(env: Mapping[str, str], cwd: str) -> dict[str, str]:
    """What an interpreter started in ``cwd`` takes from the environment when it starts (the rest
    it reads when asked); ``$PYTHONPATH`` as the folders it names from there."""
    found = {
        name: value
        for name, value in env.items()
        if name.startswith(("PYTHON", "LC_")) or name in ("LANG", "LANGUAGE", "TZ")
    }
    if "PYTHONPATH" in found:
        found["PYTHONPATH"] = os.pathsep.join(
            os.path.normpath(os.path.join(cwd, entry)) for entry in found["PYTHONPATH"].split(os.pathsep)
        )
    return found


def _umask() -> int:
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


class Process(Protocol):
    """What the tests use of :class:`subprocess.Popen`, which :class:`Forked` has too."""

    args: Any
    pid: int
    returncode: int | Any
    stdin: IO[Any] | None
    stdout: IO[Any] | None
    stderr: IO[Any] | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Forked:
    """A process the server forked, with the part of :class:`subprocess.Popen` that the tests use."""

    def __init__(self, args: list[str], pid: int, reply: socket.socket) -> None:
        self.args = args
        self.pid = pid
        self.returncode: int | None = None
        self.stdin: IO[Any] | None = None
        self.stdout: IO[Any] | None = None
        self.stderr: IO[Any] | None = None
        self.text = False
        self._reply = reply
        self._output: tuple[list[bytes], list[bytes]] = ([], [])  # what communicate read of stdout, stderr

    def poll(self) -> int | None:
        if self.returncode is None:
            ready, _, _ = select.select([self._reply], [], [], 0)
            if ready:
                self._read_status()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            ready, _, _ = select.select([self._reply], [], [], timeout)
            if not ready:
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            self._read_status()
        assert self.returncode is not None
        return self.returncode

    def communicate(self, input: Any = None, timeout: float | None = None) -> tuple[Any, Any]:
        """As ``Popen.communicate``: feed ``input``, read stdout and stderr to their ends, wait.

        After a timeout, a later call goes on where this one stopped, as Popen's does."""
        deadline = None if timeout is None else time.monotonic() + timeout
        data, in_w = b"", -1
        if self.stdin is not None and not self.stdin.closed:
            encoding = getattr(self.stdin, "encoding", None) or "utf-8"
            data = input.encode(encoding) if isinstance(input, str) else input or b""
            with contextlib.suppress(BrokenPipeError):
                self.stdin.flush()
            if data:
                in_w = os.dup(self.stdin.fileno())
            with contextlib.suppress(BrokenPipeError):
                self.stdin.close()
        streams = {n: s for n, s in enumerate((self.stdout, self.stderr)) if s is not None and not s.closed}
        _communicate(self, in_w, data, {s.fileno(): self._output[n] for n, s in streams.items()}, deadline)
        for opened in streams.values():
            opened.close()
        got: list[Any] = []
        for given, chunks in zip((self.stdout, self.stderr), self._output, strict=True):
            output = None if given is None else b"".join(chunks)
            if output is not None and self.text:
                got.append(_text(output, getattr(given, "encoding", "utf-8")))
            else:
                got.append(output)
        return got[0], got[1]

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never signal a pid that may have been reused
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def _read_status(self) -> None:
        data = b""
        while not data.endswith(b"\n"):
            chunk = self._reply.recv(64)
            if not chunk:
                raise RuntimeError(f"the fork server went away before process {self.pid} ended")
            data += chunk
        self._reply.close()
        self.returncode = os.waitstatus_to_exitcode(int(data))


class ForkServer:
    """One server process; :meth:`spawn` forks it into a new process per request."""

    def __init__(self, preload: Sequence[str] = PRELOAD) -> None:
        self.env = dict(os.environ)
        self.cwd = LAUNCH_DIR
        self._lock = threading.Lock()
        self._control, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (kept open for the server's life)
        self._process = subprocess.Popen(
            [sys.executable, "-c", SERVER, str(theirs.fileno()), *preload],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            env=self.env,
            cwd=self.cwd,
        )
        theirs.close()

    def suits(self, env: Mapping[str, str], cwd: str) -> bool:
        """Whether a process forked from the server starts as one started with ``env`` in ``cwd`` would."""
        return _startup_variables(env, cwd) == _startup_variables(self.env, self.cwd)

    def spawn(
        self,
        argv: Sequence[str],
        *,
        stdin: int,
        stdout: int,
        stderr: int,
        env: Mapping[str, str],
        cwd: str | None = None,
    ) -> Forked:
        """Fork a process that runs as ``python *argv`` would, on these file descriptors."""
        request = {
            "argv": list(argv),
            "env": dict(env),
            "cwd": cwd or os.getcwd(),
            "umask": _umask(),
        }
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with self._lock:
                socket.send_fds(self._control, [b"!"], [stdin, stdout, stderr, theirs.fileno()])
            theirs.close()
            ours.sendall(json.dumps(request).encode())
            ours.shutdown(socket.SHUT_WR)
            ready, _, _ = select.select([ours], [], [], START_TIMEOUT)
            line = b""
            while ready and not line.endswith(b"\n"):
                chunk = ours.recv(1)
                if not chunk:
                    break
                line += chunk
            if not line.endswith(b"\n"):
                raise RuntimeError(f"the fork server did not fork: {self._errors()}")
        except BaseException:
            ours.close()
            theirs.close()
            raise
        return Forked([sys.executable, *argv], int(line), ours)

    def close(self) -> None:
        self._control.close()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(10)
        self._log.close()

    def _errors(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-2000:] or "(it said nothing)"


_server: ForkServer | None = None


def server(env: Mapping[str, str], cwd: str | None = None) -> ForkServer | None:
    """The test run's fork server (started on first use) if it suits ``env`` and ``cwd`` (default:
    this process's), else ``None``."""
    global _server
    if not hasattr(os, "fork"):
        return None
    if _server is None:
        _server = ForkServer()
        atexit.register(_server.close)
    return _server if _server.suits(env, cwd or os.getcwd()) else None


Stream = int | IO[Any] | None


def popen(
    argv: Sequence[str],
    *,
    stdin: Stream = None,
    stdout: Stream = None,
    stderr: Stream = None,
    text: bool = False,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> Process:
    """``subprocess.Popen([python, *argv], ...)``, forked where the server suits ``env``.

    ``argv``: what follows ``python`` on a command line: ``["-c", code, *args]``,
    ``["-m", module, *args]`` or ``[script, *args]``.

    ``stdin``, ``stdout`` and ``stderr`` as for Popen: ``None`` (this process's own),
    ``PIPE``, ``DEVNULL``, a file descriptor or a file.
    """
    env = dict(os.environ if env is None else env)
    forks = server(env, cwd)
    if forks is None:
        command = [sys.executable, *argv]
        return subprocess.Popen(command, stdin=stdin, stdout=stdout, stderr=stderr, text=text, env=env, cwd=cwd)
    ours: list[int | None] = []  # this process's end of each pipe
    theirs: list[int] = []  # what the child gets as 0, 1 and 2
    opened: list[int] = []  # to close here once the child has its copies
    for number, given in enumerate((stdin, stdout, stderr)):
        if given == subprocess.PIPE:
            read, write = os.pipe()
            ours.append(write if number == 0 else read)
            theirs.append(read if number == 0 else write)
            opened.append(theirs[-1])
            continue
        ours.append(None)
        if given is None:
            theirs.append(number)
        elif given == subprocess.DEVNULL:
            theirs.append(os.open(os.devnull, os.O_RDWR))
            opened.append(theirs[-1])
        else:
            theirs.append(given if isinstance(given, int) else given.fileno())
    try:
        process = forks.spawn(argv, stdin=theirs[0], stdout=theirs[1], stderr=theirs[2], env=env, cwd=cwd)
    except BaseException:
        for fd in ours:
            if fd is not None:
                os.close(fd)
        raise
    finally:
        for fd in opened:
            os.close(fd)
    process.text = text
    # This process's ends as Popen makes them: binary and buffered, or text (stdin written through).
    if ours[0] is not None:
        writer: IO[Any] = open(ours[0], "wb")  # noqa: SIM115 (the process's stdin, closed by its user)
        process.stdin = io.TextIOWrapper(writer, write_through=True) if text else writer
    if ours[1] is not None:
        out: IO[Any] = open(ours[1], "rb")  # noqa: SIM115 (closed by communicate or the process's user)
        process.stdout = io.TextIOWrapper(out) if text else out
    if ours[2] is not None:
        err: IO[Any] = open(ours[2], "rb")  # noqa: SIM115 (closed by communicate or the process's user)
        process.stderr = io.TextIOWrapper(err) if text else err
    return process


def run(
    argv: Sequence[str],
    *,
    input: str | None = None,
    timeout: float = 60,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
) -> subprocess.CompletedProcess[str]:
    """``subprocess.run([python, *argv], input=input, capture_output=True, text=True,
    encoding="utf-8", timeout=timeout)``, forked where the server suits ``env``."""
    env = dict(os.environ if env is None else env)
    if server(env, cwd) is None:
        return subprocess.run(
            [sys.executable, *argv],
            input=input,
            capture_output=True,
            text=True,
            encoding="utf-8",
            timeout=timeout,
            env=env,
            cwd=cwd,
            check=False,
        )
    stdin = subprocess.PIPE if input is not None else None
    process = popen(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd)
    try:
        out, err = process.communicate(None if input is None else input.encode("utf-8"), timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        raise
    return subprocess.CompletedProcess(process.args, process.wait(), _text(out), _text(err))


def _communicate(
    process: Forked, in_w: int, data: bytes, readers: dict[int, list[bytes]], deadline: float | None
) -> None:
    """Feed ``data`` to ``in_w`` (then close it), read each reader to its end, and wait for the process."""
    with selectors.DefaultSelector() as selector:
        for fd in readers:
            selector.register(fd, selectors.EVENT_READ)
        if in_w >= 0:
            os.set_blocking(in_w, False)
            selector.register(in_w, selectors.EVENT_WRITE)
        try:
            while selector.get_map():
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(process.args, 0)
                for key, _ in selector.select(left):
                    fd = int(key.fd)
                    if fd == in_w:
                        try:
                            data = data[os.write(fd, data[: 1 << 16]) :]
                        except BrokenPipeError:  # as communicate: the child need not read it all
                            data = b""
                        if not data:
                            selector.unregister(fd)
                            os.close(fd)
                        continue
                    chunk = os.read(fd, 1 << 16)
                    if chunk:
                        readers[fd].append(chunk)
                    else:
                        selector.unregister(fd)
        finally:
            if in_w >= 0 and in_w in selector.get_map():
                os.close(in_w)
    process.wait(None if deadline is None else max(deadline - time.monotonic(), 0))


def _text(data: bytes, encoding: str = "utf-8") -> str:
    # What subprocess's text mode makes of the bytes: decoded, universal newlines.
    return data.decode(encoding).replace("\r\n", "\n").replace("\r", "\n")
