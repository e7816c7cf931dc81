"""FileStorage: the file format, names, permissions, cache, corruption and fsync."""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import stat
import tracemalloc
import unicodedata
from pathlib import Path
from typing import Any

import pytest
from helpers import full_path

from simplesession import CorruptSessionError, FileStorage, StorageError, default_directory
from simplesession.storage import _fs as fs_module
from simplesession.storage.file import LOCK_STRIPES

HOSTILE_KEYS = [
    "/",
    "a/b",
    "../escape",
    "..",
    ".",
    "..\\..\\windows",
    "C:\\temp",
    "\x00",
    "nul\x00byte",
    "x" * 1000,
    "é" * 300,
    "Key",
    "key",
    "KEY",
    unicodedata.normalize("NFC", "café"),
    unicodedata.normalize("NFD", "café"),
    "CON",
    "con",
    "nul",
    "NUL.txt",
    "com1",
    "LPT9",
    "aux",
    "",
    " ",
    "trailing.",
    "trailing ",
    "~",
    "~41",
    "k",
    "h" + "0" * 64,
    "🐍" * 40,
    "line\nbreak",
    "*?<>|\"'",
    "-100123456789",
]


def all_files(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def test_file_is_readable_json_recording_key_and_format(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("chat:42", {"count": 3, "name": "Zoë"})
    path = storage.path("chat:42")
    text = path.read_text("utf-8")
    assert "Zoë" in text  # human-readable, not \u-escaped
    assert json.loads(text) == {"format": 1, "key": "chat:42", "data": {"count": 3, "name": "Zoë"}}
    assert path.parent.parent == tmp_path
    assert len(path.parent.name) == 2


def test_hostile_keys_round_trip_stay_inside_and_do_not_collide(tmp_path: Path) -> None:
    outside_before = all_files(tmp_path)
    root = tmp_path / "sessions"
    storage = FileStorage(root)
    for i, key in enumerate(HOSTILE_KEYS):
        storage.write(key, {"i": i})
    for i, key in enumerate(HOSTILE_KEYS):
        assert storage.read(key) == {"i": i}, key
    assert sorted(storage.keys()) == sorted(HOSTILE_KEYS)
    # Nothing was created outside the storage directory.
    assert {p for p in all_files(tmp_path) if root not in p.parents} == outside_before
    names = [p.name for p in all_files(root) if p.suffix == ".json"]
    assert len(names) == len(HOSTILE_KEYS)
    # Safe on case-folding filesystems and under every Unicode normal form.
    assert all(n.isascii() and n == n.lower() for n in names)
    assert len({n.lower() for n in names}) == len(names)
    assert all(len(n.encode()) <= 143 for n in names)
    # A fresh storage (no cache) finds every key again from the files alone.
    fresh = FileStorage(root, cache_size=0)
    for i, key in enumerate(HOSTILE_KEYS):
        assert fresh.read(key) == {"i": i}, key
    for key in HOSTILE_KEYS:
        fresh.delete(key)
    assert list(fresh.keys()) == []


def test_keys_ignores_files_that_are_not_sessions(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("a", 1)
    folder = storage.path("a").parent
    (folder / "README").write_text("not a session")
    (folder / ".tmp-123-0").write_text("{}")
    (folder / "k~61.json").write_text("{}")  # non-canonical alias of "a"
    (tmp_path / "zz").mkdir()
    assert list(storage.keys()) == ["a"]


def test_key_with_lone_surrogate_is_refused_clearly(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    with pytest.raises(ValueError, match="lone surrogate"):
        storage.write("bad\udc80key", {})
    assert all_files(tmp_path) == set()


def test_directory_and_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        root = tmp_path / "deep" / "sessions"
        storage = FileStorage(root)
        storage.write("k", {"secret": True})
        with storage.lock("k"):
            pass
    finally:
        os.umask(old)
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    for path in root.rglob("*"):
        expected = 0o700 if path.is_dir() else 0o600
        assert stat.S_IMODE(path.stat().st_mode) == expected, path


def test_default_directory_honours_environment_and_platformdirs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SIMPLESESSION_DIR", str(tmp_path / "env-dir"))
    assert FileStorage().directory == tmp_path / "env-dir"
    monkeypatch.delenv("SIMPLESESSION_DIR")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert default_directory("mybot") == tmp_path / "xdg" / "mybot" / "sessions"
    storage = FileStorage(app_name="mybot")
    storage.write("k", 1)
    assert (tmp_path / "xdg" / "mybot" / "sessions").is_dir()


def test_opening_does_not_scan_or_create_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "big"
    FileStorage(root).write("present", {"v": 1})

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("opening a storage must not list a directory")

    with monkeypatch.context() as patched:  # undone before tmp_path's clean-up, which lists folders
        patched.setattr(os, "scandir", forbidden)
        patched.setattr(os, "listdir", forbidden)
        patched.setattr(os, "walk", forbidden)
        storage = FileStorage(root)
        assert storage.read("present") == {"v": 1}
        assert not (tmp_path / "never").exists()
        FileStorage(tmp_path / "never")
        assert not (tmp_path / "never").exists()


class OpenCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = 0
        real_open = os.open

        def counting_open(path: str, flags: int, *args: int, **kwargs: Any) -> int:
            if flags & (os.O_WRONLY | os.O_RDWR) == 0 and str(path).endswith(".json"):
                self.reads += 1
            return real_open(path, flags, *args, **kwargs)

        monkeypatch.setattr(os, "open", counting_open)


def test_cache_hit_reads_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path)
    storage.write("k", {"v": 1})
    counter = OpenCounter(monkeypatch)
    for _ in range(5):
        assert storage.read("k") == {"v": 1}
    assert counter.reads == 0


def test_cache_warms_on_first_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FileStorage(tmp_path).write("k", {"v": 1})
    storage = FileStorage(tmp_path)
    counter = OpenCounter(monkeypatch)
    for _ in range(5):
        assert storage.read("k") == {"v": 1}
    assert counter.reads == 1


def test_cache_size_zero_reads_the_file_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path, cache_size=0)
    storage.write("k", {"v": 1})
    counter = OpenCounter(monkeypatch)
    for _ in range(3):
        assert storage.read("k") == {"v": 1}
    assert counter.reads == 3


def test_cache_keeps_at_most_cache_size_sessions(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path, cache_size=3)
    for key in "abcd":
        storage.write(key, key)
    counter = OpenCounter(monkeypatch)
    assert [storage.read(k) for k in "bcd"] == ["b", "c", "d"]
    assert counter.reads == 0
    assert storage.read("a") == "a"  # evicted as least recently used
    assert counter.reads == 1


def test_a_small_cached_session_takes_about_a_kilobyte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What the README tells users sizing cache_size: memory per cached session, bookkeeping included.
    value = {"count": 3, "name": "someone", "lang": "en", "items": [1, 2, 3]}
    keys = [str(1_000_000_000 + i) for i in range(2001)]
    writer = FileStorage(tmp_path, cache_size=0)
    for key in keys:
        writer.write(key, value)
    storage = FileStorage(tmp_path, cache_size=len(keys))
    storage.read(keys[0])  # first-use set-up is not counted
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for key in keys[1:]:
            assert storage.read(key) == value
        held = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    counter = OpenCounter(monkeypatch)
    assert all(storage.read(key) == value for key in keys)
    assert counter.reads == 0  # every session is in the cache: what was measured is the cache
    per_session = held / (len(keys) - 1)
    assert 300 < per_session < 1500


def test_cache_sees_a_write_by_another_storage_object(tmp_path: Path) -> None:
    first, second = FileStorage(tmp_path), FileStorage(tmp_path)
    first.write("k", {"v": "aaaa"})
    assert first.read("k") == {"v": "aaaa"}
    second.write("k", {"v": "bbbb"})  # same size, same millisecond
    assert first.read("k") == {"v": "bbbb"}
    second.delete("k")
    assert first.read("k") is None
    assert not first.has("k")


def test_invalid_options_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cache_size"):
        FileStorage(tmp_path, cache_size=-1)
    with pytest.raises(ValueError, match="lock_timeout"):
        FileStorage(tmp_path, lock_timeout=-1)


def test_lock_files_are_bounded(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    for i in range(3 * LOCK_STRIPES):
        with storage.lock(f"chat-{i}"):
            pass
    lock_files = list((tmp_path / ".locks").iterdir())
    assert 0 < len(lock_files) <= LOCK_STRIPES


def test_long_keys_use_hashed_names_that_keys_reverses(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    long_keys = ["a" * 200, "a" * 201, "Ω" * 100]
    for key in long_keys:
        storage.write(key, key[:3])
    assert all(storage.path(k).name.startswith("h") for k in long_keys)
    assert sorted(FileStorage(tmp_path).keys()) == sorted(long_keys)


def test_a_hashed_file_whose_recorded_key_is_not_text_is_set_aside_and_the_rest_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FileStorage(tmp_path)
    storage.write("a" * 200, 1)
    storage.write("b" * 200, 2)
    path = storage.path("a" * 200)
    path.write_bytes(b'{"format":1,"key":"' + b"\\udcff" * 200 + b'","data":1}')  # a lone surrogate
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert list(FileStorage(tmp_path).keys()) == ["b" * 200]
        assert FileStorage(tmp_path).stats().sessions == 1
    assert not path.exists()
    (moved,) = (tmp_path / "corrupt").iterdir()
    assert moved.read_bytes().startswith(b'{"format":1,"key":"\\udcff')
    assert any("not valid Unicode" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)


# -- corrupt and unreadable files -------------------------------------------------------


def corrupt_cases() -> dict[str, bytes]:
    good = json.dumps({"format": 1, "key": "k", "data": {"count": 5}}).encode()
    return {
        "truncated": good[: len(good) // 2],
        "empty": b"",
        "not json": b"\x00\xffgarbage\x80",
        "json but not ours": b'{"count": 5}',
        "a json list": b"[1, 2, 3]",
        "unknown format": json.dumps({"format": 99, "key": "k", "data": 1}).encode(),
        "another key": json.dumps({"format": 1, "key": "other", "data": 1}).encode(),
        "NaN token": b'{"format": 1, "key": "k", "data": NaN}',
    }


@pytest.mark.parametrize("case", list(corrupt_cases()))
def test_corrupt_file_is_moved_aside_logged_and_reads_absent(
    tmp_path: Path, case: str, caplog: pytest.LogCaptureFixture
) -> None:
    storage = FileStorage(tmp_path)
    path = storage.path("k")
    path.parent.mkdir(parents=True)
    bad = corrupt_cases()[case]
    path.write_bytes(bad)
    with caplog.at_level(logging.ERROR, logger="simplesession"):
        assert storage.read("k") is None
    assert not path.exists()
    (moved,) = (tmp_path / "corrupt").iterdir()
    assert moved.read_bytes() == bad
    errors = [r for r in caplog.records if r.levelno == logging.ERROR and r.name.startswith("simplesession")]
    assert len(errors) == 1
    assert str(path) in errors[0].getMessage()
    assert str(moved) in errors[0].getMessage()
    # The key works again from a clean slate.
    storage.write("k", {"count": 1})
    assert FileStorage(tmp_path, cache_size=0).read("k") == {"count": 1}


def test_corrupt_file_replacing_a_cached_one_is_detected(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("k", {"v": 1})
    assert storage.read("k") == {"v": 1}
    storage.path("k").write_bytes(b"{broken")
    assert storage.read("k") is None
    assert len(list((tmp_path / "corrupt").iterdir())) == 1


def test_unreadable_file_is_moved_aside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path)
    storage.write("k", {"v": 1})
    target = str(storage.path("k"))
    real_open = os.open

    def denying_open(path: str, flags: int, *args: int, **kwargs: Any) -> int:
        if full_path(path, kwargs.get("dir_fd")) == target:
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real_open(path, flags, *args, **kwargs)

    fresh = FileStorage(tmp_path)
    monkeypatch.setattr(os, "open", denying_open)
    assert fresh.read("k") is None
    monkeypatch.undo()
    (moved,) = (tmp_path / "corrupt").iterdir()
    assert json.loads(moved.read_text())["data"] == {"v": 1}


def test_directory_in_place_of_a_file_is_moved_aside(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    path = storage.path("k")
    path.mkdir(parents=True)
    (path / "inside").write_text("kept")
    assert storage.read("k") is None
    (moved,) = (tmp_path / "corrupt").iterdir()
    assert (moved / "inside").read_text() == "kept"


def test_corrupt_file_that_cannot_be_moved_raises_corrupt_session_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path)
    path = storage.path("k")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"garbage")

    def failing_rename(src: str, dst: str, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, "Read-only file system", src)

    monkeypatch.setattr(os, "rename", failing_rename)
    with pytest.raises(CorruptSessionError) as info:
        storage.read("k")
    assert info.value.path == str(path)
    assert "Read-only file system" in str(info.value)
    assert path.read_bytes() == b"garbage"


# -- write failures and durability ------------------------------------------------------


def test_failed_write_keeps_old_value_and_leaves_no_temp_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path)
    storage.write("k", {"v": "old"})

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StorageError) as info:
        storage.write("k", {"v": "new"})
    monkeypatch.undo()
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOSPC
    assert str(storage.path("k")) in str(info.value)
    assert "No space left" in str(info.value)
    assert storage.read("k") == {"v": "old"}
    assert FileStorage(tmp_path, cache_size=0).read("k") == {"v": "old"}
    assert [p.name for p in storage.path("k").parent.iterdir()] == [storage.path("k").name]


def spy_on_fsync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths that ``os.fsync`` flushes from now on, in order."""
    synced: list[str] = []
    real_fsync = os.fsync

    def spy_fsync(fd: int) -> None:
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", spy_fsync)
    return synced


def test_fsync_flushes_file_and_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    synced = spy_on_fsync(monkeypatch)
    storage = FileStorage(tmp_path, fsync=True)
    storage.write("k", {"v": 1})
    path = storage.path("k")
    assert any(s.startswith(str(path.parent) + "/.tmp-") for s in synced)  # the file, before the rename
    assert str(path.parent) in synced  # the rename itself
    assert str(tmp_path) in synced  # the new shard folder's entry
    synced.clear()
    storage.write("k", {"v": 2})
    assert len(synced) == 2
    synced.clear()
    storage.delete("k")
    assert synced == [str(path.parent)]
    assert FileStorage(tmp_path, cache_size=0).read("k") is None


F_FULLFSYNC = 51  # macOS's command number; Linux has no such command


def full_fsync_as_on_macos(monkeypatch: pytest.MonkeyPatch, refusal: int | None = None) -> list[str]:
    """Give FileStorage macOS's F_FULLFSYNC (refused with ``refusal``, if given); the paths it flushed."""
    flushed: list[str] = []

    def fake_fcntl(fd: int, command: int, *args: int) -> int:
        assert command == F_FULLFSYNC
        if refusal is not None:
            raise OSError(refusal, os.strerror(refusal))
        flushed.append(os.readlink(f"/proc/self/fd/{fd}"))
        return 0

    monkeypatch.setattr(fs_module, "_F_FULLFSYNC", F_FULLFSYNC)
    monkeypatch.setattr(fcntl, "fcntl", fake_fcntl)
    return flushed


@pytest.mark.parametrize("refusal", [None, errno.ENOTSUP], ids=["full flush", "refused, so plain fsync"])
def test_fsync_flushes_the_drives_cache_where_the_system_can(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refusal: int | None
) -> None:
    # macOS's fsync leaves the data in the drive's cache, which a power loss empties. A file
    # system that refuses F_FULLFSYNC (some network ones) gets what it has: fsync.
    storage = FileStorage(tmp_path, fsync=True)
    storage.write("k", {"v": 1})
    fully = full_fsync_as_on_macos(monkeypatch, refusal)
    plainly = spy_on_fsync(monkeypatch)
    storage.write("k", {"v": 2})
    flushed, unused = (fully, plainly) if refusal is None else (plainly, fully)
    folder = str(storage.path("k").parent)
    assert len(flushed) == 2
    assert flushed[0].startswith(folder + os.sep + ".tmp-")  # the file, before the rename
    assert flushed[1] == folder  # the rename itself
    assert unused == []
    assert FileStorage(tmp_path, cache_size=0).read("k") == {"v": 2}


def test_a_full_flush_that_fails_fails_the_write_and_keeps_the_old_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path, fsync=True)
    storage.write("k", {"v": 1})
    full_fsync_as_on_macos(monkeypatch, refusal=errno.EIO)
    monkeypatch.setattr(os, "fsync", lambda fd: pytest.fail("an I/O error is not a refusal: no fallback"))
    with pytest.raises(StorageError) as caught:
        storage.write("k", {"v": 2})
    assert caught.value.errno == errno.EIO
    assert FileStorage(tmp_path, cache_size=0).read("k") == {"v": 1}
    assert not [name for name in os.listdir(storage.path("k").parent) if name.startswith(".tmp-")]


def test_without_fsync_nothing_is_synced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(os, "fsync", calls.append)
    storage = FileStorage(tmp_path)
    storage.write("k", 1)
    storage.delete("k")
    assert calls == []


def test_cache_notices_a_replacement_with_equal_size_and_mtime(tmp_path: Path) -> None:
    # On filesystems with coarse timestamps two versions can share size and mtime; the
    # cache must still tell them apart.
    storage, other = FileStorage(tmp_path), FileStorage(tmp_path)
    storage.write("k", {"v": "old"})
    assert storage.read("k") == {"v": "old"}
    before = storage.path("k").stat()
    other.write("k", {"v": "new"})
    os.utime(storage.path("k"), ns=(before.st_atime_ns, before.st_mtime_ns))
    after = storage.path("k").stat()
    assert (after.st_size, after.st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    assert storage.read("k") == {"v": "new"}


def test_reading_a_session_leaves_its_access_time_alone(tmp_path: Path) -> None:
    # A read-only update writes nothing to the disk, not even an access time into the inode.
    storage = FileStorage(tmp_path, cache_size=0)
    storage.write("k", {"v": 1})
    path = storage.path("k")
    control = tmp_path / "control"
    control.write_bytes(path.read_bytes())
    for file in (path, control):
        mtime = file.stat().st_mtime_ns
        os.utime(file, ns=(mtime - 3_600 * 10**9, mtime))  # older than mtime: relatime updates it
    old_atime = path.stat().st_atime_ns
    control.read_bytes()
    if control.stat().st_atime_ns == old_atime:
        pytest.skip("this filesystem records no access times")
    assert storage.read("k") == {"v": 1}
    assert path.stat().st_atime_ns == old_atime


@pytest.mark.skipif(not hasattr(os, "O_NOATIME"), reason="O_NOATIME is Linux's")
def test_a_session_file_of_another_user_is_still_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path, cache_size=0)
    storage.write("k", {"v": 1})
    real_open = os.open

    def open_as_not_the_owner(path: str, flags: int, *args: int, **kwargs: Any) -> int:
        if flags & os.O_NOATIME:  # the kernel's answer to anyone but the file's owner
            raise PermissionError(errno.EPERM, "Operation not permitted", path)
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", open_as_not_the_owner)
    assert storage.read("k") == {"v": 1}
    assert not list(tmp_path.glob("corrupt/*"))


@pytest.mark.parametrize(
    ("key", "file", "lock"),
    [
        ("42", "88/k42.json", "0b0.lock"),
        ("Chat:42", "aa/k~43hat~3a42.json", "096.lock"),
        ("é" * 300, "5c/h7250b66610f8b7dbd6f5e5426d2143bcba6d826cedb4bea8a358695da78db023.json", "0c7.lock"),
    ],
)
def test_where_a_key_lives_never_changes(tmp_path: Path, key: str, file: str, lock: str) -> None:
    # Every release must find the files and share the locks of the ones before it.
    storage = FileStorage(tmp_path)
    with storage.lock(key):
        storage.write(key, {"v": 1})
    assert storage.path(key) == tmp_path / file
    assert (tmp_path / ".locks" / lock).exists()
    assert [p.name for p in (tmp_path / ".locks").iterdir()] == [lock]
