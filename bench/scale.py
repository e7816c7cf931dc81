"""Scale figures for FileStorage: open time, first read, RSS, keys() and sweep() as sessions grow.

One folder is filled step by step (10k, 100k, 1M sessions, ...). FileStorage.write would
take minutes for a million files, so a fast writer puts the files straight into the
storage's layout (``encode_key`` for the place, ``encode_document`` for the bytes). It is
checked first: for a sample of keys it must produce exactly the file FileStorage.write
makes, and FileStorage must read back every sampled key it wrote.

At each size a fresh process (``python scale.py measure``, spec on stdin, JSON on stdout)
opens the storage and measures: open time, first read, first update through the
middleware, peak RSS after a W1 run through the middleware (cache_size=1024), ``keys()``,
and ``sweep()`` (with a ttl that expires nothing, so it stats every file) against a bare
``os.scandir`` + ``stat`` walk of the same tree, alternated.
"""

from __future__ import annotations

import concurrent.futures
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from peers import CHAT_BASE, chat_key, initial, make_update
from workloads import peak_rss_kb, sequence

TEN_YEARS = 10 * 365 * 86400.0
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)


# -- building ---------------------------------------------------------------------------------


def _fast_file(key: str) -> tuple[str, str, bytes]:
    """``(shard, name, bytes)`` of ``key``'s initial session, as FileStorage would write them."""
    from simplesession.keys import encode_key
    from simplesession.storage.document import encode_document

    shard, name = encode_key(key)
    return shard, name, encode_document(key, initial(), None)


def _write_range_slow(root: str, start: int, stop: int) -> int:
    from simplesession import FileStorage

    storage = FileStorage(root, cache_size=0)
    for index in range(start, stop):
        storage.write(chat_key(index), initial())
    return stop - start


def _write_range(root: str, start: int, stop: int) -> int:
    ready: set[str] = set()
    for index in range(start, stop):
        shard, name, raw = _fast_file(chat_key(index))
        folder = os.path.join(root, shard)
        if shard not in ready:
            os.makedirs(folder, mode=0o700, exist_ok=True)
            ready.add(shard)
        fd = os.open(os.path.join(folder, name), _CREATE, 0o600)
        try:
            os.write(fd, raw)
        finally:
            os.close(fd)
    return stop - start


def check_fast_writer(sample: int = 200) -> dict[str, Any]:
    """Whether the fast writer makes FileStorage's files; FileStorage.write's rate for reference.

    ``{"fast": False, "why": ...}`` when it does not (the library's layout changed, say):
    then :func:`build` falls back to FileStorage.write, slower but right.
    """
    from simplesession import FileStorage

    with tempfile.TemporaryDirectory(dir="/tmp", prefix="ssbench-check-") as scratch:
        storage = FileStorage(scratch, cache_size=0)
        start = time.perf_counter()
        for index in range(sample):
            storage.write(chat_key(index), initial())
        rate = sample / (time.perf_counter() - start)
        try:
            for index in range(sample):
                shard, name, raw = _fast_file(chat_key(index))
                if Path(scratch, shard, name).read_bytes() != raw:
                    raise AssertionError(f"its bytes differ from FileStorage.write's for {shard}/{name}")
        except (ImportError, OSError, AssertionError) as exc:
            return {"fast": False, "why": f"{type(exc).__name__}: {exc}", "write_per_second": rate}
    return {"fast": True, "write_per_second": rate}


def build(root: str, start: int, stop: int, *, fast: bool = True, workers: int = 2) -> float:
    """Add sessions ``start .. stop-1`` to ``root``; seconds taken. Checks a sample by reading it."""
    from simplesession import FileStorage

    os.makedirs(root, mode=0o700, exist_ok=True)
    began = time.perf_counter()
    chunk = 25_000
    ranges = [(low, min(low + chunk, stop)) for low in range(start, stop, chunk)]
    writer = _write_range if fast else _write_range_slow
    if workers > 1 and len(ranges) > 1:
        with concurrent.futures.ProcessPoolExecutor(workers) as pool:
            list(pool.map(writer, [root] * len(ranges), *zip(*ranges, strict=True)))
    else:
        for low, high in ranges:
            writer(root, low, high)
    seconds = time.perf_counter() - began
    storage = FileStorage(root, cache_size=0)
    for index in random.Random(stop).sample(range(start, stop), min(200, stop - start)):
        if storage.read(chat_key(index)) != initial():
            raise AssertionError(f"FileStorage does not read back the fast writer's session {index}")
    return seconds


