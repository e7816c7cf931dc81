"""Session state for simple, blocking bots: one JSON file per chat, safe and fast."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .context import Context
from .errors import (
    CorruptSessionError,
    LockLost,
    LockTimeout,
    MigrationError,
    SessionDataError,
    SessionError,
    SessionKeyError,
    StorageError,
)
from .session import MultiSession, SessionMiddleware, lazy_session, multi_session, session
from .storage import (
    FileStorage,
    MemoryStorage,
    PostgresStorage,
    RedisStorage,
    Storage,
    StorageStats,
    SweepReport,
    default_directory,
    open_storage,
)

if TYPE_CHECKING:
    from .bot import Bot
    from .storage.sqlite import SQLiteStorage

__version__ = "0.1.0.dev0"

__all__ = [
    "Bot",
    "Context",
    "CorruptSessionError",
    "FileStorage",
    "LockLost",
    "LockTimeout",
    "MemoryStorage",
    "MigrationError",
    "MultiSession",
    "PostgresStorage",
    "RedisStorage",
    "SQLiteStorage",
    "SessionDataError",
    "SessionError",
    "SessionKeyError",
    "SessionMiddleware",
    "Storage",
    "StorageError",
    "StorageStats",
    "SweepReport",
    "default_directory",
    "lazy_session",
    "multi_session",
    "open_storage",
    "session",
]


def __getattr__(name: str) -> Any:
    # The runner brings the Bot API's transport (http.client, ssl, email, urllib.request):
    # 34 modules and 3 MiB that a bot on FileStorage, or a telebot middleware, never uses
    # (bench/BENCHMARKS.md, "Start-up"). So ``Bot`` is imported on first use.
    if name == "Bot":
        from .bot import Bot

        return Bot
    if name == "SQLiteStorage":  # sqlite3 only for the bots that use it
        from .storage.sqlite import SQLiteStorage

        return SQLiteStorage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
