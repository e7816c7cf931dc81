"""The table of :class:`~simplesession.PostgresStorage`, its statements, and how a row is written.

A row holds a session's key (readable, with NUL and backslashes escaped, as text cannot hold
NUL), the version of its data, its last use by the server's clock and its JSON document,
under a primary key that is a hash of the key: a btree refuses index entries over 2,704
bytes, and keys may be longer.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, NamedTuple

from .. import data
from ..keys import key_bytes
from .document import check_version, key_size

__all__ = [
    "PAGE",
    "QUERIES",
    "SCHEMA",
    "SCHEMA_ASIDE",
    "SHAPE",
    "LockStatements",
    "key_column",
    "key_of",
    "lock_statements",
    "row_id",
    "signed64",
    "version_of",
]

PAGE = 500
"""Sessions per page of a listing, and so per slice of a sweep (a ``LIMIT``)."""

# The columns, commented in the database itself so that \d+ explains them.
SCHEMA = """
CREATE TABLE {t} (
    key text NOT NULL,
    version numeric,
    used timestamptz NOT NULL DEFAULT now(),
    document text NOT NULL,
    id bytea PRIMARY KEY
);
COMMENT ON TABLE {t} IS 'simplesession: one row per session';
COMMENT ON COLUMN {t}.key IS 'the session key (a backslash written \\\\, NUL written \\0: text cannot hold NUL)';
COMMENT ON COLUMN {t}.version IS 'the schema version of the data (migrations), or NULL';
COMMENT ON COLUMN {t}.used IS 'last read or write, by the server''s clock: the idle clock of ttl';
COMMENT ON COLUMN {t}.document IS 'the session as JSON: {{"format":1,"key":...,"version":...,"data":...}}';
COMMENT ON COLUMN {t}.id IS 'BLAKE2b-128 of the key''s UTF-8: an index entry of one size for keys of any length'
"""
SCHEMA_ASIDE = """
CREATE TABLE {a} (
    aside_id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    moved timestamptz NOT NULL DEFAULT now(),
    key text NOT NULL,
    version numeric,
    used timestamptz,
    document text NOT NULL
);
COMMENT ON TABLE {a} IS 'simplesession: stored values that could not be sessions, kept for a human'
"""
SHAPE = (
    "SELECT key, version, used, document, id FROM {t} LIMIT 0; SELECT aside_id, moved, key, document FROM {a} LIMIT 0"
)
_AGE = "extract(epoch FROM now() - used)::float8"
QUERIES = {
    # The value only if it fits max_size: a larger one is never sent (see _read_limit).
    "get": "SELECT CASE WHEN octet_length(document) <= %s THEN convert_to(document, 'UTF8') END,"
    f" octet_length(document), {_AGE} FROM {{t}} WHERE id = %b",
    "put": "INSERT INTO {t} (id, key, version, used, document) VALUES (%b, %s, %s, now(), convert_from(%b, 'UTF8'))"
    " ON CONFLICT (id) DO UPDATE SET key = excluded.key, version = excluded.version, used = excluded.used,"
    " document = excluded.document",
    "delete": "DELETE FROM {t} WHERE id = %b",
    # A touch only refreshes a clock: it skips a row that a holder elsewhere is writing.
    "touch": "UPDATE {t} SET used = now() WHERE id = (SELECT id FROM {t} WHERE id = %b FOR UPDATE SKIP LOCKED)",
    "set_used": "UPDATE {t} SET used = to_timestamp(%s) WHERE id = %b",
    "idle": f"SELECT {_AGE}, octet_length(document) FROM {{t}} WHERE id = %b",
    "page": f"SELECT id, key, {_AGE}, octet_length(document) FROM {{t}} WHERE id > %b ORDER BY id LIMIT {PAGE}",
    "aside_same": "WITH moved AS (DELETE FROM {t} WHERE id = %b AND document = convert_from(%b, 'UTF8')"
    " RETURNING key, version, used, document) INSERT INTO {a} (key, version, used, document)"
    " SELECT key, version, used, document FROM moved RETURNING aside_id",
    "aside_large": "WITH moved AS (DELETE FROM {t} WHERE id = %b AND octet_length(document) > %s"
    " RETURNING key, version, used, document) INSERT INTO {a} (key, version, used, document)"
    " SELECT key, version, used, document FROM moved RETURNING aside_id",
    "stats": f"SELECT count(*), coalesce(sum(octet_length(document)), 0), max({_AGE}), min({_AGE}) FROM {{t}}",
    "aside_count": "SELECT count(*) FROM {a}",
}
_HEAD = b'{"format":1,"key":'
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def key_column(key: str) -> str:
    """``key`` as its row shows it: a backslash doubled, NUL written ``\\0``."""
    return key.replace("\\", "\\\\").replace("\x00", "\\0")


def key_of(column: str) -> str:
    """The key whose row shows ``column`` (see :func:`key_column`)."""
    return _UNESCAPE.sub(lambda m: "\\" if m[1] == "\\" else "\x00", column) if "\\" in column else column


def version_of(key: str, document: bytes) -> Any:
    """The version a document records (for its own column), read from the head a write makes."""
    start = len(_HEAD) + key_size(key) + len(b',"version":')
    if not (document.startswith(_HEAD) and document.startswith(b',"version":', start - 11)):
        return None
    try:
        return check_version(data.decode(document[start : document.find(b',"data":', start)]))
    except (ValueError, TypeError):
        return None  # not as a write makes it: the document is what counts


def signed64(raw: bytes) -> int:
    """The first 8 bytes of a hash as a PostgreSQL bigint (an advisory lock's id)."""
    return int.from_bytes(raw[:8], "big", signed=True)


def row_id(key: str) -> bytes:
    """The primary key of ``key``'s row: BLAKE2b-128 of its UTF-8."""
    return hashlib.blake2b(key_bytes(key), digest_size=16).digest()


class LockStatements(NamedTuple):
    """What a lock's transaction sends, for one storage (see :mod:`._postgres_locks`).

    ``take`` and ``take_inline`` are formatted with ``(lock id, read limit, row id in hex)``,
    after ``begin`` or ``read_committed``: ``skip`` results come before the lock's;
    ``put`` with ``(row id, key's UTF-8, both in hex, version or NULL, document in hex)``.
    Values go in as hex or numbers, so they need no quoting whatever the server's settings.
    """

    name: bytes
    prepare: list[tuple[str, bytes]]
    begin: bytes
    read_committed: bytes
    take: bytes
    take_inline: bytes
    skip: int
    put: bytes


def lock_statements(queries: dict[str, bytes], canonical: str, expiry_ms: int, expiring: bool) -> LockStatements:
    """The statements of the locks of the table ``canonical`` (``schema.name``), whose
    rendered ``queries`` they reuse. Unless its connections end idle transactions by
    themselves (``expiring``), each transaction asks for it."""
    get, put = queries["get"], queries["put"]
    name = b"simplesession_" + hashlib.blake2b(canonical.encode() + get + put, digest_size=8).hexdigest().encode()
    hexed = b"decode('%s', 'hex')"
    # Read committed whatever the server's default, so that each statement sees what was
    # committed before it began; then the lock; then the session's row in a statement of its
    # own, so that it sees what the last holder wrote.
    head = b"" if expiring else b"SET LOCAL idle_in_transaction_session_timeout = %d; " % expiry_ms
    head += b"SELECT pg_try_advisory_xact_lock(%d); "
    return LockStatements(
        name=name,
        prepare=[
            (f"{name.decode()}_get", b"PREPARE %s_get(bigint, bytea) AS %s; " % (name, _numbered(get))),
            (f"{name.decode()}_put", b"PREPARE %s_put(bytea, text, numeric, bytea) AS %s; " % (name, _numbered(put))),
        ],
        begin=b"BEGIN ISOLATION LEVEL READ COMMITTED; ",
        read_committed=b"SET TRANSACTION ISOLATION LEVEL READ COMMITTED; ",
        take=head + b"EXECUTE %s_get(%%d, %s)" % (name, hexed),
        take_inline=head + get.replace(b"%s", b"%d").replace(b"%b", hexed),
        skip=1 if expiring else 2,
        put=b"EXECUTE %s_put(%s, convert_from(%s, 'UTF8'), %%s, %s); " % (name, hexed, hexed, hexed),
    )


def _numbered(query: bytes) -> bytes:
    """``query`` with its placeholders (``%s``, ``%b``) as ``$1``, ``$2``, ...: for ``PREPARE``."""
    parts = re.split(rb"%[sb]", query)
    return parts[0] + b"".join(b"$%d" % n + part for n, part in enumerate(parts[1:], 1))
