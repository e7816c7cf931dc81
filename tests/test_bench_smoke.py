"""The benchmark still runs: ``bench/run.py --smoke --no-node`` in a subprocess makes a results table.

No timing is checked: the numbers of a smoke run mean nothing. The test suite must run
offline and without Node, so grammY's peers are skipped (``--no-node``: neither node nor
npm runs, so nothing is fetched), and the sizes are tiny, so it costs seconds. The whole
bench, grammY included, is ``python bench/run.py``, which installs what it needs.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import subprocess
import sys
from pathlib import Path


def _run_py() -> Path:
    """bench/run.py, found from this file wherever it is kept in the repository."""
    for folder in Path(__file__).resolve().parents:
        candidate = folder / "bench" / "run.py"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError("bench/run.py is not in any folder above this test")


def _spies(folder: Path, log: Path) -> None:
    """``node`` and ``npm`` on PATH that only note that they were called, and fail."""
    folder.mkdir()
    for name in ("node", "npm"):
        spy = folder / name
        spy.write_text(f'#!/bin/sh\necho "{name} $*" >> "{log}"\nexit 1\n')
        spy.chmod(stat.S_IRWXU)


def test_smoke_run_without_node_makes_a_results_table_offline(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    raw = tmp_path / "results.json"
    calls = tmp_path / "node-calls.log"
    _spies(tmp_path / "bin", calls)
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    # grammY's peers are chosen on purpose: --no-node must skip them without calling npm.
    only = ["floor", "ours-file", "grammy-*", "ours-sqlite", "diskcache"]
    tiny = ["--runs", "1", "--sizes", "30", "--ops", "20", "--scale-max", "200", "--scale-ops", "50"]
    done = subprocess.run(
        [sys.executable, str(_run_py()), "--smoke", "--no-node", *tiny, "--profile-ops", "50"]
        + [arg for peer in only for arg in ("--only", peer)]
        + ["--out", str(out), "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert not calls.exists(), f"node or npm ran: {calls.read_text()}"
    text = out.read_text()
    assert "## Targets" in text
    assert "| configuration | level | W1 ops/s" in text
    assert "| floor: json + temp file + os.replace | storage |" in text
    assert "| session() + FileStorage (cache 1024) | framework |" in text
    assert "## FileStorage, the floor and cachelib in turns" in text
    assert "| session() + SQLiteStorage (cache 1024) | framework |" in text
    assert "## SQLiteStorage and diskcache in turns" in text
    if importlib.util.find_spec("diskcache") is not None:  # else skipped, as every missing peer is
        assert "| session() + diskcache.Cache (a storage of the user's own) | framework |" in text
        assert "| 30 | session() + SQLiteStorage vs session() + diskcache |" in text
    assert "## Scale" in text
    assert "## Profile" in text
    assert "(grammy-file@storage): --no-node" in text
    assert "(grammy-session@framework): --no-node" in text
    assert raw.stat().st_size > 0


def test_the_redis_pair_runs_and_makes_its_table(redis_url: str) -> None:
    script = _run_py().parent / "redis_paired.py"
    done = subprocess.run(
        [sys.executable, str(script), "--redis-url", redis_url, "--runs", "1", "--ops", "20", "--sessions", "5"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    rows = [line for line in done.stdout.splitlines() if line.startswith("| W")]
    assert [row.split("|")[1].strip() for row in rows] == ["W1", "W2"]


def test_postgres_paired_smoke_run_makes_its_table(postgres_url: str) -> None:
    done = subprocess.run(
        [sys.executable, str(_run_py().with_name("postgres_paired.py")), "--smoke", "--url", postgres_url],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| workload | bare psycopg loop, updates/s | session() + PostgresStorage, updates/s |" in done.stdout
    assert "| W1 |" in done.stdout
