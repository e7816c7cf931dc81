"""cProfile of the W1 loop through the middleware on FileStorage: where an update's time goes.

    python bench/profile_w1.py [--sessions 1000] [--ops 5000] [--top 15] [--json]

Populates ``--sessions`` sessions in a temporary folder under /tmp, then profiles ``--ops``
W1 updates (``Bot.handle_update`` with ``session()``, cache 1024, no fsync). Prints the
functions that cost the most time of their own (tottime), and the library's functions by
cumulative time, in microseconds per update.

Then, without the profiler, it times the pieces of an update one by one, taking turns key
by key over the same keys, with the floor's files in the same folders: what a middleware
update costs over the storage calls it makes, and what those cost over the floor.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import tempfile
import time
from typing import Any

from peers import CHAT_BASE, FloorPeer, OursFilePeer, chat_key, initial, make_update
from workloads import sequence


def profile(sessions: int, ops: int, seed: int = 1) -> tuple[pstats.Stats, float, int]:
    """Profile ``ops`` W1 updates on a fresh FileStorage of ``sessions`` sessions."""
    from simplesession import Bot, session

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ssbench-profile-") as root:
        peer = OursFilePeer(root)
        peer.populate((chat_key(i), initial()) for i in range(sessions))
        bot = Bot(output=io.StringIO())
        bot.use(session(initial=initial, storage=peer.storage, sweep_interval=None))

        @bot.on("message")
        def handler(ctx: Any) -> None:
            ctx.session["count"] += 1

        indexes = sequence("W1", sessions, ops, seed, 0)
        for number, index in enumerate(indexes[:200]):  # warm up: imports, lock files, caches
            bot.handle_update(make_update(number, CHAT_BASE + index))
        profiler = cProfile.Profile()
        start = time.perf_counter()
        profiler.enable()
        for number, index in enumerate(indexes):
            bot.handle_update(make_update(number, CHAT_BASE + index))
        profiler.disable()
        seconds = time.perf_counter() - start
    return pstats.Stats(profiler), seconds, ops


def breakdown(sessions: int, ops: int, seed: int = 2) -> list[dict[str, Any]]:
    """Microseconds per call of each piece of an update, timed alone.

    FileStorage and the floor share one set of shard folders (so that where the disk put a
    folder cannot favour either), and the pieces take turns key by key, over 3 passes,
    starting at another piece each key, so that a disk slowing down or speeding up, or busy
    with the last piece's writes, falls on all of them alike.
    """
    from simplesession import Bot, session

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ssbench-pieces-") as root:
        ours, floor = OursFilePeer(root), FloorPeer(root)
        ours.populate((chat_key(i), initial()) for i in range(sessions))
        floor.populate((chat_key(i), initial()) for i in range(sessions))
        storage = ours.storage
        keys = [chat_key(i) for i in sequence("W1", sessions, ops, seed, 0)]
        change = {"on": True}
        bot = Bot(output=io.StringIO())
        bot.use(session(initial=initial, storage=storage, sweep_interval=None))

        @bot.on("message")
        def handler(ctx: Any) -> None:
            if change["on"]:
                ctx.session["count"] += 1
            else:
                ctx.session.get("count")

        bare = Bot(output=io.StringIO())
        bare.on("message")(lambda ctx: None)
        value = initial()

        def lock(key: str) -> None:
            with storage.lock(key):
                pass

        def w1(key: str) -> None:
            change["on"] = True
            bot.handle_update(make_update(1, int(key)))

        def w2(key: str) -> None:
            change["on"] = False
            bot.handle_update(make_update(1, int(key)))

        pieces: list[tuple[str, Any]] = [
            ("Bot.handle_update, no middleware", lambda key: bare.handle_update(make_update(1, int(key)))),
            ("FileStorage.lock(key) hold and release", lock),
            ("FileStorage.read (cache on)", storage.read),
            ("floor read: open + json.load", floor.read),
            ("FileStorage.write", lambda key: storage.write(key, value)),
            ("floor write: json.dumps + temp file + os.replace", lambda key: floor.write(key, value)),
            ("W1 update through session()", w1),
            ("W2 update through session() (no write)", w2),
        ]
        for key in keys[:200]:  # warm up
            w1(key)
        seconds = dict.fromkeys((label for label, _ in pieces), 0.0)
        orders = [pieces[turn:] + pieces[:turn] for turn in range(len(pieces))]
        clock = time.perf_counter
        for _ in range(3):
            for number, key in enumerate(keys):
                for label, piece in orders[number % len(orders)]:  # who follows the writes rotates
                    start = clock()
                    piece(key)
                    seconds[label] += clock() - start
    return [{"piece": label, "us": total / (3 * len(keys)) * 1e6} for label, total in seconds.items()]


def summary(stats: pstats.Stats, seconds: float, ops: int, top: int) -> dict[str, Any]:
    """The top functions by own time, and the steps' cumulative time, per update."""
    rows = []
    for (filename, line, name), (_, calls, own, cumulative, _) in stats.stats.items():  # type: ignore[attr-defined]
        short = filename.rsplit("/", 2)
        where = "/".join(short[-2:]) if "simplesession" in filename else short[-1]
        rows.append(
            {
                "function": f"{where}:{line}({name})",
                "ours": "simplesession" in filename,
                "calls_per_update": calls / ops,
                "own_us": own / ops * 1e6,
                "cumulative_us": cumulative / ops * 1e6,
            }
        )
    total_own = sum(row["own_us"] for row in rows)
    by_own = sorted(rows, key=lambda row: row["own_us"], reverse=True)[:top]
    ours = [row for row in rows if row["ours"]]
    steps = sorted(ours, key=lambda row: row["cumulative_us"], reverse=True)[:top]
    return {
        "ops": ops,
        "us_per_update_profiled": seconds / ops * 1e6,
        "us_per_update_own_total": total_own,
        "top_own": by_own,
        "steps": steps,
    }


def render(result: dict[str, Any]) -> str:
    lines = [
        f"{result['ops']:,} W1 updates, {result['us_per_update_profiled']:.0f} µs per update under the profiler",
        "",
        "Top functions by own time (µs per update; calls per update):",
    ]
    for row in result["top_own"]:
        lines.append(f"  {row['own_us']:7.1f} µs  {row['calls_per_update']:5.1f} calls  {row['function']}")
    lines += ["", "simplesession functions by cumulative time (µs per update; calls per update):"]
    for row in result["steps"]:
        lines.append(f"  {row['cumulative_us']:7.1f} µs  {row['calls_per_update']:5.1f} calls  {row['function']}")
    lines += ["", "Pieces, timed alone without the profiler, in turns (µs per call):"]
    for row in result.get("pieces", []):
        lines.append(f"  {row['us']:7.1f} µs  {row['piece']}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = parser.parse_args()
    result = summary(*profile(args.sessions, args.ops), top=args.top)
    result["sessions"] = args.sessions
    result["pieces"] = breakdown(args.sessions, args.ops)
    print(json.dumps(result) if args.json else render(result))


if __name__ == "__main__":
    main()
