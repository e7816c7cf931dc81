"""Storage adapters: where sessions are kept."""

from __future__ import annotations

from .base import Storage, SweepReport, Version
from .file import FileStorage, StorageStats, default_directory
from .memory import MemoryStorage
from .redis import RedisStorage

__all__ = [
    "FileStorage",
    "MemoryStorage",
    "RedisStorage",
    "Storage",
    "StorageStats",
    "SweepReport",
    "Version",
    "default_directory",
]
