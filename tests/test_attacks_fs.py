"""FileStorage against what may be planted inside its folder: links, fifos, devices, files.

Each test plants something where the store keeps a folder or a file of its own, points it
at a folder outside the store that holds sentinel files (one of them a well-formed session),
runs every operation that could reach it, and checks that nothing outside changed: the same
entries, bytes, inodes, modification and change times (a change time moves with any change
to a file, its times included).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import run_python

from simplesession import CorruptSessionError, FileStorage, StorageError
from simplesession.cli import main

pytestmark = pytest.mark.skipif(os.name != "posix", reason="links, fifos and descriptors are POSIX's")

FORGED = {"balance": 1_000_000}
OLD = time.time_ns() - 10 * 86400 * 10**9  # ten days ago


def document(key: str, data: Any) -> bytes:
    return json.dumps({"format": 1, "key": key, "data": data}).encode()


def age(path: Path, ns: int = OLD) -> None:
    os.utime(path, ns=(ns, ns), follow_symlinks=False)


def snapshot(root: Path) -> dict[str, tuple[Any, ...]]:
    """What is under ``root`` (links not followed), down to each entry's times and bytes."""
    seen: dict[str, tuple[Any, ...]] = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = os.lstat(path)
        content = path.read_bytes() if stat.S_ISREG(st.st_mode) else None
        seen[str(path.relative_to(root))] = (st.st_mode, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, content)
    return seen


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder beside the store with files an operation must never touch."""
    folder = tmp_path / "outside"
    (folder / "inner").mkdir(parents=True)
    (folder / "unrelated.txt").write_text("not a session")
    (folder / "0b0.lock").write_text("looks like a lock file")
    (folder / ".tmp-123-0").write_text("looks like a crashed write")
    (folder / "inner" / "deep.txt").write_text("deeper still")
    for path in folder.rglob("*"):
        age(path)
    return folder


def session_file_for(storage: FileStorage, key: str, folder: Path) -> Path:
    """A well-formed, long-idle session file of ``key`` in ``folder``, named as the store would."""
    forged = folder / storage.path(key).name
    forged.write_bytes(document(key, FORGED))
    age(forged)
    return forged


def refused(action: Callable[[], object], *words: str) -> StorageError:
    with pytest.raises(StorageError) as info:
        action()
    for word in words:
        assert word in str(info.value), info.value
    return info.value


def cli_refuses(capsys: pytest.CaptureFixture[str], *args: str, words: tuple[str, ...]) -> None:
    assert main(list(args)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for word in words:
        assert word in err, err


# -- links where the store's folders belong ------------------------------------------------------


def test_a_linked_lock_folder_is_refused_and_nothing_outside_is_touched(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "sessions"
    FileStorage(root).write("42", {"count": 1})
    (root / ".locks").symlink_to(outside)
    before = snapshot(outside)
    storage = FileStorage(root)
    link = str(root / ".locks")
    refused(lambda: storage.sweep(), link, "link")
    refused(lambda: storage.stats(), link, "link")
    with pytest.raises(StorageError) as info, storage.lock("42"):
        pass
    assert link in str(info.value)
    assert info.value.key == "42"
    cli_refuses(capsys, "--dir", str(root), "sweep", words=(link, "remove the link"))
    assert snapshot(outside) == before
    assert (root / ".locks").is_symlink()


def test_a_linked_shard_folder_is_refused_and_nothing_outside_is_touched(
    tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root, ttl=3600)
    storage.write("other", {"v": 1})
    shard = storage.path("42").parent
    assert shard != storage.path("other").parent
    session_file_for(storage, "42", outside)
    shard.symlink_to(outside)
    before = snapshot(outside)
    for fresh in (storage, FileStorage(root, ttl=3600), FileStorage(root, cache_size=0)):
        refused(lambda s=fresh: s.read("42"), str(shard), "link")  # type: ignore[misc]
        refused(lambda s=fresh: s.write("42", {"v": 2}), str(shard))  # type: ignore[misc]
        refused(lambda s=fresh: s.delete("42"), str(shard))  # type: ignore[misc]
        refused(lambda s=fresh: s.describe("42"), str(shard))  # type: ignore[misc]
        refused(lambda s=fresh: list(s.keys()), str(shard))  # type: ignore[misc]
        refused(lambda s=fresh: s.sweep(ttl=1), str(shard))  # type: ignore[misc]
        refused(lambda s=fresh: s.stats(), str(shard))  # type: ignore[misc]
    for command in (["sweep", "--ttl", "1s"], ["ls"], ["export"], ["stats"]):
        cli_refuses(capsys, "--dir", str(root), *command, words=(str(shard),))
    assert snapshot(outside) == before


def test_a_linked_corrupt_folder_is_refused_and_the_bad_file_stays_where_it_is(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root)
    storage.write("42", {"count": 1})
    (root / "corrupt").symlink_to(outside)
    storage.path("42").write_bytes(b"{not json")
    before = snapshot(outside)
    with pytest.raises(CorruptSessionError) as info:
        FileStorage(root).read("42")
    assert str(root / "corrupt") in str(info.value)
    assert "link" in str(info.value)
    assert storage.path("42").read_bytes() == b"{not json"
    assert snapshot(outside) == before


def test_a_store_folder_that_is_a_file_gives_a_storage_error_from_every_operation(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    root.write_text("a file, not a folder")
    storage = FileStorage(root)
    operations: list[Callable[[], object]] = [
        lambda: storage.read("42"),
        lambda: storage.read_versioned("42"),
        lambda: storage.has("42"),
        lambda: storage.write("42", {"v": 1}),
        lambda: storage.delete("42"),
        lambda: list(storage.keys()),
        lambda: storage.lock("42").__enter__(),
        lambda: storage.sweep(ttl=1),
        lambda: storage.stats(),
        lambda: storage.describe("42"),
        lambda: storage.set_aside("42", "a test"),
    ]
    for operation in operations:
        error = refused(operation, str(root), "not a folder")
        assert error.path == str(root)
    assert root.read_text() == "a file, not a folder"


# -- links and special files where a session's file belongs --------------------------------------


def test_a_linked_session_file_is_set_aside_unread_and_its_target_untouched(
    tmp_path: Path, outside: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root, ttl=3600)
    storage.write("42", {"count": 1})
    assert storage.read("42") == {"count": 1}  # cached, with the real file's stamp
    target = session_file_for(storage, "42", outside)
    os.utime(target)  # recently used: a read would keep it and refresh its idle clock
    storage.path("42").unlink()
    storage.path("42").symlink_to(target)
    before = snapshot(outside)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("42") is None  # the warm cache notices, and does not read through
    assert "a link" in caplog.text
    (aside,) = (root / "corrupt").iterdir()
    assert aside.is_symlink()  # the link itself was moved, never its target
    assert os.readlink(aside) == str(target)
    assert FileStorage(root, ttl=3600).read("42") is None
    assert snapshot(outside) == before


def test_the_listing_and_the_sweep_never_follow_a_linked_session_file(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root)
    long_key = "x" * 300  # its file is named by a hash, so listing it reads the key inside
    storage.write(long_key, {"v": 1})
    storage.write("42", {"v": 1})
    for key in (long_key, "42"):
        target = session_file_for(storage, key, outside)
        storage.path(key).unlink()
        storage.path(key).symlink_to(target)
        age(storage.path(key))
    before = snapshot(outside)
    assert list(FileStorage(root).keys()) == ["42"]  # the hashed link was set aside, unread
    report = FileStorage(root).sweep(ttl=60)
    assert report.removed == 1
    assert not os.path.lexists(storage.path("42"))  # the link is gone, its target is not
    assert FileStorage(root).read(long_key) is None
    assert snapshot(outside) == before


def test_a_fifo_where_a_session_belongs_is_set_aside_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FileStorage(tmp_path / "sessions", cache_size=0)
    storage.write("42", {"v": 1})
    fifo = storage.path("42")
    fifo.unlink()
    os.mkfifo(fifo)
    result: list[Any] = []
    reader = threading.Thread(target=lambda: result.append(storage.read("42")), daemon=True)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        reader.start()
        reader.join(5)
    if reader.is_alive():  # unblock a reader stuck in open(), then fail
        with open(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK), "wb"):
            reader.join(5)
        pytest.fail("reading a fifo where a session belongs blocked")
    assert result == [None]
    assert "a fifo" in caplog.text
    (aside,) = (tmp_path / "sessions" / "corrupt").iterdir()
    assert stat.S_ISFIFO(os.lstat(aside).st_mode)


@pytest.mark.skipif(os.geteuid() != 0, reason="making a device node takes root")
def test_a_device_where_a_session_belongs_is_set_aside_unread(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    storage = FileStorage(tmp_path / "sessions", cache_size=0)
    storage.write("42", {"v": 1})
    device = storage.path("42")
    device.unlink()
    try:
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))  # the null device
    except PermissionError:
        pytest.skip("this system allows no device nodes here")
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("42") is None
    assert "a device" in caplog.text
    (aside,) = (tmp_path / "sessions" / "corrupt").iterdir()
    assert stat.S_ISCHR(os.lstat(aside).st_mode)


def test_a_linked_lock_file_is_refused_and_its_target_untouched(tmp_path: Path, outside: Path) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root)
    (root / ".locks").mkdir(parents=True, mode=0o700)
    lock_file = root / ".locks" / "0b0.lock"  # the stripe of "42"
    lock_file.symlink_to(outside / "0b0.lock")
    before = snapshot(outside)
    with pytest.raises(StorageError) as info, storage.lock("42"):
        pass
    assert str(lock_file) in str(info.value)
    assert "remove it" in str(info.value)
    assert snapshot(outside) == before


# -- what keeps working ---------------------------------------------------------------------------


def test_a_store_reached_through_a_link_the_user_chose_works(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    chosen = tmp_path / "chosen"
    chosen.symlink_to(real)
    storage = FileStorage(chosen, ttl=3600)
    with storage.lock("42"):
        storage.write("42", {"count": 1})
    storage.write("idle", {"v": 1})
    age(storage.path("idle"))
    assert FileStorage(chosen).read("42") == {"count": 1}
    assert sorted(storage.keys()) == ["42"]
    assert storage.sweep().removed == 1
    assert storage.stats().sessions == 1
    assert main(["--dir", str(chosen), "ls"]) == 0
    assert capsys.readouterr().out == "42\n"
    assert (real / storage.path("42").relative_to(chosen)).is_file()


def test_a_store_deleted_and_put_back_while_in_use_is_found_again(tmp_path: Path) -> None:
    # The store keeps its folders open; one deleted and made again (a restore from a backup)
    # is noticed at the first entry not found, and taken anew.
    root = tmp_path / "sessions"
    storage = FileStorage(root, cache_size=0)
    storage.write("42", {"count": 1})
    storage.write("other", {"v": 1})
    backup = tmp_path / "backup"
    shutil.copytree(root, backup, symlinks=True)
    FileStorage(root).write("42", {"count": 2})
    shutil.rmtree(root)
    assert storage.read("42") is None
    shutil.copytree(backup, root, symlinks=True)
    assert storage.read("42") == {"count": 1}
    assert storage.read("other") == {"v": 1}
    storage.write("new", {"v": 3})
    assert FileStorage(root).read("new") == {"v": 3}
    shutil.rmtree(root)
    storage.write("42", {"count": 9})  # writes make the store again
    assert FileStorage(root).read("42") == {"count": 9}


LOW_LIMIT = """
    import os, resource, sys
    from simplesession import FileStorage

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    storage = FileStorage(sys.argv[1])
    for i in range(400):  # most shards, far more than may be kept open
        with storage.lock(f"chat-{i}"):
            storage.write(f"chat-{i}", {"i": i})
    assert all(storage.read(f"chat-{i}") == {"i": i} for i in range(400))
    # Kept ones are never closed, and one opened for a call is closed in it: count them now.
    folders = [fd for fd in os.listdir("/proc/self/fd") if os.path.isdir(f"/proc/self/fd/{fd}")]
    print(len(os.listdir(sys.argv[1])), len(folders))
"""


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
def test_kept_folder_descriptors_stay_within_a_quarter_of_a_low_open_file_limit(tmp_path: Path) -> None:
    result = run_python(LOW_LIMIT, str(tmp_path))
    assert result.returncode == 0, result.stderr
    entries, most_folders = map(int, result.stdout.split())
    assert entries > 100  # shards (and the lock folder) in use, more than may be kept open
    assert most_folders == 64 // 4 + 1  # a quarter of the limit, and the store's own folder
