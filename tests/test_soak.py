"""Soak: six bot processes and a sweeper on one storage, for a bounded time, checked against a model.

Each bot process runs ``Bot.handle_update`` with ``session()`` on random commands for 50
chats: ``inc`` (count + 1), ``append`` (keeps the last five event ids), ``reset``
(``ctx.session = None``) and ``read`` (changes nothing). Every reply is a JSON line in the
process's log: the event's id, the id of the last event whose write it saw (``seen``), and
the session it left. There is no global clock; the per-chat history is rebuilt from the
``seen`` links alone, since the lock serialises each chat's updates:

- every mutating event saw the result of exactly one earlier write, or a fresh session;
  no write is seen by two mutating events (that would be a lost update);
- each write's result follows from the state it saw (count + 1, the items list, ...), so
  the counts after each reset run 1, 2, ..., k with no gaps or duplicates;
- reads saw a state some write produced (or a fresh one), never a torn one;
- at most one write per chat was never followed (the last one), and the stored session
  is exactly its result; if every write was followed by a reset, nothing is stored.

On files a seventh process sweeps all the while with a ttl that live chats never reach,
and pre-aged dead sessions must all be gone at the end. On Redis a second run stops one
bot at a time (SIGSTOP) for longer than its locks' ``lock_expiry``: an update whose lock
expired meanwhile fails with ``LockLost`` and writes nothing, so its reply is void, and the
model must hold all the same. All processes start up first and then begin together, so the
whole run is contended. ``SIMPLESESSION_SOAK_SECONDS`` sets how long the bots run (default
1.5 s per storage: a few thousand updates, dozens per chat; set it to minutes for a real
soak); ``-m soak`` selects it.
"""

from __future__ import annotations

import contextlib
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
from typing import Any

import forkserver
import pytest
from conftest import postgres_storage

from simplesession import FileStorage, RedisStorage, Storage
from simplesession.storage.file import DEBRIS_AGE, TEMP_PREFIX

pytestmark = [pytest.mark.soak, pytest.mark.skipif(os.name != "posix", reason="uses POSIX processes")]

SECONDS = float(os.environ.get("SIMPLESESSION_SOAK_SECONDS", "1.5"))
PAUSED_SECONDS = max(SECONDS, 5.0)  # room for several pauses of a bot past its locks' expiry
READY_TIMEOUT = 60.0
BOTS = 6
CHATS = 50
DEAD = 40
TTL = 3600
ITEMS_KEPT = 5
INITIAL: dict[str, Any] = {"count": 0, "items": [], "last": None}

BOT = """
    import copy, json, random, sys, time
    from simplesession import Bot, FileStorage, LockLost, RedisStorage, session

    kind, where, prefix, index, seconds, log, config = sys.argv[1:8]
    index, seconds, config = int(index), float(seconds), json.loads(config)
    if kind == "postgres":
        from simplesession import PostgresStorage

        storage = PostgresStorage(where, table=prefix, ttl=config["ttl"])  # bots sweep, as on files
        sweep_interval = 0.5
    elif kind == "file":
        # Half the bots keep a cache, half read the files every time; all sweep by themselves too.
        storage = FileStorage(where, cache_size=1024 if index % 2 else 0, ttl=config["ttl"])
        sweep_interval = 0.5
    else:
        storage = RedisStorage(where, prefix=prefix, lock_expiry=config["lock_expiry"])
        sweep_interval = None
    output = open(log, "w", encoding="utf-8", buffering=1)  # by line: the test sees when a bot has begun
    bot = Bot(output=output)
    bot.use(session(initial=lambda: copy.deepcopy(config["initial"]), storage=storage, sweep_interval=sweep_interval))
    event = None

    @bot.on("message:text")
    def handle(ctx):
        op, state = ctx.text, ctx.session
        seen = state["last"]
        if op == "inc":
            state["count"] += 1
            state["last"] = event
        elif op == "append":
            state["items"] = [*state["items"], event][-config["kept"]:]
            state["last"] = event
        elif op == "reset":
            ctx.session = None
        time.sleep(config["hold"])  # paused bots: so that a pause mostly finds one holding a lock
        reply = {"chat": ctx.chat_id, "op": op, "id": event, "seen": seen}
        if op != "reset":
            reply.update(count=state["count"], items=state["items"])
        ctx.reply(json.dumps(reply))

    rng = random.Random(index)
    ops = ["inc"] * 8 + ["append"] * 5 + ["read"] * 5 + ["reset"] * 2
    # All start together once every process is up, so the whole run is contended.
    print("ready", flush=True)
    sys.stdin.readline()
    deadline = time.monotonic() + seconds
    n = 0
    while time.monotonic() < deadline:
        n += 1
        event = f"{index}-{n}"
        message = {"message_id": n, "chat": {"id": rng.randrange(config["chats"])}, "text": rng.choice(ops)}
        try:
            bot.handle_update({"update_id": n, "message": message})
        except LockLost:  # paused past lock_expiry: nothing was written, so the reply is void
            output.write(json.dumps({"void": event}) + "\\n")
    output.close()
"""
CONFIG = {"ttl": TTL, "initial": INITIAL, "kept": ITEMS_KEPT, "chats": CHATS, "lock_expiry": 30.0, "hold": 0}
# Paused bots: one at a time is stopped (SIGSTOP) for longer than its locks' expiry.
PAUSED_EXPIRY = 0.6
PAUSE = 0.9

