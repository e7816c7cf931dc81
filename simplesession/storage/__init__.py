"""Storage adapters: where sessions are kept."""

from __future__ import annotations

from .base import Storage
from .file import FileStorage, default_directory
from .memory import MemoryStorage

__all__ = ["FileStorage", "MemoryStorage", "Storage", "default_directory"]
