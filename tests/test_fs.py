"""The file-system calls and folders of the file storages (storage/_fs.py, storage/_folders.py), each on its own."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from simplesession.storage._folders import LOCK_DIR, Folder, Store
from simplesession.storage._fs import TEMP_PREFIX, TooLarge


def test_a_read_returns_the_bytes_and_a_stamp_that_a_replace_changes(tmp_path: Path) -> None:
    folder = Folder(str(tmp_path))
    first = folder.replace("k.json", b"one", False)
    assert folder.read("k.json") == (first, b"one")
    assert folder.stamp("k.json") == first
    second = folder.replace("k.json", b"two", False)
    assert second != first
    assert folder.read("k.json") == (second, b"two")
    assert folder.names() == ["k.json"]  # no temporary file left
    assert stat.S_IMODE(os.stat(tmp_path / "k.json").st_mode) == 0o600


def test_a_read_with_a_limit_refuses_a_bigger_file_without_reading_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = Folder(str(tmp_path))
    folder.replace("big", b"x" * 1000, False)
    assert folder.read("big", 1000)[1] == b"x" * 1000
    reads: list[int] = []
    real_read = os.read

    def spy_read(fd: int, size: int) -> bytes:
        reads.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(os, "read", spy_read)
    with pytest.raises(TooLarge) as info:
        folder.read("big", 999)
    assert (info.value.size, info.value.limit) == (1000, 999)
    assert str(tmp_path / "big") in str(info.value)
    assert reads == []


def test_a_read_with_a_limit_stops_at_it_when_the_file_grows_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file that grew since its size was taken: the size says 0, yet it holds 1 MB.
    (tmp_path / "growing").write_bytes(b"y" * 1_000_000)
    real_fstat = os.fstat

    def size_taken_before_it_grew(fd: int) -> os.stat_result:
        st = real_fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return st
        fields = list(st)
        fields[stat.ST_SIZE] = 0
        return os.stat_result(fields)

    reads: list[int] = []
    real_read = os.read

    def spy_read(fd: int, size: int) -> bytes:
        reads.append(size)
        return real_read(fd, size)

    monkeypatch.setattr(os, "fstat", size_taken_before_it_grew)
    monkeypatch.setattr(os, "read", spy_read)
    with pytest.raises(TooLarge):
        Folder(str(tmp_path)).read("growing", 100_000)
    assert sum(reads) <= 100_000 + (1 << 16) + 1  # it stopped at the limit


def test_make_creates_the_missing_folders_private_inside_the_store(tmp_path: Path) -> None:
    old = os.umask(0)  # whatever the umask, the store's folders are 0700
    try:
        store = tmp_path / "outside" / "store"
        Store(str(store)).shards["ab"].make(fsync=True)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(store).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(store / "ab").st_mode) == 0o700
    Store(str(store)).shards["ab"].sync()


def test_replace_into_a_missing_folder_raises_file_not_found_and_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        Folder(str(tmp_path / "missing")).replace("k", b"x", False)
    assert list(tmp_path.iterdir()) == []


def test_a_leftover_temporary_name_of_this_process_is_stepped_over(tmp_path: Path) -> None:
    # A file of a crashed process that had our pid, with the name a write would take next.
    folder = Folder(str(tmp_path))
    for number in range(1000):
        (tmp_path / f"{TEMP_PREFIX}{os.getpid()}-{number}").write_bytes(b"")
    folder.replace("k", b"new", False)
    assert folder.read("k")[1] == b"new"


def test_locate_gives_each_key_its_shard_file_and_lock_file(tmp_path: Path) -> None:
    store = Store(str(tmp_path))
    folder, name, lock = store.locate("Chat:42")
    assert folder is store.shards[Path(folder.path).name]  # one object per folder
    assert Path(folder.path).parent == tmp_path
    assert name == "k~43hat~3a42.json"
    assert Path(lock).parent == tmp_path / LOCK_DIR
    assert store.locate("Chat:42") == (folder, name, lock)
