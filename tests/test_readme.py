"""The README's snippets run, and CI runs the README's test command."""

from __future__ import annotations

import io
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")


def code_blocks(language: str) -> list[str]:
    """The blocks, each padded with blank lines so that tracebacks show README line numbers."""
    return [
        "\n" * README.count("\n", 0, match.start(1)) + match.group(1)
        for match in re.finditer(rf"```{language}\n(.*?)```", README, flags=re.S)
    ]


def test_ci_runs_the_readme_test_command() -> None:
    setup = code_blocks("sh")[0].strip().splitlines()
    test_command = next(line for line in setup if "pytest" in line)
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert test_command in ci_lines


def test_readme_python_snippets_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The snippets run in order in one namespace, as a reader would paste them; the bot
    # in "Basic usage" talks on the console, so it gets two lines of input.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SIMPLESESSION_DIR", str(tmp_path / "sessions"))
    monkeypatch.delenv("BOT_TOKEN", raising=False)
    monkeypatch.setattr(sys, "stdin", io.StringIO("/count\n/count\n"))
    namespace: dict[str, object] = {"__name__": "readme"}
    blocks = code_blocks("python")
    assert blocks
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.splitlines()
    assert printed == [
        "You have sent 1 commands",
        "You have sent 2 commands",
        "k~43hat~3a42.json",
        "cannot store session '42': session['items'][2] is a set; sessions hold only JSON data "
        "(dict with str keys, list, str, int, float, bool, None)",
        "count=1",
        "2 0 0 0 0",  # the sweep: two sessions so far, none idle
    ]


def test_every_test_the_readme_cites_exists() -> None:
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", README)
    assert len(cited) >= 20
    for filename, name in cited:
        source = (ROOT / "tests" / filename).read_text("utf-8")
        assert re.search(rf"^def {name}\(", source, flags=re.M), f"README cites {filename}::{name}, which is not there"
