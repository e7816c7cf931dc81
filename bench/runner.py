"""Updates per second of long polling: ``Bot(workers=N).start()`` beside pyTelegramBotAPI.

    python bench/runner.py                          # 1,000 updates, 5 rounds
    python bench/runner.py --updates 300 --rounds 2 # quicker

Every bot polls the same fake Bot API server (``tests/fakebotapi.py``, on 127.0.0.1, in this
process) in a process of its own. Before each run the server holds ``--updates`` text
messages spread over ``--chats`` chats; each handler sleeps ``--handler-ms`` (a call to
another service, say) and replies with ``sendMessage``. A run's rate is its updates divided
by the time from the bot's first ``getUpdates`` to its last reply, so start-up is not
counted. The bots take turns: round 1 runs every bot once, round 2 again in another order,
and so on, so that the machine's other load spreads over all of them; the median counts.

The peers: ours with 1, 4 and 16 workers (one chat's updates in order, the offset
acknowledged as they finish), and ``TeleBot(threaded=True)`` with its default 2 threads and
with 16 (updates acknowledged when fetched, handlers in any order). Prints a Markdown table
for ``BENCHMARKS.md``, with the chats whose replies came out of order.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import time
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from fakebotapi import FakeBotAPI  # noqa: E402  (the test suite's fake server, beside the bench)

OURS = """
import sys, time
from simplesession import Bot

url, token, workers, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
bot = Bot(token, api_url=url, workers=workers, poll_timeout=5)

@bot.on("message:text")
def echo(ctx):
    time.sleep(pause)
    ctx.reply("echo " + ctx.text)

bot.start()
"""

TELEBOT = """
import sys, time
import telebot
from telebot import apihelper

url, token, threads, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
apihelper.API_URL = url + "/bot{0}/{1}"
bot = telebot.TeleBot(token, threaded=True, num_threads=threads)

@bot.message_handler(content_types=["text"])
def echo(message):
    time.sleep(pause)
    bot.send_message(message.chat.id, "echo " + message.text)

bot.infinity_polling(timeout=5, long_polling_timeout=5)
"""

PEERS = {
    "ours, workers=1": (OURS, 1),
    "ours, workers=4": (OURS, 4),
    "ours, workers=16": (OURS, 16),
    "TeleBot(threaded=True), 2 threads (its default)": (TELEBOT, 2),
    "TeleBot(threaded=True), num_threads=16": (TELEBOT, 16),
}


def one_run(code: str, threads: int, updates: int, chats: int, pause: float, deadline: float) -> tuple[float, int]:
    """Updates per second of one bot process, and how many chats got their replies out of order."""
    with FakeBotAPI() as api:
        for n in range(updates):
            api.push(str(n // chats), chat_id=1 + n % chats)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        args = [sys.executable, "-c", code, api.url, api.token, str(threads), str(pause)]
        bot = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            api.wait_until(lambda: len(api.sent) >= updates or bot.poll() is not None, deadline, "replies")
            done = time.monotonic()
            if bot.poll() is not None:
                raise RuntimeError(f"the bot exited with {bot.returncode}: {bot.communicate()[1][-2000:]}")
        finally:
            bot.kill()
            bot.communicate()
        first_poll = api.polls[0][0]
        replies: dict[int, list[int]] = {}
        for sent in api.sent:
            replies.setdefault(int(sent["chat_id"]), []).append(int(sent["text"].split()[1]))
        out_of_order = sum(texts != sorted(texts) for texts in replies.values())
        return updates / (done - first_poll), out_of_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--updates", type=int, default=1000, help="updates per run (default 1000)")
    parser.add_argument("--chats", type=int, default=50, help="chats they come from (default 50)")
    parser.add_argument("--handler-ms", type=float, default=10.0, help="each handler's sleep (default 10 ms)")
    parser.add_argument("--rounds", type=int, default=5, help="runs of each bot, taking turns (default 5)")
    parser.add_argument("--only", action="append", help="run only the peers whose name contains this")
    options = parser.parse_args()
    peers = {name: peer for name, peer in PEERS.items() if not options.only or any(o in name for o in options.only)}
    pause = options.handler_ms / 1000
    # The slowest bot (one worker) needs updates x pause; let it take three times that.
    deadline = 30 + 3 * options.updates * pause
    rates: dict[str, list[float]] = {name: [] for name in peers}
    disorder: dict[str, list[int]] = {name: [] for name in peers}
    names = list(peers)
    for round_ in range(options.rounds):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            code, threads = peers[name]
            rate, out_of_order = one_run(code, threads, options.updates, options.chats, pause, deadline)
            rates[name].append(rate)
            disorder[name].append(out_of_order)
            print(
                f"round {round_ + 1}: {name}: {rate:,.0f} updates/s, {out_of_order} chats out of order", file=sys.stderr
            )

    print(
        f"{options.updates:,} updates from {options.chats} chats per run, a {options.handler_ms:g} ms handler that "
        f"replies, {options.rounds} rounds; Python {platform.python_version()}, "
        f"pyTelegramBotAPI {version('pyTelegramBotAPI')}, {os.cpu_count()} CPUs.\n"
    )
    print("| bot | updates/s (median) | lowest - highest | chats with replies out of order (most in a run) |")
    print("| --- | --- | --- | --- |")
    for name in names:
        runs = rates[name]
        print(
            f"| {name} | {statistics.median(runs):,.0f} | {min(runs):,.0f} - {max(runs):,.0f} | "
            f"{max(disorder[name])} of {options.chats} |"
        )


if __name__ == "__main__":
    main()
