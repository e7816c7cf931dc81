"""SIGKILL of real processes in the middle of a sweep, a migration write-back, and a held lock.

SIGKILL during plain writes is in test_file_storage_processes.py. Here the victim reports
its progress line by line, and is killed after a randomly chosen line, so the kill lands
at a different point of the work in each round. After each kill every session must be at
its old or its new value, every file must parse, and the next process must carry on
without waiting for a lock timeout.
"""

from __future__ import annotations

import json
import os
import random
import select
import signal
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import forkserver
import pytest
from helpers import run_forked

from simplesession import Context, FileStorage, RedisStorage, session
from simplesession.storage.file import CORRUPT_DIR, DEBRIS_AGE, TEMP_PREFIX

pytestmark = pytest.mark.skipif(os.name != "posix", reason="uses POSIX signals")

LINE_TIMEOUT = 30.0


class Child:
    """A Python process whose stdout is read line by line, with a timeout on each line."""

    def __init__(self, code: str, *args: str, stderr: IO[bytes]) -> None:
        # Forked from an interpreter that has the package imported: a real process, started at once.
        self.process = forkserver.popen(
            ["-c", textwrap.dedent(code), *args], stdout=subprocess.PIPE, stderr=stderr, env=os.environ.copy()
        )
        assert self.process.stdout is not None
        self._fd = self.process.stdout.fileno()
        self._buffer = b""

    def line(self) -> str | None:
        """The next line it printed, or ``None`` once it has exited."""
        deadline = time.monotonic() + LINE_TIMEOUT
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"the child printed no line within {LINE_TIMEOUT} s")
            ready, _, _ = select.select([self._fd], [], [], left)
            if ready:
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    return None
                self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def expect(self, wanted: str) -> None:
        line = self.line()
        assert line == wanted, f"expected {wanted!r} from the child, got {line!r}"

    def kill(self) -> int:
        """SIGKILL it (if it still runs) and return its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
        code = self.process.wait(30)
        assert self.process.stdout is not None
        self.process.stdout.close()
        return code


@pytest.fixture
def errors(tmp_path: Path) -> Iterator[IO[bytes]]:
    """Where the children's stderr goes: a file, so that a full pipe can never stall them."""
    with (tmp_path / "stderr").open("w+b") as file:
        yield file
        file.seek(0)
        output = file.read().decode(errors="replace")
        assert "Traceback" not in output, output


def age(path: Path, seconds: float) -> None:
    then = time.time_ns() - int(seconds * 1e9)
    os.utime(path, ns=(then, then))


def documents(root: Path) -> dict[str, dict[str, Any]]:
    """Every session file's parsed document, by key: each must be whole, valid JSON."""
    found: dict[str, dict[str, Any]] = {}
    storage = FileStorage(root)
    for path in root.rglob("*.json"):
        if CORRUPT_DIR in path.parts:
            continue
        doc = json.loads(path.read_bytes())
        assert doc["format"] == 1
        assert storage.path(doc["key"]) == path
        found[doc["key"]] = doc
    assert not (root / CORRUPT_DIR).exists()
    return found


# -- a sweep killed half-way -------------------------------------------------------------------------

SWEEPER = """
    import sys
    from simplesession import FileStorage

    storage = FileStorage(sys.argv[1])
    print("ready", flush=True)
    for number, _ in enumerate(storage.sweep_slices(ttl=3600)):
        print(number, flush=True)
    print("done", flush=True)
"""


class LiveWriter:
    """Keeps writing live sessions in a thread of this process while a sweep runs beside it."""

    def __init__(self, storage: FileStorage, keys: list[str]) -> None:
        self.storage = storage
        self.keys = keys
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            key = self.keys[n % len(self.keys)]
            self.storage.write(key, {"n": n})
            self.last[key] = n
            n += 1

    def __enter__(self) -> LiveWriter:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


