"""FileStorage under injected OS faults: full disks, I/O errors, denied and read-only folders.

Each fault is injected by replacing one ``os`` function with one that raises for paths
(or descriptors) inside the test's storage folder only, and records that it fired, so a
test cannot pass because its fault was never reached. After a failed write the previous
value must still be readable, from the cache and from a fresh storage, and no temporary
file may be left behind.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest
from helpers import full_path

from simplesession import Bot, Context, FileStorage, LockTimeout, SessionError, StorageError, session
from simplesession.storage.file import TEMP_PREFIX

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds descriptors' paths in /proc")

Check = Callable[[str], bool]


def anywhere(target: str) -> bool:
    return True


def is_temp(target: str) -> bool:
    return os.path.basename(target).startswith(TEMP_PREFIX)


def is_folder(target: str) -> bool:
    return os.path.isdir(target)


def is_file(target: str) -> bool:
    return not os.path.isdir(target)


def is_session(target: str) -> bool:
    return target.endswith(".json")


class Faults:
    """Makes ``os`` functions fail with an errno for targets inside ``root``."""

    # The argument that names what each function touches: a path, or a descriptor.
    PATH_ARGUMENT: ClassVar[dict[str, int]] = {
        "open": 0,
        "mkdir": 0,
        "replace": 0,
        "rename": 0,
        "unlink": 0,
        "utime": 0,
    }
    FD_ARGUMENT: ClassVar[dict[str, int]] = {"write": 0, "fsync": 0}
    # The keyword that names the folder a relative path is in, where the call has one.
    DIR_FD_KEYWORD: ClassVar[dict[str, str]] = {"replace": "src_dir_fd", "rename": "src_dir_fd"}

    def __init__(self, root: Path) -> None:
        self._root = str(root)
        self._saved: list[tuple[str, Any]] = []
        self.fired: list[str] = []

    def fail(self, name: str, code: int, when: Check = anywhere, *, flags: int = 0) -> None:
        """Make ``os.<name>`` raise ``OSError(code)`` on targets in the root that ``when`` accepts.

        ``flags``: for ``open``, fail only opens with any of these flags.
        """
        real = getattr(os, name)

        def faulty(*args: Any, **kwargs: Any) -> Any:
            target = self._target(name, args, kwargs)
            inside = target is not None and (target == self._root or target.startswith(self._root + os.sep))
            wanted = not flags or (len(args) > 1 and args[1] & flags)
            if inside and wanted and target is not None and when(target):
                self.fired.append(f"{name} {target}")
                raise OSError(code, os.strerror(code), target)
            return real(*args, **kwargs)

        self._saved.append((name, real))
        setattr(os, name, faulty)

    def heal(self) -> None:
        """Put back every function made to fail."""
        while self._saved:
            name, real = self._saved.pop()
            setattr(os, name, real)

    def _target(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
        if name in self.FD_ARGUMENT:
            fd = args[self.FD_ARGUMENT[name]]
            try:
                return os.readlink(f"/proc/self/fd/{fd}")
            except OSError:
                return None
        target = args[self.PATH_ARGUMENT[name]]
        if isinstance(target, int):
            return None
        return full_path(target, kwargs.get(self.DIR_FD_KEYWORD.get(name, "dir_fd")))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "sessions"


@pytest.fixture
def faults(root: Path) -> Iterator[Faults]:
    injector = Faults(root)
    yield injector
    injector.heal()


def temp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob(f"{TEMP_PREFIX}*")]


def assert_clear_storage_error(error: BaseException, path: Path | str, code: int, key: str | None = "k") -> None:
    """A StorageError that is an OSError with ``code``, naming ``path``, the key and the cause."""
    assert isinstance(error, StorageError)
    assert isinstance(error, OSError)
    assert isinstance(error, SessionError)
    assert error.errno == code
    assert error.path == str(path)
    assert str(path) in str(error)
    assert os.strerror(code) in str(error)
    if key is not None:
        assert error.key == key
        assert repr(key) in str(error)


def assert_reads(root: Path, key: str, expected: Any, *storages: FileStorage) -> None:
    """``key`` reads as ``expected`` through each storage given and a fresh one without cache."""
    for storage in (*storages, FileStorage(root, cache_size=0)):
        assert storage.read(key) == expected, storage
        assert storage.has(key) is (expected is not None)


# -- a write that fails keeps the old value ---------------------------------------------------

CREATE = os.O_CREAT

WRITE_FAULTS = [
    pytest.param("open", errno.ENOSPC, is_temp, CREATE, id="open-ENOSPC"),
    pytest.param("open", errno.EACCES, is_temp, CREATE, id="open-EACCES"),
    pytest.param("open", errno.EROFS, is_temp, CREATE, id="open-EROFS"),
    pytest.param("open", errno.EIO, is_temp, CREATE, id="open-EIO"),
    pytest.param("open", errno.EDQUOT, is_temp, CREATE, id="open-EDQUOT"),
    pytest.param("write", errno.ENOSPC, is_temp, 0, id="write-ENOSPC"),
    pytest.param("write", errno.EIO, is_temp, 0, id="write-EIO"),
    pytest.param("write", errno.EDQUOT, is_temp, 0, id="write-EDQUOT"),
    pytest.param("replace", errno.EIO, is_temp, 0, id="replace-EIO"),
    pytest.param("replace", errno.EACCES, is_temp, 0, id="replace-EACCES"),
    pytest.param("replace", errno.EROFS, is_temp, 0, id="replace-EROFS"),
    pytest.param("replace", errno.ENOSPC, is_temp, 0, id="replace-ENOSPC"),
]


@pytest.mark.parametrize("cache_size", [1024, 0], ids=["cache", "nocache"])
@pytest.mark.parametrize(("function", "code", "when", "flags"), WRITE_FAULTS)
def test_failed_write_raises_storage_error_naming_the_path_and_keeps_the_old_value(
    root: Path, faults: Faults, cache_size: int, function: str, code: int, when: Check, flags: int
) -> None:
    storage = FileStorage(root, cache_size=cache_size)
    storage.write("k", {"v": "old"})
    assert storage.read("k") == {"v": "old"}  # warm
    faults.fail(function, code, when, flags=flags)
    with pytest.raises(StorageError) as info:
        storage.write("k", {"v": "new", "pad": "x" * 100})
    assert faults.fired, "the fault was never reached"
    assert_clear_storage_error(info.value, storage.path("k"), code)
    assert_reads(root, "k", {"v": "old"}, storage)  # while the fault lasts...
    faults.heal()
    assert_reads(root, "k", {"v": "old"}, storage)  # ...and after it
    assert temp_files(root) == []
    assert not (root / "corrupt").exists()
    storage.write("k", {"v": "newer"})  # the storage works again
    assert_reads(root, "k", {"v": "newer"}, storage)


@pytest.mark.parametrize(("function", "code", "when", "flags"), WRITE_FAULTS)
def test_failed_first_write_of_a_key_stores_nothing(
    root: Path, faults: Faults, function: str, code: int, when: Check, flags: int
) -> None:
    storage = FileStorage(root)
    storage.write("other", 1)  # the folder exists
    faults.fail(function, code, when, flags=flags)
    with pytest.raises(StorageError) as info:
        storage.write("k", {"v": "new"})
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("k"), code)
    faults.heal()
    assert_reads(root, "k", None, storage)
    assert sorted(FileStorage(root).keys()) == ["other"]
    assert temp_files(root) == []


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.ENOSPC, errno.EIO], ids=errno.errorcode.get)
def test_folder_that_cannot_be_created_is_a_storage_error_and_stores_nothing(
    root: Path, faults: Faults, code: int
) -> None:
    storage = FileStorage(root)
    faults.fail("mkdir", code)
    with pytest.raises(StorageError) as info:
        storage.write("k", {"v": 1})
    assert faults.fired
    error = info.value
    assert isinstance(error, OSError)
    assert error.errno == code
    assert error.key == "k"
    assert error.path is not None
    assert error.path in str(error)
    assert os.strerror(code) in str(error)
    faults.heal()
    assert_reads(root, "k", None, storage)
    assert not root.exists() or temp_files(root) == []
    storage.write("k", {"v": 2})
    assert_reads(root, "k", {"v": 2}, storage)


@pytest.mark.parametrize("fault", ["mkdir", "fsync of the parent folder"])
def test_error_of_a_folder_that_cannot_be_made_says_what_failed_once(root: Path, faults: Faults, fault: str) -> None:
    storage = FileStorage(root, fsync=True)
    storage.write("other", 1)  # the root exists; "k" goes into a new shard folder
    assert storage.path("k").parent != storage.path("other").parent
    if fault == "mkdir":
        faults.fail("mkdir", errno.EACCES)
    else:
        faults.fail("fsync", errno.EIO, is_folder)
    with pytest.raises(StorageError) as info:
        storage.write("k", 1)
    assert faults.fired
    message = str(info.value)
    assert message.count("could not") == 1, message
    assert message.count("check that") <= 1, message


# -- fsync=True -------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EDQUOT], ids=errno.errorcode.get)
def test_failed_fsync_of_the_file_keeps_the_old_value_and_no_temp_file(root: Path, faults: Faults, code: int) -> None:
    storage = FileStorage(root, fsync=True)
    storage.write("k", {"v": "old"})
    faults.fail("fsync", code, is_file)
    with pytest.raises(StorageError) as info:
        storage.write("k", {"v": "new"})
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("k"), code)
    faults.heal()
    assert_reads(root, "k", {"v": "old"}, storage)
    assert temp_files(root) == []


def test_failed_fsync_of_the_folder_raises_naming_it_and_cache_and_disk_agree(root: Path, faults: Faults) -> None:
    # The folder is synced after the rename, which cannot be undone: the new value may be
    # visible, but it is not known to be durable, so the write reports the failure.
    storage = FileStorage(root, fsync=True)
    storage.write("k", {"v": "old"})
    assert storage.read("k") == {"v": "old"}
    faults.fail("fsync", errno.EIO, is_folder)
    with pytest.raises(StorageError) as info:
        storage.write("k", {"v": "new"})
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("k").parent, errno.EIO)
    faults.heal()
    seen = storage.read("k")
    assert seen in ({"v": "old"}, {"v": "new"})
    assert_reads(root, "k", seen, storage)
    assert temp_files(root) == []


def test_failed_fsync_of_the_folder_on_delete_raises_and_cache_and_disk_agree(root: Path, faults: Faults) -> None:
    storage = FileStorage(root, fsync=True)
    storage.write("k", {"v": "old"})
    assert storage.read("k") == {"v": "old"}
    faults.fail("fsync", errno.EIO, is_folder)
    with pytest.raises(StorageError) as info:
        storage.delete("k")
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("k").parent, errno.EIO)
    faults.heal()
    seen = storage.read("k")
    assert seen in ({"v": "old"}, None)
    assert_reads(root, "k", seen, storage)


def test_failed_fsync_of_a_new_shard_folder_stores_nothing(root: Path, faults: Faults) -> None:
    storage = FileStorage(root, fsync=True)
    storage.write("other", 1)
    assert storage.path("k").parent != storage.path("other").parent
    faults.fail("fsync", errno.EIO, is_folder)
    with pytest.raises(StorageError) as info:
        storage.write("k", 1)
    assert faults.fired
    assert isinstance(info.value, OSError)
    assert info.value.errno == errno.EIO
    assert info.value.key == "k"
    faults.heal()
    assert_reads(root, "k", None, storage)
    assert temp_files(root) == []
    storage.write("k", 2)
    assert_reads(root, "k", 2, storage)


# -- delete -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS, errno.EIO, errno.EBUSY], ids=errno.errorcode.get)
def test_failed_delete_raises_naming_the_path_and_the_session_stays(root: Path, faults: Faults, code: int) -> None:
    storage = FileStorage(root)
    storage.write("k", {"v": "kept"})
    assert storage.read("k") == {"v": "kept"}
    faults.fail("unlink", code, is_session)
    with pytest.raises(StorageError) as info:
        storage.delete("k")
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("k"), code)
    with pytest.raises(StorageError):
        storage.write("k", None)  # writing None deletes, and fails the same way
    assert_reads(root, "k", {"v": "kept"}, storage)
    faults.heal()
    storage.delete("k")
    assert_reads(root, "k", None, storage)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS], ids=errno.errorcode.get)
def test_sweep_that_cannot_remove_an_idle_session_raises_a_storage_error_or_goes_on(
    root: Path, faults: Faults, code: int
) -> None:
    storage = FileStorage(root)
    idle = [f"idle-{i}" for i in range(20)]
    for key in idle:
        storage.write(key, {"k": key})
        then = time.time_ns() - int(7200e9)
        os.utime(storage.path(key), ns=(then, then))
    stuck = storage.path("idle-0")
    faults.fail("unlink", code, lambda path: path == str(stuck))
    failure: StorageError | None = None
    try:
        storage.sweep(ttl=3600)
    except StorageError as error:
        failure = error
    assert faults.fired
    faults.heal()
    if failure is not None:  # stopped, saying where
        assert failure.errno == code
        assert str(stuck) in str(failure)
    else:  # or went on with the rest
        assert sorted(FileStorage(root).keys()) == ["idle-0"]
    assert_reads(root, "idle-0", {"k": "idle-0"}, storage)


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [errno.EMFILE, errno.ENFILE, errno.ENOMEM], ids=errno.errorcode.get)
def test_read_that_fails_for_want_of_resources_raises_and_moves_nothing_aside(
    root: Path, faults: Faults, code: int
) -> None:
    FileStorage(root).write("k", {"v": 1})
    storage = FileStorage(root)  # cold cache: it must open the file
    faults.fail("open", code, is_session)
    with pytest.raises(StorageError) as info:
        storage.read("k")
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("k"), code, key=None)
    faults.heal()
    assert not (root / "corrupt").exists()
    assert_reads(root, "k", {"v": 1}, storage)


# -- a read-only folder -------------------------------------------------------------------------


def make_read_only(faults: Faults, code: int) -> None:
    """As a read-only (or denied) folder behaves, even for root, whom chmod does not stop."""
    faults.fail("open", code, flags=os.O_WRONLY | os.O_RDWR | os.O_CREAT)
    for name in ("mkdir", "replace", "rename", "unlink", "utime"):
        faults.fail(name, code)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
def test_read_only_folder_serves_reads_and_refuses_writes_clearly(root: Path, faults: Faults, code: int) -> None:
    storage = FileStorage(root)
    storage.write("k", {"v": 1})
    storage.write("other", {"v": 2})
    make_read_only(faults, code)
    cold = FileStorage(root)
    assert cold.read("k") == {"v": 1}
    assert cold.read("missing") is None
    assert sorted(cold.keys()) == ["k", "other"]
    refused: list[tuple[Callable[[], object], Path]] = [
        (lambda: storage.write("k", {"v": "new"}), storage.path("k")),
        (lambda: storage.write("new", {"v": "new"}), storage.path("new")),
        (lambda: storage.delete("other"), storage.path("other")),
    ]
    for action, path in refused:
        with pytest.raises(StorageError) as info:
            action()
        assert info.value.errno == code
        assert str(path) in str(info.value)
    faults.heal()
    assert_reads(root, "k", {"v": 1}, storage, cold)
    assert_reads(root, "other", {"v": 2}, storage, cold)
    assert_reads(root, "new", None, storage, cold)
    assert temp_files(root) == []


@pytest.mark.parametrize(
    "lock_file",
    [
        pytest.param("missing", id="no-lock-folder-yet"),
        pytest.param("present", id="lock-file-present"),
    ],
)
@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
def test_lock_in_a_read_only_folder_works_or_raises_a_storage_error(
    root: Path, faults: Faults, code: int, lock_file: str
) -> None:
    storage = FileStorage(root, lock_timeout=1)
    storage.write("k", {"v": 1})
    if lock_file == "present":
        with storage.lock("k"):
            pass
    make_read_only(faults, code)
    failure: StorageError | None = None
    try:
        with FileStorage(root, lock_timeout=1).lock("k"):
            assert storage.read("k") == {"v": 1}
    except StorageError as error:
        failure = error
    if failure is not None:
        assert failure.key == "k"
        assert failure.errno == code
        assert failure.path is not None
        assert failure.path.startswith(str(root))
        assert failure.path in str(failure)
    assert_reads(root, "k", {"v": 1}, storage)


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES], ids=errno.errorcode.get)
def test_updates_that_only_read_go_on_in_a_read_only_folder(root: Path, faults: Faults, code: int) -> None:
    storage = FileStorage(root)
    storage.write("42", {"count": 3})
    with storage.lock("42"):  # the lock file exists, as after any earlier update
        pass
    make_read_only(faults, code)
    bot = Bot(output=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the bot
    bot.use(session(initial=lambda: {"count": 0}, storage=FileStorage(root)))
    seen: list[int] = []

    @bot.command("show")
    def show(ctx: Context) -> None:
        seen.append(ctx.session["count"])

    bot.handle_update({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 42}, "text": "/show"}})
    assert seen == [3]


# -- through the middleware ---------------------------------------------------------------------


def counting_bot(storage: FileStorage) -> Bot:
    bot = Bot(output=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the bot
    bot.use(session(initial=lambda: {"count": 0}, storage=storage))

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    @bot.command("reset")
    def reset(ctx: Context) -> None:
        ctx.session = None

    return bot


def update(text: str, update_id: int = 1, chat_id: int = 42) -> dict[str, Any]:
    return {"update_id": update_id, "message": {"message_id": update_id, "chat": {"id": chat_id}, "text": text}}


def lock_is_free(root: Path, key: str) -> bool:
    """Whether another thread can take ``key``'s lock at once (lock_timeout 0: no waiting)."""
    outcome: list[bool] = []

    def take() -> None:
        try:
            with FileStorage(root, lock_timeout=0).lock(key):
                outcome.append(True)
        except LockTimeout:
            outcome.append(False)

    thread = threading.Thread(target=take)
    thread.start()
    thread.join(10)
    assert outcome, "the contender hung"
    return outcome[0]


