"""The tables of :class:`~simplesession.SQLiteStorage`, and the statements it runs on them."""

from __future__ import annotations

__all__ = [
    "DELETE",
    "FIRST_PAGE",
    "GET",
    "IDLE",
    "NEXT_PAGE",
    "PUT",
    "SAME",
    "SCHEMA",
    "SET_ASIDE",
    "SET_USED",
    "SHAPE",
    "STAMP",
    "STATS",
    "STILL_TOO_LARGE",
    "STORED",
    "TABLES",
    "TOUCH",
]

# Comments stay in the schema, so that `sqlite3 sessions.db .schema` explains the columns.
# ``size`` is computed by SQLite as a value is stored (a generated column placed before the
# value), so that a read learns a value's size without loading it.
SCHEMA = (
    """CREATE TABLE IF NOT EXISTS sessions (
    key TEXT PRIMARY KEY NOT NULL,  -- the session key
    version TEXT,                   -- the schema version of the data (migrations), or NULL
    used REAL NOT NULL,             -- last use, in seconds since 1970 (UTC): datetime(used, 'unixepoch')
    stamp INTEGER NOT NULL DEFAULT (random()),  -- drawn at random at each write: tells values apart
    format INTEGER,                 -- 1: value is the data's JSON; NULL: value is a whole document as given
    size INTEGER GENERATED ALWAYS AS (length(CAST(value AS BLOB))) STORED,  -- bytes of value
    value TEXT NOT NULL             -- the session's data, as JSON
)""",
    # A change made by hand (in a sqlite3 shell, say) gets a new stamp too, so that no cache serves the old value.
    """CREATE TRIGGER IF NOT EXISTS sessions_changed AFTER UPDATE ON sessions
    WHEN NEW.stamp IS OLD.stamp AND NEW.used IS OLD.used
    BEGIN UPDATE sessions SET stamp = random() WHERE key = NEW.key; END""",
    """CREATE TABLE IF NOT EXISTS set_aside (  -- stored values that could not be sessions, kept for a human
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL,
    moved TEXT NOT NULL,  -- when, UTC
    version TEXT,
    used REAL,
    format INTEGER,
    value TEXT
)""",
)
TABLES = "SELECT count(*) FROM sqlite_master WHERE name IN ('sessions', 'sessions_changed', 'set_aside')"
SHAPE = (
    "SELECT key, version, used, stamp, format, size, value FROM sessions LIMIT 0",
    "SELECT id, key, moved, version, used, format, value FROM set_aside LIMIT 0",
)
# Text comes back as bytes (the connection's text_factory): the JSON is kept as UTF-8 bytes.
# The limits: the most bytes a session's data may take, then a whole document.
GET = (
    "SELECT stamp, CAST(used AS REAL), version, format, size,"
    " CASE WHEN size <= (CASE WHEN format = 1 THEN ? ELSE ? END) THEN value END"
    " FROM sessions WHERE key = ?"
)
STAMP = "SELECT stamp, CAST(used AS REAL) FROM sessions WHERE key = ?"
PUT = (
    "INSERT INTO sessions (key, version, used, stamp, format, value)"
    " VALUES (?, CAST(? AS TEXT), ?, ?, ?, CAST(? AS TEXT)) ON CONFLICT (key) DO UPDATE SET"
    " version = excluded.version, used = excluded.used, stamp = excluded.stamp,"
    " format = excluded.format, value = excluded.value"
)
DELETE = "DELETE FROM sessions WHERE key = ?"
TOUCH = "UPDATE sessions SET used = ? WHERE key = ? AND stamp = ?"
SET_USED = "UPDATE sessions SET used = ? WHERE key = ?"
# What a session takes as stored: the bytes of its key, version and value.
STORED = "size + length(CAST(key AS BLOB)) + ifnull(length(CAST(version AS BLOB)), 0)"
IDLE = f"SELECT CAST(used AS REAL), {STORED} FROM sessions WHERE key = ?"
FIRST_PAGE = f"SELECT key, CAST(used AS REAL), {STORED} FROM sessions ORDER BY key LIMIT ?"
NEXT_PAGE = f"SELECT key, CAST(used AS REAL), {STORED} FROM sessions WHERE key > CAST(? AS TEXT) ORDER BY key LIMIT ?"
SET_ASIDE = (
    "INSERT INTO set_aside (key, moved, version, used, format, value)"
    " SELECT key, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), version, used, format, value FROM sessions"
)
# Only while it is still what the caller found: the same stamp, or (found unreadable) still too large.
SAME = " WHERE key = ? AND stamp = ?"
STILL_TOO_LARGE = " WHERE key = ? AND NOT size <= (CASE WHEN format = 1 THEN ? ELSE ? END)"
STATS = f"SELECT count(*), total({STORED}), min(CAST(used AS REAL)), max(CAST(used AS REAL)) FROM sessions"
