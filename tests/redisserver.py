"""A Redis server for the tests: the one CI gives, or a private one started on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

URL_VARIABLE = "SIMPLESESSION_TEST_REDIS_URL"
START_TIMEOUT = 10.0
INSTALL_HINT = "install redis-server (Debian, Ubuntu: apt-get install redis-server; macOS: brew install redis)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """The URL of a Redis server for this test session.

    ``$SIMPLESESSION_TEST_REDIS_URL`` if set; else a ``redis-server`` of our own on 127.0.0.1
    (no persistence), stopped at the end. Without one the tests skip, saying how to install
    redis-server, unless ``$CI`` is set: in CI a missing server is a failure.
    """
    url = os.environ.get(URL_VARIABLE)
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        why = (
            f"no redis-server on PATH and ${URL_VARIABLE} is not set: {INSTALL_HINT}, "
            f"or set ${URL_VARIABLE} to a Redis server's URL"
        )
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Redis tests, but {why}")
        pytest.skip(why)
    with tempfile.TemporaryDirectory(prefix="simplesession-redis-") as folder:
        port = free_port()
        log = os.path.join(folder, "redis.log")
        with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
            process = subprocess.Popen(
                [binary, "--save", "", "--appendonly", "no", "--bind", "127.0.0.1", "--port", str(port)],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=folder,
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not answers_ping(port):
                if process.poll() is not None:
                    with open(log, encoding="utf-8", errors="replace") as out:
                        pytest.fail(f"redis-server exited at start ({process.returncode}): {out.read()[-2000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"redis-server did not answer PING on 127.0.0.1:{port} within {START_TIMEOUT} s")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            stop(process)