MIDDLEWARE_FAULTS = [
    pytest.param("open", errno.ENOSPC, is_temp, CREATE, id="open-ENOSPC"),
    pytest.param("write", errno.EIO, is_temp, 0, id="write-EIO"),
    pytest.param("replace", errno.EROFS, is_temp, 0, id="replace-EROFS"),
    pytest.param("replace", errno.EACCES, is_temp, 0, id="replace-EACCES"),
]


@pytest.mark.parametrize(("function", "code", "when", "flags"), MIDDLEWARE_FAULTS)
def test_failing_write_back_raises_out_of_handle_update_releases_the_lock_and_keeps_the_old_session(
    root: Path, faults: Faults, function: str, code: int, when: Check, flags: int
) -> None:
    storage = FileStorage(root)
    bot = counting_bot(storage)
    bot.handle_update(update("/count", 1))
    faults.fail(function, code, when, flags=flags)
    with pytest.raises(StorageError) as info:
        bot.handle_update(update("/count", 2))
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("42"), code, key="42")
    assert lock_is_free(root, "42")
    assert_reads(root, "42", {"count": 1}, storage)
    faults.heal()
    assert temp_files(root) == []
    bot.handle_update(update("/count", 3))  # goes on from the old session
    assert_reads(root, "42", {"count": 2}, storage)


