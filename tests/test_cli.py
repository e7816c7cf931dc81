"""The ``simplesession`` command line, run as a real process (``python -m simplesession``)."""

from __future__ import annotations

import errno
import json
import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from hookstorage import HookStorage

import simplesession
from simplesession import FileStorage, RedisStorage
from simplesession import cli as cli_module
from simplesession.cli import format_duration, parse_duration

LONG_KEY = "x" * 300  # stored under a hashed file name
SESSIONS: dict[str, tuple[Any, int | float | None]] = {
    "42": ({"count": 3}, None),
    "chat:-100": ({"name": "Zoë 🐍", "nested": {"list": [1, 2.5, None, True, {"deep": []}]}}, 2),
    "Zoë": (["a", "b"], 1.5),
    LONG_KEY: ("just a string", None),
}
DAY = 86400.0


def cli(*args: str, stdin: str | None = None, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """Run the command line in a fresh interpreter with the test's environment."""
    return subprocess.run(
        [sys.executable, "-m", "simplesession", *args],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
        env=os.environ.copy(),
        check=False,
    )


def assert_one_error_line(result: subprocess.CompletedProcess[str], *words: str) -> None:
    """The command failed with one clear line on stderr (no traceback) holding every word."""
    assert result.returncode == 1, result
    assert "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("simplesession: error: ")
    for word in words:
        assert word in lines[0]


def make_idle(storage: FileStorage, key: str, seconds: float) -> None:
    then = time.time() - seconds
    os.utime(storage.path(key), (then, then))


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A sessions folder holding SESSIONS."""
    storage = FileStorage(tmp_path / "sessions")
    for key, (value, version) in SESSIONS.items():
        storage.write(key, value, version=version)
    return tmp_path / "sessions"


def run_on_terminal(*args: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run the command line with stderr on a pseudo-terminal: exit status, stdout, terminal output."""
    master, slave = pty.openpty()
    try:
        process = subprocess.Popen(
            [sys.executable, "-m", "simplesession", *args],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=slave,
            env=os.environ.copy(),
        )
    finally:
        os.close(slave)
    received = b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if not select.select([master], [], [], 0.2)[0]:
                continue
            try:
                chunk = os.read(master, 4096)
            except OSError:  # EIO on Linux: every writer of the terminal has closed it
                break
            if not chunk:
                break
            received += chunk
        stdout, _ = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        os.close(master)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    return process.returncode, stdout.decode("utf-8"), received.decode("utf-8")


# -- ls, show, rm, path --------------------------------------------------------------------


def test_ls_prints_every_key_sorted(folder: Path) -> None:
    result = cli("--dir", str(folder), "ls")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == sorted(SESSIONS)
    assert result.stderr == ""


def test_ls_long_gives_size_and_last_use_in_utc(folder: Path) -> None:
    storage = FileStorage(folder)
    os.utime(storage.path("42"), (1_700_000_000, 1_700_000_000))
    result = cli("--dir", str(folder), "ls", "-l")
    assert result.returncode == 0, result.stderr
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    assert [row[0] for row in rows] == sorted(SESSIONS)
    assert all(len(row) == 3 for row in rows)
    by_key = {row[0]: row for row in rows}
    assert by_key["42"][1:] == [str(storage.path("42").stat().st_size), "2023-11-14T22:13:20Z"]


def test_show_prints_the_data_as_pretty_json(folder: Path) -> None:
    result = cli("--dir", str(folder), "show", "chat:-100")
    assert result.returncode == 0, result.stderr
    assert result.stdout == json.dumps(SESSIONS["chat:-100"][0], indent=2, ensure_ascii=False) + "\n"
    assert "Zoë 🐍" in result.stdout


def test_show_of_a_missing_key_fails_with_one_line(folder: Path) -> None:
    assert_one_error_line(cli("--dir", str(folder), "show", "nobody"), "'nobody'", str(folder))


def test_rm_deletes_sessions(folder: Path) -> None:
    result = cli("--dir", str(folder), "rm", "42", LONG_KEY)
    assert result.returncode == 0, result.stderr
    assert sorted(FileStorage(folder).keys()) == sorted(set(SESSIONS) - {"42", LONG_KEY})


def test_rm_of_a_missing_key_fails_but_deletes_the_others(folder: Path) -> None:
    result = cli("--dir", str(folder), "rm", "42", "nobody", "Zoë")
    assert_one_error_line(result, "'nobody'")
    assert sorted(FileStorage(folder).keys()) == sorted(set(SESSIONS) - {"42", "Zoë"})


def test_path_prints_the_file_whether_or_not_it_exists(folder: Path) -> None:
    storage = FileStorage(folder)
    for key in ("42", "nobody/../x"):
        result = cli("--dir", str(folder), "path", key)
        assert result.returncode == 0, result.stderr
        assert result.stdout == f"{storage.path(key)}\n"


def test_read_commands_on_a_missing_folder_say_which_and_what_to_do(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    for command in (["ls"], ["show", "42"], ["rm", "42"], ["stats"], ["sweep"], ["export"]):
        result = cli("--dir", str(missing), *command)
        assert_one_error_line(result, str(missing), "does not exist", "--dir", "--app")
    assert not missing.exists()


# -- stats ---------------------------------------------------------------------------------


def test_stats_counts_what_was_written(folder: Path) -> None:
    storage = FileStorage(folder)
    for i, key in enumerate(sorted(SESSIONS)):
        os.utime(storage.path(key), (1_700_000_000 + i * DAY, 1_700_000_000 + i * DAY))
    size = sum(storage.path(key).stat().st_size for key in SESSIONS)
    result = cli("--dir", str(folder), "stats")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert f"sessions:      {len(SESSIONS)}" in lines
    assert f"size:          {size} bytes" in lines
    assert "oldest use:    2023-11-14T22:13:20Z" in lines
    assert "newest use:    2023-11-17T22:13:20Z" in lines
    assert "temp files:    0" in lines
    assert "corrupt files: 0" in lines

    figures = json.loads(cli("--dir", str(folder), "stats", "--json").stdout)
    assert figures["sessions"] == len(SESSIONS)
    assert figures["bytes"] == size
    assert figures["oldest"] == "2023-11-14T22:13:20Z"
    assert figures["newest"] == "2023-11-17T22:13:20Z"
    assert figures["corrupt_files"] == 0
    assert figures["corrupt_dir"] == str(folder / "corrupt")
    assert figures["directory"] == str(folder)


# -- sweep ---------------------------------------------------------------------------------


def test_sweep_removes_sessions_idle_longer_than_ttl(folder: Path) -> None:
    storage = FileStorage(folder)
    make_idle(storage, "42", 40 * DAY)
    make_idle(storage, LONG_KEY, 31 * DAY)
    make_idle(storage, "Zoë", 29 * DAY)
    result = cli("--dir", str(folder), "sweep", "--ttl", "30d")
    assert result.returncode == 0, result.stderr
    assert f"scanned {len(SESSIONS)} sessions" in result.stdout
    assert "removed 2 sessions idle for more than 30d" in result.stdout
    assert "kept" not in result.stdout  # no line for sessions in use when none is
    assert sorted(storage.keys()) == sorted(set(SESSIONS) - {"42", LONG_KEY})


def test_sweep_keeps_an_idle_session_that_is_in_use(folder: Path) -> None:
    storage = FileStorage(folder)
    make_idle(storage, "42", 40 * DAY)
    with storage.lock("42"):  # an update is using the session right now
        result = cli("--dir", str(folder), "sweep", "--ttl", "1w")
    assert result.returncode == 0, result.stderr
    assert "removed 0 sessions" in result.stdout
    assert "kept 1 idle session because" in result.stdout
    assert storage.has("42")


def test_sweep_says_updates_are_using_the_idle_sessions_it_kept(folder: Path) -> None:
    storage = FileStorage(folder)
    make_idle(storage, "42", 40 * DAY)
    make_idle(storage, "Zoë", 40 * DAY)
    with storage.lock("42"), storage.lock("Zoë"):
        result = cli("--dir", str(folder), "sweep", "--ttl", "1w")
    assert result.returncode == 0, result.stderr
    assert "kept 2 idle sessions because updates are using them" in result.stdout


def test_sweep_dry_run_removes_nothing(folder: Path) -> None:
    storage = FileStorage(folder)
    make_idle(storage, "42", 40 * DAY)
    result = cli("--dir", str(folder), "sweep", "--ttl", "30d", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would remove 1 session idle" in result.stdout
    assert sorted(storage.keys()) == sorted(SESSIONS)


def test_sweep_without_ttl_keeps_sessions_and_removes_debris(folder: Path) -> None:
    storage = FileStorage(folder)
    make_idle(storage, "42", 400 * DAY)
    stale = storage.path("42").parent / ".tmp-999999-0"
    stale.write_bytes(b'{"half": ')
    os.utime(stale, (time.time() - 2 * 3600,) * 2)
    fresh = storage.path("Zoë").parent / ".tmp-999999-1"  # a write under way right now
    fresh.write_bytes(b"{")
    result = cli("--dir", str(folder), "sweep")
    assert result.returncode == 0, result.stderr
    assert "no --ttl given" in result.stdout
    assert "removed 1 leftover file" in result.stdout
    assert not stale.exists()
    assert fresh.exists()
    assert sorted(storage.keys()) == sorted(SESSIONS)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("30d", 30 * DAY),
        ("12h", 43200),
        ("90m", 5400),
        ("45s", 45),
        ("2w", 14 * DAY),
        ("1d12h", 1.5 * DAY),
        ("3600", 3600),
        (" 1D ", DAY),
        ("1d1h1m1s", DAY + 3661),
    ],
)
def test_durations_parse_and_format_back(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert parse_duration(format_duration(seconds)) == seconds


@pytest.mark.parametrize("text", ["9" * 400, "9" * 5000 + "s", "99999999999999999999d", "36526d", "5218w2d"])
def test_absurd_duration_is_refused_with_the_range_that_works(folder: Path, text: str) -> None:
    result = cli("--dir", str(folder), "sweep", f"--ttl={text}")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert "longer than a century" in last
    assert "1s to 36525d" in last
    assert len(last) < 300
    assert sorted(FileStorage(folder).keys()) == sorted(SESSIONS)


def test_a_century_is_the_longest_duration() -> None:
    assert parse_duration("36525d") == 36525 * DAY


@pytest.mark.parametrize("text", ["0", "0d", "-5", "-1d", "abc", "1x", "", "d", "1.5", "1.5d", "1 d", "²"])
def test_bad_duration_is_a_usage_error_that_says_why(folder: Path, text: str) -> None:
    result = cli("--dir", str(folder), "sweep", f"--ttl={text}")  # "--ttl -1d" would read as an option
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    last = result.stderr.splitlines()[-1]
    assert "--ttl" in last
    assert "duration" in last
    assert repr(text) in last
    assert sorted(FileStorage(folder).keys()) == sorted(SESSIONS)


# -- export and import ---------------------------------------------------------------------


def assert_holds_exactly(folder: Path, sessions: dict[str, tuple[Any, int | float | None]]) -> None:
    storage = FileStorage(folder)
    assert sorted(storage.keys()) == sorted(sessions)
    for key, (value, version) in sessions.items():
        found = storage.read_versioned(key)
        assert found == (value, version), key
        assert type(found[1]) is type(version), key  # 2 stays an int, 1.5 a float


def test_export_import_round_trip_restores_every_session_exactly(folder: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    result = cli("--dir", str(folder), "export", str(dump))
    assert result.returncode == 0, result.stderr
    assert f"exported {len(SESSIONS)} sessions" in result.stdout
    lines = dump.read_text("utf-8").splitlines()
    assert [json.loads(line)["key"] for line in lines] == sorted(SESSIONS)
    assert "Zoë 🐍" in dump.read_text("utf-8")  # not \u-escaped

    result = cli("--dir", str(tmp_path / "copy"), "import", str(dump))
    assert result.returncode == 0, result.stderr
    assert f"imported {len(SESSIONS)} sessions" in result.stdout
    assert_holds_exactly(tmp_path / "copy", SESSIONS)


def test_export_to_stdout_imports_from_stdin(folder: Path, tmp_path: Path) -> None:
    exported = cli("--dir", str(folder), "export")
    assert exported.returncode == 0, exported.stderr
    assert len(exported.stdout.splitlines()) == len(SESSIONS)
    imported = cli("--dir", str(tmp_path / "copy"), "import", "-", stdin=exported.stdout)
    assert imported.returncode == 0, imported.stderr
    assert_holds_exactly(tmp_path / "copy", SESSIONS)


def test_export_to_a_file_leaves_no_temp_file_and_private_mode(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    assert cli("--dir", str(folder), "export", str(out / "dump.jsonl")).returncode == 0
    assert [p.name for p in out.iterdir()] == ["dump.jsonl"]
    assert (out / "dump.jsonl").stat().st_mode & 0o777 == 0o600


def test_failed_export_leaves_no_half_file(folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "dump.jsonl").mkdir(parents=True)  # a folder where the file should go: the rename fails
    result = cli("--dir", str(folder), "export", str(out / "dump.jsonl"))
    assert_one_error_line(result, "dump.jsonl")
    assert [p.name for p in out.iterdir()] == ["dump.jsonl"]
    assert list((out / "dump.jsonl").iterdir()) == []


GOOD = '{"key": "a", "version": null, "data": {"n": 1}}\n{"key": "b", "version": 3, "data": [1]}\n'


@pytest.mark.parametrize(
    ("line3", "problem"),
    [
        ('{"key": "c", "data": ', "not JSON"),
        ('{"version": 1, "data": {}}', '"key" is missing'),
        ('{"key": 7, "data": {}}', '"key" is 7, not a string'),
        ('{"key": "c"}', "\"data\" of 'c' is missing"),
        ('{"key": "c", "data": null}', "null"),
        ('{"key": "c", "data": {"x": NaN}}', "NaN"),
        ('{"key": "c", "data": {"x": 1e999}}', "inf"),
        ('{"key": "c", "data": "\\ud800"}', "lone surrogate"),
        ('{"key": "c", "version": "2", "data": {}}', '"version"'),
        ('{"key": "c", "version": true, "data": {}}', '"version"'),
        ('{"key": "c", "data": {}, "extra": 1}', "'extra'"),
        ('["c", {}]', "not an object"),
        ('{"key": "a", "data": {}}', "already at line 1"),
    ],
)
def test_import_of_bad_input_names_the_line_and_imports_nothing(tmp_path: Path, line3: str, problem: str) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text(GOOD + line3 + "\n" + '{"key": "d", "data": 1}\n', "utf-8")
    result = cli("--dir", str(tmp_path / "copy"), "import", str(source))
    assert_one_error_line(result, "line 3", problem, "nothing was imported")
    assert list(FileStorage(tmp_path / "copy").keys()) == []


def test_import_skips_blank_lines_and_accepts_missing_version(tmp_path: Path) -> None:
    result = cli("--dir", str(tmp_path / "copy"), "import", stdin='\n{"key": "a", "data": 1}\n  \n')
    assert result.returncode == 0, result.stderr
    assert_holds_exactly(tmp_path / "copy", {"a": (1, None)})


def test_import_of_a_missing_file_fails_with_one_line(tmp_path: Path) -> None:
    assert_one_error_line(cli("--dir", str(tmp_path), "import", str(tmp_path / "nope.jsonl")), "nope.jsonl")


def test_import_replaces_existing_sessions_unless_told_to_skip_them(folder: Path, tmp_path: Path) -> None:
    lines = '{"key": "42", "version": 9, "data": "new"}\n{"key": "fresh", "version": null, "data": 1}\n'
    result = cli("--dir", str(folder), "import", "--skip-existing", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert "imported 1 session" in result.stdout
    assert "kept 1 existing session" in result.stdout
    storage = FileStorage(folder)
    assert storage.read_versioned("42") == (SESSIONS["42"][0], None)
    assert storage.read_versioned("fresh") == (1, None)

    result = cli("--dir", str(folder), "import", stdin=lines)
    assert result.returncode == 0, result.stderr
    assert "imported 2 sessions" in result.stdout
    assert storage.read_versioned("42") == ("new", 9)


def test_interrupted_import_exits_130_with_one_line(tmp_path: Path) -> None:
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    process = subprocess.Popen(
        [sys.executable, "-m", "simplesession", "--dir", str(tmp_path / "copy"), "import", str(fifo)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    writer = -1
    try:
        # Opening the write end succeeds only once the command has opened the read end.
        deadline = time.monotonic() + 30
        while writer < 0 and time.monotonic() < deadline and process.poll() is None:
            try:
                writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            except OSError as error:
                if error.errno != errno.ENXIO:  # ENXIO: no reader yet
                    raise
                time.sleep(0.02)
        assert writer >= 0, "the import never opened its input"
        os.write(writer, b'{"key": "a", "data": 1}\n')
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if writer >= 0:
            os.close(writer)
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
    assert process.returncode == 130
    assert stderr == "simplesession: error: interrupted\n"
    assert list(FileStorage(tmp_path / "copy").keys()) == []


# -- options, help, corrupt files, progress --------------------------------------------------


@pytest.mark.parametrize("command", ["ls", "show", "rm", "path", "stats", "sweep", "export", "import"])
def test_every_command_has_help(command: str) -> None:
    result = cli(command, "--help")
    assert result.returncode == 0
    assert result.stdout.startswith(f"usage: simplesession {command}")
    assert len(result.stdout.splitlines()) > 3


def test_main_help_lists_the_commands_and_options() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for word in ("--dir", "--app", "ls", "show", "rm", "path", "stats", "sweep", "export", "import"):
        assert word in result.stdout


def test_version_prints_the_installed_version_and_needs_no_command() -> None:
    result = cli("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"simplesession {simplesession.__version__}"


def test_no_command_is_a_usage_error() -> None:
    result = cli()
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


def test_dir_and_app_together_are_a_usage_error(folder: Path) -> None:
    result = cli("--dir", str(folder), "--app", "mybot", "ls")
    assert result.returncode == 2
    assert "not allowed with" in result.stderr


def test_options_that_say_where_work_after_the_command_too(folder: Path) -> None:
    before = cli("--dir", str(folder), "ls", "-l")
    after = cli("ls", "-l", "--dir", str(folder))
    assert before.returncode == after.returncode == 0, after.stderr
    assert after.stdout == before.stdout
    assert len(after.stdout.splitlines()) == len(SESSIONS)
    shown = cli("show", "42", "--dir", str(folder))
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == {"count": 3}


def test_where_given_before_and_after_the_command_is_a_usage_error(folder: Path) -> None:
    result = cli("--dir", str(folder), "ls", "--app", "mybot")
    assert result.returncode == 2
    assert "argument --app: not allowed with argument --dir" in result.stderr


def test_app_finds_the_folder_that_file_storage_of_that_app_uses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SIMPLESESSION_DIR")
    expected = Path(os.environ["XDG_DATA_HOME"]) / "mybot" / "sessions"
    assert FileStorage(app_name="mybot").directory == expected
    result = cli("--app", "mybot", "path", "42")
    assert result.returncode == 0, result.stderr
    assert Path(result.stdout.strip()) == FileStorage(expected).path("42")


def test_default_folder_is_simplesession_dir() -> None:
    FileStorage(os.environ["SIMPLESESSION_DIR"]).write("42", {"n": 1})
    result = cli("show", "42")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"n": 1}


def test_show_of_a_corrupt_file_reports_it_moved_aside_without_crashing(folder: Path) -> None:
    storage = FileStorage(folder)
    storage.path("42").write_bytes(b"{not json")
    result = cli("--dir", str(folder), "show", "42")
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    report, error = result.stderr.splitlines()  # what happened to the file; why the command failed
    assert report.startswith("simplesession: session '42': it is not JSON")
    assert str(folder / "corrupt") in report
    assert error.startswith("simplesession: error: no session '42'")
    assert len(list((folder / "corrupt").iterdir())) == 1


def test_ls_reports_a_corrupt_file_and_lists_the_rest(folder: Path) -> None:
    FileStorage(folder).path(LONG_KEY).write_bytes(b"\x00garbage")
    result = cli("--dir", str(folder), "ls")
    assert result.returncode == 1  # the listing is incomplete
    assert result.stdout.splitlines() == sorted(set(SESSIONS) - {LONG_KEY})
    [report, summary] = result.stderr.splitlines()
    assert "corrupt" in report
    assert report.startswith("simplesession: ")
    assert summary == "simplesession: error: 1 session could not be read (see above); the others were done"


@pytest.mark.parametrize("command", [["sweep"], ["stats"], ["export"]])
def test_no_progress_when_stderr_is_not_a_terminal(folder: Path, command: list[str]) -> None:
    result = cli("--dir", str(folder), *command)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert "\r" not in result.stdout


@pytest.mark.parametrize(
    ("command", "shown"),
    [(["sweep"], "sweeping"), (["stats"], "counting"), (["export"], f"exporting {len(SESSIONS)}/{len(SESSIONS)}")],
)
def test_progress_shows_on_a_terminal(folder: Path, command: list[str], shown: str) -> None:
    status, stdout, terminal = run_on_terminal("--dir", str(folder), *command)
    assert status == 0, terminal
    assert shown in terminal
    assert "\r" in terminal
    assert terminal.endswith("\n")  # the line is ended, so the shell prompt starts afresh
    if command != ["export"]:
        assert "100%" in terminal
    assert "\r" not in stdout


def test_progress_of_import_shows_on_a_terminal(folder: Path, tmp_path: Path) -> None:
    dump = tmp_path / "dump.jsonl"
    assert cli("--dir", str(folder), "export", str(dump)).returncode == 0
    status, stdout, terminal = run_on_terminal("--dir", str(tmp_path / "copy"), "import", str(dump))
    assert status == 0, terminal
    assert f"importing {len(SESSIONS)}/{len(SESSIONS)}" in terminal
    assert f"imported {len(SESSIONS)} sessions" in stdout


# -- Redis ---------------------------------------------------------------------------------------


def assert_redis_holds_exactly(storage: RedisStorage, sessions: dict[str, tuple[Any, int | float | None]]) -> None:
    assert sorted(storage.keys()) == sorted(sessions)
    for key, (value, version) in sessions.items():
        found = storage.read_versioned(key)
        assert found == (value, version), key
        assert type(found[1]) is type(version), key


def test_files_move_to_redis_through_export_piped_into_import(folder: Path, redis_url: str, redis_prefix: str) -> None:
    command = [sys.executable, "-m", "simplesession"]
    export = subprocess.Popen([*command, "--dir", str(folder), "export"], stdout=subprocess.PIPE, env=os.environ.copy())
    assert export.stdout is not None
    try:
        imported = subprocess.run(
            [*command, "--redis", redis_url, "--prefix", redis_prefix, "import"],
            stdin=export.stdout,
            capture_output=True,
            text=True,
            timeout=60,
            env=os.environ.copy(),
            check=False,
        )
        export.stdout.close()
        assert export.wait(60) == 0
    finally:
        if export.poll() is None:
            export.kill()
            export.wait(10)
    assert imported.returncode == 0, imported.stderr
    assert f"imported {len(SESSIONS)} sessions into redis://" in imported.stdout
    assert_redis_holds_exactly(RedisStorage(redis_url, prefix=redis_prefix), SESSIONS)


def test_import_into_redis_with_ttl_gives_each_session_the_bots_expiry(
    folder: Path, redis_url: str, redis_prefix: str
) -> None:
    exported = cli("--dir", str(folder), "export").stdout
    on_redis = ("--redis", redis_url, "--prefix", redis_prefix)
    plain = cli(*on_redis, "import", stdin=exported)
    assert plain.returncode == 0, plain.stderr
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    assert all(storage.client.pttl(f"{redis_prefix}s:{key}") == -1 for key in SESSIONS)  # none unless asked

    timed = cli(*on_redis, "import", "--ttl", "2d", stdin=exported)
    assert timed.returncode == 0, timed.stderr
    for key in SESSIONS:
        left = storage.client.pttl(f"{redis_prefix}s:{key}")
        assert 2 * DAY * 1000 - 60_000 < left <= 2 * DAY * 1000, key
    assert_redis_holds_exactly(storage, SESSIONS)


def test_import_ttl_without_redis_is_a_usage_error_and_imports_nothing(folder: Path, tmp_path: Path) -> None:
    exported = cli("--dir", str(folder), "export").stdout
    target = tmp_path / "target"
    result = cli("--dir", str(target), "import", "--ttl", "30d", stdin=exported)
    assert result.returncode == 2
    assert "--ttl: only into Redis" in result.stderr
    assert not target.exists()


def test_every_command_works_on_redis(redis_url: str, redis_prefix: str) -> None:
    storage = RedisStorage(redis_url, prefix=redis_prefix)
    for key, (value, version) in SESSIONS.items():
        storage.write(key, value, version=version)
    on_redis = ("--redis", redis_url, "--prefix", redis_prefix)

    assert cli(*on_redis, "ls").stdout.splitlines() == sorted(SESSIONS)
    rows = [line.split("\t") for line in cli(*on_redis, "ls", "-l").stdout.splitlines()]
    assert [row[0] for row in rows] == sorted(SESSIONS)
    assert all(row[1].isdigit() and row[2] == "-" for row in rows)  # no ttl: no expiry
    shown = cli(*on_redis, "show", "chat:-100")
    assert json.loads(shown.stdout) == SESSIONS["chat:-100"][0]
    figures = json.loads(cli(*on_redis, "stats", "--json").stdout)
    assert figures["sessions"] == len(SESSIONS)
    assert figures["bytes"] > 0
    assert figures["prefix"] == redis_prefix
    swept = cli(*on_redis, "sweep", "--ttl", "30d")
    assert swept.returncode == 0, swept.stderr
    assert "Redis expires idle sessions itself" in swept.stdout
    assert sorted(storage.keys()) == sorted(SESSIONS)
    exported = cli(*on_redis, "export")
    assert [json.loads(line)["key"] for line in exported.stdout.splitlines()] == sorted(SESSIONS)
    removed = cli(*on_redis, "rm", "42", "nobody")
    assert_one_error_line(removed, "'nobody'")
    assert sorted(storage.keys()) == sorted(set(SESSIONS) - {"42"})


def test_redis_with_dir_or_app_is_a_usage_error(folder: Path, redis_url: str) -> None:
    for other in (["--dir", str(folder)], ["--app", "mybot"]):
        result = cli("--redis", redis_url, *other, "ls")
        assert result.returncode == 2
        assert "not allowed with" in result.stderr
    result = cli("--dir", str(folder), "--prefix", "x:", "ls")
    assert result.returncode == 2
    assert "--prefix" in result.stderr


def test_path_on_redis_fails_with_one_line(redis_url: str) -> None:
    assert_one_error_line(cli("--redis", redis_url, "path", "42"), "path has no meaning for Redis")


def test_unreachable_redis_fails_with_one_line_and_no_traceback() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"redis://127.0.0.1:{port}/0"
    for command in (["ls"], ["show", "42"], ["rm", "42"], ["stats"], ["export"]):
        assert_one_error_line(cli("--redis", url, *command), f"127.0.0.1:{port}", "Connection refused")
    assert_one_error_line(cli("--redis", url, "import", stdin='{"key": "a", "data": 1}\n'), f"127.0.0.1:{port}")


# -- any storage -----------------------------------------------------------------------------------


def test_every_command_works_on_a_storage_written_with_only_the_hooks(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # The command line calls only what the base defines, so a new backend needs nothing here.
    storage = HookStorage()
    for key, (value, version) in SESSIONS.items():
        storage.write(key, value, version=version)
    monkeypatch.setattr(cli_module, "_storage", lambda *args, **options: storage)

    def run(*argv: str) -> tuple[int, str, str]:
        status = cli_module.main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    assert run("ls") == (0, "".join(f"{key}\n" for key in sorted(SESSIONS)), "")
    status, out, _ = run("ls", "-l")
    rows = [line.split("\t") for line in out.splitlines()]
    assert status == 0
    assert [row[0] for row in rows] == sorted(SESSIONS)
    assert all(row[1].isdigit() and row[2].endswith("Z") for row in rows)
    status, out, _ = run("show", "chat:-100")
    assert (status, json.loads(out)) == (0, SESSIONS["chat:-100"][0])
    status, _, err = run("path", "42")
    assert status == 1
    assert "path has no meaning for a dict" in err
    status, out, _ = run("stats", "--json")
    figures = json.loads(out)
    assert status == 0
    assert figures["sessions"] == len(SESSIONS)
    assert figures["bytes"] == sum(info.size for info in map(storage.describe, SESSIONS) if info is not None)
    status, out, _ = run("stats")
    assert status == 0
    assert f"sessions:      {len(SESSIONS)}" in out.splitlines()
    storage.clock += 40 * DAY
    status, out, _ = run("sweep", "--ttl", "30d", "--dry-run")
    assert status == 0
    assert f"would remove {len(SESSIONS)} sessions idle for more than 30d" in out
    dump = tmp_path / "dump.jsonl"
    status, out, _ = run("export", str(dump))
    assert (status, out) == (0, f"exported {len(SESSIONS)} sessions to {dump}\n")
    assert run("rm", "42")[0] == 0
    assert sorted(storage.keys()) == sorted(set(SESSIONS) - {"42"})
    status, out, _ = run("import", str(dump))
    assert status == 0
    assert f"imported {len(SESSIONS)} sessions" in out
    for key, (value, version) in SESSIONS.items():
        assert storage.read_versioned(key) == (value, version)
    status, out, _ = run("sweep", "--ttl", "30d")
    assert (status, storage.stats().sessions) == (0, len(SESSIONS))  # just imported: not idle
