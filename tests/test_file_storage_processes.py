"""FileStorage across real OS processes: locks, cache coherence and SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import INCREMENTER, fork_python, kill_writers

from simplesession import FileStorage, LockTimeout

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses fork-free POSIX processes and signals")


@pytest.mark.parametrize("cache_size", [1024, 0])
def test_four_processes_of_locked_increments_lose_no_update(tmp_path: Path, cache_size: int) -> None:
    options = json.dumps({"cache_size": cache_size})
    procs = [fork_python(INCREMENTER, f"file:{tmp_path}", options, "250", stderr=subprocess.PIPE) for _ in range(4)]
    for proc in procs:
        _, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
    assert FileStorage(tmp_path).read("counter") == {"n": 1000}


def test_warm_cache_sees_other_process_writes_of_the_same_size(tmp_path: Path) -> None:
    # The other process writes twice per round, quickly, with values of one size: a freed
    # inode may be reused within one clock tick, and the cache must still notice.
    writer = fork_python(
        """
        import sys
        from simplesession import FileStorage
        storage = FileStorage(sys.argv[1])
        for line in sys.stdin:
            n = int(line)
            storage.write("k", {"v": f"x{n:03d}"})
            storage.write("k", {"v": f"y{n:03d}"})
            print("done", flush=True)
        """,
        str(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    storage = FileStorage(tmp_path)
    try:
        for n in range(20):
            storage.write("k", {"v": f"a{n:03d}"})
            assert storage.read("k") == {"v": f"a{n:03d}"}  # warm
            writer.stdin.write(f"{n}\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "done\n"
            assert storage.read("k") == {"v": f"y{n:03d}"}, f"stale value in round {n}"
    finally:
        writer.stdin.close()
        writer.wait(30)


def test_lock_held_by_another_process_times_out_then_frees_on_exit(tmp_path: Path) -> None:
    holder = fork_python(
        """
        import sys
        from simplesession import FileStorage
        storage = FileStorage(sys.argv[1])
        with storage.lock("k"):
            print("holding", flush=True)
            sys.stdin.readline()
        """,
        str(tmp_path),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    assert holder.stdin is not None
    assert holder.stdout is not None
    assert holder.stdout.readline() == "holding\n"
    storage = FileStorage(tmp_path, lock_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(LockTimeout) as info, storage.lock("k"):
        pass
    assert time.monotonic() - started >= 0.3
    assert info.value.key == "k"
    assert info.value.path is not None
    assert info.value.path.startswith(str(tmp_path))
    with storage.lock("other"):  # other keys are not blocked
        pass
    holder.stdin.close()
    assert holder.wait(30) == 0
    with storage.lock("k"):
        storage.write("k", 1)


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path: Path) -> None:
    holder = fork_python(
        """
        import sys, time
        from simplesession import FileStorage
        storage = FileStorage(sys.argv[1])
        with storage.lock("k"):
            print("holding", flush=True)
            time.sleep(60)
        """,
        str(tmp_path),
        stdout=subprocess.PIPE,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline() == "holding\n"
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    with FileStorage(tmp_path, lock_timeout=1).lock("k"):
        pass


WRITER = """
    import os, sys
    from simplesession import FileStorage
    storage = FileStorage(sys.argv[1])
    progress = os.open(sys.argv[2], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    start = int(sys.argv[3])
    padding = "p" * 20000  # large values keep the process inside write() much of the time
    for i in range(start, start + 10**6):
        storage.write(f"key{i % 5}", {"i": i, "pad": padding})
        os.write(progress, b"%d\\n" % i)
"""


def test_sigkill_during_writes_leaves_old_or_new_value_never_torn(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    progress = tmp_path / "progress"

    def check_whole() -> None:
        for path in root.rglob("k*.json"):  # every file parses as a whole session
            json.loads(path.read_bytes())
        assert not (root / "corrupt").exists()

    kill_writers(
        lambda first: fork_python(WRITER, str(root), str(progress), str(first)),
        progress,
        rounds=12,
        seed=1234,
        check_whole=check_whole,
        read=FileStorage(root, cache_size=0).read,
    )
