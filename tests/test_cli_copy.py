"""``--store URL`` and ``copy SOURCE TARGET``: any store by one name, and sessions moved between stores."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import quote

import pytest
from pgserver import drop_tables
from test_cli import DAY, SESSIONS, assert_one_error_line, cli

from simplesession import FileStorage, RedisStorage, Storage

# The long runs (SIMPLESESSION_SOAK_SECONDS set, see test_soak.py) move 10,000 sessions.
MANY = 10_000 if os.environ.get("SIMPLESESSION_SOAK_SECONDS") else 300


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A sessions folder holding SESSIONS."""
    storage = FileStorage(tmp_path / "sessions")
    for key, (value, version) in SESSIONS.items():
        storage.write(key, value, version=version)
    return tmp_path / "sessions"


def holds_exactly(storage: Storage, sessions: Mapping[str, tuple[object, object]]) -> None:
    assert sorted(storage.keys()) == sorted(sessions)
    for key, (value, version) in sessions.items():
        found = storage.read_versioned(key)
        assert found == (value, version), key
        assert found is not None
        assert type(found[1]) is type(version), key  # 2 stays an int, 1.5 a float


def test_store_names_a_folder_as_dir_does_before_or_after_the_command(folder: Path) -> None:
    by_dir = cli("--dir", str(folder), "ls")
    assert by_dir.returncode == 0, by_dir.stderr
    assert cli("--store", f"file:{folder}", "ls").stdout == by_dir.stdout
    assert cli("ls", "--store", f"file://{folder}").stdout == by_dir.stdout


@pytest.mark.parametrize(
    ("argv", "words"),
    [
        (["--store", "mongodb://u:secret@db/x", "ls"], ["no store is named mongodb", "file:DIR"]),
        (["--store", "/srv/sessions", "ls"], ["file:/srv/sessions"]),
        (["--dir", "x", "ls", "--store", "file:y"], ["--store: not allowed with argument --dir"]),
        (["--store", "file:x", "--prefix", "p:", "ls"], ["--prefix: only with a Redis store"]),
        (["--store", "redis://127.0.0.1:1/0", "--trust-folder", "ls"], ["--trust-folder: only with a folder"]),
        (["--dir", "x", "copy", "file:a", "file:b"], ["copy takes its two stores as SOURCE and TARGET"]),
        (["copy", "file:a", "nowhere"], ["names no kind of store", "file:nowhere"]),
    ],
)
def test_a_store_option_that_cannot_work_is_a_usage_error(argv: list[str], words: list[str]) -> None:
    result = cli(*argv)
    assert result.returncode == 2, result
    last = result.stderr.splitlines()[-1]
    for word in words:
        assert word in last, last
    assert "secret" not in result.stderr


def test_copy_files_to_redis_and_back_keeps_values_versions_and_idle_clocks(
    folder: Path, tmp_path: Path, redis_url: str, redis_prefix: str
) -> None:
    source = FileStorage(folder)
    idle = {key: (n + 1) * DAY for n, key in enumerate(sorted(SESSIONS))}
    for key, seconds in idle.items():
        then = time.time() - seconds
        os.utime(source.path(key), (then, then))
    ttl = ["--ttl", "30d"]
    there = cli("--prefix", redis_prefix, "copy", f"file:{folder}", redis_url, *ttl)
    assert there.returncode == 0, there.stderr
    assert there.stdout.startswith(f"copied {len(SESSIONS)} sessions from ")
    redis = RedisStorage(redis_url, prefix=redis_prefix)
    holds_exactly(redis, SESSIONS)
    for key, seconds in idle.items():  # each expires when the bot's sweep would have removed it
        left = redis.client.pttl(redis._name(key)) / 1000
        assert 30 * DAY - seconds - 60 < left <= 30 * DAY - seconds, key
    back = tmp_path / "back"
    home = cli("--prefix", redis_prefix, "copy", redis_url, f"file:{back}", *ttl)
    assert home.returncode == 0, home.stderr
    target = FileStorage(back)
    holds_exactly(target, SESSIONS)
    for key, seconds in idle.items():
        info = target.describe(key)
        assert info is not None
        assert info.used is not None
        assert abs(time.time() - info.used - seconds) < 60, key
    assert FileStorage(folder).read("42") == SESSIONS["42"][0]  # the source is as it was