# -- measuring (in a fresh process) ------------------------------------------------------------


def bare_walk(root: str) -> int:
    """What any sweep must at least do: list every shard folder and stat every file."""
    count = 0
    for name in os.listdir(root):
        if len(name) != 2:
            continue
        with os.scandir(os.path.join(root, name)) as entries:
            for entry in entries:
                entry.stat(follow_symlinks=False)
                count += 1
    return count


def bare_names(root: str) -> int:
    """Listing names only: what keys() must at least do."""
    return sum(len(os.listdir(os.path.join(root, name))) for name in os.listdir(root) if len(name) == 2)


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    import io

    from simplesession import Bot, FileStorage, session

    root, sessions = spec["root"], spec["sessions"]
    clock = time.perf_counter
    out: dict[str, Any] = {"sessions": sessions, "rss_start_kb": peak_rss_kb()}

    start = clock()
    storage = FileStorage(root, cache_size=1024)
    out["open_seconds"] = clock() - start
    start = clock()
    got = storage.read(chat_key(sessions // 2))
    out["first_read_seconds"] = clock() - start
    if got is None:
        raise AssertionError("the first read found no session")

    bot = Bot(output=io.StringIO())
    bot.use(session(initial=initial, storage=storage, sweep_interval=None))

    @bot.on("message")
    def handler(ctx: Any) -> None:
        ctx.session["count"] += 1

    start = clock()
    bot.handle_update(make_update(1, CHAT_BASE + sessions // 3))
    out["first_update_seconds"] = clock() - start

    indexes = sequence("W1", sessions, spec["ops"], spec["seed"], 0)
    start = clock()
    for number, index in enumerate(indexes, 2):
        bot.handle_update(make_update(number, CHAT_BASE + index))
    out["w1_ops"] = len(indexes)
    out["w1_seconds"] = clock() - start
    out["rss_after_w1_kb"] = peak_rss_kb()

    start = clock()
    count = sum(1 for _ in storage.keys())  # noqa: SIM118 - not a dict
    out["keys_seconds"] = clock() - start
    if count != sessions:
        raise AssertionError(f"keys() found {count} sessions, not {sessions}")
    start = clock()
    bare_names(root)
    out["bare_names_seconds"] = clock() - start

    walks, sweeps = [], []
    for _ in range(spec["runs"]):
        start = clock()
        walked = bare_walk(root)
        walks.append(clock() - start)
        start = clock()
        report = storage.sweep(TEN_YEARS)
        sweeps.append(clock() - start)
        if walked != sessions or report.scanned != sessions or report.removed:
            raise AssertionError(f"walk saw {walked}, sweep {report}, for {sessions} sessions")
    out["bare_walk_seconds"] = statistics.median(walks)
    out["sweep_seconds"] = statistics.median(sweeps)
    out["rss_end_kb"] = peak_rss_kb()
    return out


# -- orchestration -------------------------------------------------------------------------------


def run_scale(
    sizes: list[int], work_dir: str, *, ops: int, runs: int, seed: int, log: Callable[[str], None]
) -> dict[str, Any]:
    """Build the folder size by size and measure each size in a fresh process."""
    check = check_fast_writer()
    if not check["fast"]:
        log(f"scale: the fast writer does not match FileStorage ({check['why']}); filling with FileStorage.write")
    results: dict[str, Any] = {"sizes": [], "check": check}
    root = os.path.join(work_dir, "scale", "sessions")
    built = 0
    try:
        for size in sorted(sizes):
            log(f"scale: filling {size:,} sessions")
            build_seconds = build(root, built, size, fast=check["fast"])
            built = size
            spec = {"root": root, "sessions": size, "ops": ops, "runs": runs, "seed": seed}
            log(f"scale: measuring {size:,} sessions")
            done = subprocess.run(
                [sys.executable, __file__, "measure"],
                input=json.dumps(spec),
                capture_output=True,
                text=True,
                timeout=3600,
                check=False,
            )
            if done.returncode != 0:
                raise RuntimeError(f"scale measure at {size:,} failed:\n{done.stderr[-3000:]}")
            measured = json.loads(done.stdout)
            measured["build_seconds"] = build_seconds
            results["sizes"].append(measured)
    finally:
        shutil.rmtree(os.path.dirname(root), ignore_errors=True)
    return results


def main() -> None:
    if sys.argv[1:] != ["measure"]:
        sys.exit("usage: scale.py measure < spec.json  (run.py starts it)")
    json.dump(measure(json.load(sys.stdin)), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
