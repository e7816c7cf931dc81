"""BENCHMARKS.md from the raw results of run.py: the machine, the targets, the tables, the notes."""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

import peers
import workloads

CACHE_SIZE = 1024
OURS = "ours-file@framework"
OURS_STORAGE = "ours-file@storage"
# FileStorage with a cache big enough for every session, filled before the timed runs.
WARM, WARM_STORAGE = "ours-file-warm@framework", "ours-file-warm@storage"
FLOOR = "floor@storage"
# The separate runs of the stores that paired.py also runs in turns with ours.
PAIRED_CONFIGS = {"floor": FLOOR, "cachelib": "cachelib@storage"}
# SQLiteStorage and diskcache in turns (paired.py): level, ours, theirs, their separate runs.
SQLITE_PAIRS = (
    ("sqlite-framework", "session() + SQLiteStorage", "session() + diskcache", "diskcache", "diskcache@framework"),
    (
        "sqlite-framework-locked",
        "session() + SQLiteStorage",
        "session() + diskcache with diskcache.Lock",
        "diskcache_locked",
        "diskcache-locked@framework",
    ),
    ("sqlite-storage", "SQLiteStorage alone", "diskcache alone", "diskcache", "diskcache@storage"),
)


@dataclass
class Target:
    what: str
    where: str
    measured: str
    need: str
    status: str  # PASS, MISS, info or n/a


class Results:
    def __init__(self, data: dict[str, Any]) -> None:
        self.data = data
        self.by_key = {(r["config"], r["sessions"]): r for r in data.get("configs", [])}

    def rate(self, config: str, sessions: int, workload: str) -> float | None:
        result = self.by_key.get((config, sessions))
        if result is None or "error" in result:
            return None
        return workloads.median_rate(result.get("runs", {}).get(workload, []))

    def spread(self, config: str, sessions: int, workload: str) -> float | None:
        """Half the range of the runs' ops/s, as a fraction of the median (``None`` for one run)."""
        result = self.by_key.get((config, sessions))
        runs = [] if result is None or "error" in result else result.get("runs", {}).get(workload, [])
        rates = [run["ops"] / run["seconds"] for run in runs if run["ops"] and run["seconds"] > 0]
        if len(rates) < 2:
            return None
        return (max(rates) - min(rates)) / 2 / statistics.median(rates)

    def _paired_runs(self, level: str, sessions: int, workload: str) -> list[dict[str, float]]:
        for entry in self.data.get("paired", []):
            if entry.get("sessions") == sessions and "error" not in entry:
                return list(entry["pairs"].get(level, {}).get(workload, []))
        return []

    def paired_rate(self, level: str, sessions: int, workload: str, side: str) -> float | None:
        rates = [run["ops"] / run[f"{side}_seconds"] for run in self._paired_runs(level, sessions, workload)]
        return statistics.median(rates) if rates else None

    def _paired_ratios(self, level: str, sessions: int, workload: str, against: str) -> list[float]:
        runs = self._paired_runs(level, sessions, workload)
        return [run[f"{against}_seconds"] / run["ours_seconds"] for run in runs if f"{against}_seconds" in run]

    def paired_ratio(self, level: str, sessions: int, workload: str, against: str = "floor") -> float | None:
        """Ours over ``against``, timed in turns update by update (median over the runs)."""
        ratios = self._paired_ratios(level, sessions, workload, against)
        return statistics.median(ratios) if ratios else None

    def paired_spread(self, level: str, sessions: int, workload: str, against: str = "floor") -> float | None:
        ratios = self._paired_ratios(level, sessions, workload, against)
        if len(ratios) < 2:
            return None
        return (max(ratios) - min(ratios)) / 2 / statistics.median(ratios)

    def median_ops(self, config: str, sessions: int, workload: str) -> float | None:
        result = self.by_key.get((config, sessions))
        runs = [] if result is None else result.get("runs", {}).get(workload, [])
        return statistics.median(run["ops"] for run in runs) if runs else None


def _ops(rate: float | None) -> str:
    if rate is None:
        return "-"
    return f"{rate:,.0f}" if rate >= 100 else f"{rate:.1f}"


def _ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _x(ratio: float | None, digits: int = 2) -> str:
    return "-" if ratio is None else f"{ratio:.{digits}f}x"


