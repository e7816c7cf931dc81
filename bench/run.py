"""Benchmark simplesession's storages against the floor, other Python stores and grammY.

    python bench/run.py                  # everything; writes bench/BENCHMARKS.md (~35 min)
    python bench/run.py --smoke          # tiny sizes, seconds; for CI
    python bench/run.py --smoke --no-node    # the same without Node: no npm, no network
    python bench/run.py --only 'ours-*' --only floor --sizes 1000 --scale-max 100000

Each configuration runs in a fresh process per size (``workloads.py``, or Node's
``node/session_bench.mjs`` for grammY). Stores live in a temporary folder under /tmp that
is removed at the end. A redis-server is started on 127.0.0.1 if one is on PATH (and
stopped at the end); Node's packages are installed into bench/node by ``npm ci`` when
missing (``--no-node`` skips grammY instead, and never runs node or npm). Peers whose
packages are not installed are skipped, and said so.
"""

from __future__ import annotations

import argparse
import contextlib
import fnmatch
import json
import os
import platform
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import peers
import report
import scale
import workloads

BENCH = Path(__file__).resolve().parent
NODE_DIR = BENCH / "node"
SEED = 20240601
PYTHON_PACKAGES = (
    "simplesession",
    "filelock",
    "diskcache",
    "sqlitedict",
    "cachelib",
    "pyTelegramBotAPI",
    "python-telegram-bot",
    "redis",
)


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# -- the machine -------------------------------------------------------------------------------


def _first_line(path: str, prefix: str) -> str | None:
    with contextlib.suppress(OSError):
        for line in Path(path).read_text().splitlines():
            if line.startswith(prefix):
                return line.split(":", 1)[1].strip()
    return None


def _filesystem(path: str) -> str:
    best = ("", "?", "?")
    with contextlib.suppress(OSError):
        for line in Path("/proc/mounts").read_text().splitlines():
            _device, mount, kind, options, *_ = line.split()
            if path.startswith(mount) and len(mount) >= len(best[0]):
                best = (mount, kind, options)
    return f"{best[1]} ({best[2]})"


def _command_version(*command: str) -> str | None:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (done.stdout or done.stderr).strip().splitlines()[0] if done.returncode == 0 else None


def machine(*, node: bool = True) -> dict[str, Any]:
    memory = _first_line("/proc/meminfo", "MemTotal")
    versions = {}
    for name in PYTHON_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return {
        "cpu": _first_line("/proc/cpuinfo", "model name") or platform.processor() or "?",
        "cores": os.cpu_count(),
        "memory": f"{int(memory.split()[0]) / 1024**2:.1f} GiB" if memory else "?",
        "system": f"{platform.system()} {platform.release()}",
        "filesystem": _filesystem(tempfile.gettempdir()),
        "python": f"{platform.python_implementation()} {platform.python_version()}",
        "packages": versions,
        "node": _command_version("node", "--version") if node else None,
        "redis_server": _command_version("redis-server", "--version"),
        "commit": _command_version("git", "-C", str(BENCH.parent), "describe", "--always", "--dirty"),
    }


def load() -> list[float]:
    """Load averages (1, 5, 15 min), then the share of the last 10 s in which some task waited
    for I/O (Linux's pressure stall information; -1 where there is none)."""
    io_wait = -1.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        io_wait = float(Path("/proc/pressure/io").read_text().split()[1].split("=")[1])
    return [*(round(x, 2) for x in os.getloadavg()), io_wait]


# -- Node and Redis ------------------------------------------------------------------------------


