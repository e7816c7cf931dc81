"""What the header of SQLite's WAL index tells :class:`~simplesession.SQLiteStorage`: whether
anything was committed to the database since a row was found current."""

from __future__ import annotations

import os
import sys

__all__ = ["HEADER", "Stamp", "after_one_commit", "read_header", "steady"]

# The WAL index's header: the first 96 bytes of the "-shm" file, two copies of 48 that every
# commit rewrites (any connection's, in any process, a sqlite3 shell's too: its change counter
# goes up by one), as SQLite's own readers check it to know their page cache is current. See
# "The WAL-Index Format" in SQLite's documentation.
HEADER = 96


class Stamp(tuple):  # type: ignore[type-arg]
    """A row's ``(tag, used)``: its stamp (drawn at each write) and its last use.

    ``seen`` is the WAL index's header as it was before a read found this row current
    (``None``: not known). While the header is still those bytes, nothing was committed
    since, so the row is still current, and a cache hit needs no read of the database.
    """

    seen: bytes | None = None


def read_header(fd: int | None) -> bytes | None:
    """The WAL index's header now, from the "-shm" file open as ``fd``; ``None`` if not to be had."""
    if fd is None:
        return None
    try:
        return os.pread(fd, HEADER, 0)
    except OSError:
        return None  # then the database is read, which says if anything is wrong


def steady(header: bytes) -> bool:
    """Whether ``header`` is whole: two unequal copies are a commit under way, which a read
    made just after may or may not show."""
    return len(header) == HEADER and header[:48] == header[48:]


def after_one_commit(before: bytes, after: bytes | None) -> bytes | None:
    """``after``, if the headers ``before`` and ``after`` a commit of ours show no other commit
    between them (the change counter, a native 32-bit int at byte 8, went up by one): then
    the row just written is current as long as the header stays ``after``. Else ``None``."""
    if after is None or not (steady(before) and steady(after)):
        return None
    step = int.from_bytes(after[8:12], sys.byteorder) - int.from_bytes(before[8:12], sys.byteorder)
    return after if step % (1 << 32) == 1 else None
