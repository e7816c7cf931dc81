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
from collections.abc import Callable, Iterator

import pytest

URL_VARIABLE = "SIMPLESESSION_TEST_REDIS_URL"
START_TIMEOUT = 10.0
INSTALL_HINT = "install redis-server (Debian, Ubuntu: apt-get install redis-server; macOS: brew install redis)"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def cluster_port() -> int:
    """A port on 127.0.0.1 for a cluster node: it and its bus port (10000 more) both free."""
    for _ in range(200):
        port = free_port()
        if port > 55535:  # the bus port must exist
            port -= 20000
        try:
            with socket.socket() as one, socket.socket() as two:
                one.bind(("127.0.0.1", port))
                two.bind(("127.0.0.1", port + 10000))
        except OSError:
            continue
        return port
    pytest.fail("found no free pair of ports for a cluster node")


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


def _start(binary: str, folder: str, args: list[str], name: str) -> subprocess.Popen[bytes]:
    log = os.path.join(folder, f"{name}.log")
    with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
        return subprocess.Popen([binary, *args], stdout=out, stderr=subprocess.STDOUT, cwd=folder)


def _wait_for(ready: Callable[[], bool], what: str, folder: str, timeout: float = START_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            logs = "".join(f"\n--- {name}\n{_tail(os.path.join(folder, name))}" for name in sorted(os.listdir(folder)))
            pytest.fail(f"{what} within {timeout} s{logs}")
        time.sleep(0.05)


def _tail(log: str) -> str:
    if not log.endswith(".log"):
        return ""
    with open(log, encoding="utf-8", errors="replace") as lines:
        return "".join(line for line in lines if "overcommit" not in line)[-1500:]


def _binaries(what: str) -> tuple[str, str]:
    server, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if server is None or cli is None:
        why = f"{what} needs redis-server and redis-cli on PATH: {INSTALL_HINT}"
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the Redis tests, but {why}")
        pytest.skip(why)
    return server, cli


def _query(port: int, *command: str) -> str:
    """A command's reply from the server on ``port``, as redis-cli prints it ("" if none answers)."""
    cli = shutil.which("redis-cli") or "redis-cli"
    try:
        done = subprocess.run(
            [cli, "-h", "127.0.0.1", "-p", str(port), *command], capture_output=True, text=True, timeout=5, check=False
        )
    except subprocess.TimeoutExpired:
        return ""
    return done.stdout


@contextlib.contextmanager
def redis_cluster(primaries: int = 3) -> Iterator[list[int]]:
    """The ports of a Redis Cluster of ``primaries`` primaries (no replicas) on 127.0.0.1, made
    for the caller in a temporary folder and stopped at the end."""
    server, cli = _binaries("a Redis Cluster")
    with tempfile.TemporaryDirectory(prefix="simplesession-cluster-") as folder:
        ports = [cluster_port() for _ in range(primaries)]
        processes = []
        try:
            for port in ports:
                args = ["--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
                args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
                args += ["--cluster-node-timeout", "2000"]
                processes.append(_start(server, folder, args, f"node-{port}"))
            for port in ports:
                _wait_for(lambda port=port: answers_ping(port), f"cluster node {port} did not answer PING", folder)  # type: ignore[misc]
            nodes = [f"127.0.0.1:{port}" for port in ports]
            made = subprocess.run(
                [cli, "--cluster", "create", *nodes, "--cluster-replicas", "0", "--cluster-yes"],
                capture_output=True,
                text=True,
                timeout=30,
                check=False,
            )
            if made.returncode != 0:
                pytest.fail(f"redis-cli --cluster create failed: {made.stdout[-1500:]} {made.stderr[-1500:]}")

            def ok() -> bool:
                return all("cluster_state:ok" in _query(port, "cluster", "info") for port in ports)

            _wait_for(ok, "the cluster did not become ok", folder)
            yield ports
        finally:
            for process in processes:
                stop(process)


class SentinelSet:
    """A master, a replica and a sentinel on 127.0.0.1, watching the master as ``service``."""

    service = "simplesession"

    def __init__(self, master: int, replica: int, sentinel: int) -> None:
        self.ports = {"master": master, "replica": replica}
        self.sentinel = sentinel

    def master(self) -> int:
        """The port of the server the sentinel calls master now."""
        reply = _query(self.sentinel, "sentinel", "get-master-addr-by-name", self.service).split()
        return int(reply[1]) if len(reply) == 2 else -1

    def replica_in_sync(self) -> bool:
        """Whether the server that is not master replicates it and the sentinel knows so."""
        master = self.master()
        info = _query(master, "info", "replication")
        replicas = _query(self.sentinel, "sentinel", "replicas", self.service)
        return "state=online" in info and "s_down" not in replicas and "slave" in replicas

    def fail_over(self) -> int:
        """Force a failover; the port of the new master, once the sentinel names it."""
        old = self.master()
        reply = _query(self.sentinel, "sentinel", "failover", self.service)
        if "OK" not in reply:
            pytest.fail(f"SENTINEL FAILOVER refused: {reply}")
        deadline = time.monotonic() + START_TIMEOUT
        while self.master() == old and time.monotonic() < deadline:
            time.sleep(0.05)
        new = self.master()
        assert new != old, "the sentinel did not promote the replica"
        return new


@contextlib.contextmanager
def redis_sentinel() -> Iterator[SentinelSet]:
    """A :class:`SentinelSet` made for the caller in a temporary folder, stopped at the end."""
    server, _ = _binaries("Sentinel")
    with tempfile.TemporaryDirectory(prefix="simplesession-sentinel-") as folder:
        master, replica, sentinel = free_port(), free_port(), free_port()
        base = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--repl-diskless-sync-delay", "0"]
        processes = []
        try:
            processes.append(_start(server, folder, ["--port", str(master), *base], "master"))
            _wait_for(lambda: answers_ping(master), "the master did not answer PING", folder)
            replica_args = ["--port", str(replica), *base, "--replicaof", "127.0.0.1", str(master)]
            processes.append(_start(server, folder, replica_args, "replica"))
            # The sentinel finds replicas in the master's INFO, which it asks for every 10 s
            # once started: so only once the replica is there.
            _wait_for(
                lambda: "state=online" in _query(master, "info", "replication"),
                "the replica did not sync with the master",
                folder,
            )
            config = os.path.join(folder, "sentinel.conf")
            with open(config, "w", encoding="utf-8") as out:
                out.write(
                    f"port {sentinel}\nbind 127.0.0.1\ndir {folder}\n"
                    f"sentinel monitor {SentinelSet.service} 127.0.0.1 {master} 1\n"
                    f"sentinel down-after-milliseconds {SentinelSet.service} 1000\n"
                    f"sentinel failover-timeout {SentinelSet.service} 4000\n"
                )
            processes.append(_start(server, folder, [config, "--sentinel"], "sentinel"))
            watched = SentinelSet(master, replica, sentinel)
            _wait_for(watched.replica_in_sync, "the replica did not sync with the master under the sentinel", folder)
            yield watched
        finally:
            for process in processes:
                stop(process)
