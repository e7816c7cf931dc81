"""Storage adapters: where sessions are kept, and what a new backend builds on."""

from __future__ import annotations

from .base import Storage
from .document import Version
from .file import FileStorage, default_directory
from .locks import Holder, InProcessLocks, KeyLock, LockSpace
from .memory import MemoryStorage
from .redis import RedisStorage
from .sqlite import SQLiteStorage, default_database
from .stripes import FileStripes
from .values import Figure, KeyInfo, Listed, StorageStats, Stored, SweepReport, Unreadable

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
]