def setup_node(timeout: float) -> tuple[bool, str]:
    """Install bench/node's packages if needed (``npm ci``, else ``npm install``); ``(ok, why not)``."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        return False, "node or npm is not on PATH"
    stamp = NODE_DIR / "node_modules" / ".package-lock.json"
    lock = NODE_DIR / "package-lock.json"
    if not stamp.exists() or (lock.exists() and stamp.stat().st_mtime < lock.stat().st_mtime):
        commands = [[npm, "ci"], [npm, "install"]] if lock.exists() else [[npm, "install"]]
        errors = []
        for command in commands:
            log(f"node: {' '.join(command[1:])} in {NODE_DIR}")
            try:
                done = subprocess.run(
                    [*command, "--no-audit", "--no-fund", "--loglevel=error"],
                    cwd=NODE_DIR,
                    capture_output=True,
                    text=True,
                    timeout=timeout,
                    check=False,
                )
            except subprocess.TimeoutExpired:
                errors.append(f"{command[1]} timed out after {timeout:.0f} s")
                continue
            if done.returncode == 0:
                break
            errors.append(f"{command[1]}: {(done.stderr or done.stdout).strip()[-300:]}")
        else:
            return False, "npm could not install the packages (" + "; ".join(errors) + ")"
    check = "await import('grammy'); await import('@grammyjs/storage-file');"
    done = subprocess.run(
        [node, "--input-type=module", "-e", check], cwd=NODE_DIR, capture_output=True, text=True, check=False
    )
    if done.returncode != 0:
        return False, f"grammY does not load: {done.stderr.strip()[-300:]}"
    return True, ""


def node_versions() -> dict[str, str]:
    found = {}
    for name in ("grammy", "@grammyjs/storage-file"):
        with contextlib.suppress(OSError, ValueError, KeyError):
            found[name] = json.loads((NODE_DIR / "node_modules" / name / "package.json").read_text())["version"]
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _pings(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def redis_server(work_dir: str, url: str | None) -> Iterator[tuple[str | None, str]]:
    """``(url, why not)``: the given server, else one of our own on 127.0.0.1 (stopped after)."""
    if url:
        yield url, ""
        return
    binary = shutil.which("redis-server")
    if binary is None:
        yield None, "no redis-server on PATH"
        return
    folder = os.path.join(work_dir, "redis")
    os.makedirs(folder)
    port = _free_port()
    with open(os.path.join(folder, "redis.log"), "wb") as output:
        process = subprocess.Popen(
            [
                binary,
                "--bind",
                "127.0.0.1",
                "--port",
                str(port),
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                folder,
                "--daemonize",
                "no",
            ],
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 10
        while not _pings(port) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.05)
        if _pings(port):
            log(f"redis: started redis-server on 127.0.0.1:{port}")
            yield f"redis://127.0.0.1:{port}/0", ""
        else:
            yield None, "redis-server did not start"
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)


# -- running ---------------------------------------------------------------------------------------


def disk_bytes(root: str) -> int:
    """Bytes allocated on disk under ``root`` (like ``du``)."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in [".", *files]:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(folder, name)).st_blocks * 512
    return total


