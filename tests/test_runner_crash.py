"""Bot(workers=N) in a real process: killed mid-flood it loses nothing, and its successor
handles only what was unfinished (at most read_ahead updates again); Ctrl-C loses nothing
and brings nothing back."""

from __future__ import annotations

import os
import signal
import time
from collections import Counter
from pathlib import Path

from fakebotapi import FakeBotAPI
from helpers import fork_python

CHATS, PER_CHAT, READ_AHEAD = 20, 50, 20
STALL = 100
TOTAL = CHATS * PER_CHAT
DEADLINE = 60.0

# Each handled update is appended to a file (one write, so a kill never tears a line) as
# the last thing its handler does: "update_id chat_id". The handler of update `stall`
# (if not 0) sleeps for a minute: an update sure to be unfinished when the process dies.
RUNNER = """
    import os, random, sys, time
    from simplesession import Bot

    url, token, record, read_ahead = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    stall = int(sys.argv[5]) if len(sys.argv) > 5 else 0
    bot = Bot(token, api_url=url, workers=4, read_ahead=read_ahead, poll_timeout=0.5, retry_delay=0.01,
              max_retry_delay=0.04)
    out = os.open(record, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    @bot.on("message")
    def handle(ctx):
        time.sleep(60 if ctx.update["update_id"] == stall else random.uniform(0, 0.003))
        os.write(out, f"{ctx.update['update_id']} {ctx.chat_id}\\n".encode())

    bot.start()
"""


def flood(api: FakeBotAPI) -> None:
    for _ in range(PER_CHAT):
        for chat in range(1, CHATS + 1):
            api.push("hi", chat_id=chat)


def records(path: Path) -> list[tuple[int, int]]:
    if not path.exists():
        return []
    return [(int(u), int(c)) for u, c in (line.split() for line in path.read_text().splitlines())]


def wait_for_lines(path: Path, at_least: int) -> None:
    deadline = time.monotonic() + DEADLINE
    while len(records(path)) < at_least:
        assert time.monotonic() < deadline, f"{path.name} never reached {at_least} updates"
        time.sleep(0.005)


def assert_each_chat_in_order(handled: list[tuple[int, int]]) -> None:
    last: dict[int, int] = {}
    for update_id, chat in handled:
        assert last.get(chat, 0) < update_id, f"chat {chat}: update {update_id} after {last[chat]}"
        last[chat] = update_id


def test_a_runner_killed_mid_flood_loses_nothing_and_its_successor_repeats_only_the_unfinished(
    api: FakeBotAPI, tmp_path: Path
) -> None:
    flood(api)
    runs = [tmp_path / f"run{n}" for n in range(3)]
    args = (api.url, api.token)
    done: Counter[int] = Counter()
    acknowledged_at_kill = 0
    # The first runner dies with update STALL in its handler. It got at least half the
    # read-ahead past it, as polling pauses only once more than half wait: the 99 before
    # it, and at least READ_AHEAD // 2 after it, all of other chats, are done. The second
    # dies at whatever moment it has done 300 updates.
    kill_after = [STALL - 1 + READ_AHEAD // 2, 300]
    for n, record in enumerate(runs):
        bot = fork_python(RUNNER, *args, str(record), str(READ_AHEAD), str(STALL if n == 0 else 0))
        try:
            if n < 2:
                wait_for_lines(record, kill_after[n])
                bot.send_signal(signal.SIGKILL)
                assert bot.wait(DEADLINE) == -signal.SIGKILL
            else:
                deadline = time.monotonic() + DEADLINE
                while len(done.keys() | {u for u, _ in records(record)}) < TOTAL:
                    assert time.monotonic() < deadline, "the last runner never handled every update"
                    time.sleep(0.005)
                bot.send_signal(signal.SIGINT)
                assert bot.wait(DEADLINE) == 0
        finally:
            bot.kill()
        handled = records(record)
        ids = [update_id for update_id, _ in handled]
        assert len(ids) == len(set(ids)), f"run {n} handled an update twice"
        assert_each_chat_in_order(handled)
        # Nothing the server was told was finished comes again...
        assert min(ids) >= acknowledged_at_kill
        # ...and of what was finished but not yet acknowledged, at most the read-ahead.
        again = set(ids) & done.keys()
        assert len(again) <= READ_AHEAD, f"run {n} handled {len(again)} updates again"
        if n == 1:
            assert STALL in ids
        done.update(ids)
        acknowledged_at_kill = api.acknowledged_offset
    assert sorted(done) == list(range(1, TOTAL + 1))
    assert api.acknowledged_offset == TOTAL + 1


def test_ctrl_c_mid_flood_acknowledges_exactly_what_was_handled_and_a_restart_does_the_rest_once(
    api: FakeBotAPI, tmp_path: Path
) -> None:
    flood(api)
    first, second = tmp_path / "first", tmp_path / "second"
    bot = fork_python(RUNNER, api.url, api.token, str(first), str(READ_AHEAD))
    try:
        wait_for_lines(first, 300)
        bot.send_signal(signal.SIGINT)
        assert bot.wait(DEADLINE) == 0
    finally:
        bot.kill()
    handled = [update_id for update_id, _ in records(first)]
    assert sorted(handled) == list(range(1, len(handled) + 1))
    assert api.acknowledged_offset == len(handled) + 1
    bot = fork_python(RUNNER, api.url, api.token, str(second), str(READ_AHEAD))
    try:
        wait_for_lines(second, TOTAL - len(handled))
        bot.send_signal(signal.SIGINT)
        assert bot.wait(DEADLINE) == 0
    finally:
        bot.kill()
    rest = records(second)
    assert_each_chat_in_order(rest)
    assert sorted(handled + [update_id for update_id, _ in rest]) == list(range(1, TOTAL + 1))
    assert os.path.getsize(second) > 0


def test_a_second_ctrl_c_stops_waiting_for_a_stuck_handler_at_once(api: FakeBotAPI, tmp_path: Path) -> None:
    """The first Ctrl-C waits for running handlers (up to stop_timeout, 30 s here); a second
    one ends the wait: the process returns long before the stuck handler or the timeout would
    end, and the stuck update is not acknowledged, so it comes again."""
    for _ in range(4):
        for chat in range(1, 6):
            api.push("hi", chat_id=chat)
    record = tmp_path / "record"
    bot = fork_python(RUNNER, api.url, api.token, str(record), str(READ_AHEAD), "3")
    try:
        wait_for_lines(record, 10)  # the other chats went on; update 3 is stuck
        bot.send_signal(signal.SIGINT)
        time.sleep(0.5)
        assert bot.poll() is None  # still waiting for the stuck handler
        started = time.monotonic()
        bot.send_signal(signal.SIGINT)
        bot.wait(20)  # far less than the 30 s stop_timeout or the minute the handler sleeps
        assert time.monotonic() - started < 20
    finally:
        bot.kill()
    assert 3 not in [update_id for update_id, _ in records(record)]
    assert api.acknowledged_offset <= 3
