"""The benchmark still runs: ``python bench/run.py --smoke`` in a subprocess makes a results table.

No timing is checked: the numbers of a smoke run mean nothing. Peers that are not installed
(and grammY, when npm cannot install its packages) are skipped by the run itself.
"""

from __future__ import annotations

import importlib.util
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


def test_smoke_run_makes_a_results_table(tmp_path: Path) -> None:
    out = tmp_path / "BENCHMARKS.md"
    raw = tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, str(_run_py()), "--smoke", "--out", str(out), "--json", str(raw)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    assert "## Targets" in text
    assert "| configuration | level | W1 ops/s" in text
    assert "| floor: json + temp file + os.replace | storage |" in text
    assert "| session() + FileStorage (cache 1024) | framework |" in text
    assert "## FileStorage, the floor and cachelib in turns" in text
    if importlib.util.find_spec("cachelib") is not None:
        assert "| session() + FileStorage vs cachelib (own folder) |" in text
    assert "## Scale" in text
    assert raw.stat().st_size > 0