def test_failing_delete_through_the_middleware_raises_releases_the_lock_and_keeps_the_session(
    root: Path, faults: Faults
) -> None:
    storage = FileStorage(root)
    bot = counting_bot(storage)
    bot.handle_update(update("/count", 1))
    faults.fail("unlink", errno.EACCES, is_session)
    with pytest.raises(StorageError) as info:
        bot.handle_update(update("/reset", 2))
    assert faults.fired
    assert_clear_storage_error(info.value, storage.path("42"), errno.EACCES, key="42")
    assert lock_is_free(root, "42")
    faults.heal()
    assert_reads(root, "42", {"count": 1}, storage)
    bot.handle_update(update("/reset", 3))
    assert_reads(root, "42", None, storage)


def test_failing_write_back_with_fsync_keeps_the_old_session(root: Path, faults: Faults) -> None:
    storage = FileStorage(root, fsync=True)
    bot = counting_bot(storage)
    bot.handle_update(update("/count", 1))
    faults.fail("fsync", errno.EIO, is_file)
    with pytest.raises(StorageError):
        bot.handle_update(update("/count", 2))
    assert faults.fired
    assert lock_is_free(root, "42")
    faults.heal()
    assert_reads(root, "42", {"count": 1}, storage)
    assert temp_files(root) == []