def _mb(kib_or_bytes: float | None, *, kib: bool = False) -> str:
    if kib_or_bytes is None:
        return "-"
    value = kib_or_bytes * 1024 if kib else kib_or_bytes
    return f"{value / 1e6:,.1f} MB"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 0.001:
        return f"{value * 1e6:.0f} µs"
    if value < 1:
        return f"{value * 1e3:.1f} ms"
    return f"{value:.2f} s"


def _status(ok: bool | None) -> str:
    return "n/a" if ok is None else "PASS" if ok else "MISS"


def _title(data: dict[str, Any], config: str) -> str:
    return str(data.get("titles", {}).get(config, config))


# -- targets -----------------------------------------------------------------------------------------


def _versus(
    res: Results, sessions: int, workload: str, mine: str, theirs: str, factor: float, what: str, label: str
) -> Target:
    a, b = res.rate(mine, sessions, workload), res.rate(theirs, sessions, workload)
    ratio = _ratio(a, b)
    ok = None if ratio is None else ratio >= factor if factor != 1 else ratio > 1
    need = f">= {factor:g}x {label}" if factor != 1 else f"> {label}"
    measured = f"{_ops(a)} vs {_ops(b)} ops/s = {_x(ratio)}"
    if ok is False:
        measured += f" (short by {(1 - ratio / factor) * 100:.0f} %)"  # type: ignore[operator]
    spreads = [x for x in (res.spread(mine, sessions, workload), res.spread(theirs, sessions, workload)) if x]
    if ratio is not None and spreads and abs(ratio / factor - 1) <= max(spreads):
        measured += f"; within the runs' spread (+-{max(spreads) * 100:.0f} %)"
    return Target(what, f"{sessions:,} sessions", measured, need, _status(ok))


def _paired_target(
    res: Results, n: int, workload: str, level: str, factor: float, what: str, against: str = "floor"
) -> Target | None:
    """A target judged on the runs in turns (see paired.py); ``None`` if they did not run."""
    ratio = res.paired_ratio(level, n, workload, against)
    if ratio is None:
        return None
    ours, theirs = res.paired_rate(level, n, workload, "ours"), res.paired_rate(level, n, workload, against)
    ok = ratio >= factor if factor != 1 else ratio > 1
    where = "same folders" if against == "floor" else "in turns"
    measured = f"{where}: {_ops(ours)} vs {_ops(theirs)} ops/s = {_x(ratio)}"
    if not ok:
        measured += f" (short by {(1 - ratio / factor) * 100:.0f} %)"
    spread = res.paired_spread(level, n, workload, against)
    if spread is not None:
        measured += f", runs +-{spread * 100:.0f} %"
    mine = OURS if level == "framework" else OURS_STORAGE
    separate = _ratio(res.rate(mine, n, workload), res.rate(PAIRED_CONFIGS[against], n, workload))
    if separate is not None:
        measured += f"; in separate runs: {_x(separate)}"
    name = "floor" if against == "floor" else against
    need = f">= {factor:g}x {name}" if factor != 1 else f"> {name}"
    return Target(what, f"{n:,} sessions", measured, need, _status(ok))


def targets(res: Results) -> list[Target]:
    data = res.data
    rows: list[Target] = []
    for n in data["settings"]["sizes"]:
        what = "W1 session() + FileStorage vs the floor"
        rows.append(
            _paired_target(res, n, "W1", "framework", 0.85, what)
            or _versus(res, n, "W1", OURS, FLOOR, 0.85, what, "floor")
        )
        for theirs, label, short in (
            ("grammy-file@storage", "grammY storage-file adapter", "grammY adapter"),
            ("grammy-session@framework", "grammY session() + storage-file", "grammY session()"),
            ("cachelib@storage", "cachelib", "cachelib"),
        ):
            what = f"W1 session() + FileStorage vs {label}"
            paired = _paired_target(res, n, "W1", "framework", 1, what, "cachelib") if short == "cachelib" else None
            rows.append(paired or _versus(res, n, "W1", OURS, theirs, 1, what, short))
        rows.append(
            _versus(
                res,
                n,
                "W2",
                OURS,
                "grammy-session@framework",
                20,
                "W2 session() + FileStorage (cache on) vs grammY session()",
                "grammY session()",
            )
        )
        what = "cached read (W2, FileStorage.read) vs floor read"
        read_rows = [
            _paired_target(res, n, "W2", "storage", 1.5, what)
            or _versus(res, n, "W2", OURS_STORAGE, FLOOR, 1.5, what, "floor read"),
            _versus(
                res,
                n,
                "W2",
                OURS_STORAGE,
                "diskcache@storage",
                1,
                "cached read (W2, FileStorage.read) vs diskcache get",
                "diskcache get",
            ),
        ]
        for row in read_rows:
            if n > CACHE_SIZE and row.status != "n/a":
                row.status = "info"
                row.measured += f"; not a cached read: {n:,} sessions > cache_size {CACHE_SIZE}"
        rows += read_rows
        if n > CACHE_SIZE:
            rows += _warm_rows(res, n)
        rows += _w3_targets(res, n)
        rows += _sqlite_targets(res, n)
    rows.extend(scale_targets(data.get("scale")))
    return rows


