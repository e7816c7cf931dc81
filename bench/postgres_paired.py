"""session() + PostgresStorage against a bare psycopg loop doing the same transaction, update by update.

    python bench/postgres_paired.py                 # starts a throw-away PostgreSQL cluster
    python bench/postgres_paired.py --url postgresql://... --runs 5 --ops 2000
    python bench/postgres_paired.py --smoke         # seconds: that it runs, not how fast

The bare loop is the least a locked update can cost on PostgreSQL with psycopg, written by
hand: ``BEGIN`` and ``pg_advisory_xact_lock`` in one round trip, ``SELECT`` the chat's JSON,
``json.loads``, change it, ``json.dumps``, ``INSERT ... ON CONFLICT UPDATE``, ``COMMIT``: the
round trips ours makes, on one connection kept open, with no pool, no middleware, no checks.
Ours is ``Bot.handle_update`` through ``session(storage=PostgresStorage(url))``. The two take
turns update by update (who goes first alternates) on the same sequence of chats, each on a
table of its own, so that both meet the server and the machine's other load alike; each
side's time is summed over its updates. Without PostgreSQL (no ``--url``, no ``initdb``) it
says so and exits 0. Prints a Markdown table for ``BENCHMARKS.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import statistics
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import peers
from workloads import CHANGES, WORKLOADS, sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import pgserver  # the test suite's throw-away cluster, beside the bench

SEED = 20260101


class BarePostgres:
    """The same transaction by hand, on one psycopg connection."""

    def __init__(self, url: str, table: str) -> None:
        import psycopg

        self.conn = psycopg.connect(url, autocommit=True)
        self.table = table
        self.conn.execute(f"CREATE TABLE {table} (key text PRIMARY KEY, document text NOT NULL, used timestamptz)")
        self.select = f"SELECT document FROM {table} WHERE key = %s".encode()
        self.upsert = (
            f"INSERT INTO {table} (key, document, used) VALUES (%s, %s, now())"
            " ON CONFLICT (key) DO UPDATE SET document = excluded.document, used = excluded.used"
        ).encode()

    def populate(self, sessions: int) -> None:
        with self.conn.cursor() as cursor:
            rows = [(peers.chat_key(i), json.dumps(peers.initial())) for i in range(sessions)]
            cursor.executemany(self.upsert, rows)

    def update(self, seq_no: int, index: int, change: bool) -> None:
        key = peers.chat_key(index)
        conn = self.conn
        conn.execute(b"BEGIN; SELECT pg_advisory_xact_lock(%d)" % zlib.crc32(key.encode()))
        row = conn.execute(self.select, [key]).fetchone()
        value = json.loads(row[0]) if row is not None else peers.initial()
        if change:
            value["count"] += 1
            conn.execute(self.upsert, [key, json.dumps(value)])
        elif value["count"] < 0:
            raise AssertionError(value)
        conn.execute(b"COMMIT")

    def close(self) -> None:
        self.conn.execute(f"DROP TABLE {self.table}")
        self.conn.close()


class Ours:
    """``Bot.handle_update`` through ``session(storage=PostgresStorage(url))``."""

    def __init__(self, url: str, table: str) -> None:
        from simplesession import PostgresStorage

        peer = peers.Peer("")
        peer.storage = PostgresStorage(url, table=table)  # type: ignore[attr-defined]
        self.storage = peer.storage  # type: ignore[attr-defined]
        self.driver = peers.OursMiddlewareDriver(peer)

    def populate(self, sessions: int) -> None:
        for index in range(sessions):
            self.storage.write(peers.chat_key(index), peers.initial())

    def update(self, seq_no: int, index: int, change: bool) -> None:
        self.driver.update(seq_no, index, change)

    def close(self) -> None:
        self.storage.close()


def measure(url: str, sessions: int, ops: int, runs: int, seed: int) -> dict[str, list[dict[str, float]]]:
    results: dict[str, list[dict[str, float]]] = {w: [] for w in WORKLOADS}
    for number in range(runs):
        tag = uuid.uuid4().hex[:12]
        sides: dict[str, Any] = {
            "bare": BarePostgres(url, f"ssbench_bare_{tag}"),
            "ours": Ours(url, f"ssbench_ours_{tag}"),
        }
        try:
            for side in sides.values():
                side.populate(sessions)
            for workload in WORKLOADS:
                indexes = sequence(workload, sessions, ops, seed, number)
                change = CHANGES[workload]
                for side in sides.values():  # warm: connections made, statements prepared
                    for warm in indexes[:10]:
                        side.update(0, warm, change)
                members = list(sides.items())
                orders = [members, members[::-1]]
                seconds = dict.fromkeys(sides, 0.0)
                clock = time.perf_counter
                for seq_no, index in enumerate(indexes, 1):
                    for name, side in orders[seq_no % 2]:
                        start = clock()
                        side.update(seq_no, index, change)
                        seconds[name] += clock() - start
                results[workload].append({"ops": len(indexes), **{f"{k}_seconds": v for k, v in seconds.items()}})
        finally:
            for side in sides.values():
                side.close()
            pgserver.drop_tables(url, f"ssbench_ours_{tag}")
    return results


@contextlib.contextmanager
def server(url: str | None) -> Iterator[str | None]:
    """The given server, else a throw-away cluster; ``None`` (said on stderr) if there is none."""
    if url:
        yield url
        return
    try:
        with pgserver.cluster() as made:
            yield made
    except pgserver.Missing:
        print(f"postgres_paired: skipped: no PostgreSQL here: {pgserver.INSTALL_HINT}, or give --url", file=sys.stderr)
        yield None


def table(results: dict[str, list[dict[str, float]]], sessions: int, version: str) -> str:
    first = results[WORKLOADS[0]]
    lines = [
        f"PostgreSQL {version} on 127.0.0.1, {sessions:,} sessions, {len(first)} runs of {first[0]['ops']:,} "
        f"updates per workload; Python {platform.python_version()}.",
        "",
        "| workload | bare psycopg loop, updates/s | session() + PostgresStorage, updates/s | ratio (median of runs) |",
        "| --- | --- | --- | --- |",
    ]
    for workload, rows in results.items():
        bare = statistics.median(r["ops"] / r["bare_seconds"] for r in rows)
        ours = statistics.median(r["ops"] / r["ours_seconds"] for r in rows)
        ratio = statistics.median(r["bare_seconds"] / r["ours_seconds"] for r in rows)
        lowest = min(r["bare_seconds"] / r["ours_seconds"] for r in rows)
        lines.append(f"| {workload} | {bare:,.0f} | {ours:,.0f} | {ratio:.2f}x (lowest {lowest:.2f}x) |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--url", help="use this PostgreSQL server instead of starting one")
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=SEED)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes: that it runs, in seconds")
    parser.add_argument("--json", action="store_true", help="print the raw figures as JSON instead")
    args = parser.parse_args()
    if args.smoke:
        args.sessions, args.ops, args.runs = 30, 20, 1
    with server(args.url) as url:
        if url is None:
            return
        import psycopg

        with psycopg.connect(url) as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0]).split()[0]  # type: ignore[index]
        results = measure(url, args.sessions, args.ops, args.runs, args.seed)
    print(json.dumps(results, indent=2) if args.json else table(results, args.sessions, version))


if __name__ == "__main__":
    main()