def test_failing_write_back_of_one_chat_leaves_other_chats_working(root: Path, faults: Faults) -> None:
    storage = FileStorage(root)
    bot = counting_bot(storage)
    bot.handle_update(update("/count", 1, chat_id=1))
    bot.handle_update(update("/count", 2, chat_id=2))
    target = str(storage.path("1").parent)
    faults.fail("replace", errno.EIO, lambda path: os.path.dirname(path) == target)
    assert storage.path("2").parent != storage.path("1").parent
    with pytest.raises(StorageError):
        bot.handle_update(update("/count", 3, chat_id=1))
    bot.handle_update(update("/count", 4, chat_id=2))
    faults.heal()
    assert_reads(root, "1", {"count": 1}, storage)
    assert_reads(root, "2", {"count": 2}, storage)


def test_fault_injector_only_touches_the_storage_folder(tmp_path: Path, root: Path, faults: Faults) -> None:
    # The injector's own check: files elsewhere are untouched by it, and healing restores os.
    real_open = os.open
    faults.fail("open", errno.EROFS, flags=os.O_CREAT)
    outside = tmp_path / "outside.txt"
    os.close(os.open(outside, os.O_WRONLY | os.O_CREAT, 0o600))
    assert stat.S_ISREG(outside.stat().st_mode)
    assert faults.fired == []
    with pytest.raises(OSError, match="Read-only"):
        os.open(root / "inside", os.O_WRONLY | os.O_CREAT, 0o600)
    assert faults.fired == [f"open {root / 'inside'}"]
    faults.heal()
    assert os.open is real_open