def test_sigkill_during_a_sweep_keeps_live_sessions_and_the_next_sweep_finishes_the_job(
    tmp_path: Path, errors: IO[bytes]
) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root)
    idle = {f"idle-{i}": {"i": i, "pad": "x" * 200} for i in range(1500)}
    for key, value in idle.items():
        storage.write(key, value)
        age(storage.path(key), 7200)
    live = [f"live-{i}" for i in range(100)]
    for key in live:
        storage.write(key, {"n": -1})
    shards = sorted({storage.path(key).parent for key in idle})
    debris = [shards[i % len(shards)] / f"{TEMP_PREFIX}999999-{i}" for i in range(50)]
    for path in debris:
        path.write_bytes(b'{"half a wri')
        age(path, DEBRIS_AGE + 60)

    rng = random.Random(7)
    killed_mid_sweep = 0
    last_live = {key: {"n": -1} for key in live}
    for kill_after in sorted(rng.sample(range(5, 160), 3)):
        child = Child(SWEEPER, str(root), stderr=errors)
        child.expect("ready")
        with LiveWriter(FileStorage(root), live) as writer:
            line = child.line()
            while line not in (str(kill_after), "done", None):
                line = child.line()
            status = child.kill()
        last_live.update({key: {"n": n} for key, n in writer.last.items()})

        found = documents(root)
        for key, doc in found.items():
            if key in idle:
                assert doc["data"] == idle[key], key  # idle: whole, or gone
            else:
                assert doc["data"] == last_live[key], key
        assert set(live) <= set(found)  # live sessions are never swept
        fresh = FileStorage(root, cache_size=0)
        assert {key: fresh.read(key) for key in live} == last_live
        killed_mid_sweep += status == -signal.SIGKILL and any(key in idle for key in found)
    assert killed_mid_sweep, "no round killed the sweeper before it finished"

    left_idle = [key for key in documents(root) if key in idle]
    left_debris = [path for path in debris if path.exists()]
    report = FileStorage(root).sweep(ttl=3600)
    assert report.in_use == 0  # the killed sweeper's lock died with it
    assert report.removed == len(left_idle)
    assert report.debris == len(left_debris)
    assert set(documents(root)) == set(live)
    assert not any(path.exists() for path in debris)
    fresh = FileStorage(root, cache_size=0)
    assert {key: fresh.read(key) for key in live} == last_live


# -- a migration write-back killed half-way ------------------------------------------------------------

MIGRATOR = """
    import os, sys
    from simplesession import Bot, FileStorage, session

    def to_v2(old):
        return {**old, "migrated": True, "double": old["count"] * 2}

    bot = Bot(output=open(os.devnull, "w"))
    storage = FileStorage(sys.argv[1])
    bot.use(session(initial=dict, storage=storage, migrations={2: to_v2}, sweep_interval=None))

    @bot.command("look")
    def look(ctx):
        ctx.session["count"]  # only reads: the migration alone makes the write-back

    print("ready", flush=True)
    for n, chat in enumerate(sys.argv[2].split(",")):
        update = {"update_id": n + 1, "message": {"message_id": n + 1, "chat": {"id": int(chat)}, "text": "/look"}}
        bot.handle_update(update)
        print(chat, flush=True)
    print("done", flush=True)
"""


def old_session(chat: int) -> dict[str, Any]:
    return {"count": chat, "pad": "p" * 30_000}  # large: the writer spends its time writing


def migrated_session(chat: int) -> dict[str, Any]:
    return {**old_session(chat), "migrated": True, "double": chat * 2}


def test_sigkill_during_migration_write_backs_leaves_old_or_fully_migrated_sessions(
    tmp_path: Path, errors: IO[bytes]
) -> None:
    root = tmp_path / "sessions"
    chats = list(range(1, 201))
    storage = FileStorage(root)
    for chat in chats:
        storage.write(str(chat), old_session(chat), version=1)

    rng = random.Random(11)
    killed_mid_run = 0
    for _round in range(3):
        order = chats[:]
        rng.shuffle(order)
        child = Child(MIGRATOR, str(root), ",".join(map(str, order)), stderr=errors)
        child.expect("ready")
        reported: list[int] = []
        for _ in range(rng.randrange(1, 60)):
            line = child.line()
            if line in ("done", None):
                break
            reported.append(int(line))
        status = child.kill()

        found = documents(root)
        assert sorted(found, key=int) == [str(chat) for chat in chats]
        for chat in chats:
            doc = found[str(chat)]
            if doc.get("version") == 2:
                assert doc["data"] == migrated_session(chat), chat
            else:
                assert doc.get("version") == 1, chat
                assert doc["data"] == old_session(chat), chat
        for chat in reported:  # what the child finished is migrated for good
            assert found[str(chat)]["version"] == 2
        killed_mid_run += status == -signal.SIGKILL and any(doc.get("version") == 1 for doc in found.values())
    assert killed_mid_run, "no round killed the migrating bot before it finished"

    still_old = {int(key) for key, doc in documents(root).items() if doc.get("version") == 1}
    migrated: list[int] = []

    def to_v2(old: dict[str, Any]) -> dict[str, Any]:
        migrated.append(old["count"])
        return {**old, "migrated": True, "double": old["count"] * 2}

    mw = session(initial=dict, storage=FileStorage(root), migrations={2: to_v2}, sweep_interval=None)
    for _pass in range(2):
        for chat in chats:
            ctx = Context({"update_id": 1, "message": {"message_id": 1, "chat": {"id": chat}, "text": "/look"}})
            mw(ctx, lambda: None)
    assert sorted(migrated) == sorted(still_old)  # re-done where needed, never twice
    fresh = FileStorage(root, cache_size=0)
    for chat in chats:
        assert fresh.read_versioned(str(chat)) == (migrated_session(chat), 2)


# -- a lock holder killed -----------------------------------------------------------------------------------

