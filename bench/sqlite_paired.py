"""session() + SQLiteStorage against session() + diskcache, in turns, update by update.

    python bench/sqlite_paired.py                          # 1,000 and 100,000 sessions, 5 runs
    python bench/sqlite_paired.py --sizes 1k --runs 3 --ops 3000 --storage

The pairs of ``run.py``'s "SQLiteStorage and diskcache" section, alone: ``paired.py`` with its
SQLite levels only (both stores in WAL mode with ``synchronous=NORMAL``, a database each in
fresh folders per run, who goes first rotating), without the rest of the benchmark. Prints
the median of the runs' ratios (ours over theirs) with their spread, as a Markdown table.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from typing import Any

import paired
from peers import Driver, OursSQLitePeer
from run import SEED
from workloads import WORKLOADS

SIZES = {"1k": 1000, "10k": 10_000, "100k": 100_000, "1m": 1_000_000}
NAMES = {
    "sqlite-framework": "session() + SQLiteStorage vs session() + diskcache",
    "sqlite-framework-locked": "session() + SQLiteStorage vs session() + diskcache",
    "sqlite-storage": "SQLiteStorage alone vs diskcache alone",
}


def size(text: str) -> int:
    return SIZES.get(text.lower()) or int(text.replace(",", "").replace("_", ""))


def cell(runs: list[dict[str, float]], other: str) -> str:
    """``ours / theirs ops/s (median ratio +-spread)`` over ``runs``."""
    ratios = [run[f"{other}_seconds"] / run["ours_seconds"] for run in runs]
    ours = statistics.median(run["ops"] / run["ours_seconds"] for run in runs)
    theirs = statistics.median(run["ops"] / run[f"{other}_seconds"] for run in runs)
    ratio = statistics.median(ratios)
    spread = (max(ratios) - min(ratios)) / 2 / ratio if len(ratios) > 1 else 0.0
    return f"{ours:,.0f} / {theirs:,.0f} ({ratio:.2f}x +-{spread * 100:.0f}%)"


def with_in_process_lock(level: str, root: str) -> dict[str, Driver]:
    """``paired.drivers_of``, and SQLiteStorage once more with a lock held within the process
    only (``InProcessLocks``, as a storage of the user's own gets): no guarantee across
    processes, only a measure of what the lock files cost an update."""
    from simplesession.storage.locks import InProcessLocks

    drivers = drivers_of(level, root)
    if level != "sqlite-framework":
        return drivers
    peer = OursSQLitePeer(os.path.join(root, "sqlite-unlocked"))
    peer.storage._locks = InProcessLocks("bench")
    drivers["in_process_lock"] = paired.SQLITE_LEVELS[level](peer)
    return drivers


drivers_of = paired.drivers_of


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1k,100k", help="session counts, such as 1k,100k")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", type=int, default=3000, help="updates per workload and run")
    parser.add_argument("--storage", action="store_true", help="also the stores alone, without the middleware")
    parser.add_argument(
        "--lock-cost", action="store_true", help="also SQLiteStorage with a lock within the process only, in turns"
    )
    args = parser.parse_args()
    if args.lock_cost:
        paired.drivers_of = with_in_process_lock
    levels = ["sqlite-framework", "sqlite-framework-locked", *(["sqlite-storage"] if args.storage else [])]
    saved = dict(paired.SQLITE_LEVELS)
    paired.SQLITE_LEVELS.clear()
    paired.SQLITE_LEVELS.update({level: saved[level] for level in levels})
    print(f"| sessions | pair | {' | '.join(f'{w} ours / theirs ops/s (ratio)' for w in WORKLOADS)} |")
    print(f"| ---: | --- | {' | '.join('---:' for _ in WORKLOADS)} |")
    for sessions in map(size, args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix="sqlite-paired-") as root:
            spec: dict[str, Any] = {
                "sessions": sessions,
                "root": root,
                "ops": args.ops,
                "runs": args.runs,
                "seed": SEED,
                "files": False,
                "sqlite": True,
            }
            result = paired.measure(spec)
        for level in levels:
            for other in ("diskcache", "diskcache_locked", "in_process_lock"):
                runs = result["pairs"][level]
                if f"{other}_seconds" not in runs["W1"][0]:
                    continue  # diskcache.Lock takes turns through session() only
                pair = NAMES[level] + (" with diskcache.Lock" if other == "diskcache_locked" else "")
                if other == "in_process_lock":
                    pair = NAMES[level].split(" vs ")[0] + " vs the same, locked within the process only"
                cells = " | ".join(cell(runs[w], other) for w in WORKLOADS)
                print(f"| {sessions:,} | {pair} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
