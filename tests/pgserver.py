"""A PostgreSQL server for the tests: the one CI gives, or a throw-away cluster started on 127.0.0.1.

The cluster is made with ``initdb`` in a temporary folder (its unix sockets there too), runs
as an unprivileged user (as root: the ``postgres`` user, else ``nobody``), listens on a free
port of 127.0.0.1 with a random password, and is stopped and removed at the end. Run as a
script, ``python tests/pgserver.py URL_FILE`` starts one, writes its URL to ``URL_FILE`` and
keeps it until its stdin closes (CI's script holds that pipe for as long as it runs).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

URL_VARIABLE = "SIMPLESESSION_TEST_POSTGRES_URL"
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
USER = "simplesession"
INSTALL_HINT = "install PostgreSQL (Debian, Ubuntu: apt-get install postgresql; macOS: brew install postgresql)"
DEBIAN_BINARIES = "/usr/lib/postgresql/*/bin/initdb"  # Debian keeps them off PATH, one folder per version


class Missing(Exception):
    """No PostgreSQL binaries here; ``str()`` says how to get them."""


def binaries() -> str | None:
    """The folder of ``initdb`` and ``postgres``: on PATH, else Debian's newest /usr/lib/postgresql/*/bin."""
    found = shutil.which("initdb")
    if found is not None:
        return os.path.dirname(os.path.realpath(found))  # a link on PATH: the folder of the real one
    folders = glob.glob(DEBIAN_BINARIES)
    newest = sorted(folders, key=lambda path: [int(n) for n in re.findall(r"\d+", path)])
    return os.path.dirname(newest[-1]) if newest else None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _account() -> pwd.struct_passwd | None:
    """Whom the cluster runs as: ``None`` (this process's user), or as root an unprivileged one."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):  # initdb and postgres refuse to run as root
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise Missing("running as root, and neither a postgres nor a nobody user to run PostgreSQL as")


def _as(account: pwd.struct_passwd | None, command: list[str]) -> list[str]:
    if account is None:
        return command
    # setpriv execs the command itself, so the process started is the server, signals and all.
    ids = ["--reuid", str(account.pw_uid), "--regid", str(account.pw_gid), "--clear-groups"]
    return ["setpriv", *ids, "--", *command]


@contextlib.contextmanager
def cluster() -> Iterator[str]:
    """Start a throw-away cluster; its URL. :class:`Missing` without PostgreSQL's binaries."""
    bindir = binaries()
    if bindir is None:
        raise Missing(
            f"no PostgreSQL (initdb) on PATH or in /usr/lib/postgresql/*/bin and ${URL_VARIABLE} is not set: "
            f"{INSTALL_HINT}, or set ${URL_VARIABLE} to a server's URL"
        )
    account = _account()
    password = secrets.token_hex(16)
    with tempfile.TemporaryDirectory(prefix="simplesession-postgres-") as folder:
        data, log = os.path.join(folder, "data"), os.path.join(folder, "postgres.log")
        with open(os.path.join(folder, "password"), "w") as file:
            file.write(password + "\n")
        if account is not None:
            os.chown(folder, account.pw_uid, account.pw_gid)
            os.chown(os.path.join(folder, "password"), account.pw_uid, account.pw_gid)
        initdb = [f"{bindir}/initdb", "-D", data, "-U", USER, f"--pwfile={folder}/password", "--auth=scram-sha-256"]
        initdb += ["-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"]
        done = subprocess.run(_as(account, initdb), capture_output=True, text=True, cwd=folder, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}): {(done.stdout + done.stderr)[-2000:]}")
        port = free_port()
        # Durability is not what these tests check: a throw-away cluster need not wait for the disk.
        server = [f"{bindir}/postgres", "-D", data, "-h", "127.0.0.1", "-p", str(port), "-k", folder]
        for setting in ("fsync=off", "synchronous_commit=off", "full_page_writes=off", "max_connections=300"):
            server += ["-c", setting]
        with open(log, "wb") as out:  # a file, not a pipe: a full pipe would stall the server
            process = subprocess.Popen(_as(account, server), stdout=out, stderr=subprocess.STDOUT, cwd=folder)
        try:
            _wait_until_ready(bindir, port, process, log)
            yield f"postgresql://{USER}:{password}@127.0.0.1:{port}/postgres"
        finally:
            _stop(process)


def _wait_until_ready(bindir: str, port: int, process: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    ready = [f"{bindir}/pg_isready", "-q", "-h", "127.0.0.1", "-p", str(port), "-U", USER, "-d", "postgres"]
    while subprocess.run(ready, check=False).returncode != 0:
        if process.poll() is not None:
            with open(log, encoding="utf-8", errors="replace") as out:
                raise RuntimeError(f"postgres exited at start ({process.returncode}): {out.read()[-2000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"postgres did not accept connections on 127.0.0.1:{port} within {START_TIMEOUT} s")
        time.sleep(0.05)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGINT)  # a fast shutdown: it ends the sessions still open
    try:
        process.wait(STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT)


@contextlib.contextmanager
def postgres_server() -> Iterator[str]:
    """The URL of a PostgreSQL server for this test session.

    ``$SIMPLESESSION_TEST_POSTGRES_URL`` if set; else a throw-away cluster of our own (see
    :func:`cluster`). Without PostgreSQL the tests skip, saying how to install it, unless
    ``$CI`` is set: in CI a missing server is a failure.
    """
    import pytest

    url = os.environ.get(URL_VARIABLE)
    if url:
        yield url
        return
    try:
        started = cluster()
        url = started.__enter__()
    except Missing as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI must run the PostgreSQL tests, but {exc}")
        pytest.skip(str(exc))
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield url
    finally:
        started.__exit__(None, None, None)


_admin: dict[str, Any] = {}  # one connection per server for the tests' clean-ups, made once


def drop_tables(url: str, table: str, *, truncate: bool = False) -> None:
    """Drop a test's table and its ``_aside`` table (or only empty them, with ``truncate``)."""
    import psycopg
    from psycopg import sql

    names = sql.SQL(", ").join(sql.Identifier(name) for name in (table, table + "_aside"))
    statement = sql.SQL("TRUNCATE {}" if truncate else "DROP TABLE IF EXISTS {}").format(names)
    for attempt in (1, 2):
        conn = _admin.get(url)
        if conn is None or conn.closed:
            conn = _admin[url] = psycopg.connect(url, autocommit=True)
        try:
            conn.execute(statement)
            return
        except psycopg.OperationalError:
            if attempt == 2:
                raise  # else a test ended the kept connection: another one


def main(url_file: str) -> int:
    """Start a cluster, write its URL to ``url_file``, and stop it once stdin is closed."""
    try:
        with cluster() as url:
            partial = url_file + ".partial"
            with open(partial, "w") as out:
                out.write(url + "\n")
            os.replace(partial, url_file)  # whoever waits for the file reads it whole
            sys.stdin.read()
    except (Missing, RuntimeError) as exc:
        print(f"pgserver: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # stop the cluster on the way out
    sys.exit(main(sys.argv[1]))
