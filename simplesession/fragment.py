"""The options of one session (one fragment of a multi session): where it is kept, how it is
keyed, migrated and checked. :mod:`simplesession.session` runs updates with them."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from .context import Context
from .data import DEFAULT_MAX_SIZE
from .errors import MigrationError, SessionDataError, SessionKeyError
from .keys import key_bytes
from .storage import FileStorage, Storage
from .storage.document import Version
from .storage.plain import PlainStorage, SessionStore, session_store
from .storage.values import ttl_seconds

__all__ = ["DEFAULT_MAX_SIZE", "Fragment", "KeyFunction"]

_log = logging.getLogger("simplesession.session")


KeyFunction = Callable[[Context], "str | None"]
"""``get_session_key``: the key of an update's session, or ``None`` for none."""


class Fragment:
    """The options of one session (of one fragment, for multi sessions)."""

    __slots__ = (
        "get_session_key",
        "initial",
        "latest",
        "lazy",
        "lock",
        "max_size",
        "max_size_is_storages",
        "migrations",
        "name",
        "prefix",
        "storage",
        "validate",
        "versioned",
    )

    def __init__(
        self,
        name: str | None,
        *,
        initial: Callable[[], Any] | None = None,
        storage: PlainStorage | None = None,
        get_session_key: KeyFunction | None = None,
        prefix: str | None = None,
        ttl: float | timedelta | None = None,
        migrations: Mapping[Version, Callable[[Any], Any]] | None = None,
        validate: Callable[[Any], Any] | None = None,
        max_size: int | None = DEFAULT_MAX_SIZE,
        lazy: bool = False,
    ) -> None:
        where = "session()" if name is None else f"multi_session fragment {name!r}"
        if initial is not None and not callable(initial):
            raise TypeError(
                f"{where}: initial must be a function that makes a new session, such as "
                f"initial=lambda: {{'count': 0}}, not a {type(initial).__name__}: one shared object "
                "would leak changes from one chat into every other"
            )
        if get_session_key is not None and not callable(get_session_key):
            raise TypeError(f"{where}: get_session_key must be a function of ctx, not {get_session_key!r}")
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"{where}: prefix must be a str, not {prefix!r}")
        if validate is not None and not callable(validate):
            raise TypeError(f"{where}: validate must be a function of the session data, not {validate!r}")
        if max_size is not None and (type(max_size) is not int or max_size <= 0):
            raise ValueError(f"{where}: max_size must be a number of bytes > 0 or None, not {max_size!r}")
        self.name = name
        self.initial = initial
        # The idle clock lives with the data (file times, Redis expiry), so ttl is the storage's.
        seconds = ttl_seconds(ttl)
        if storage is None:
            # Other bots may share the default folder: it takes what any of them may store.
            storage = FileStorage(ttl=seconds, max_size=max(max_size or 0, DEFAULT_MAX_SIZE))
        self.storage: SessionStore = session_store(storage, where)
        self.storage.use_ttl(seconds, where)
        self.get_session_key = get_session_key
        # Fragments share the default folder, so each gets its own key space by default.
        self.prefix = prefix if prefix is not None else ("" if name is None else f"{name}:")
        self.migrations = _sorted_migrations(where, migrations)
        self.latest: Version | None = self.migrations[-1][0] if self.migrations else None
        self.versioned = bool(self.migrations)  # whether sessions are read with their versions
        if self.migrations and not self.storage.records_versions:
            raise TypeError(
                f"{where}: migrations need a storage that records versions (FileStorage, MemoryStorage, "
                f"RedisStorage), not {self.storage!r}; a storage of your own can migrate in its read()"
            )
        self.validate = validate
        # A storage refuses what is over its own max_size: the middleware's limit is the smaller
        # of the two, so that the error a handler meets names the limit that refused it.
        own = storage.max_size if isinstance(storage, Storage) else None
        self.max_size_is_storages = own is not None and (max_size is None or own < max_size)
        self.max_size = own if self.max_size_is_storages else max_size
        self.lazy = bool(lazy)
        self.lock = self.storage.lock

    def key_for(self, ctx: Context) -> tuple[str | None, str]:
        """The storage key for ``ctx``, or ``None`` and why there is none."""
        if self.get_session_key is None:  # the chat id, as a string
            chat_id = ctx.chat_id
            key = None if chat_id is None else str(chat_id)
        else:
            key = self.get_session_key(ctx)
            if key is not None and not isinstance(key, str):
                raise SessionKeyError(
                    f"get_session_key must return a str or None, not {type(key).__name__} {key!r}; wrap it in str()"
                )
            if key is not None and not key.isascii():
                try:
                    key_bytes(key)
                except ValueError as exc:
                    raise SessionKeyError(f"get_session_key returned a key no storage can hold: {exc}") from None
        if key is not None:
            return self.prefix + key, ""
        update_id = ctx.update.get("update_id")
        update = f"this {ctx.kind} update" if update_id is None else f"update {update_id} ({ctx.kind})"
        if self.get_session_key is None:
            return None, (
                f"{update} belongs to no chat, so it has no session key; "
                "pass get_session_key= to key sessions by something else"
            )
        return None, f"get_session_key returned None for {update}"

    def migrate(self, key: str, value: Any, version: Version | None) -> Any:
        """``value`` (stored at ``version``, ``None`` being the oldest) brought up to date."""
        assert self.latest is not None
        if version is not None and version > self.latest:
            raise MigrationError(
                f"session {key!r} is at version {version}, newer than this bot's newest migration "
                f"({self.latest}); was it written by a newer release?",
                key=key,
                version=version,
            )
        for target, migration in self.migrations:
            if version is None or target > version:
                try:
                    value = migration(value)
                except Exception as exc:
                    raise MigrationError(
                        f"migration to version {target} failed for session {key!r}: {type(exc).__name__}: {exc}; "
                        "the stored session is unchanged",
                        key=key,
                        version=target,
                    ) from exc
        return value

    def check_size(self, key: str, raw: bytes) -> None:
        if self.max_size is None or len(raw) <= self.max_size // 2:
            return
        if len(raw) > self.max_size:
            whose, fix = (
                ("the storage's ", "give the storage a larger max_size")
                if self.max_size_is_storages
                else ("", "raise max_size")
            )
            raise SessionDataError(
                f"session {key!r} is {len(raw):,} bytes of JSON, over {whose}max_size={self.max_size:,}; nothing "
                f"was stored. Keep sessions small (ids and settings, not histories), or {fix}",
                key=key,
            )
        _log.warning("session %r is %s bytes, over half of max_size=%s", key, f"{len(raw):,}", f"{self.max_size:,}")


def _sorted_migrations(
    where: str, migrations: Mapping[Version, Callable[[Any], Any]] | None
) -> list[tuple[Version, Callable[[Any], Any]]]:
    if migrations is None:
        return []
    if not isinstance(migrations, Mapping):
        raise TypeError(f"{where}: migrations must be a dict of version: function, not {migrations!r}")
    if not migrations:
        # As grammY: an empty dict is a mistake (a lost list of steps), not "no migrations".
        raise ValueError(
            f"{where}: migrations={{}} is empty; give at least one {{version: function}}, or leave migrations out"
        )
    for version, migration in migrations.items():
        if type(version) not in (int, float) or not math.isfinite(version):
            raise TypeError(
                f"{where}: migration versions are numbers (int or float) so that 10 comes after 9, "
                f"not {type(version).__name__} {version!r}"
            )
        if not callable(migration):
            raise TypeError(f"{where}: the migration to version {version} must be a function, not {migration!r}")
    return sorted(migrations.items(), key=lambda item: item[0])
