"""Every example runs offline on the console, as the README says."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import time
from pathlib import Path

import forkserver
import pytest
from fakebotapi import FakeBotAPI

from simplesession import FileStorage

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def console(script: str, lines: list[str], data_dir: Path | None, *args: str) -> list[str]:
    """The replies of ``script`` to ``lines`` on the console; its sessions in ``data_dir``,
    or with None where the example itself puts them."""
    env = {k: v for k, v in os.environ.items() if k != "BOT_TOKEN"}
    if data_dir is not None:
        env["SIMPLESESSION_DIR"] = str(data_dir)
    # Forked from an interpreter that has the package imported, which saves a fresh import per
    # run; the terminal test below starts a fresh interpreter, as a newcomer's shell does.
    done = forkserver.run([str(EXAMPLES / script), *args], input="".join(f"{line}\n" for line in lines), env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_counter_bot_counts_and_survives_a_restart(tmp_path: Path) -> None:
    assert console("counter_bot.py", ["/count", "hello", "/count"], tmp_path) == [
        "You have sent 1 commands",
        "You have sent 2 commands",
    ]
    assert console("counter_bot.py", ["/count"], tmp_path) == ["You have sent 3 commands"]
    assert FileStorage(tmp_path).read("1") == {"count": 3}


@pytest.mark.parametrize(("mode", "key"), [("user", "user:1"), ("member", "member:1/1")])
def test_session_keys_example_keys_by_user_or_member(tmp_path: Path, mode: str, key: str) -> None:
    replies = console("session_keys.py", ["/count", "/count"], tmp_path, mode)
    assert replies == [f"1 (session {key})", f"2 (session {key})"]
    assert list(FileStorage(tmp_path).keys()) == [key]


def test_lazy_sessions_example_reads_only_when_touched(tmp_path: Path) -> None:
    assert console("lazy_sessions.py", ["hello"], tmp_path) == ["echo: hello"]
    assert not tmp_path.exists() or list(FileStorage(tmp_path).keys()) == []
    assert console("lazy_sessions.py", ["/count", "again", "/count"], tmp_path) == [
        "You have sent 1 commands",
        "echo: again",
        "You have sent 2 commands",
    ]


def test_multi_sessions_example_keeps_user_and_chat_data_apart(tmp_path: Path) -> None:
    replies = console("multi_sessions.py", ["/me", "/name Ann", "/mute", "/me"], tmp_path)
    assert replies == [
        "name='' language=en muted=False",
        "Hello, Ann",
        "muted",
        "name='Ann' language=en muted=True",
    ]
    storage = FileStorage(tmp_path)
    assert storage.read("user:1") == {"username": "Ann", "language": "en"}
    assert storage.read("chat:1") == {"settings": {"muted": True}}


def test_the_examples_keep_their_sessions_apart_on_one_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # As a newcomer runs them: one HOME, no $SIMPLESESSION_DIR, the console always chat 1
    # and user 1. Sharing one folder, session_keys' "user:1" would be multi_sessions' user
    # fragment, and counter_bot and lazy_sessions would go on with each other's counts.
    monkeypatch.delenv("SIMPLESESSION_DIR", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    runs = [
        ("session_keys.py", ["/count"], ["1 (session user:1)"]),
        ("multi_sessions.py", ["/me"], ["name='' language=en muted=False"]),
        ("counter_bot.py", ["/count"], ["You have sent 1 commands"]),
        ("lazy_sessions.py", ["/count"], ["You have sent 1 commands"]),
        ("multi_sessions.py", ["/name Ann"], ["Hello, Ann"]),
    ]
    for script, lines, replies in runs:
        assert console(script, lines, None) == replies, script
    apps = {
        "session_keys": {"user:1": {"count": 1}},
        "multi_sessions": {"user:1": {"username": "Ann", "language": "en"}},
        "counter_bot": {"1": {"count": 1}},
        "lazy_sessions": {"1": {"count": 1}},
    }
    for app, sessions in apps.items():
        storage = FileStorage(app_name=app)
        assert tmp_path in storage.directory.parents, app
        assert {key: storage.read(key) for key in sorted(storage.keys())} == sessions, app
    assert len({FileStorage(app_name=app).directory for app in apps}) == len(apps)


def test_counter_bot_greets_a_person_at_a_terminal(tmp_path: Path) -> None:
    # With a terminal as stdin the console says how to use it; piped, it stays quiet
    # (the tests above see only the replies).
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if k != "BOT_TOKEN"}
    env["SIMPLESESSION_DIR"] = str(tmp_path)
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "counter_bot.py")],
        stdin=slave,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    os.close(slave)
    try:
        os.write(master, b"/count\n\x04")  # a line, then Ctrl-D
        out, err = proc.communicate(timeout=60)
    finally:
        os.close(master)
    assert proc.returncode == 0, err
    assert "Ctrl-D quits" in err
    assert out.splitlines() == ["You have sent 1 commands"]


# -- the pyTelegramBotAPI examples, on a fake Bot API server of their own ------------------------


def telebot_example(script: str, api: FakeBotAPI) -> subprocess.Popen[str]:
    """``script`` polling ``api``, its sessions in its own app's folder (under $XDG_DATA_HOME)."""
    env = {**os.environ, "BOT_TOKEN": api.token, "TELEGRAM_API_URL": api.url, "NO_PROXY": "127.0.0.1"}
    return subprocess.Popen(
        [sys.executable, str(EXAMPLES / script)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def stopped(bot: subprocess.Popen[str]) -> str:
    """Stop an example bot; what it wrote on stderr."""
    bot.terminate()
    _, stderr = bot.communicate(timeout=TELEBOT_TIMEOUT)
    return stderr


TELEBOT_TIMEOUT = 30.0


@pytest.fixture
def app_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Examples keep their sessions under their app's name: in this folder, for the test."""
    monkeypatch.delenv("SIMPLESESSION_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    return tmp_path


def test_telebot_async_counter_example_counts_on_asynctelebot(app_folders: Path, api: FakeBotAPI) -> None:
    storage = FileStorage(app_name="telebot_async_counter")
    bot = telebot_example("telebot_async_counter.py", api)
    try:
        api.push("/count")
        api.push("/count")
        sent = api.wait_for_sent(2, timeout=TELEBOT_TIMEOUT)
        # The reply goes out before the write-back (both under the lock): wait for the write.
        deadline = time.monotonic() + TELEBOT_TIMEOUT
        while storage.read("42") != {"count": 2} and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        stderr = stopped(bot)
    assert sorted(message["text"] for message in sent) == ["You have sent 1 commands", "You have sent 2 commands"], (
        stderr
    )
    assert storage.read("42") == {"count": 2}
    assert storage.directory == app_folders / "telebot_async_counter" / "sessions"


def test_telebot_states_example_goes_on_with_a_conversation_after_a_restart(app_folders: Path, api: FakeBotAPI) -> None:
    storage = FileStorage(app_name="telebot_states")
    bot = telebot_example("telebot_states.py", api)
    try:
        api.push("/start")
        api.wait_for_sent(1, timeout=TELEBOT_TIMEOUT)
        api.push("Ann")
        api.wait_for_sent(2, timeout=TELEBOT_TIMEOUT)
        # Stopped once telebot has acknowledged "Ann", so that the server does not send it again.
        api.wait_until(lambda: api.acknowledged_offset >= 3, TELEBOT_TIMEOUT, "the acknowledgement of 'Ann'")
    finally:
        stderr = stopped(bot)
    assert list(storage.keys()) == ["state:123456/42/42"], stderr
    assert storage.read("state:123456/42/42") == {"state": "Form:age", "data": {"name": "Ann"}}
    bot = telebot_example("telebot_states.py", api)
    try:
        api.push("33")
        sent = api.wait_for_sent(3, timeout=TELEBOT_TIMEOUT)
    finally:
        stderr = stopped(bot)
    assert [message["text"] for message in sent] == ["What is your name?", "How old are you?", "Thanks: Ann, 33"], (
        stderr
    )
    assert list(storage.keys()) == []  # the conversation is over: its record is gone


def test_ptb_counter_counts_on_a_bot_api_server_and_keeps_counting_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("telegram")
    # Its sessions go to its own app's folder, apart from the other examples'.
    monkeypatch.delenv("SIMPLESESSION_DIR", raising=False)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    storage = FileStorage(app_name="ptb_counter")
    with FakeBotAPI() as api:
        env = {**os.environ, "BOT_TOKEN": api.token, "TELEGRAM_API_URL": api.url}

        def run(*commands: str) -> None:
            # One command at a time, each answered; then SIGTERM, on which run_polling stops
            # and writes what changed since its last run of update_persistence.
            bot = subprocess.Popen(
                [sys.executable, str(EXAMPLES / "ptb_counter.py")],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                for command in commands:
                    answered = len(api.sent)
                    api.push_command(command)
                    api.wait_for_sent(answered + 1, timeout=60)
            finally:
                bot.terminate()
                _, stderr = bot.communicate(timeout=60)
            assert bot.returncode == 0, stderr

        run("/count", "/count")
        assert storage.read("ptb:chat:42") == {"count": 2}
        run("/count", "/forget")
        assert storage.read("ptb:chat:42") is None
        run("/count")
    assert [message["text"] for message in api.sent] == [
        "You have sent 1 commands",
        "You have sent 2 commands",
        "You have sent 3 commands",
        "Forgotten",
        "You have sent 1 commands",
    ]
    assert storage.read("ptb:chat:42") == {"count": 1}
    assert storage.directory == tmp_path / "ptb_counter" / "sessions"


def test_ptb_counter_without_a_token_says_what_it_needs() -> None:
    pytest.importorskip("telegram")
    env = {k: v for k, v in os.environ.items() if k != "BOT_TOKEN"}
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "ptb_counter.py")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.strip() == "set BOT_TOKEN to your bot's token (from @BotFather)"
