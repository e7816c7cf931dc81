"""FileStorage's lock descriptors: kept open between holds, bounded, never closed while held."""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import pytest
from helpers import full_path, run_forked, run_python

from simplesession import FileStorage, LockTimeout
from simplesession.storage import stripes
from simplesession.storage.file import LOCK_STRIPES
from simplesession.storage.locks import Holder

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="finds descriptors' paths in /proc")

TRY_LOCK = """
    import sys
    from simplesession import FileStorage, LockTimeout
    try:
        with FileStorage(sys.argv[1], lock_timeout=0).lock(sys.argv[2]):
            print("free")
    except LockTimeout:
        print("held")
"""


def open_lock_files(root: Path) -> list[str]:
    """The lock files under ``root`` that this process has open, once per descriptor."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue  # the descriptor listdir itself used
        if target.startswith(str(root / ".locks") + os.sep):
            found.append(target)
    return found


def keys_on_distinct_stripes(storage: FileStorage, count: int) -> list[str]:
    keys: dict[str, str] = {}
    for i in range(100 * LOCK_STRIPES):
        name = storage.lock(f"chat-{i}").name
        keys.setdefault(name, f"chat-{i}")
        if len(keys) == count:
            return list(keys.values())
    raise AssertionError("too few stripes")


def state_of(root: Path, key: str) -> str:
    return run_forked(TRY_LOCK, str(root), key).stdout.strip()


def test_a_lock_file_is_opened_once_and_kept_between_holds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = FileStorage(tmp_path)
    opened: list[str] = []
    real_open = os.open

    def spy_open(path: str, *args: int, **kwargs: Any) -> int:
        opened.append(full_path(path, kwargs.get("dir_fd")))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", spy_open)
    for _ in range(3):
        with storage.lock("42"):
            assert state_of(tmp_path, "42") == "held"
    assert state_of(tmp_path, "42") == "free"
    lock_file = [path for path in opened if os.sep + ".locks" + os.sep in path]
    assert len(lock_file) == 1
    assert open_lock_files(tmp_path) == lock_file


def test_kept_lock_descriptors_are_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripes, "KEPT_DESCRIPTORS", 4)
    storage = FileStorage(tmp_path)
    for key in keys_on_distinct_stripes(storage, 12):
        with storage.lock(key):
            pass
        assert len(open_lock_files(tmp_path)) <= 4
    assert len(open_lock_files(tmp_path)) == 4


LOW_LIMIT = """
    import resource, sys
    from pathlib import Path
    from simplesession import FileStorage

    resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    root, tests = Path(sys.argv[1]), sys.argv[2]
    sys.path.insert(0, tests)
    from test_locks import open_lock_files

    storage = FileStorage(root)
    most = 0
    for i in range(2000):
        with storage.lock(f"chat-{i}"):
            pass
        most = max(most, len(open_lock_files(root)))
    print(len(list((root / ".locks").iterdir())), most)
"""


def test_kept_lock_descriptors_stay_within_a_quarter_of_a_low_open_file_limit(tmp_path: Path) -> None:
    # macOS gives a process 256 open files: keeping all 256 lock files would use them all up.
    result = run_python(LOW_LIMIT, str(tmp_path), str(Path(__file__).parent))
    assert result.returncode == 0, result.stderr
    stripes_used, most_open = map(int, result.stdout.split())
    assert stripes_used == LOCK_STRIPES
    assert most_open == 64 // 4


def test_a_held_lock_is_never_closed_to_make_room(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(stripes, "KEPT_DESCRIPTORS", 2)
    storage = FileStorage(tmp_path)
    held, *others = keys_on_distinct_stripes(storage, 8)
    with storage.lock(held):
        for key in others:
            with storage.lock(key):
                pass
        # Closing a held lock's descriptor would release it: another process could get in.
        assert state_of(tmp_path, held) == "held"
    assert state_of(tmp_path, held) == "free"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_leaves_its_parents_locks_held(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path, lock_timeout=0)
    with storage.lock("idle"):
        pass
    with storage.lock("42"):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 3
            try:
                # The child closed its copies of the parent's descriptors at the fork (which
                # releases nothing: the parent's own stay open)...
                code = 2 if open_lock_files(tmp_path) else 1
                # ...and it forgot the parent's in-process locks: its own try must wait.
                try:
                    with FileStorage(tmp_path, lock_timeout=0).lock("42"):
                        pass
                except LockTimeout:
                    code = 0 if code == 1 else code
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert state_of(tmp_path, "42") == "held"
    assert state_of(tmp_path, "42") == "free"


def test_descriptors_over_the_limit_while_all_were_held_are_closed_on_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stripes, "KEPT_DESCRIPTORS", 2)
    storage = FileStorage(tmp_path)
    first, second, third = keys_on_distinct_stripes(storage, 3)
    with storage.lock(first), storage.lock(second):
        with storage.lock(third):  # a third while the two kept ones are held: none can close
            assert len(open_lock_files(tmp_path)) == 3
        assert len(open_lock_files(tmp_path)) <= 2
    assert len(open_lock_files(tmp_path)) <= 2


def test_a_lock_released_in_another_thread_is_free_for_other_processes(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    lock = storage.lock("42")
    lock.__enter__()
    assert state_of(tmp_path, "42") == "held"
    thread = threading.Thread(target=lock.__exit__, args=(None, None, None))
    thread.start()
    thread.join(10)
    assert state_of(tmp_path, "42") == "free"
    with storage.lock("42", timeout=0):  # and for this process's other holders
        assert state_of(tmp_path, "42") == "held"


def test_holders_in_one_thread_exclude_each_other_across_storages_on_one_folder(tmp_path: Path) -> None:
    first, second = FileStorage(tmp_path), FileStorage(tmp_path)
    assert first.lock_name("42") == second.lock_name("42")
    with first.lock("42", holder=Holder("one coroutine")):
        with pytest.raises(LockTimeout), second.lock("42", timeout=0, holder=Holder("another")):
            pass
        with pytest.raises(LockTimeout), second.lock("42", timeout=0):  # this thread's own holder is another too
            pass