def test_copy_between_folders_keeps_idle_clocks_to_the_second_and_skips_existing_when_asked(
    folder: Path, tmp_path: Path
) -> None:
    source = FileStorage(folder)
    then = time.time() - 5 * DAY
    os.utime(source.path("42"), (then, then))
    target = FileStorage(tmp_path / "target")
    target.write("Zoë", ["theirs"])
    result = cli("copy", f"file:{folder}", f"file:{tmp_path / 'target'}", "--skip-existing")
    assert result.returncode == 0, result.stderr
    assert "copied 3 sessions" in result.stdout
    assert "kept 1 session it had" in result.stdout
    assert target.read("Zoë") == ["theirs"]
    assert target.read_versioned("chat:-100") == SESSIONS["chat:-100"]
    info = target.describe("42")
    assert info is not None
    assert info.used is not None
    assert abs(info.used - then) < 1


def test_copy_onto_itself_or_from_nowhere_fails_saying_so(folder: Path, tmp_path: Path) -> None:
    assert_one_error_line(cli("copy", f"file:{folder}", f"file://{folder}"), "both the source and the target")
    assert_one_error_line(cli("copy", f"file:{tmp_path / 'none'}", f"file:{tmp_path / 'b'}"), "no sessions at")
    assert not (tmp_path / "b").exists()


def test_copy_reports_a_corrupt_session_leaves_it_and_copies_the_rest(folder: Path, tmp_path: Path) -> None:
    bad = FileStorage(folder).path("42")
    assert bad is not None
    bad.write_bytes(b"{not json")
    result = cli("copy", f"file:{folder}", f"file:{tmp_path / 'target'}")
    assert result.returncode == 1
    assert "'42'" in result.stderr
    assert bad.read_bytes() == b"{not json"  # a copy changes nothing where it reads
    holds_exactly(FileStorage(tmp_path / "target"), {k: v for k, v in SESSIONS.items() if k != "42"})


def test_many_sessions_go_through_sqlite_postgresql_and_redis_back_to_files_unchanged(
    tmp_path: Path, redis_url: str, redis_prefix: str, postgres_url: str
) -> None:
    """Through two tables of one database, and a Redis prefix, each named in its URL."""
    sessions = {f"chat:{n}": ({"n": n, "name": f"user {n}"}, n % 3 or None) for n in range(MANY)}
    source = FileStorage(tmp_path / "source")
    for key, (value, version) in sessions.items():
        source.write(key, value, version=version)
    tables = [f"test_{uuid.uuid4().hex}" for _ in range(2)]  # the server may outlive this run
    query = "&" if "?" in postgres_url else "?"
    redis_query = "&" if "?" in redis_url else "?"
    stores = [
        f"file:{tmp_path / 'source'}",
        f"sqlite:{tmp_path / 'sessions.db'}",
        f"{postgres_url}{query}table={tables[0]}",
        f"{postgres_url}{query}table={tables[1]}",
        f"{redis_url}{redis_query}prefix={quote(redis_prefix)}",
        f"file:{tmp_path / 'back'}",
    ]
    try:
        for source_url, target_url in itertools.pairwise(stores):
            done = cli("copy", source_url, target_url, timeout=120)
            assert done.returncode == 0, (target_url, done.stderr)
            assert done.stdout.startswith(f"copied {MANY:,} sessions".replace(",", "")), done.stdout
        assert RedisStorage(redis_url, prefix=redis_prefix).read("chat:1") == sessions["chat:1"][0]
    finally:
        for table in tables:
            drop_tables(postgres_url, table)
    holds_exactly(FileStorage(tmp_path / "back"), sessions)


def test_copy_waits_for_the_lock_of_a_session_a_bot_holds_in_the_target(folder: Path, tmp_path: Path) -> None:
    target_dir = tmp_path / "target"
    target = FileStorage(target_dir)
    with target.lock("42"):  # as a bot's update would, in another process's view
        copy = subprocess.Popen(
            [sys.executable, "-m", "simplesession", "copy", f"file:{folder}", f"file:{target_dir}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=os.environ.copy(),
        )
        try:
            time.sleep(2)  # a copy that took no lock is done long before: 4 sessions
            assert copy.poll() is None, copy.communicate()
            assert target.read("42") is None  # not written under the bot's feet
        except BaseException:
            copy.kill()
            raise
    _, err = copy.communicate(timeout=60)
    assert copy.returncode == 0, err
    holds_exactly(target, SESSIONS)
