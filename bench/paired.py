"""FileStorage against the floor in the same folders, update by update: ratios the disk cannot skew.

On a virtual disk two identical floors in two folders can differ several-fold in W1, and
steadily so (where a folder's blocks landed decides it), and one folder's speed drifts
from second to second. So beside the separate-folder tables, ``run.py`` measures two pairs,
each sharing one set of shard folders: the floor's ``<key>.json`` files beside
FileStorage's ``k<key>.json`` files. Within a pair the two take turns update by update
(who goes first alternates), over the same key sequence, so that both meet the disk in the
same state; each side's time is summed over its updates. Each run has folders of its own,
filled afresh. Pairs: the floor with FileStorage
alone (storage level), and the floor with ``session()`` + FileStorage (framework level),
each FileStorage with cache 1024. cachelib's FileSystemCache, the other file-per-key store
with the same durability, takes its turn too, in a folder of its own beside them (its files
are named by hash, in one folder). So does, beside FileStorage alone, the floor without its
crash safety (``InPlacePeer``: each write straight over the session file), which shows
what the temporary file and the rename cost on the disk at hand.

SQLiteStorage and diskcache, the other store on SQLite (both WAL, ``synchronous=NORMAL``), take
turns the same way, each with a database of its own: alone (``sqlite-storage``), and through
``session()`` (``sqlite-framework``), where diskcache is a storage of the user's own, locked
within the process by the middleware, and once more with ``diskcache.Lock`` as its ``lock``
(``sqlite-framework-locked``). Each pair takes turns on its own, two stores at a time: with
both diskcaches in one round, the library's code ran two updates in three and stayed warm
in the processor's caches for the other (ours lost about a tenth of W2 at 100,000 sessions
to that alone: 0.85x in rounds of three, 0.98x in pairs, the same code on the same day).

Started by ``run.py`` as ``python paired.py`` with a JSON spec on stdin; prints JSON.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import sys
import time
from typing import Any

from peers import (
    CachelibPeer,
    DiskcacheLockedPeer,
    DiskcachePeer,
    Driver,
    FloorPeer,
    InPlacePeer,
    OursFilePeer,
    OursMiddlewareDriver,
    OursSQLitePeer,
    StorageDriver,
)
from workloads import CHANGES, WORKLOADS, peak_rss_kb, sequence

# Not installed: its turn is skipped.
HAVE_CACHELIB = importlib.util.find_spec("cachelib") is not None
HAVE_DISKCACHE = importlib.util.find_spec("diskcache") is not None
PAIRS = {
    "storage": lambda root: StorageDriver(OursFilePeer(root)),
    "framework": lambda root: OursMiddlewareDriver(OursFilePeer(root)),
}
SQLITE_LEVELS = {
    "sqlite-storage": StorageDriver,
    "sqlite-framework": OursMiddlewareDriver,
    "sqlite-framework-locked": OursMiddlewareDriver,
}


def drivers_of(level: str, root: str) -> dict[str, Driver]:
    """The drivers that take turns at ``level``, ours as ``ours``, each store under ``root``."""
    if level in SQLITE_LEVELS:
        wrap = SQLITE_LEVELS[level]
        drivers: dict[str, Driver] = {"ours": wrap(OursSQLitePeer(os.path.join(root, "sqlite")))}
        if HAVE_DISKCACHE and level == "sqlite-framework-locked":
            # A lock across processes, as ours: only the middleware takes one.
            drivers["diskcache_locked"] = wrap(DiskcacheLockedPeer(os.path.join(root, "diskcache-locked")))
        elif HAVE_DISKCACHE:
            drivers["diskcache"] = wrap(DiskcachePeer(os.path.join(root, "diskcache")))
        return drivers
    drivers = {"floor": StorageDriver(FloorPeer(root)), "ours": PAIRS[level](root)}
    if HAVE_CACHELIB:
        drivers["cachelib"] = StorageDriver(CachelibPeer(os.path.join(root, "cachelib")))
    if level == "storage":
        drivers["inplace"] = StorageDriver(InPlacePeer(os.path.join(root, "inplace")))
    return drivers


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    sessions = spec["sessions"]
    levels = [*(PAIRS if spec.get("files", True) else ()), *(SQLITE_LEVELS if spec.get("sqlite") else ())]
    out: dict[str, Any] = {"sessions": sessions, "pairs": {level: {w: [] for w in WORKLOADS} for level in levels}}
    # Each run gets folders of its own, filled afresh: where their blocks land differs from
    # run to run, so the median over the runs is not one placement's luck.
    for run in range(spec["runs"]):
        for level in levels:
            root = os.path.join(spec["root"], f"{level}-{run}")
            drivers = drivers_of(level, root)
            for driver in drivers.values():
                driver.populate(sessions)
                driver.prepare()
            os.sync()
            for workload in WORKLOADS:
                indexes = sequence(workload, sessions, spec["ops"], spec["seed"], run)
                change = CHANGES[workload]
                # Who goes first rotates, so that none always follows another's write.
                members = [(name, driver.update) for name, driver in drivers.items()]
                orders = [members[i:] + members[:i] for i in range(len(members))]
                seconds = dict.fromkeys(drivers, 0.0)
                clock = time.perf_counter
                for number, index in enumerate(indexes):
                    for name, update in orders[number % len(orders)]:
                        start = clock()
                        update(number, index, change)
                        seconds[name] += clock() - start
                timing = {f"{name}_seconds": value for name, value in seconds.items()}
                out["pairs"][level][workload].append({"ops": len(indexes), **timing})
            for driver in drivers.values():
                driver.close()
            shutil.rmtree(root, ignore_errors=True)
    out["rss_kb"] = peak_rss_kb()
    return out


def main() -> None:
    json.dump(measure(json.load(sys.stdin)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
