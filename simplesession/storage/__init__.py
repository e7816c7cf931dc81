"""Storage adapters: where sessions are kept, and what a new backend builds on."""

from __future__ import annotations

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
    "Storage",
    "StorageStats",
    "Stored",
    "SweepReport",
    "Unreadable",
    "Version",
    "default_directory",
    "open_storage",
]
