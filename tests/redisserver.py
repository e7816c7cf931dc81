"""A Redis server for the tests: the one CI gives, or a private one started on 127.0.0.1."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
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


class StallingProxy:
    """A TCP proxy on 127.0.0.1 to ``target_port`` that can stop passing bytes, both ways, and
    pass them again: a network cut that leaves the connections open, as a partition does.

    Bytes that arrive during a stall are held and delivered after :meth:`resume`.
    """

    def __init__(self, target_port: int) -> None:
        self._target = target_port
        self._flowing = threading.Event()
        self._flowing.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = int(self._listener.getsockname()[1])
        self.url = f"redis://127.0.0.1:{self.port}/0"
        threading.Thread(target=self._accept, name="stalling-proxy", daemon=True).start()

    def stall(self) -> None:
        self._flowing.clear()

    def resume(self) -> None:
        self._flowing.set()

    def close(self) -> None:
        self._closed = True
        self._flowing.set()
        self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def __enter__(self) -> StallingProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
                upstream = socket.create_connection(("127.0.0.1", self._target), timeout=5)
            except OSError:
                return  # closed
            upstream.settimeout(None)
            self._sockets += [client, upstream]
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        # Ends when either side closes; a stall only holds the bytes, it never drops them.
        with contextlib.suppress(OSError):
            while True:
                data = source.recv(65536)
                if not data:
                    break
                self._flowing.wait()
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
