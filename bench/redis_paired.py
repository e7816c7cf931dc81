"""session() + RedisStorage against a bare redis-py GET+SET loop, update by update, same server.

    python bench/redis_paired.py                      # starts a redis-server on 127.0.0.1
    python bench/redis_paired.py --redis-url redis://127.0.0.1:6379/0 --runs 5 --ops 5000

The floor is the least an update can cost on Redis: GET the chat's JSON, ``json.loads``,
change it, ``json.dumps``, SET it back, with redis-py as it comes (a connection from its
pool for each call); no lock, so two processes could lose updates. Ours is
``Bot.handle_update`` through ``session(storage=RedisStorage(...))``: lock and read in one
script, write back and release in another, each fenced by the lock's token. The two take
turns update by update (who goes first alternates), on the same sequence of chats (the W1
and W2 workloads of ``workloads.py``), each on keys of its own, so that both meet the
server, the machine and its other load in the same state; each side's time is summed over
its updates, wall time and this thread's CPU time apart. ``--kept`` adds a third side for
information: the floor on one connection that the client keeps (``single_connection_client``).

Then (unless ``--no-breakdown``) each side runs alone in short alternating blocks while the
server counts its time per command (``INFO commandstats``): ``GET`` and ``SET`` for the
bare loop, ``EVALSHA`` (with the commands its scripts run inside) for ours. Prints Markdown
tables for ``BENCHMARKS.md``: the rates, and where an update's time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import tempfile
import time
from collections.abc import Iterator

import peers
import run as bench_run
from workloads import CHANGES, sequence

WORKLOADS = ("W1", "W2")


class BareRedis:
    """GET, change, SET with redis-py, and nothing else (SET also when nothing changed: the
    floor is one GET and one SET, two round trips, as ours takes two).

    ``kept``: on one connection the client keeps (``single_connection_client=True``) instead
    of one taken from its pool and given back on each call; for information, beside the floor.
    """

    def __init__(self, url: str, prefix: str, *, kept: bool = False) -> None:
        import redis

        self.client = redis.Redis.from_url(url, single_connection_client=kept)
        self.prefix = prefix

    def populate(self, sessions: int) -> None:
        pipe = self.client.pipeline(transaction=False)
        for index in range(sessions):
            pipe.set(self.prefix + peers.chat_key(index), json.dumps(peers.initial()))
        pipe.execute()

    def update(self, seq_no: int, index: int, change: bool) -> None:
        name = self.prefix + peers.chat_key(index)
        raw = self.client.get(name)
        value = json.loads(raw) if raw is not None else peers.initial()
        if change:
            value["count"] += 1
        self.client.set(name, json.dumps(value))  # the floor is GET+SET, read-only or not


class Ours:
    def __init__(self, url: str, prefix: str) -> None:
        self.peer = peers.OursRedisPeer("", url=url, prefix=prefix)
        self.driver = peers.OursMiddlewareDriver(self.peer)

    def populate(self, sessions: int) -> None:
        for index in range(sessions):
            self.peer.storage.write(peers.chat_key(index), peers.initial())

    def update(self, seq_no: int, index: int, change: bool) -> None:
        self.driver.update(seq_no, index, change)


# What each side sends, as INFO commandstats names it; a script's own calls run within its time.
SERVER_COMMANDS = {"bare": ("get", "set"), "kept": ("get", "set"), "ours": ("evalsha",)}
TITLES = {"bare": "bare GET+SET", "kept": "bare GET+SET, one kept connection", "ours": "session() + RedisStorage"}
BLOCK = 250


def measure(
    url: str, sessions: int, ops: int, runs: int, seed: int, *, kept: bool
) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {w: [] for w in WORKLOADS}
    for number in range(runs):
        sides = make_sides(url, f"{number}:", kept=kept)
        for side in sides.values():
            side.populate(sessions)
        for workload in WORKLOADS:
            indexes = sequence(workload, sessions, ops, seed, number)
            change = CHANGES[workload]
            for side in sides.values():  # warm: connections made, scripts loaded
                side.update(0, indexes[0], change)
            members = list(sides.items())
            orders = [members[i:] + members[:i] for i in range(len(members))]
            seconds = dict.fromkeys(sides, 0.0)
            cpu = dict.fromkeys(sides, 0.0)
            clock, cpu_clock = time.perf_counter, time.thread_time
            for seq_no, index in enumerate(indexes, 1):
                for name, side in orders[seq_no % len(orders)]:
                    used = cpu_clock()
                    start = clock()
                    side.update(seq_no, index, change)
                    seconds[name] += clock() - start
                    cpu[name] += cpu_clock() - used
            results[workload].append(
                {
                    "ops": len(indexes),
                    **{f"{k}_seconds": v for k, v in seconds.items()},
                    **{f"{k}_cpu_seconds": v for k, v in cpu.items()},
                }
            )
    return results


def make_sides(url: str, run: str, *, kept: bool) -> dict[str, BareRedis | Ours]:
    sides: dict[str, BareRedis | Ours] = {
        "bare": BareRedis(url, f"ssbench:bare:{run}"),
        "ours": Ours(url, f"ssbench:ours:{run}"),
    }
    if kept:
        sides["kept"] = BareRedis(url, f"ssbench:kept:{run}", kept=True)
    return sides


def server_time(url: str, sessions: int, ops: int, seed: int, *, kept: bool) -> dict[str, dict[str, float]]:
    """Per workload and side, the server's µs per update, each side alone in alternating blocks."""
    import redis

    counter = redis.Redis.from_url(url)
    sides = make_sides(url, "server:", kept=kept)
    for side in sides.values():
        side.populate(sessions)
    found: dict[str, dict[str, float]] = {}
    for workload in WORKLOADS:
        indexes = sequence(workload, sessions, ops, seed, 1000)
        change = CHANGES[workload]
        usec = dict.fromkeys(sides, 0.0)
        for side in sides.values():
            side.update(0, indexes[0], change)
        for first in range(0, len(indexes), BLOCK):
            for name, side in sides.items():
                counter.config_resetstat()
                for seq_no, index in enumerate(indexes[first : first + BLOCK], first + 1):
                    side.update(seq_no, index, change)
                stats = counter.info("commandstats")
                usec[name] += sum(float(stats.get(f"cmdstat_{c}", {}).get("usec", 0)) for c in SERVER_COMMANDS[name])
        found[workload] = {name: total / len(indexes) for name, total in usec.items()}
    counter.close()
    return found


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="ssbench-redis-") as work, bench_run.redis_server(work, url) as started:
        found, why = started
        if found is None:
            raise SystemExit(f"no Redis server: {why}")
        yield found


