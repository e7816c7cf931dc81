"""What importing simplesession costs a process: time, peak RSS and modules, beside bare Python and telebot.

    python bench/startup.py                   # 15 runs of each case, interleaved; a Markdown table
    python bench/startup.py --compare OLD     # also another checkout's simplesession, in the same turns

Each measurement is a fresh interpreter started by this script (``python -c``), which times
its own imports with ``perf_counter`` and reads its peak RSS (Linux's ``VmHWM``) after
them; this script also times the whole process, start to exit. The cases take turns, run
by run, each run starting at another case, so that a change in the machine's load spreads
over all of them; the medians count. The simplesession measured is this checkout's, put
first on ``PYTHONPATH``; ``--compare OLD`` adds the simplesession cases of the checkout in
folder OLD (``git worktree add OLD COMMIT``, or ``git archive COMMIT simplesession | tar
-x -C OLD``), run in the same turns, so that the two meet the same load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

BASE = {"python": "", "import telebot": "import telebot"}
OURS = {
    "import simplesession": "import simplesession",
    "simplesession + FileStorage": "import simplesession\nsimplesession.FileStorage()",
    "from simplesession import Bot": "from simplesession import Bot",
    "telebot + simplesession.contrib.telebot": "import telebot\nimport simplesession.contrib.telebot",
}

PROBE = """
import sys, time
start = time.perf_counter()
{code}
seconds = time.perf_counter() - start
peak = 0
with open("/proc/self/status", encoding="ascii") as status:
    for line in status:
        if line.startswith("VmHWM:"):
            peak = int(line.split()[1])
import json
print(json.dumps({{"import_ms": seconds * 1000, "peak_kb": peak, "modules": len(sys.modules)}}))
"""


def measure(code: str, env: dict[str, str], folder: str) -> dict[str, Any]:
    """One fresh interpreter's figures for ``code``."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code)],
        capture_output=True,
        text=True,
        env=env,
        cwd=folder,  # no checkout in the current folder, which ``-c`` puts first on sys.path
        timeout=60,
        check=False,
    )
    wall_ms = (time.perf_counter() - started) * 1000
    if done.returncode != 0:
        raise SystemExit(f"{code!r} failed: {done.stderr.strip()[-1000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    result["process_ms"] = wall_ms
    return result


def environment(path: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(path), os.environ.get("PYTHONPATH")]))}


def cases(path: Path, compare: Path | None) -> dict[str, tuple[str, dict[str, str]]]:
    """Each case's name: its code and the environment it runs in."""
    found = {name: (code, environment(path)) for name, code in BASE.items()}
    found.update({name: (code, environment(path)) for name, code in OURS.items()})
    if compare is not None:
        found.update({f"{name} ({compare.name})": (code, environment(compare)) for name, code in OURS.items()})
    return found


def run(chosen: dict[str, tuple[str, dict[str, str]]], runs: int) -> dict[str, dict[str, list[float]]]:
    names = list(chosen)
    figures: dict[str, dict[str, list[float]]] = {name: {} for name in names}
    with tempfile.TemporaryDirectory(prefix="ssstartup-") as folder:
        for number in range(runs + 1):
            start = number % len(names)
            for name in names[start:] + names[:start]:
                result = measure(*chosen[name], folder)
                if number == 0:
                    continue  # a first round that warms the page cache for every case alike
                for field, value in result.items():
                    figures[name].setdefault(field, []).append(value)
    return figures


def render(figures: dict[str, dict[str, list[float]]], runs: int, path: Path, compare: Path | None) -> str:
    median = {name: {field: statistics.median(values) for field, values in f.items()} for name, f in figures.items()}
    bare, telebot = median["python"], median["import telebot"]
    lines = [
        f"{runs} runs of each case, interleaved; medians. simplesession from `{path}`"
        + (f" and, marked ({compare.name}), from `{compare}`" if compare else "")
        + f"; Python {sys.version.split()[0]}.",
        "",
        "| case | modules | import ms | process ms | process / bare python | peak RSS MiB | RSS over bare python MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, m in median.items():
        lines.append(
            f"| {name} | {m['modules']:.0f} | {m['import_ms']:.1f} | {m['process_ms']:.0f} "
            f"| {m['process_ms'] / bare['process_ms']:.2f} | {m['peak_kb'] / 1024:.1f} "
            f"| {(m['peak_kb'] - bare['peak_kb']) / 1024:+.1f} |"
        )
    lines.append("")
    for suffix in ["", *([f" ({compare.name})"] if compare else [])]:
        ours = median[f"telebot + simplesession.contrib.telebot{suffix}"]
        lines.append(
            f"simplesession's telebot middleware{suffix} over `import telebot`: "
            f"{ours['modules'] - telebot['modules']:+.0f} modules, "
            f"{ours['process_ms'] - telebot['process_ms']:+.0f} ms per process "
            f"({ours['process_ms'] / telebot['process_ms']:.2f} times as long), "
            f"{(ours['peak_kb'] - telebot['peak_kb']) / 1024:+.1f} MiB peak RSS."
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=15, help="runs of each case (default 15)")
    parser.add_argument("--compare", type=Path, metavar="OLD", help="also measure the simplesession in folder OLD")
    parser.add_argument("--json", type=Path, help="also save the raw figures as JSON")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be >= 1")
    compare = None if args.compare is None else args.compare.resolve()
    if compare is not None and not (compare / "simplesession" / "__init__.py").is_file():
        parser.error(f"{compare} holds no simplesession/__init__.py: give a checkout's root folder")
    figures = run(cases(ROOT, compare), args.runs)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    print(render(figures, args.runs, ROOT, compare))
    return 0


if __name__ == "__main__":
    sys.exit(main())