def _sqlite_targets(res: Results, n: int) -> list[Target]:
    """SQLiteStorage through ``session()`` ahead of diskcache through ``session()``, on each workload."""
    level, mine, theirs, _, config = SQLITE_PAIRS[0]
    rows = []
    for workload in workloads.WORKLOADS:
        what = f"{workload} {mine} vs {theirs}"
        separate = _ratio(res.rate("ours-sqlite@framework", n, workload), res.rate(config, n, workload))
        ratio = res.paired_ratio(level, n, workload, "diskcache")
        if ratio is None:
            if separate is not None:
                rows.append(_versus(res, n, workload, "ours-sqlite@framework", config, 1, what, "diskcache"))
            continue
        ours, other = res.paired_rate(level, n, workload, "ours"), res.paired_rate(level, n, workload, "diskcache")
        measured = f"in turns: {_ops(ours)} vs {_ops(other)} ops/s = {_x(ratio)}"
        if ratio <= 1:
            measured += f" (short by {(1 - ratio) * 100:.0f} %)"
        spread = res.paired_spread(level, n, workload, "diskcache")
        if spread is not None:
            measured += f", runs +-{spread * 100:.0f} %"
        if separate is not None:
            measured += f"; in separate runs: {_x(separate)}"
        rows.append(Target(what, f"{n:,} sessions", measured, "> diskcache", _status(ratio > 1)))
    return rows


def _warm_rows(res: Results, n: int) -> list[Target]:
    """The W2 targets again with a cache that holds every session: what raising cache_size buys."""
    warm = "the cache holding every session (warmed)"
    rows = [
        _versus(
            res,
            n,
            "W2",
            WARM,
            "grammy-session@framework",
            20,
            f"W2 session() + FileStorage, {warm}, vs grammY session()",
            "grammY session()",
        ),
        _versus(
            res,
            n,
            "W2",
            WARM_STORAGE,
            FLOOR,
            1.5,
            f"cached read (W2, FileStorage.read), {warm}, vs floor read",
            "floor read",
        ),
        _versus(
            res,
            n,
            "W2",
            WARM_STORAGE,
            "diskcache@storage",
            1,
            f"cached read (W2, FileStorage.read), {warm}, vs diskcache get",
            "diskcache get",
        ),
    ]
    for row in rows:
        if row.status != "n/a":
            row.status = f"info: {row.status}"
    return rows


def _w3_targets(res: Results, n: int) -> list[Target]:
    """W3 against every file-per-key peer: the floor and cachelib in turns, the others in their own runs."""
    rows = []
    others = [
        item.id
        for item in peers.CONFIGS
        if item.file_per_key and item.name not in ("floor", "cachelib") and "ours" not in item.name
    ]
    rated = [(res.rate(config, n, "W3"), config) for config in others]
    _, best = max(((rate, config) for rate, config in rated if rate is not None), default=(None, None))
    for mine, level, label in (
        (OURS, "framework", "session() + FileStorage"),
        (OURS_STORAGE, "storage", "FileStorage alone (storage level)"),
    ):
        what = f"W3 {label} vs every file-per-key peer"
        floor = _paired_target(res, n, "W3", level, 1, what) or _versus(res, n, "W3", mine, FLOOR, 1, what, "floor")
        parts, statuses = [f"floor, {floor.measured}"], [floor.status]
        cachelib = _paired_target(res, n, "W3", level, 1, what, "cachelib") or _versus(
            res, n, "W3", mine, PAIRED_CONFIGS["cachelib"], 1, what, "cachelib"
        )
        parts.append(f"cachelib, {cachelib.measured}")
        statuses.append(cachelib.status)
        if best is not None:
            other = _versus(res, n, "W3", mine, best, 1, what, "")
            parts.append(f"best other, {_title(res.data, best)}: {other.measured}")
            statuses.append(other.status)
        status = "n/a" if "n/a" in statuses else "MISS" if "MISS" in statuses else "PASS"
        if mine == OURS_STORAGE:
            status = f"info: {status}"
        rows.append(Target(what, f"{n:,} sessions", "; ".join(parts), "> each", status))
    return rows


