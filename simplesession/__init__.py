"""Session state for simple, blocking bots: one JSON file per chat, safe and fast."""

from __future__ import annotations

from .bot import Bot
from .context import Context
from .errors import (
    CorruptSessionError,
    LockTimeout,
    MigrationError,
    SessionDataError,
    SessionError,
    SessionKeyError,
    StorageError,
)
from .session import MultiSession, SessionMiddleware, lazy_session, multi_session, session
from .storage import FileStorage, MemoryStorage, RedisStorage, Storage, StorageStats, SweepReport, default_directory

__version__ = "0.1.0.dev0"

__all__ = [
    "Bot",
    "Context",
    "CorruptSessionError",
    "FileStorage",
    "LockTimeout",
    "MemoryStorage",
    "MigrationError",
    "MultiSession",
    "RedisStorage",
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
    "session",
]
