"""The workloads, their seeded key sequences, and the worker that times one configuration.

- W1 update: read the session (initial if missing), change it, write it back.
- W2 read-only: read it, change nothing.
- W3 hot keys: W1, with 90 % of the updates on 1 % of the chats.

Keys are drawn from ``random.Random`` seeded by (seed, workload, run, sessions), so every
peer, Python or Node, gets the same sequence. ``run.py`` starts this file as a worker, one
fresh process per configuration and size, with a JSON spec on stdin; it prints a JSON
result on stdout.
"""

from __future__ import annotations

import json
import random
import resource
import statistics
import sys
import time
from typing import Any

import peers

WORKLOADS = ("W1", "W2", "W3")
CHANGES = {"W1": True, "W2": False, "W3": True}
HOT_SHARE = 0.9
HOT_FRACTION = 0.01
TITLES = {
    "W1": "update (read, change, write)",
    "W2": "read-only (no change)",
    "W3": "hot keys (90 % of updates on 1 % of chats)",
}


def sequence(workload: str, sessions: int, ops: int, seed: int, run: int) -> list[int]:
    """Chat indexes (0 .. sessions-1) of ``ops`` updates: the same for every peer."""
    rng = random.Random(f"{seed}:{workload}:{run}:{sessions}")
    if workload != "W3":
        return [rng.randrange(sessions) for _ in range(ops)]
    hot = rng.sample(range(sessions), max(1, int(sessions * HOT_FRACTION)))
    return [rng.choice(hot) if rng.random() < HOT_SHARE else rng.randrange(sessions) for _ in range(ops)]


def median_rate(runs: list[dict[str, float]]) -> float | None:
    """The median of the runs' ops/s (``None`` if none ran)."""
    rates = [run["ops"] / run["seconds"] for run in runs if run["ops"] and run["seconds"] > 0]
    return statistics.median(rates) if rates else None


def peak_rss_kb() -> int:
    """This process's peak resident set size in KiB.

    Linux's ``VmHWM``, not ``getrusage``: a child's ``ru_maxrss`` starts at the parent's
    RSS at fork (it survives the exec), so it would report run.py's size for small peers.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)  # KiB on Linux, bytes on macOS


def timed(driver: Any, indexes: list[int], change: bool, cap: float, first_id: int) -> dict[str, float]:
    """Run updates until the sequence ends or ``cap`` seconds pass; ``{"ops", "seconds"}``."""
    update = driver.update
    clock = time.perf_counter
    start = clock()
    deadline = start + cap
    done = 0
    for done, index in enumerate(indexes, 1):
        update(first_id + done, index, change)
        if clock() > deadline:
            break
    return {"ops": done, "seconds": clock() - start}


def work(spec: dict[str, Any]) -> dict[str, Any]:
    """Populate (unless the store is reused), then W1, W2, W3 for each of ``run_numbers``."""
    item = peers.find(spec["config"])
    assert item.make is not None
    sessions = spec["sessions"]
    result: dict[str, Any] = {"config": item.id, "sessions": sessions, "runs": {w: [] for w in spec["workloads"]}}
    driver = item.make(spec["root"], spec.get("options", {}))
    if spec["populate"]:
        start = time.perf_counter()
        driver.populate(sessions)
        result["populate"] = {
            "seconds": time.perf_counter() - start,
            "sessions": sessions,
            "bulk": driver.populated_in_bulk,
        }
    if spec["run_numbers"]:
        driver.prepare()
    update_id = 0
    for run in spec["run_numbers"]:
        for workload in spec["workloads"]:
            indexes = sequence(workload, sessions, spec["ops"], spec["seed"], run)
            outcome = timed(driver, indexes, CHANGES[workload], spec["time_cap"], update_id)
            update_id += len(indexes)
            result["runs"][workload].append(outcome)
    result["rss_kb"] = peak_rss_kb()
    driver.close()
    result["notes"] = driver.notes()
    return result


def main() -> None:
    spec = json.load(sys.stdin)
    json.dump(work(spec), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