def scale_targets(scale: dict[str, Any] | None) -> list[Target]:
    if not scale or "error" in scale:
        return [Target("scale figures", "-", scale["error"] if scale else "not run", "", "n/a")]
    sizes = scale["sizes"]
    rows = []
    for row in sizes:
        if row["sessions"] >= 100_000 or row is sizes[-1]:
            ratio = _ratio(row["sweep_seconds"], row["bare_walk_seconds"])
            rows.append(
                Target(
                    "sweep() vs a bare os.scandir + stat walk",
                    f"{row['sessions']:,} sessions",
                    f"{_seconds(row['sweep_seconds'])} vs {_seconds(row['bare_walk_seconds'])} = {_x(ratio)}",
                    "<= 1.5x",
                    _status(None if ratio is None else ratio <= 1.5),
                )
            )
    flat = [row for row in sizes if row["sessions"] >= 10_000] or sizes
    span = f"{flat[0]['sessions']:,} to {flat[-1]['sessions']:,} sessions"
    for field, what in (("open_seconds", "open time"), ("first_read_seconds", "first read")):
        values = [row[field] for row in flat]
        ok = max(values) <= 2 * min(values) + 0.0005
        rows.append(
            Target(
                f"{what} flat",
                span,
                " / ".join(_seconds(v) for v in values),
                "largest <= 2x smallest + 0.5 ms",
                _status(ok if len(values) > 1 else None),
            )
        )
    rss = [row["rss_after_w1_kb"] for row in sizes]
    spread = (max(rss) - min(rss)) * 1024 / 1e6
    rows.append(
        Target(
            "peak RSS flat (cache_size=1024, after W1 through the middleware)",
            f"{sizes[0]['sessions']:,} to {sizes[-1]['sessions']:,} sessions",
            " / ".join(_mb(v, kib=True) for v in rss) + f"; spread {spread:.1f} MB",
            "spread <= 20 MB",
            _status(spread <= 20 if len(rss) > 1 else None),
        )
    )
    return rows


# -- tables --------------------------------------------------------------------------------------------


def _populate_cell(result: dict[str, Any]) -> str:
    populate = result.get("populate")
    if not populate:
        return "reused"
    seconds = populate["seconds"]
    text = f"{seconds:.2f} s"
    if populate.get("bulk"):
        return text + " (bulk)"
    return text + f" ({populate['sessions'] / seconds:,.0f}/s)" if seconds > 0 else text


