"""What importing simplesession costs: the Bot API's transport only for a bot that uses the runner."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import run_python

# The transport's modules: what a bot on FileStorage, or a telebot middleware, never needs.
NETWORK = ("http", "ssl", "_ssl", "email", "urllib.request")
RUNNER = ("simplesession.bot", "simplesession.botapi", "simplesession.runner")
SQLITE = ("sqlite3", "_sqlite3", "simplesession.storage.sqlite")


def loaded_by(code: str, *, after: str = "") -> list[str]:
    """The modules that ``code`` loads, in a fresh interpreter, beyond those ``after`` loaded."""
    done = run_python(
        f"""
        import json, sys
        {after}
        before = set(sys.modules)
        {code}
        print(json.dumps(sorted(set(sys.modules) - before)))
        """
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout))


def among(modules: list[str], names: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == name or m.startswith(name + ".") for name in names)]


def test_a_bot_on_file_storage_loads_no_http_or_ssl_module(tmp_path: Path) -> None:
    modules = loaded_by(
        f"""
        import simplesession
        from simplesession import Context, FileStorage, session
        middleware = session(initial=lambda: {{"count": 0}}, storage=FileStorage({str(tmp_path)!r}))
        ctx = Context({{"message": {{"chat": {{"id": 1}}, "text": "/count"}}}})
        def count():
            ctx.session["count"] += 1
        middleware(ctx, count)
        assert FileStorage({str(tmp_path)!r}).read("1") == {{"count": 1}}
        """
    )
    assert "simplesession.storage.file" in modules
    assert among(modules, NETWORK + RUNNER + SQLITE) == []


def test_a_telebot_middleware_loads_none_of_the_runner_beyond_what_telebot_loads() -> None:
    modules = loaded_by(
        """
        import simplesession, simplesession.contrib.telebot
        simplesession.contrib.telebot.SessionMiddleware(initial=dict)
        """,
        after="import telebot",
    )
    assert "simplesession.contrib.telebot" in modules
    assert among(modules, NETWORK + RUNNER) == []


def test_bot_is_imported_on_first_use_and_stays_the_one_class() -> None:
    done = run_python(
        """
        import sys
        import simplesession
        assert "simplesession.bot" not in sys.modules
        assert "Bot" in dir(simplesession) and "Bot" in simplesession.__all__
        from simplesession import Bot
        from simplesession.bot import Bot as RunnerBot
        assert Bot is RunnerBot is simplesession.Bot
        try:
            simplesession.Bott
        except AttributeError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "module 'simplesession' has no attribute 'Bott'"


def test_sqlite_storage_is_imported_on_first_use_from_either_package() -> None:
    done = run_python(
        """
        import sys
        import simplesession, simplesession.storage
        assert "sqlite3" not in sys.modules
        from simplesession import SQLiteStorage
        from simplesession.storage import SQLiteStorage as InStorage, default_database
        from simplesession.storage.sqlite import SQLiteStorage as Defined
        assert SQLiteStorage is InStorage is Defined is simplesession.SQLiteStorage
        assert "SQLiteStorage" in dir(simplesession) and "SQLiteStorage" in simplesession.__all__
        assert "default_database" in dir(simplesession.storage)
        print(sorted(name for name in ("sqlite3", "_sqlite3") if name in sys.modules))
        """
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['_sqlite3', 'sqlite3']"


def test_importing_simplesession_never_imports_telegram() -> None:
    modules = loaded_by(
        """
        import simplesession, simplesession.contrib, simplesession.storage
        from simplesession import FileStorage, MemoryStorage, session
        """
    )
    assert among(modules, ("telegram", "simplesession.contrib.ptb")) == []


def test_the_ptb_module_without_python_telegram_bot_says_what_to_install() -> None:
    done = run_python(
        """
        import sys
        sys.modules["telegram"] = None  # as if python-telegram-bot were not installed
        import simplesession
        try:
            import simplesession.contrib.ptb
        except ImportError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'simplesession[ptb]'" in done.stdout
    assert "pip install -e '.[ptb]'" in done.stdout


def test_simplesession_and_its_aio_module_never_import_aiogram() -> None:
    modules = loaded_by(
        """
        import simplesession, simplesession.aio, simplesession.contrib
        from simplesession import FileStorage, MemoryStorage, session
        """
    )
    assert "simplesession.aio" in modules
    assert among(modules, ("aiogram", "aiohttp", "pydantic")) == []


def test_the_aiogram_integration_without_aiogram_says_how_to_install_it() -> None:
    done = run_python(
        """
        import sys
        sys.modules["aiogram"] = None  # as if aiogram were not installed
        try:
            import simplesession.contrib.aiogram
        except ImportError as error:
            print(error)
        """
    )
    assert done.returncode == 0, done.stderr
    assert "pip install 'simplesession[aiogram]'" in done.stdout