SWEEPER = """
    import json, sys, time
    from simplesession import FileStorage

    storage = FileStorage(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    deadline, ttl = time.monotonic() + float(sys.argv[2]), float(sys.argv[3])
    passes = removed = in_use = 0
    while time.monotonic() < deadline:
        report = storage.sweep(ttl=ttl)
        passes += 1
        removed += report.removed
        in_use += report.in_use
    print(json.dumps({"passes": passes, "removed": removed, "in_use": in_use}))
"""


def start(code: str, *args: str, stderr: Any) -> forkserver.Process:
    # Forked from an interpreter that has the package imported: real processes, started at once.
    return forkserver.popen(
        ["-c", textwrap.dedent(code), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=os.environ.copy(),
    )


def start_together(processes: list[forkserver.Process]) -> None:
    """Wait until each process says it is ready, then tell them all to go."""
    for process in processes:
        assert process.stdout is not None
        assert process.stdin is not None
        ready, _, _ = select.select([process.stdout], [], [], READY_TIMEOUT)
        assert ready, f"a process was not ready within {READY_TIMEOUT} s"
        assert process.stdout.readline() == "ready\n", "a process ended before it was ready"
    for process in processes:
        assert process.stdin is not None
        process.stdin.write("go\n")
        process.stdin.close()


@pytest.fixture(params=["file", "redis", "redis-paused", "postgres"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[str, str, str, Storage]]:
    """(kind, where, prefix, a storage to check the result with)."""
    if request.param == "file":
        root = tmp_path / "sessions"
        yield "file", str(root), "", FileStorage(root, cache_size=0)
    elif request.param == "postgres":  # the prefix names the table
        storage = postgres_storage(request)
        yield "postgres", request.getfixturevalue("postgres_url"), storage.table, storage
    else:
        url, prefix = request.getfixturevalue("redis_url"), request.getfixturevalue("redis_prefix")
        yield request.param, url, prefix, RedisStorage(url, prefix=prefix)


def pause_bots(bots: list[forkserver.Process], logs: list[Path], done: threading.Event) -> None:
    """Stop one bot at a time for PAUSE seconds, as a GC pause or a frozen VM would, from when
    every bot has handled an update (starting takes a while on a busy machine) until shortly
    before they stop."""
    rng = random.Random(17)
    ready_by = time.monotonic() + 60
    while not all(log.exists() and log.stat().st_size for log in logs) and time.monotonic() < ready_by:
        done.wait(0.05)
    until = time.monotonic() + PAUSED_SECONDS - 1
    while time.monotonic() < until and not done.is_set():
        bot = rng.choice(bots)
        with contextlib.suppress(ProcessLookupError):
            bot.send_signal(signal.SIGSTOP)
            done.wait(PAUSE)
            bot.send_signal(signal.SIGCONT)
        done.wait(0.2)


def check_chat(chat: int, events: list[dict[str, Any]], stored: Any) -> int:
    """Check one chat's events against the model (see the module's docstring); its write count."""
    writes = {e["id"]: e for e in events if e["op"] in ("inc", "append")}
    mutating = [e for e in events if e["op"] != "read"]
    successor: dict[str, str] = {}
    for event in mutating:
        seen = event["seen"]
        if seen is None:
            continue
        assert seen in writes, f"chat {chat}: {event['id']} saw {seen}, which no write of this chat made"
        assert seen not in successor, (
            f"chat {chat}: lost update: {successor[seen]} and {event['id']} both saw the state {seen} left"
        )
        successor[seen] = event["id"]
    for write in writes.values():
        before = INITIAL if write["seen"] is None else writes[write["seen"]]
        count, items = before["count"], before["items"]
        if write["op"] == "inc":
            count += 1
        else:
            items = [*items, write["id"]][-ITEMS_KEPT:]
        assert (write["count"], write["items"]) == (count, items), f"chat {chat}: {write} after {before}"
    for read in (e for e in events if e["op"] == "read"):
        source = INITIAL if read["seen"] is None else writes.get(read["seen"])
        assert source is not None, f"chat {chat}: read {read['id']} saw {read['seen']}, which no write made"
        assert (read["count"], read["items"]) == (source["count"], source["items"]), f"chat {chat}: {read}"
    unfollowed = [w for w in writes.values() if w["id"] not in successor]
    assert len(unfollowed) <= 1, f"chat {chat}: writes never seen again (lost): {[w['id'] for w in unfollowed][:10]}"
    if unfollowed:
        (last,) = unfollowed
        assert stored == {"count": last["count"], "items": last["items"], "last": last["id"]}, chat
    else:
        assert stored is None, f"chat {chat}: every write was reset, yet {stored} is stored"
    return len(writes)


def test_six_bot_processes_and_a_sweeper_match_the_model_of_their_logs(
    place: tuple[str, str, str, Storage], tmp_path: Path
) -> None:
    kind, where, prefix, final = place
    dead: list[str] = []
    debris: list[Path] = []
    if isinstance(final, FileStorage):
        for i in range(DEAD):
            key = f"dead-{i}"
            final.write(key, {"count": i})
            os.utime(final.path(key), ns=(0, time.time_ns() - int(2 * TTL * 1e9)))
            dead.append(key)
        old = time.time_ns() - int((DEBRIS_AGE + 60) * 1e9)
        for i in range(5):
            path = final.path(dead[i]).parent / f"{TEMP_PREFIX}424242-{i}"
            path.write_bytes(b"half")
            os.utime(path, ns=(old, old))
            debris.append(path)

    logs = [tmp_path / f"bot-{i}.log" for i in range(BOTS)]
    paused = kind == "redis-paused"
    seconds = PAUSED_SECONDS if paused else SECONDS
    config = json.dumps({**CONFIG, **({"lock_expiry": PAUSED_EXPIRY, "hold": 0.005} if paused else {})})
    done = threading.Event()
    with (tmp_path / "stderr").open("w+") as errors:
        bots = [
            start(BOT, kind, where, prefix, str(i), str(seconds), str(log), config, stderr=errors)
            for i, log in enumerate(logs)
        ]
        pauser = threading.Thread(target=pause_bots, args=(bots, logs, done))
        if paused:
            pauser.start()
        sweeper = None
        if kind == "file":
            sweeper = start(SWEEPER, where, str(SECONDS + 0.5), str(TTL), stderr=errors)
        processes = [*bots, *([sweeper] if sweeper else [])]
        try:
            start_together(processes)
            for process in processes:
                assert process.wait(seconds + 120) == 0
            # Its one line of output fits in the pipe, so it could not stall on it.
            sweep_out = sweeper.stdout.read() if sweeper is not None and sweeper.stdout else None
        finally:
            done.set()
            if pauser.is_alive():
                pauser.join(30)
            for process in processes:
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)
                    process.kill()
                    process.wait(30)
                if process.stdout is not None:
                    process.stdout.close()
        errors.seek(0)
        # A paused bot whose update only read logs the loss of its lock, and goes on.
        lines = errors.read().splitlines()
        expired = [line for line in lines if paused and "expired while held" in line]
        assert [line for line in lines if line not in expired] == []
    if sweeper is not None:
        assert json.loads(sweep_out or "")["passes"] >= 1

    by_chat: dict[int, list[dict[str, Any]]] = {chat: [] for chat in range(CHATS)}
    void: set[str] = set()  # updates that failed, writing nothing: their replies count for nothing
    for log in logs:
        for line in log.read_text("utf-8").splitlines():
            event = json.loads(line)
            if "void" in event:
                void.add(event["void"])
            else:
                by_chat[event["chat"]].append(event)
    by_chat = {chat: [e for e in events if e["id"] not in void] for chat, events in by_chat.items()}
    assert sum(map(len, by_chat.values())) >= BOTS * 10, "the bots did almost nothing"
    writes = 0
    for chat, events in by_chat.items():
        writes += check_chat(chat, events, final.read(str(chat)))
    assert writes > 0
    if paused:
        assert void or expired, "no paused bot lost a lock: the pauses did not test fencing"
    listed = set(final.keys())
    stored = {key for key in listed if not key.startswith("dead-")}
    assert stored == {str(chat) for chat in range(CHATS) if final.read(str(chat)) is not None}
    assert [key for key in dead if final.read(key) is not None] == []  # every dead chat swept
    assert not any(path.exists() for path in debris)
    if isinstance(final, FileStorage):
        assert not (final.directory / "corrupt").exists()
