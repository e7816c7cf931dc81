"""Storage adapters: where sessions are kept, and what a new backend builds on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Storage
from .document import Version
from .file import FileStorage, default_directory
from .locks import Holder, InProcessLocks, KeyLock, LockSpace
from .memory import MemoryStorage
from .postgres import PostgresStorage
from .redis import RedisStorage
from .stripes import FileStripes
from .urls import open_storage
from .values import Figure, KeyInfo, Listed, StorageStats, Stored, SweepReport, Unreadable

if TYPE_CHECKING:
    from .sqlite import SQLiteStorage, default_database

__all__ = [
    "Figure",
    "FileStorage",
    "FileStripes",
    "Holder",
    "InProcessLocks",
    "KeyInfo",
    "KeyLock",
    "Listed",
    "LockSpace",
    "MemoryStorage",
    "PostgresStorage",
    "RedisStorage",
    "SQLiteStorage",
    "Storage",
    "StorageStats",
    "Stored",
    "SweepReport",
    "Unreadable",
    "Version",
    "default_database",
    "default_directory",
    "open_storage",
]


def __getattr__(name: str) -> Any:
    # sqlite3 (three modules, a few milliseconds) is loaded by the bots that use SQLiteStorage only.
    if name in ("SQLiteStorage", "default_database"):
        from . import sqlite

        return getattr(sqlite, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