def client_setup() -> str:
    import redis
    import redis.utils

    parser = "hiredis" if getattr(redis.utils, "HIREDIS_AVAILABLE", False) else "redis-py's own parser (no hiredis)"
    return f"redis-py {redis.__version__}, {parser}, on every side"


def table(results: dict[str, list[dict[str, float]]], sessions: int) -> str:
    lines = [
        f"Redis on 127.0.0.1, {sessions:,} sessions, {len(results['W1'])} runs of "
        f"{results['W1'][0]['ops']:,} updates per workload; Python {platform.python_version()}, {client_setup()}.",
        "",
        "| workload | bare GET+SET, updates/s | session() + RedisStorage, updates/s | ratio (median of runs) |",
        "| --- | --- | --- | --- |",
    ]
    kept = "kept_seconds" in results["W1"][0]
    if kept:
        lines[-2] += " bare GET+SET on one kept connection, updates/s | ours / it |"
        lines[-1] += " --- | --- |"
    for workload, rows in results.items():
        bare, ours = (statistics.median(r["ops"] / r[f"{k}_seconds"] for r in rows) for k in ("bare", "ours"))
        ratio = statistics.median(r["bare_seconds"] / r["ours_seconds"] for r in rows)
        lows = min(r["bare_seconds"] / r["ours_seconds"] for r in rows)
        line = f"| {workload} | {bare:,.0f} | {ours:,.0f} | {ratio:.2f}x (lowest {lows:.2f}x) |"
        if kept:
            rate = statistics.median(r["ops"] / r["kept_seconds"] for r in rows)
            line += f" {rate:,.0f} | {statistics.median(r['kept_seconds'] / r['ours_seconds'] for r in rows):.2f}x |"
        lines.append(line)
    return "\n".join(lines)


def breakdown(results: dict[str, list[dict[str, float]]], server: dict[str, dict[str, float]]) -> str:
    """Where an update's time goes, µs per update: wall and CPU from the timed runs (median),
    the server's from its own pass; the rest is waiting (the loopback, the scheduler)."""
    lines = [
        "| side | workload | wall µs/update | client CPU µs/update | server µs/update | rest (waiting) |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for workload, rows in results.items():
        for name, title in TITLES.items():
            if f"{name}_seconds" not in rows[0]:
                continue
            wall = statistics.median(r[f"{name}_seconds"] / r["ops"] for r in rows) * 1e6
            cpu = statistics.median(r[f"{name}_cpu_seconds"] / r["ops"] for r in rows) * 1e6
            on_server = server[workload][name]
            rest = wall - cpu - on_server
            lines.append(f"| {title} | {workload} | {wall:.0f} | {cpu:.0f} | {on_server:.1f} | {rest:.0f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--redis-url", help="use this Redis server instead of starting one")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=bench_run.SEED)
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON instead")
    parser.add_argument("--no-breakdown", dest="breakdown", action="store_false", help="skip the server's count")
    parser.add_argument("--kept", action="store_true", help="a third side: GET+SET on one connection, kept")
    args = parser.parse_args()
    with server(args.redis_url) as url:
        results = measure(url, args.sessions, args.ops, args.runs, args.seed, kept=args.kept)
        on_server = server_time(url, args.sessions, args.ops, args.seed, kept=args.kept) if args.breakdown else None
    if args.json:
        print(json.dumps({"runs": results, "server_usec_per_update": on_server}, indent=2))
        return
    print(table(results, args.sessions))
    if on_server is not None:
        print()
        print(breakdown(results, on_server))


if __name__ == "__main__":
    main()
