"""Session keys to file names, and back.

A session key is any string. Its file name must be safe on every filesystem we may meet:
no separators, no ``..``, no NUL, no reserved Windows names, short enough for eCryptfs
(143 bytes), and distinct even where the filesystem folds case or Unicode normal forms.

So a name uses only ``[a-z0-9_-]`` and ``~``: those characters stand for themselves and every
other UTF-8 byte is written ``~xx`` in lowercase hex (``"Chat:42"`` is ``k~43hat~3a42``).
This is reversible, hence injective, and :func:`key_from_name` lists keys without opening
files. A key whose name would be too long is named by its SHA-256 (``h`` + 64 hex digits)
instead; the file itself records the key, so nothing is lost. The leading ``k``/``h`` keeps
the two forms apart and keeps any name from being ``con``, ``nul`` or empty.
"""

from __future__ import annotations

import hashlib
import re
import zlib

__all__ = ["MAX_STEM", "SUFFIX", "encode_key", "key_from_name", "place_key", "shown"]

SUFFIX = ".json"
MAX_STEM = 120  # + prefix and suffix stays under eCryptfs's 143-byte limit
_SAFE = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789_-")
_ALL_SAFE = re.compile(r"[a-z0-9_-]*\Z")
_ESCAPE = re.compile(r"~([0-9a-f]{2})")
_HEX = [f"{i:02x}" for i in range(256)]


def key_bytes(key: str) -> bytes:
    """UTF-8 of ``key``; ``TypeError``/``ValueError`` saying why a key is unusable."""
    if type(key) is not str:
        raise TypeError(f"a session key must be a str, not {type(key).__name__} ({key!r})")
    try:
        return key.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"session key {key!r} is not valid Unicode (it has a lone surrogate)") from None


def encode_key(key: str) -> tuple[str, str]:
    """``(shard, file name)`` for ``key``. The shard spreads files over 256 folders."""
    shard, name, _ = place_key(key)
    return shard, name


def place_key(key: str) -> tuple[str, str, int]:
    """``(shard, file name, hash)`` for ``key``: the hash (CRC-32 of its UTF-8) picks the shard."""
    raw = key_bytes(key)
    crc = zlib.crc32(raw)
    stem = key if _ALL_SAFE.match(key) else "".join(chr(b) if b in _SAFE else f"~{b:02x}" for b in raw)
    if len(stem) > MAX_STEM:
        return _HEX[crc & 0xFF], "h" + hashlib.sha256(raw).hexdigest() + SUFFIX, crc
    return _HEX[crc & 0xFF], "k" + stem + SUFFIX, crc


def key_from_name(name: str) -> str | None:
    """The key of a ``k`` file name, or ``None`` (a hashed name, or not one of ours)."""
    if not (name.startswith("k") and name.endswith(SUFFIX)):
        return None
    stem = name[1 : -len(SUFFIX)]
    if _ALL_SAFE.match(stem):
        return stem
    try:
        key = _ESCAPE.sub(lambda m: chr(int(m.group(1), 16)), stem).encode("latin-1").decode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        return None
    # Only the canonical spelling is ours: "k~61" would otherwise alias "ka".
    return key if encode_key(key)[1] == name else None


def shown(key: str, most: int = 40) -> str:
    """``repr(key)``, cut short after ``most`` characters, for messages about keys of any length."""
    return repr(key) if len(key) <= most else f"{key[:most]!r}… ({len(key):,} characters)"


def is_hashed_name(name: str) -> bool:
    return len(name) == 1 + 64 + len(SUFFIX) and name.startswith("h") and name.endswith(SUFFIX)
