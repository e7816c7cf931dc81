"""The command line on a store holding corrupt sessions: each is reported, the rest is done, and
the exit status says the job is incomplete; ``export`` changes nothing in the store."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from test_cli import LONG_KEY, SESSIONS, cli, make_idle

from simplesession import FileStorage

BAD_KEY = "\ud800" + "x" * 300  # a key no write accepts, recorded in a file with a hashed name


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A sessions folder holding SESSIONS, one of them (LONG_KEY's file) recording a key that is not text."""
    storage = FileStorage(tmp_path / "sessions")
    for key, (value, version) in SESSIONS.items():
        storage.write(key, value, version=version)
    document = json.dumps({"format": 1, "key": BAD_KEY, "data": {"n": 1}})  # "\ud800" escaped: valid JSON
    storage.path(LONG_KEY).write_text(document, "ascii")
    return tmp_path / "sessions"


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` with its bytes (lock files aside: any read may create one)."""
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and ".locks" not in path.parts
    }


def reports_and_summary(stderr: str) -> tuple[list[str], str]:
    *reports, summary = stderr.splitlines()
    assert "Traceback" not in stderr
    assert summary.startswith("simplesession: error: ")
    return reports, summary


GOOD = sorted(set(SESSIONS) - {LONG_KEY})


def test_ls_lists_every_other_session_reports_the_one_whose_key_is_not_text_and_exits_1(folder: Path) -> None:
    result = cli("--dir", str(folder), "ls")
    assert result.returncode == 1
    assert result.stdout.splitlines() == GOOD
    [report], summary = reports_and_summary(result.stderr)
    assert "not valid Unicode" in report
    assert len(report) < 600  # the key's 301 characters are not all repeated
    assert "1 session could not be read" in summary


def test_sweep_with_ttl_removes_the_idle_sessions_past_a_key_that_is_not_text_and_exits_1(folder: Path) -> None:
    storage = FileStorage(folder)
    make_idle(storage, "42", 40 * 86400)
    result = cli("--dir", str(folder), "sweep", "--ttl", "30d")
    assert result.returncode == 1
    assert "removed 1 session idle for more than 30d" in result.stdout
    [report], summary = reports_and_summary(result.stderr)
    assert "not valid Unicode" in report
    assert "1 session could not be read" in summary
    assert sorted(storage.keys()) == sorted(set(GOOD) - {"42"})


@pytest.mark.parametrize("to_stdout", [True, False], ids=["stdout", "file"])
def test_export_writes_every_readable_session_reports_the_others_says_it_is_incomplete_and_changes_nothing(
    folder: Path, tmp_path: Path, to_stdout: bool
) -> None:
    storage = FileStorage(folder)
    storage.path("42").write_bytes(b"{not json")
    storage.path("Zoë").write_bytes(b'{"format":1,"key":"Zo\\u00eb","data":' + b"[" * 300 + b"]" * 300 + b"}")
    before = snapshot(folder)
    dump = tmp_path / "dump.jsonl"
    result = cli("--dir", str(folder), "export", *([] if to_stdout else [str(dump)]))
    assert result.returncode == 1
    written = result.stdout if to_stdout else dump.read_text("utf-8")
    assert [json.loads(line)["key"] for line in written.splitlines()] == ["chat:-100"]
    reports, summary = reports_and_summary(result.stderr)
    assert len(reports) == 3
    assert any("'42'" in report and "not JSON" in report for report in reports)
    assert any("'Zoë'" in report and "nested too deeply" in report for report in reports)
    assert any("not valid Unicode" in report for report in reports)
    assert all("left it" in report for report in reports)
    assert "export is incomplete: 3 sessions could not be read" in summary
    assert "nothing in the store was changed" in summary
    assert snapshot(folder) == before
    assert not (folder / "corrupt").exists()


def test_export_of_a_sound_store_exits_0_and_says_nothing_on_stderr(tmp_path: Path) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"n": 1})
    result = cli("--dir", str(tmp_path), "export")
    assert (result.returncode, result.stderr) == (0, "")
    os.unlink(storage.path("42"))
    assert cli("--dir", str(tmp_path), "export").returncode == 0