def results_table(res: Results, sessions: int, marks: dict[tuple[str, int, str], str]) -> list[str]:
    data = res.data
    lines = [
        "| configuration | level | W1 ops/s +-spread (x floor) | W2 ops/s +-spread (x floor) "
        "| W3 ops/s +-spread (x floor) | populate | "
        "peak RSS | on disk |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    order = {"storage": 0, "framework": 1}
    rows = sorted(
        (r for r in data["configs"] if r["sessions"] == sessions), key=lambda r: order[r["config"].split("@")[1]]
    )
    for result in rows:
        config = result["config"]
        name, level = config.split("@")
        title = _title(data, config)
        if "error" in result:
            error = result["error"].strip().splitlines()[-1][:120]
            lines.append(f"| {title} | {level} | error: {error} | | | | | |")
            continue
        cells = []
        for workload in workloads.WORKLOADS:
            rate = res.rate(config, sessions, workload)
            ratio = _ratio(rate, res.rate(FLOOR, sessions, workload))
            spread = res.spread(config, sessions, workload)
            noise = "" if spread is None else f" +-{spread * 100:.0f}%"
            cells.append(f"{_ops(rate)}{noise} ({_x(ratio)}){marks.get((config, sessions, workload), '')}")
        disk = _mb(result.get("disk_bytes")) if "disk_bytes" in result else "(server)" if "redis" in name else "-"
        lines.append(
            f"| {title} | {level} | {' | '.join(cells)} | {_populate_cell(result)} | "
            f"{_mb(result.get('rss_kb'), kib=True)} | {disk} |"
        )
    return lines


def paired_section(res: Results) -> list[str]:
    entries = res.data.get("paired") or []
    lines = _sqlite_section(res, entries)
    if not any("error" in entry or "storage" in entry["pairs"] for entry in entries):
        return lines
    return _files_section(res, entries) + lines


def _sqlite_section(res: Results, entries: list[dict[str, Any]]) -> list[str]:
    done = [entry for entry in entries if "error" not in entry and SQLITE_PAIRS[0][0] in entry["pairs"]]
    if not done:
        return []
    lines = [
        "",
        "## SQLiteStorage and diskcache in turns",
        "",
        "Both on SQLite in WAL mode with `synchronous=NORMAL` (SQLiteStorage's default, `fsync=False`; diskcache's "
        "own): a kill loses nothing committed, a power loss may lose the last transactions. In one process "
        "SQLiteStorage (cache 1024) and `diskcache.Cache` take turns update by update over the same key sequence "
        "(who goes first rotates), each with a database of its own in a fresh folder per run; the ratio is the "
        "median of the runs' (ours over theirs). Through `session()` diskcache is a storage of the user's own "
        "(`read`/`write`/`delete` over `get`/`set`/`delete`), which the middleware locks within the process only, "
        "while SQLiteStorage takes its lock file, which holds across processes, for every update; so diskcache "
        "takes its turn once more with `lock(key)` = `diskcache.Lock` (a key added, then deleted: two more "
        "transactions per update, and a lock a killed holder never frees), the same guarantee as ours.",
        "",
        "| sessions | pair | W1 ours / theirs ops/s (ratio) | W2 ours / theirs ops/s (ratio) "
        "| W3 ours / theirs ops/s (ratio) |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    rows = [
        f"| {n:,} | {mine} vs {theirs} | {' | '.join(_turn_cells(res, level, n, side))} |"
        for n in (entry["sessions"] for entry in done)
        for level, mine, theirs, side, _ in SQLITE_PAIRS
        if res.paired_ratio(level, n, "W1", side) is not None
    ]
    if not rows:
        return ["", "## SQLiteStorage and diskcache in turns", "", "Not run: diskcache is not installed."]
    runs = f", {done[0]['runs']} runs" if "runs" in done[0] else ""
    return [*lines, *rows, "", f"{done[0]['ops']:,} updates per workload and run{runs}."]


def _turn_cells(res: Results, level: str, n: int, against: str) -> list[str]:
    cells = []
    for workload in workloads.WORKLOADS:
        ours = res.paired_rate(level, n, workload, "ours")
        theirs = res.paired_rate(level, n, workload, against)
        spread = res.paired_spread(level, n, workload, against)
        noise = "" if spread is None else f" +-{spread * 100:.0f}%"
        cells.append(f"{_ops(ours)} / {_ops(theirs)} ({_x(res.paired_ratio(level, n, workload, against))}{noise})")
    return cells


def _files_section(res: Results, entries: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "## FileStorage, the floor and cachelib in turns",
        "",
        "On this machine's virtual disk two identical floors in two folders ran W1 up to 3x apart when run one "
        "after the other (where a folder's blocks landed, and the disk's state from moment to moment, decide it), "
        "so the ratios to the floor and to cachelib that the targets use come from here. In one process, FileStorage "
        "(alone, or through `session()`), the floor and cachelib take turns update by update over the same key "
        "sequence (who goes first rotates), so that all meet the disk in the same state; the floor's `<key>.json` "
        "files lie beside FileStorage's `k<key>.json` in the same shard folders, cachelib's in a folder of their own "
        "beside them. Each run fills folders of its own, so that the median of the runs' ratios (ours over theirs) "
        "is not one placement's luck. Beside FileStorage alone, the floor without its crash safety takes its turns "
        "too, in a folder of its own: it writes each session straight over its file (truncate, then write), as "
        "grammY's file adapter does, so its row shows what the temporary file and the rename cost on this disk.",
        "",
        "| sessions | pair | W1 ours / theirs ops/s (ratio) | W2 ours / theirs ops/s (ratio) "
        "| W3 ours / theirs ops/s (ratio) |",
        "| ---: | --- | ---: | ---: | ---: |",
    ]
    for entry in entries:
        n = entry["sessions"]
        if "error" in entry:
            lines.append(f"| {n:,} | error: {entry['error'].strip().splitlines()[-1][:150]} | | | |")
            continue
        for level, label in (("storage", "FileStorage alone"), ("framework", "session() + FileStorage")):
            for against, name in (
                ("floor", "floor (same folders)"),
                ("cachelib", "cachelib (own folder)"),
                ("inplace", "floor written in place, not crash-safe (own folder)"),
            ):
                if res.paired_ratio(level, n, "W1", against) is None:
                    continue
                lines.append(f"| {n:,} | {label} vs {name} | {' | '.join(_turn_cells(res, level, n, against))} |")
    first = next((e for e in entries if "error" not in e and "storage" in e["pairs"]), None)
    if first:
        runs = f", {first['runs']} runs" if "runs" in first else ""
        lines += ["", f"{first['ops']:,} updates per workload and run{runs}."]
    return lines


def scale_table(scale: dict[str, Any]) -> list[str]:
    lines = [
        "| sessions | fill | open | first read | first update | W1 via session() | peak RSS after W1 "
        "| peak RSS at end | keys() | bare listdir | sweep() | bare scandir+stat | sweep / walk |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in scale["sizes"]:
        w1 = row["w1_ops"] / row["w1_seconds"] if row["w1_seconds"] else None
        lines.append(
            f"| {row['sessions']:,} | {_seconds(row['build_seconds'])} | {_seconds(row['open_seconds'])} | "
            f"{_seconds(row['first_read_seconds'])} | {_seconds(row['first_update_seconds'])} | {_ops(w1)}/s | "
            f"{_mb(row['rss_after_w1_kb'], kib=True)} | {_mb(row['rss_end_kb'], kib=True)} | "
            f"{_seconds(row['keys_seconds'])} | {_seconds(row['bare_names_seconds'])} | "
            f"{_seconds(row['sweep_seconds'])} | {_seconds(row['bare_walk_seconds'])} | "
            f"{_x(_ratio(row['sweep_seconds'], row['bare_walk_seconds']))} |"
        )
    return lines


def profile_lines(profile: dict[str, Any]) -> list[str]:
    if "error" in profile:
        return [f"The profile failed: `{profile['error'].strip().splitlines()[-1]}`"]
    lines = [
        f"`python bench/profile_w1.py --sessions {profile.get('sessions', '?')} --ops {profile['ops']}`: "
        f"{profile['ops']:,} W1 updates through `Bot.handle_update` + `session()` on FileStorage (cache 1024, "
        f"no fsync), {profile['us_per_update_profiled']:.0f} µs per update under cProfile.",
        "",
        "| own time per update | calls per update | function |",
        "| ---: | ---: | --- |",
    ]
    for row in profile["top_own"]:
        lines.append(f"| {row['own_us']:.1f} µs | {row['calls_per_update']:.1f} | `{row['function']}` |")
    lines += [
        "",
        "The library's functions by cumulative time:",
        "",
        "| cumulative per update | calls per update | function |",
        "| ---: | ---: | --- |",
    ]
    for row in profile["steps"]:
        lines.append(f"| {row['cumulative_us']:.1f} µs | {row['calls_per_update']:.1f} | `{row['function']}` |")
    if profile.get("pieces"):
        lines += [
            "",
            "The pieces of an update timed alone, without the profiler: the same keys, the floor's files in the same "
            "folders, the pieces taking turns key by key:",
            "",
            "| µs per call | piece |",
            "| ---: | --- |",
        ]
        lines += [f"| {row['us']:.1f} | {row['piece']} |" for row in profile["pieces"]]
    return lines


# -- the document --------------------------------------------------------------------------------------


def render(data: dict[str, Any]) -> str:
    res = Results(data)
    settings, machine = data["settings"], data["machine"]
    out: list[str] = ["# Benchmarks", ""]
    if settings.get("smoke"):
        out += ["**Smoke run**: tiny sizes and op counts; the numbers mean nothing.", ""]
    packages = ", ".join(f"{k} {v}" for k, v in machine.get("packages", {}).items())
    node_packages = ", ".join(f"{k} {v}" for k, v in machine.get("node_packages", {}).items()) or "-"
    out += [
        f"- **Command**: `{data['command']}` (from the repository root, after `pip install -e .[bench]`)",
        f"- **Date**: {data['started']} (UTC), {data.get('minutes', 0):.1f} minutes",
        f"- **Machine**: {machine['cpu']}, {machine['cores']} cores, {machine['memory']}, {machine['system']}; "
        f"/tmp on {machine['filesystem']}",
        f"- **Load average** (1, 5, 15 min; then I/O pressure, % of 10 s): {data['load_before']} before, "
        f"{data.get('load_after')} after" + (f". {data['load_note']}" if data.get("load_note") else ""),
        f"- **simplesession**: commit {machine.get('commit') or '?'}",
        f"- **Python**: {machine['python']}; {packages}",
        f"- **Node**: {machine.get('node') or '-'}; {node_packages}",
        f"- **Redis**: {machine.get('redis_server') or '-'}",
        f"- **Settings**: sizes {', '.join(f'{n:,}' for n in settings['sizes'])} sessions; {settings['runs']} runs "
        f"per workload (median); {settings['ops']:,} updates per run, or fewer when a run reaches its "
        f"{settings['time_cap']:g} s cap; key sequences seeded with {settings['seed']}, the same for every peer; "
        f"scale sizes {', '.join(f'{n:,}' for n in settings['scale_sizes']) or '-'}",
        "",
        "Workloads: " + "; ".join(f"**{w}** {workloads.TITLES[w]}" for w in workloads.WORKLOADS) + ". "
        "Ratios are to the floor's ops/s on the same workload and size. The storage level reads, changes and "
        "writes through the store; the framework level runs whole updates through a bot framework "
        "(ours: `Bot.handle_update` with `session(sweep_interval=None)`, so no sweep slices run; grammY: "
        "`bot.handleUpdate` with `session()`; PTB: `Application.process_update`).",
        "",
        "## Targets",
        "",
        "| target | where | measured | needs | result |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in targets(res):
        out.append(f"| {row.what} | {row.where} | {row.measured} | {row.need} | **{row.status}** |")

    marks: dict[tuple[str, int, str], str] = {}
    capped = []
    for result in data["configs"]:
        config, sessions = result["config"], result["sessions"]
        ops = {w: res.median_ops(config, sessions, w) for w in workloads.WORKLOADS}
        short = {w: o for w, o in ops.items() if o is not None and o < settings["ops"]}
        if "error" not in result and short:
            marks.update({(config, sessions, w): " *" for w in short})
            counts = ", ".join(f"{w} {o:,.0f}" for w, o in short.items())
            capped.append(f"{_title(data, config)} at {sessions:,} sessions: median ops per run {counts}")
    for sessions in settings["sizes"]:
        loads = [entry for r in data["configs"] if r["sessions"] == sessions for entry in r.get("loads", [])]
        out += ["", f"## Results at {sessions:,} sessions", ""]
        if loads:
            cpu = [entry[0] for entry in loads]
            io = [entry[3] for entry in loads if len(entry) > 3 and entry[3] >= 0]
            line = f"As the runs ended: load average (1 min) {min(cpu):.2f} to {max(cpu):.2f}"
            if io:
                line += f"; I/O pressure (% of the last 10 s with a task waiting on I/O) {min(io):.0f} to {max(io):.0f}"
            out += [line + ".", ""]
        out += results_table(res, sessions, marks)
    out += paired_section(res)
    out += [
        "",
        "`*` the run reached its time cap before the end of the key sequence (fewer ops, same sequence):",
        "",
    ]
    out += [f"- {line}" for line in capped] or ["- none"]
    out += [
        "",
        "`+-` is half the range of the runs' ops/s, as a share of the median: how far apart the runs of one "
        "configuration landed. File-creating workloads (W1, W3) vary most, and between configurations more than "
        "the spread shows: on this machine's virtual disk, two identical floors in two folders ran W1 up to 3x "
        "apart, steadily (see the same-folder section, which the targets against the floor use). The runs are "
        "interleaved, each starting at another configuration after a `sync`, so that load and disk backlog fall "
        "on all alike.",
    ]
    out += [
        "",
        "Every configuration has a store of its own, populated (and timed) in a process of its own before the "
        "runs, and reused by them; MemoryStorage is populated in every run, as its data dies with the process. "
        "FileStorage is populated as the middleware writes, under each key's lock, so its lock files exist, as in "
        "any folder a bot has used (creating one is a file creation, once in a folder's life). Stores filled "
        "in bulk (one pickle, one SQLite transaction) say `bulk`; stores with fsync are populated without it. "
        "Peak RSS is the largest `VmHWM` of the configuration's processes (for Redis the client's; for Node the "
        "whole `node` process). On disk is the allocated size (`du`) of the store's folder after its runs.",
    ]

    scale = data.get("scale")
    out += ["", "## Scale: FileStorage from 1k to 1M sessions", ""]
    if not scale:
        out.append("Not run.")
    elif "error" in scale:
        out.append(f"Failed: `{scale['error']}`")
    else:
        check = scale.get("check", {})
        out += scale_table(scale)
        out += [
            "",
            "One folder is filled step by step; a fresh process per size then opens it (`FileStorage(dir, "
            "cache_size=1024)`), reads one session, runs one update, runs "
            f"{settings['scale_ops']:,} W1 updates through `session()` over all sessions and reads its peak RSS, "
            "then times `keys()` (against listing the names) and `sweep(ttl=10 years)` (stats every file, removes "
            f"nothing) against a bare `os.scandir` + `stat` walk, alternated {settings['runs']} times (medians). The "
            + (
                "fast writer puts files straight into FileStorage's layout; it is checked to make byte-identical "
                "files, and FileStorage reads a sample back at each size."
                if check.get("fast", True)
                else f"fast writer did not match FileStorage ({check.get('why')}), so FileStorage.write filled it."
            )
            + f" FileStorage.write itself ran at {check.get('write_per_second', 0):,.0f} files/s on its sample. "
            "The page cache is warm (the files were just written).",
        ]

    out += ["", "## Crash safety", "", "| configuration | what a crash costs |", "| --- | --- |"]
    seen = set()
    for item in peers.CONFIGS:
        if item.name in seen:
            continue
        seen.add(item.name)
        out.append(f"| {item.title} | {data.get('crash_safety', {}).get(item.id, item.crash_safety)} |")

    notes = []
    for result in data["configs"]:
        for note in result.get("notes", []):
            notes.append(f"{_title(data, result['config'])}, {result['sessions']:,} sessions: {note}")
    for config, why in data.get("skipped", {}).items():
        notes.append(f"skipped {_title(data, config)} ({config}): {why}")
    out += ["", "## Notes", ""]
    out += [
        "- The floor writes `json.dumps` output to `<file>.tmp`, then `os.replace`s it; it reads with `open` + "
        "`json.load`. Its files sit in 256 shard folders, as FileStorage's do.",
        "- grammY's `session()` writes the session back after every update that touched it, changed or not (W2 "
        "too); ours writes only when the JSON changed. grammY's adapter W2 only reads.",
        "- cachelib runs with `threshold=0, default_timeout=0` (its defaults keep 500 entries for 300 s).",
        "- pyTelegramBotAPI's StatePickleStorage and PTB's flush-per-update mode cost O(N) per update (a whole "
        "pickle per read or write), so they fit fewer ops into a run's time cap.",
        "- PTB runs chat data only (`PersistenceInput(user_data=False, bot_data=False, callback_data=False)`); its "
        "60 s mode never writes inside the timed loop, so its ops/s is PTB's in-memory update cost.",
    ]
    out += [f"- {note}" for note in notes]

    profile = data.get("profile")
    if profile:
        out += ["", "## Profile: W1 through the middleware on FileStorage", ""]
        out += profile_lines(profile)
    out += [
        "",
        "## Reproduce",
        "",
        "```sh",
        "pip install -e '.[bench]'",
        "python bench/run.py                    # this file; ~30 minutes on 2 cores",
        "python bench/run.py --scale-max 100k   # quicker: scale figures up to 100k sessions",
        "python bench/run.py --smoke            # seconds, for CI",
        "```",
        "",
    ]
    return "\n".join(out)