def run_config(item: peers.Config, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Run one configuration at one size in a fresh process; its result or ``{"error": ...}``."""
    if item.node_mode is not None:
        node_spec = {
            "mode": item.node_mode,
            "root": spec["root"],
            "sessions": spec["sessions"],
            "populate": spec["populate"],
            "chatBase": peers.CHAT_BASE,
            "timeCap": spec["time_cap"],
            "workloads": spec["workloads"],
            "changes": workloads.CHANGES,
            "sequences": [
                {w: workloads.sequence(w, spec["sessions"], spec["ops"], spec["seed"], run) for w in spec["workloads"]}
                for run in spec["run_numbers"]
            ],
        }
        command = ["node", str(NODE_DIR / "session_bench.mjs")]
        payload = json.dumps(node_spec)
    else:
        command = [sys.executable, str(BENCH / "workloads.py")]
        payload = json.dumps(spec)
    try:
        done = subprocess.run(command, input=payload, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    if done.returncode != 0:
        return {"error": (done.stderr.strip() or f"exit status {done.returncode}")[-2000:]}
    try:
        return json.loads(done.stdout)  # type: ignore[no-any-return]
    except ValueError:
        return {"error": f"no JSON result: {done.stdout[-500:]!r} {done.stderr[-1500:]}"}


def select(patterns: list[str] | None) -> list[peers.Config]:
    if not patterns:
        return list(peers.CONFIGS)
    chosen = [
        item
        for item in peers.CONFIGS
        if any(fnmatch.fnmatchcase(item.name, p) or fnmatch.fnmatchcase(item.id, p) for p in patterns)
    ]
    if not chosen:
        names = ", ".join(sorted({item.name for item in peers.CONFIGS}))
        raise SystemExit(f"--only matched nothing; the peers are: {names}")
    return chosen


def summarize(result: dict[str, Any]) -> str:
    parts = []
    for workload, runs in result.get("runs", {}).items():
        rate = workloads.median_rate(runs)
        parts.append(f"{workload} {rate:,.0f}/s" if rate else f"{workload} -")
    return " ".join(parts)


def merge(merged: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, Any]:
    """One configuration's result over its processes: runs appended, the largest peak RSS."""
    if merged is None:
        return result
    if "error" in result:
        merged["error"] = result["error"]
        return merged
    for workload, runs in result["runs"].items():
        merged["runs"].setdefault(workload, []).extend(runs)
    merged["rss_kb"] = max(merged.get("rss_kb", 0), result.get("rss_kb", 0))
    merged["notes"] = result.get("notes", [])
    merged["wall_seconds"] = merged.get("wall_seconds", 0) + result.get("wall_seconds", 0)
    merged["loads"] = merged.get("loads", []) + result.get("loads", [])
    return merged


def run_size(
    args: argparse.Namespace, runnable: list[peers.Config], sessions: int, work_dir: str, redis_url: str | None
) -> list[dict[str, Any]]:
    """Every configuration at one size, each run a fresh process.

    Each configuration has a store of its own (sharing one would hand the later ones files,
    and kernel caches, that an earlier one had just warmed with the same keys), populated
    first in a process of its own. Then run 1 of every configuration, run 2 of each, and so
    on, each run starting at another configuration, so that a change in the machine's load
    spreads over all of them. Before each run the parent calls ``sync``, so that no run
    pays for the writeback of another's populate.
    """
    merged: dict[str, dict[str, Any]] = {}
    roots = {item.id: os.path.join(work_dir, f"{item.name}-{item.level}-{sessions}") for item in runnable}

    def spec(item: peers.Config, populate: bool, run_numbers: list[int]) -> dict[str, Any]:
        return {
            "config": item.id,
            "sessions": sessions,
            "root": roots[item.id],
            "populate": populate,
            "run_numbers": run_numbers,
            "workloads": list(workloads.WORKLOADS),
            "ops": args.ops,
            "time_cap": args.time_cap,
            "seed": SEED,
            "options": {
                "redis_url": redis_url,
                "redis_prefix": f"ssbench:{item.id}:{sessions}:",
                "sessions": sessions,
            },
        }

    for item in runnable:
        os.makedirs(roots[item.id], exist_ok=True)
        if not item.keeps_data:
            continue  # populated in each of its runs
        result = run_config(item, spec(item, True, []), args.worker_timeout)
        result.update(config=item.id, sessions=sessions)
        result["populate_rss_kb"] = result.pop("rss_kb", None)
        result["notes"] = []
        merged[item.id] = result
        if "error" in result:
            log(f"{item.id} N={sessions:,} populate: ERROR {result['error'].splitlines()[-1]}")
        else:
            log(f"{item.id} N={sessions:,} populated in {result['populate']['seconds']:.2f} s")

    for run in range(args.runs):
        start = run * len(runnable) // args.runs
        for item in runnable[start:] + runnable[:start]:
            if "error" in merged.get(item.id, {}):
                continue
            os.sync()
            started = time.perf_counter()
            result = run_config(item, spec(item, not item.keeps_data, [run]), args.worker_timeout)
            result.update(config=item.id, sessions=sessions, wall_seconds=time.perf_counter() - started)
            result["loads"] = [load()]
            merged[item.id] = merge(merged.get(item.id), result)
            where = f"{item.id} N={sessions:,} run {run + 1}/{args.runs}"
            if "error" in result:
                log(f"{where}: ERROR {result['error'].splitlines()[-1]}")
            else:
                log(f"{where}: {summarize(result)} (load {result['loads'][0][0]})")
    for item in runnable:
        if item.on_disk and item.id in merged:
            merged[item.id]["disk_bytes"] = disk_bytes(roots[item.id])
        shutil.rmtree(roots[item.id], ignore_errors=True)
    return [merged[item.id] for item in runnable if item.id in merged]


def run_paired(args: argparse.Namespace, sessions: int, work_dir: str, files: bool, sqlite: bool) -> dict[str, Any]:
    """The floor and FileStorage in the same folders (if ``files``), SQLiteStorage and diskcache
    (if ``sqlite``), each taking turns update by update (``paired.py``)."""
    root = os.path.join(work_dir, f"paired-{sessions}")
    ops = min(args.ops, 3000)
    spec = {"sessions": sessions, "root": root, "ops": ops, "files": files, "sqlite": sqlite}
    # These are the figures the targets use: more runs, each in fresh folders (see paired.py);
    # a smoke run's figures mean nothing, so it only shows that the pairs run.
    spec.update(runs=args.runs if args.smoke else max(args.runs, 5), seed=SEED)
    what = [
        *(["floor and FileStorage in the same folders"] if files else []),
        *(["SQLiteStorage and diskcache"] if sqlite else []),
    ]
    log(f"paired: {'; '.join(what)}, {sessions:,} sessions")
    os.sync()
    try:
        done = subprocess.run(
            [sys.executable, str(BENCH / "paired.py")],
            input=json.dumps(spec),
            capture_output=True,
            text=True,
            timeout=args.worker_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"sessions": sessions, "error": f"timed out after {args.worker_timeout:.0f} s"}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if done.returncode != 0:
        return {"sessions": sessions, "error": done.stderr.strip()[-2000:] or f"exit status {done.returncode}"}
    result: dict[str, Any] = json.loads(done.stdout)
    result.update(ops=ops, runs=spec["runs"])
    return result


def run_all(args: argparse.Namespace, work_dir: str) -> dict[str, Any]:
    configs = select(args.only)
    results: dict[str, Any] = {"configs": [], "skipped": {}, "scale": None, "profile": None}
    need_node = any(item.node_mode for item in configs)
    if args.no_node:
        node_ok, node_why = False, "--no-node"
    else:
        node_ok, node_why = setup_node(args.npm_timeout) if need_node else (False, "not selected")
    if need_node and not node_ok and not args.no_node:
        log(f"node: skipping grammY: {node_why}")
    need_redis = any("redis-server" in item.requires for item in configs)
    with contextlib.ExitStack() as stack:
        redis_url, redis_why = stack.enter_context(redis_server(work_dir, args.redis_url)) if need_redis else (None, "")
        for item in configs:
            why = ""
            missing = peers.missing_modules(item)
            if missing:
                why = f"not installed: {', '.join(missing)}"
            elif item.node_mode and not node_ok:
                why = node_why
            elif "redis-server" in item.requires and redis_url is None:
                why = redis_why
            if why:
                results["skipped"][item.id] = why
        runnable = [item for item in configs if item.id not in results["skipped"]]
        names = {item.name for item in runnable}
        files, sqlite = names >= {"floor", "ours-file"}, "ours-sqlite" in names
        results["paired"] = []
        for sessions in args.sizes:
            results["configs"] += run_size(args, runnable, sessions, work_dir, redis_url)
            if files or sqlite:
                results["paired"].append(run_paired(args, sessions, work_dir, files, sqlite))
    if args.scale_sizes:
        log(f"scale: sizes {', '.join(f'{n:,}' for n in args.scale_sizes)}")
        try:
            results["scale"] = scale.run_scale(
                args.scale_sizes, work_dir, ops=args.scale_ops, runs=args.runs, seed=SEED, log=log
            )
        except Exception as exc:  # reported, and the exit status says so
            results["scale"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"scale: ERROR {exc}")
    if args.profile_ops:
        log("profile: cProfile of the W1 loop through the middleware on FileStorage")
        done = subprocess.run(
            [
                sys.executable,
                str(BENCH / "profile_w1.py"),
                "--json",
                "--ops",
                str(args.profile_ops),
                "--sessions",
                str(min(args.sizes)),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        results["profile"] = json.loads(done.stdout) if done.returncode == 0 else {"error": done.stderr[-2000:]}
    return results


# -- the command line --------------------------------------------------------------------------------


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part.replace("_", "").replace("k", "000").replace("M", "000000")) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes are numbers such as 1000,100000 or 1k,100k, not {text!r}") from None
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError("sizes must be >= 1")
    return sizes


def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="tiny sizes and op counts: a few seconds, for CI")
    parser.add_argument("--sizes", type=_sizes, help="session counts (default 1000,100000; smoke 200)")
    parser.add_argument("--runs", type=int, help="runs of each workload, each in a fresh process; median (default 3)")
    parser.add_argument("--ops", type=int, help="updates per timed run (default 5000; smoke 40)")
    parser.add_argument("--time-cap", type=float, help="seconds a timed run may take, whatever its ops (default 2)")
    parser.add_argument("--only", action="append", metavar="PEER", help="run only these peers (glob; repeatable)")
    parser.add_argument("--scale-max", type=_sizes, help="largest scale size (default 1M; smoke 2000)")
    parser.add_argument("--no-scale", action="store_true", help="skip the scale figures")
    parser.add_argument("--scale-ops", type=int, help="W1 updates per scale size before RSS is read (default 10000)")
    parser.add_argument("--profile-ops", type=int, help="updates profiled with cProfile (default 5000; 0: none)")
    parser.add_argument("--out", type=Path, help="the Markdown report (default bench/BENCHMARKS.md; smoke: stdout)")
    parser.add_argument("--json", type=Path, help="also save the raw results as JSON")
    parser.add_argument("--render", type=Path, metavar="JSON", help="only render --out from a saved --json file")
    parser.add_argument("--note", help="a sentence on the machine's state for the report (e.g. its load)")
    parser.add_argument("--redis-url", help="use this Redis server instead of starting one")
    parser.add_argument("--no-node", action="store_true", help="skip grammY: run neither node nor npm (offline)")
    parser.add_argument("--npm-timeout", type=float, default=300.0, help=argparse.SUPPRESS)
    parser.add_argument("--worker-timeout", type=float, default=1800.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    smoke = args.smoke
    args.sizes = args.sizes or ([200] if smoke else [1000, 100_000])
    args.runs = args.runs or (2 if smoke else 3)
    args.ops = args.ops or (40 if smoke else 5000)
    args.time_cap = args.time_cap or (0.5 if smoke else 2.0)
    args.scale_ops = args.scale_ops or (200 if smoke else 10_000)
    if args.profile_ops is None:
        args.profile_ops = 300 if smoke else 5000
    scale_max = (args.scale_max or [2000 if smoke else 1_000_000])[-1]
    ladder = [500, 2000] if smoke else [1000, 10_000, 100_000, 1_000_000]
    args.scale_sizes = [] if args.no_scale else [n for n in ladder if n <= scale_max] or [scale_max]
    if smoke:
        args.npm_timeout = min(args.npm_timeout, 180.0)
        args.worker_timeout = min(args.worker_timeout, 120.0)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    command = "python bench/run.py" + "".join(f" {shlex.quote(a)}" for a in (sys.argv[1:] if argv is None else argv))
    if args.render:
        data = json.loads(args.render.read_text())
        if args.note:
            data["load_note"] = args.note
    else:
        started = datetime.now(timezone.utc)
        data = {
            "command": command,
            "started": started.isoformat(timespec="seconds"),
            "machine": machine(node=not args.no_node),
            "load_before": load(),
            "settings": {
                "sizes": args.sizes,
                "runs": args.runs,
                "ops": args.ops,
                "time_cap": args.time_cap,
                "seed": SEED,
                "scale_sizes": args.scale_sizes,
                "scale_ops": args.scale_ops,
                "smoke": args.smoke,
            },
        }
        work_dir = tempfile.mkdtemp(prefix="ssbench-", dir="/tmp")
        try:
            data.update(run_all(args, work_dir))
        finally:
            shutil.rmtree(work_dir, ignore_errors=True)
        data["machine"]["node_packages"] = {} if args.no_node else node_versions()
        data["load_after"] = load()
        data["load_note"] = args.note or ""
        data["minutes"] = (datetime.now(timezone.utc) - started).total_seconds() / 60
        data["crash_safety"] = {item.id: item.crash_safety for item in peers.CONFIGS}
        data["titles"] = {item.id: item.title for item in peers.CONFIGS}
        if args.json:
            args.json.write_text(json.dumps(data, indent=1))
    text = report.render(data)
    out = args.out or (None if args.smoke else BENCH / "BENCHMARKS.md")
    if out is None:
        print(text)
    else:
        out.write_text(text)
        log(f"wrote {out}")
    errors = [r["config"] for r in data["configs"] if "error" in r]
    errors += [f"paired {r['sessions']:,}" for r in data.get("paired", []) if "error" in r]
    if data.get("scale") and "error" in data["scale"]:
        errors.append("scale")
    if errors:
        log(f"errors in: {', '.join(errors)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
