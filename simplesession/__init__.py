"""Session state for simple, blocking bots: one JSON file per chat, safe and fast."""

from __future__ import annotations

from .errors import (
    CorruptSessionError,
    LockTimeout,
    SessionDataError,
    SessionError,
    SessionKeyError,
    StorageError,
)
from .storage import FileStorage, MemoryStorage, Storage, default_directory

__version__ = "0.1.0.dev0"

__all__ = [
    "CorruptSessionError",
    "FileStorage",
    "LockTimeout",
    "MemoryStorage",
    "SessionDataError",
    "SessionError",
    "SessionKeyError",
    "Storage",
    "StorageError",
    "default_directory",
]
