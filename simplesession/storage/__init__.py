"""Storage adapters: where sessions are kept."""

from __future__ import annotations

from .base import Storage
from .document import Version
from .file import FileStorage, default_directory
from .memory import MemoryStorage
from .redis import RedisStorage
from .values import Figure, KeyInfo, StorageStats, SweepReport

__all__ = [
    "Figure",
    "FileStorage",
    "KeyInfo",
    "MemoryStorage",
    "RedisStorage",
    "Storage",
    "StorageStats",
    "SweepReport",
    "Version",
    "default_directory",
]
