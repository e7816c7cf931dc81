"""FileStorage against the floor in the same folders, in alternating batches: ratios the disk cannot skew.

On a virtual disk two identical floors in two folders can differ several-fold in W1, and
steadily so (where a folder's blocks landed decides it). So beside the separate-folder
tables, ``run.py`` measures two pairs, each sharing one set of shard folders: the floor's
``<key>.json`` files beside FileStorage's ``k<key>.json`` files. Within a pair the two take
turns, ``batch`` updates at a time, over the same key sequence; each side's time is summed
over its batches. Pairs: the floor with FileStorage alone (storage level), and the floor
with ``session()`` + FileStorage (framework level), each FileStorage with cache 1024.

Started by ``run.py`` as ``python paired.py`` with a JSON spec on stdin; prints JSON.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from peers import Driver, FloorPeer, OursFilePeer, OursMiddlewareDriver, StorageDriver
from workloads import CHANGES, WORKLOADS, peak_rss_kb, sequence

PAIRS = {
    "storage": lambda root: StorageDriver(OursFilePeer(root)),
    "framework": lambda root: OursMiddlewareDriver(OursFilePeer(root)),
}


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    sessions, batch = spec["sessions"], spec["batch"]
    out: dict[str, Any] = {"sessions": sessions, "pairs": {}}
    for level, make in PAIRS.items():
        root = os.path.join(spec["root"], level)
        drivers: dict[str, Driver] = {"floor": StorageDriver(FloorPeer(root)), "ours": make(root)}
        for driver in drivers.values():
            driver.populate(sessions)
            driver.prepare()
        os.sync()
        runs: dict[str, list[dict[str, float]]] = {w: [] for w in WORKLOADS}
        for run in range(spec["runs"]):
            for workload in WORKLOADS:
                indexes = sequence(workload, sessions, spec["ops"], spec["seed"], run)
                seconds = dict.fromkeys(drivers, 0.0)
                for low in range(0, len(indexes), batch):
                    part = indexes[low : low + batch]
                    # Alternate who goes first, so neither always follows the other's writes.
                    order = list(drivers) if (low // batch) % 2 == 0 else list(reversed(drivers))
                    for name in order:
                        update, start = drivers[name].update, time.perf_counter()
                        for number, index in enumerate(part, low):
                            update(number, index, CHANGES[workload])
                        seconds[name] += time.perf_counter() - start
                runs[workload].append({"ops": len(indexes), **{f"{k}_seconds": v for k, v in seconds.items()}})
        for driver in drivers.values():
            driver.close()
        out["pairs"][level] = runs
    out["rss_kb"] = peak_rss_kb()
    return out


def main() -> None:
    json.dump(measure(json.load(sys.stdin)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