FILE_HOLDER = """
    import os, sys, time
    from simplesession import Bot, FileStorage, multi_session

    storage = FileStorage(sys.argv[1])
    bot = Bot(output=open(os.devnull, "w"))
    bot.use(
        multi_session(
            user={"initial": lambda: {"n": 0}, "storage": storage, "get_session_key": lambda ctx: str(ctx.from_id)},
            chat={"initial": lambda: {"n": 0}, "storage": storage},
            sweep_interval=None,
        )
    )

    @bot.command("hold")
    def hold(ctx):
        ctx.session.user["n"] += 100
        ctx.session.chat["n"] += 100
        print("holding", flush=True)
        time.sleep(60)

    message = {"message_id": 1, "chat": {"id": 7}, "from": {"id": 70}, "text": "/hold"}
    bot.handle_update({"update_id": 1, "message": message})
"""

# Another process, with no patience at all: a lock still held would be a LockTimeout.
IMPATIENT = """
    import json, os, sys
    from simplesession import Bot, FileStorage, multi_session

    storage = FileStorage(sys.argv[1], lock_timeout=0)
    with storage.lock("user:70"), storage.lock("chat:7"):
        print(json.dumps([storage.read("user:70"), storage.read("chat:7")]))
    bot = Bot(output=open(os.devnull, "w"))
    bot.use(
        multi_session(
            user={"initial": lambda: {"n": 0}, "storage": storage, "get_session_key": lambda ctx: str(ctx.from_id)},
            chat={"initial": lambda: {"n": 0}, "storage": storage},
            sweep_interval=None,
        )
    )

    @bot.command("count")
    def count(ctx):
        ctx.session.user["n"] += 1
        ctx.session.chat["n"] += 1

    message = {"message_id": 2, "chat": {"id": 7}, "from": {"id": 70}, "text": "/count"}
    bot.handle_update({"update_id": 2, "message": message})
"""


def test_sigkill_of_a_bot_holding_locks_frees_them_at_once_and_writes_nothing(
    tmp_path: Path, errors: IO[bytes]
) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root)
    storage.write("user:70", {"n": 5})
    storage.write("chat:7", {"n": 9})
    before = {key: storage.path(key).read_bytes() for key in ("user:70", "chat:7")}
    child = Child(FILE_HOLDER, str(root), stderr=errors)
    child.expect("holding")
    assert child.kill() == -signal.SIGKILL

    assert {key: storage.path(key).read_bytes() for key in before} == before  # nothing was written
    assert list(root.rglob(f"{TEMP_PREFIX}*")) == []
    result = run_forked(IMPATIENT, str(root))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"n": 5}, {"n": 9}]
    fresh = FileStorage(root, cache_size=0)
    assert (fresh.read("user:70"), fresh.read("chat:7")) == ({"n": 6}, {"n": 10})
    assert set(documents(root)) == {"user:70", "chat:7"}


REDIS_HOLDER = """
    import os, sys, time
    from simplesession import Bot, RedisStorage, session

    storage = RedisStorage(sys.argv[1], prefix=sys.argv[2], lock_expiry=float(sys.argv[3]))
    bot = Bot(output=open(os.devnull, "w"))
    bot.use(session(initial=lambda: {"n": 0}, storage=storage, sweep_interval=None))

    @bot.command("hold")
    def hold(ctx):
        ctx.session["n"] += 100
        print("holding", flush=True)
        time.sleep(60)

    bot.handle_update({"update_id": 1, "message": {"message_id": 1, "chat": {"id": 7}, "text": "/hold"}})
"""

REDIS_NEXT = """
    import os, sys
    from simplesession import Bot, RedisStorage, session

    storage = RedisStorage(sys.argv[1], prefix=sys.argv[2], lock_timeout=float(sys.argv[3]))
    bot = Bot(output=open(os.devnull, "w"))
    bot.use(session(initial=lambda: {"n": 0}, storage=storage, sweep_interval=None))

    @bot.command("count")
    def count(ctx):
        ctx.session["n"] += 1
        print(ctx.session["n"])

    bot.handle_update({"update_id": 2, "message": {"message_id": 2, "chat": {"id": 7}, "text": "/count"}})
"""


def test_sigkill_of_a_bot_holding_a_redis_lock_writes_nothing_and_the_lock_frees_after_expiry(
    redis_url: str, redis_prefix: str, errors: IO[bytes]
) -> None:
    lock_expiry = 1.0
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    storage.write("7", {"n": 5})
    child = Child(REDIS_HOLDER, redis_url, redis_prefix, str(lock_expiry), stderr=errors)
    child.expect("holding")
    assert child.kill() == -signal.SIGKILL
    assert storage.read("7") == {"n": 5}
    # The next process waits at most for the dead holder's lock to expire (with room to spare).
    result = run_forked(REDIS_NEXT, redis_url, redis_prefix, str(10 * lock_expiry))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "6\n"
    assert storage.read("7") == {"n": 6}
