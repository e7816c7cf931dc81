"""The stores compared, each behind one tiny interface, and the drivers that run updates on them.

A *peer* is a store with ``read(key)`` (``None`` when missing), ``write(key, value)`` and
``close()``. A *driver* runs one update of a chat: at the storage level it reads, changes
and writes through a peer; at the framework level it hands a whole update to a bot
framework (ours: ``Bot.handle_update`` with ``session()``; python-telegram-bot:
``Application.process_update`` with ``PicklePersistence``). grammY runs in Node (see
``node/session_bench.mjs``); its entries here only describe it.

Every configuration that ``run.py`` can run, with its crash-safety line, is in :data:`CONFIGS`.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import os
import shelve
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TextIO

CHAT_BASE = 1_000_000_000
"""Chat ``i`` of a workload has the id ``CHAT_BASE + i`` and the session key ``str(CHAT_BASE + i)``."""

Items = Iterable[tuple[str, dict[str, Any]]]


def initial() -> dict[str, Any]:
    """A new session: small, like most bots' (the Node script makes the same one)."""
    return {"count": 0, "lang": "en", "step": "start", "tags": ["a", "b"]}


def chat_key(index: int) -> str:
    return str(CHAT_BASE + index)


def make_update(update_id: int, chat_id: int) -> dict[str, Any]:
    """A private text message from ``chat_id``, as the Bot API sends it."""
    return {
        "update_id": update_id,
        "message": {
            "message_id": update_id,
            "date": 1_700_000_000,
            "chat": {"id": chat_id, "type": "private", "first_name": "U"},
            "from": {"id": chat_id, "is_bot": False, "first_name": "U"},
            "text": "hi",
        },
    }


# -- peers: the storage-level interface ------------------------------------------------------


class Peer:
    """One store. ``root`` is a folder under /tmp that the peer may fill as it likes."""

    def __init__(self, root: str) -> None:
        self.root = root

    def read(self, key: str) -> dict[str, Any] | None:
        raise NotImplementedError

    def write(self, key: str, value: dict[str, Any]) -> None:
        raise NotImplementedError

    def populate(self, items: Items) -> bool:
        """Store ``items`` before the timed runs; ``True`` if done in bulk, not by ``write``."""
        for key, value in items:
            self.write(key, value)
        return False

    def prepare(self) -> None:
        """Get ready for the timed runs (untimed), in each run's process."""

    def close(self) -> None:
        pass

    def notes(self) -> list[str]:
        return []


def _sync_folder(folder: str) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FloorPeer(Peer):
    """The least a crash-safe JSON file per key can cost: ``json.dumps``, temp file, ``os.replace``;
    ``open`` + ``json.load`` to read.

    Files go in 256 shard folders (by the CRC-32 of the key), as FileStorage's do, so that
    both work on the same directory shape.
    """

    def __init__(self, root: str, *, fsync: bool = False) -> None:
        super().__init__(root)
        self.fsync = fsync

    def populate(self, items: Items) -> bool:
        # Without fsync: populating is set-up, and the files are the same either way.
        fsync, self.fsync = self.fsync, False
        try:
            return super().populate(items)
        finally:
            self.fsync = fsync

    def _path(self, key: str) -> tuple[str, str]:
        folder = os.path.join(self.root, f"{zlib.crc32(key.encode()) & 0xFF:02x}")
        return folder, os.path.join(folder, key + ".json")

    def read(self, key: str) -> dict[str, Any] | None:
        try:
            with open(self._path(key)[1], encoding="utf-8") as file:
                return json.load(file)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def write(self, key: str, value: dict[str, Any]) -> None:
        folder, path = self._path(key)
        temp = path + ".tmp"
        raw = json.dumps(value)
        with self._create(folder, temp) as file:
            file.write(raw)
            if self.fsync:
                file.flush()
                os.fsync(file.fileno())
        os.replace(temp, path)
        if self.fsync:
            _sync_folder(folder)

    @staticmethod
    def _create(folder: str, path: str) -> TextIO:
        """``path`` opened for writing (truncated), its shard folder made on first use."""
        try:
            return open(path, "w", encoding="utf-8")
        except FileNotFoundError:
            os.makedirs(folder, exist_ok=True)
            return open(path, "w", encoding="utf-8")


class InPlacePeer(FloorPeer):
    """The floor without its crash safety: ``json.dumps`` written over the session file itself
    (truncate, then write), as grammY's file adapter writes. Only to show what the temporary
    file and the rename cost; a crash mid-write leaves an empty or torn file."""

    def write(self, key: str, value: dict[str, Any]) -> None:
        folder, path = self._path(key)
        raw = json.dumps(value)
        with self._create(folder, path) as file:
            file.write(raw)


class DiskcachePeer(Peer):
    """``diskcache.Cache``; through ``session()`` it is a storage of the user's own (read, write,
    delete), locked within the process only, as the middleware locks such a storage."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        import diskcache

        self.cache = diskcache.Cache(root)
        self.storage = self

    def read(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key)  # type: ignore[no-any-return]

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.cache.set(key, value)

    def delete(self, key: str) -> None:
        self.cache.delete(key)


class DiskcacheLockedPeer(DiskcachePeer):
    """DiskcachePeer whose ``lock(key)`` is ``diskcache.Lock``, which the middleware takes for each
    update: a lock across processes, as SQLiteStorage's (though not freed when its holder dies)."""

    def lock(self, key: str) -> Any:
        import diskcache

        return diskcache.Lock(self.cache, f"lock:{key}")

    def close(self) -> None:
        self.cache.close()


class SqlitedictPeer(Peer):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        from sqlitedict import SqliteDict

        self._class = SqliteDict
        self.path = os.path.join(root, "sessions.sqlite")
        self.db = SqliteDict(self.path, autocommit=True)

    def read(self, key: str) -> dict[str, Any] | None:
        return self.db.get(key)  # type: ignore[no-any-return]

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.db[key] = value

    def populate(self, items: Items) -> bool:
        bulk = self._class(self.path, autocommit=False)
        for key, value in items:
            bulk[key] = value
        bulk.commit()
        bulk.close()
        return True

    def close(self) -> None:
        self.db.close()


class ShelvePeer(Peer):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        path = os.path.join(root, "sessions")
        self.shelf = shelve.open(path)  # noqa: SIM115 - closed by close()
        self.backend = type(self.shelf.dict).__module__

    def read(self, key: str) -> dict[str, Any] | None:
        return self.shelf.get(key)

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.shelf[key] = value

    def close(self) -> None:
        self.shelf.close()

    def notes(self) -> list[str]:
        return [f"shelve's dbm backend in this Python: {self.backend}"]


class CachelibPeer(Peer):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        from cachelib import FileSystemCache

        # threshold=0 and default_timeout=0 keep every session for ever (the defaults keep
        # 500 entries for 300 s: a cache, not a session store).
        self.cache = FileSystemCache(root, threshold=0, default_timeout=0)

    def read(self, key: str) -> dict[str, Any] | None:
        return self.cache.get(key)  # type: ignore[no-any-return]

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.cache.set(key, value)


class TelebotPicklePeer(Peer):
    """pyTelegramBotAPI's ``StatePickleStorage`` as a bot's handler uses it: ``get_data`` per
    update; for a change ``save`` (what its ``retrieve_data`` context manager does), after
    ``set_state`` for a new chat. Every call loads the whole pickle; writes dump all of it."""

    def __init__(self, root: str) -> None:
        super().__init__(root)
        from telebot.storage import StatePickleStorage

        self.storage = StatePickleStorage(file_path=os.path.join(root, "states.pkl"))
        self._missing: str | None = None

    def read(self, key: str) -> dict[str, Any] | None:
        chat_id = int(key)
        data = self.storage.get_data(chat_id, chat_id)
        self._missing = None if data else key
        return data or None

    def write(self, key: str, value: dict[str, Any]) -> None:
        chat_id = int(key)
        if self._missing == key:
            self.storage.set_state(chat_id, chat_id, "active")
        self.storage.save(chat_id, chat_id, value)

    def populate(self, items: Items) -> bool:
        storage = self.storage
        everything = {
            storage._get_key(int(key), int(key), storage.prefix, storage.separator): {"state": "active", "data": value}
            for key, value in items
        }
        storage._write_to_file(everything)
        return True


class OursFilePeer(Peer):
    """FileStorage; with ``warm``, the first ``warm`` sessions are read into its cache before the timed runs."""

    def __init__(self, root: str, *, cache_size: int = 1024, fsync: bool = False, warm: int = 0) -> None:
        super().__init__(root)
        from simplesession import FileStorage

        self.storage = FileStorage(root, cache_size=cache_size, fsync=fsync)
        self.warm = warm

    def prepare(self) -> None:
        for index in range(self.warm):
            self.storage.read(chat_key(index))

    def read(self, key: str) -> dict[str, Any] | None:
        return self.storage.read(key)  # type: ignore[no-any-return]

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.storage.write(key, value)

    def populate(self, items: Items) -> bool:
        # Without fsync and cache: populating is set-up, and the files are the same either way.
        # Each write under its key's lock, as the middleware writes: so the folder's lock files
        # exist, as they do in any folder a bot has used (creating all 256 costs tens of ms,
        # once in a folder's life; in a timed run it would land on its first updates).
        from simplesession import FileStorage

        plain = FileStorage(self.root, cache_size=0)
        for key, value in items:
            with plain.lock(key):
                plain.write(key, value)
        return False


class OursSQLitePeer(Peer):
    """SQLiteStorage, its database in the configuration's folder."""

    def __init__(self, root: str, *, cache_size: int = 1024, fsync: bool = False) -> None:
        super().__init__(root)
        from simplesession import SQLiteStorage

        self.path = os.path.join(root, "sessions.db")
        self.storage = SQLiteStorage(self.path, cache_size=cache_size, fsync=fsync)

    def read(self, key: str) -> dict[str, Any] | None:
        return self.storage.read(key)  # type: ignore[no-any-return]

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.storage.write(key, value)

    def populate(self, items: Items) -> bool:
        # As the middleware writes, each write under its key's lock (so the lock files exist).
        from simplesession import SQLiteStorage

        plain = SQLiteStorage(self.path, cache_size=0)
        for key, value in items:
            with plain.lock(key):
                plain.write(key, value)
        return False


class OursMemoryPeer(Peer):
    def __init__(self, root: str) -> None:
        super().__init__(root)
        from simplesession import MemoryStorage

        self.storage = MemoryStorage()

    def read(self, key: str) -> dict[str, Any] | None:
        return self.storage.read(key)  # type: ignore[no-any-return]

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.storage.write(key, value)


class OursRedisPeer(Peer):
    def __init__(self, root: str, *, url: str, prefix: str) -> None:
        super().__init__(root)
        from simplesession import RedisStorage

        self.storage = RedisStorage(url, prefix=prefix)

    def read(self, key: str) -> dict[str, Any] | None:
        return self.storage.read(key)  # type: ignore[no-any-return]

    def write(self, key: str, value: dict[str, Any]) -> None:
        self.storage.write(key, value)

    def notes(self) -> list[str]:
        used = self.storage.client.info("memory").get("used_memory", 0)
        return [f"data in the server (used_memory {used / 1e6:.1f} MB for all sizes so far); RSS is the client's"]

    def close(self) -> None:
        self.storage.client.close()


# -- drivers: one update at a time ------------------------------------------------------------


class Driver:
    """Runs updates: ``update(seq_no, index, change)`` handles one update of chat ``index``."""

    populated_in_bulk = False

    def populate(self, count: int) -> None:
        raise NotImplementedError

    def prepare(self) -> None:
        """Get ready for the timed runs (start what must not be timed)."""

    def update(self, seq_no: int, index: int, change: bool) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def notes(self) -> list[str]:
        return []


class StorageDriver(Driver):
    """Read the session (initial if missing); if ``change``, change it and write it back."""

    def __init__(self, peer: Peer) -> None:
        self.peer = peer

    def populate(self, count: int) -> None:
        self.populated_in_bulk = self.peer.populate((chat_key(i), initial()) for i in range(count))

    def prepare(self) -> None:
        self.peer.prepare()

    def update(self, seq_no: int, index: int, change: bool) -> None:
        key = chat_key(index)
        value = self.peer.read(key)
        if value is None:
            value = initial()
        if change:
            value["count"] += 1
            self.peer.write(key, value)
        elif value["count"] < 0:  # touch it, as a handler that reads would
            raise AssertionError(value)

    def close(self) -> None:
        self.peer.close()

    def notes(self) -> list[str]:
        return self.peer.notes()


class OursMiddlewareDriver(StorageDriver):
    """Our ``Bot.handle_update`` with ``session(storage=..., sweep_interval=None)`` and a handler
    that changes (or only reads) ``ctx.session``. ``Bot()`` has no token and prints replies
    into a ``StringIO``; the handler sends none."""

    def __init__(self, peer: Peer) -> None:
        super().__init__(peer)
        from simplesession import Bot, session

        self.change = True
        self.bot = Bot(output=io.StringIO())
        # sweep_interval=None: no sweep slices in the timed loop.
        self.bot.use(session(initial=initial, storage=peer.storage, sweep_interval=None))  # type: ignore[attr-defined]

        @self.bot.on("message")
        def handler(ctx: Any) -> None:
            if self.change:
                ctx.session["count"] += 1
            elif ctx.session["count"] < 0:
                raise AssertionError(ctx.session)

    def update(self, seq_no: int, index: int, change: bool) -> None:
        self.change = change
        self.bot.handle_update(make_update(seq_no, CHAT_BASE + index))


class PTBDriver(Driver):
    """python-telegram-bot's ``Application`` with ``PicklePersistence``, driven by asyncio.

    Each update is decoded with ``Update.de_json`` (as PTB's updater does) and awaited
    through ``Application.process_update``, whose handler changes ``context.chat_data``. No
    request leaves the process: the bot's request object answers ``getMe`` itself.

    ``flush=False`` keeps PTB's defaults (``update_interval=60``, ``on_flush=False``): data
    reaches the file only when the application's 60 s timer calls ``update_persistence`` (or
    at shutdown), so the timed loop (seconds long) never writes; what that timer costs is
    measured apart (see :meth:`notes`). ``flush=True`` sets ``on_flush=True`` and after every
    update awaits ``update_persistence()`` and ``persistence.flush()``: one dump of the whole
    pickle per update.
    """

    def __init__(self, root: str, *, flush: bool) -> None:
        from telegram.ext import PersistenceInput, PicklePersistence

        self.flush = flush
        self.path = os.path.join(root, "ptb.pickle")
        # Chat data only: the sessions compared here are per chat.
        self._store = PersistenceInput(user_data=False, bot_data=False, callback_data=False)
        self.persistence = PicklePersistence(self.path, store_data=self._store, on_flush=flush, update_interval=60)
        self.loop = asyncio.new_event_loop()
        self.change = True
        self.app: Any = None
        self._update_class: Any = None
        self._dump_seconds: float | None = None
        self._pending = 0

    def _build(self) -> None:
        from telegram import Update
        from telegram.ext import Application, MessageHandler, filters

        self._update_class = Update
        self.app = (
            Application.builder()
            .token("123456:bench")
            .request(_offline_request())
            .get_updates_request(_offline_request())
            .persistence(self.persistence)
            .updater(None)
            .build()
        )

        async def handler(update: Any, context: Any) -> None:
            data = context.chat_data
            if not data:
                data.update(initial())
            if self.change:
                data["count"] += 1
            elif data["count"] < 0:
                raise AssertionError(data)

        self.app.add_handler(MessageHandler(filters.ALL, handler))
        self.loop.run_until_complete(self.app.initialize())

    def populate(self, count: int) -> None:
        from telegram.ext import PicklePersistence

        async def fill() -> None:
            seed = PicklePersistence(self.path, store_data=self._store, on_flush=True)
            seed.set_bot(_offline_bot())
            seed.chat_data = {CHAT_BASE + i: initial() for i in range(count)}
            seed.user_data, seed.bot_data, seed.conversations = {}, {}, {}
            await seed.flush()

        self.loop.run_until_complete(fill())
        self.populated_in_bulk = True

    def prepare(self) -> None:
        if self.app is None:
            self._build()

    def update(self, seq_no: int, index: int, change: bool) -> None:
        self.change = change
        self.loop.run_until_complete(self._one(make_update(seq_no, CHAT_BASE + index)))

    async def _one(self, raw: dict[str, Any]) -> None:
        await self.app.process_update(self._update_class.de_json(raw, self.app.bot))
        if self.flush:
            await self.app.update_persistence()
            await self.persistence.flush()

    def close(self) -> None:
        self.prepare()
        # The 60 s timer would dump the whole file once per changed chat: time one dump.
        self._pending = len(getattr(self.app, "_chat_ids_to_be_updated_in_persistence", ()))
        start = time.perf_counter()
        self.loop.run_until_complete(self.persistence.flush())
        self._dump_seconds = time.perf_counter() - start
        # Shutdown hands every change over, then flushes once (not once per chat).
        self.persistence.on_flush = True
        self.loop.run_until_complete(self.app.shutdown())
        self.loop.close()

    def notes(self) -> list[str]:
        if self._dump_seconds is None:
            return []
        dump = f"one whole-file dump: {self._dump_seconds * 1e3:.1f} ms"
        if self.flush:
            return [f"{dump}, paid on every update"]
        return [
            f"{dump}; its 60 s update_persistence() dumps once per chat changed in that minute "
            f"(on_flush=False), outside the timed loop here ({self._pending:,} chats pending at the end)"
        ]


def _offline_bot() -> Any:
    from telegram import Bot

    return Bot("123456:bench", request=_offline_request(), get_updates_request=_offline_request())


def _offline_request() -> Any:
    from telegram.request import BaseRequest

    me = {"id": 1, "is_bot": True, "first_name": "Bench", "username": "bench_bot"}

    class OfflineRequest(BaseRequest):  # type: ignore[misc]
        """Answers every Bot API call in-process: getMe with a bot, anything else with ``true``."""

        @property
        def read_timeout(self) -> float | None:
            return None

        async def initialize(self) -> None:
            pass

        async def shutdown(self) -> None:
            pass

        async def do_request(self, url: str, method: str, *args: Any, **kwargs: Any) -> tuple[int, bytes]:
            result: Any = me if url.endswith("/getMe") else True
            return 200, json.dumps({"ok": True, "result": result}).encode()

    return OfflineRequest()


# -- the configurations ------------------------------------------------------------------------

Factory = Callable[[str, dict[str, Any]], Driver]

_ATOMIC = (
    "atomic (temp file + os.replace), no fsync: a kill loses at most the update in flight; "
    "a power loss may lose recent writes"
)
_ATOMIC_FSYNC = "atomic (temp file + os.replace) + fsync of file and folder: a write that returned survives power loss"
_DISKCACHE = (
    "SQLite (WAL, synchronous=NORMAL) + pickle: each set is an atomic transaction; a kill loses "
    "nothing committed; a power loss may lose the last transactions"
)
_SQLITE = (
    "SQLite (WAL, synchronous=NORMAL), JSON text: each write is an atomic transaction; a kill loses nothing "
    "committed; a power loss may lose the last transactions"
)
_GRAMMY = (
    "fs.writeFile straight over the session file (truncate, then write), no temp file, no fsync: a crash mid-write "
    "leaves an empty file (the chat silently starts afresh) or a torn one (JSON.parse throws on each update of "
    "that chat)"
)


@dataclass(frozen=True)
class Config:
    """One row of results: a store at one level.

    :ivar name: what ``--only`` matches.
    :ivar level: ``storage`` (read, change, write through the store) or ``framework`` (whole
        updates through a bot framework's session layer).
    :ivar requires: Python modules, or ``node`` or ``redis-server``, that must be there.
    :ivar file_per_key: one file per session (the W3 target compares these).
    :ivar on_disk: the data lives in the configuration's folder (its size is reported).
    :ivar keeps_data: the data outlives the process, so later runs reuse the populated store.
    :ivar node_mode: runs in Node: ``adapter`` or ``session``.
    """

    name: str
    level: str
    title: str
    crash_safety: str
    requires: tuple[str, ...] = ()
    file_per_key: bool = False
    on_disk: bool = True
    keeps_data: bool = True
    node_mode: str | None = None
    make: Factory | None = field(default=None, compare=False, repr=False)

    @property
    def id(self) -> str:
        return f"{self.name}@{self.level}"


def _storage(factory: Callable[[str, dict[str, Any]], Peer]) -> Factory:
    return lambda root, options: StorageDriver(factory(root, options))


def _framework(factory: Callable[[str, dict[str, Any]], Peer]) -> Factory:
    return lambda root, options: OursMiddlewareDriver(factory(root, options))


def _redis(root: str, options: dict[str, Any]) -> Peer:
    return OursRedisPeer(root, url=options["redis_url"], prefix=options["redis_prefix"])


def _ours(name: str, title: str, crash: str, peer: Callable[[str, dict[str, Any]], Peer], **kw: Any) -> list[Config]:
    """The storage-level and the framework-level configuration of one of our storages."""
    needs = ("simplesession", "redis", "redis-server") if name == "ours-redis" else ("simplesession",)
    return [
        Config(name, "storage", title, crash, needs, make=_storage(peer), **kw),
        Config(name, "framework", f"session() + {title}", crash, needs, make=_framework(peer), **kw),
    ]


_PICKLED_EVERY_UPDATE = (
    "one pickle of every session, rewritten in place (open 'wb') {when}, no fsync: a crash mid-write loses all "
    "sessions; O(N) per {what}"
)

CONFIGS: list[Config] = [
    Config(
        "floor",
        "storage",
        title="floor: json + temp file + os.replace",
        crash_safety=_ATOMIC,
        file_per_key=True,
        make=_storage(lambda root, _: FloorPeer(root)),
    ),
    Config(
        "floor-fsync",
        "storage",
        title="floor + fsync (file and folder)",
        crash_safety=_ATOMIC_FSYNC,
        file_per_key=True,
        make=_storage(lambda root, _: FloorPeer(root, fsync=True)),
    ),
    Config(
        "diskcache",
        "storage",
        title="diskcache.Cache",
        crash_safety=_DISKCACHE,
        requires=("diskcache",),
        make=_storage(lambda root, _: DiskcachePeer(root)),
    ),
    Config(
        "sqlitedict",
        "storage",
        title="sqlitedict (autocommit)",
        crash_safety="SQLite (rollback journal) + pickle: each write is an atomic commit that survives a kill; "
        "sqlitedict sets synchronous=OFF, so a power loss can corrupt the database",
        requires=("sqlitedict",),
        make=_storage(lambda root, _: SqlitedictPeer(root)),
    ),
    Config(
        "shelve",
        "storage",
        title="shelve",
        crash_safety="dbm + pickle; here dbm.dumb: values overwritten in place or appended, index saved on "
        "sync/close only; not atomic, no fsync: a crash can lose or tear updates",
        make=_storage(lambda root, _: ShelvePeer(root)),
    ),
    Config(
        "cachelib",
        "storage",
        title="cachelib.FileSystemCache",
        crash_safety="atomic (mkstemp + os.replace) + pickle, no fsync: a kill loses at most the write in flight "
        "(and may leave a temp file); a power loss may lose recent writes",
        requires=("cachelib",),
        file_per_key=True,
        make=_storage(lambda root, _: CachelibPeer(root)),
    ),
    Config(
        "telebot-pickle",
        "storage",
        title="pyTelegramBotAPI StatePickleStorage",
        crash_safety=_PICKLED_EVERY_UPDATE.format(when="on each write", what="read and per write"),
        requires=("telebot",),
        make=_storage(lambda root, _: TelebotPicklePeer(root)),
    ),
    Config(
        "grammy-file",
        "storage",
        title="grammY storage-file adapter (Node)",
        crash_safety=_GRAMMY,
        requires=("node",),
        file_per_key=True,
        node_mode="adapter",
    ),
    *_ours("ours-file", "FileStorage (cache 1024)", _ATOMIC, lambda root, _: OursFilePeer(root), file_per_key=True),
    *_ours(
        "ours-file-warm",
        "FileStorage (cache holds every session, warmed)",
        _ATOMIC,
        lambda root, options: OursFilePeer(root, cache_size=options["sessions"], warm=options["sessions"]),
        file_per_key=True,
    ),
    *_ours(
        "ours-file-nocache",
        "FileStorage (cache off)",
        _ATOMIC,
        lambda root, _: OursFilePeer(root, cache_size=0),
        file_per_key=True,
    ),
    *_ours(
        "ours-file-fsync",
        "FileStorage (cache 1024, fsync)",
        _ATOMIC_FSYNC,
        lambda root, _: OursFilePeer(root, fsync=True),
        file_per_key=True,
    ),
    *_ours(
        "ours-sqlite",
        "SQLiteStorage (cache 1024)",
        _SQLITE,
        lambda root, _: OursSQLitePeer(root),
    ),
    Config(
        "diskcache",
        "framework",
        title="session() + diskcache.Cache (a storage of the user's own)",
        crash_safety=_DISKCACHE,
        requires=("diskcache",),
        make=_framework(lambda root, _: DiskcachePeer(root)),
    ),
    Config(
        "diskcache-locked",
        "framework",
        title="session() + diskcache.Cache, locked by diskcache.Lock",
        crash_safety=_DISKCACHE,
        requires=("diskcache",),
        make=_framework(lambda root, _: DiskcacheLockedPeer(root)),
    ),
    *_ours(
        "ours-memory",
        "MemoryStorage",
        "none: every session is gone when the process ends",
        lambda root, _: OursMemoryPeer(root),
        on_disk=False,
        keeps_data=False,
    ),
    *_ours(
        "ours-redis",
        "RedisStorage",
        "one atomic SET per write; a client crash loses only the update in flight; the server's persistence "
        "decides the rest (the bench's server runs with --save '' --appendonly no: none)",
        _redis,
        on_disk=False,
    ),
    Config(
        "grammy-session",
        "framework",
        title="grammY session() + storage-file (Node)",
        crash_safety=_GRAMMY,
        requires=("node",),
        file_per_key=True,
        node_mode="session",
    ),
    Config(
        "ptb-pickle-60s",
        "framework",
        title="python-telegram-bot PicklePersistence, 60 s interval (default)",
        crash_safety="in memory, pickled every 60 s (the whole file rewritten in place once per changed chat), no "
        "fsync: a crash loses up to 60 s of updates; a crash mid-dump loses all sessions",
        requires=("telegram",),
        make=lambda root, _: PTBDriver(root, flush=False),
    ),
    Config(
        "ptb-pickle-flush",
        "framework",
        title="python-telegram-bot PicklePersistence, flush per update",
        crash_safety=_PICKLED_EVERY_UPDATE.format(when="after every update", what="update"),
        requires=("telegram",),
        make=lambda root, _: PTBDriver(root, flush=True),
    ),
]


def find(config_id: str) -> Config:
    """The configuration whose :attr:`Config.id` is ``config_id`` (``name@level``)."""
    for item in CONFIGS:
        if item.id == config_id:
            return item
    raise KeyError(f"no configuration {config_id!r}")


def missing_modules(item: Config) -> list[str]:
    """The Python modules ``item`` needs that are not installed (``node`` and servers are checked elsewhere)."""
    missing = []
    for module in item.requires:
        if module in ("node", "redis-server"):
            continue
        found = False
        with contextlib.suppress(ImportError, ValueError):
            found = importlib.util.find_spec(module) is not None
        if not found:
            missing.append(module)
    return missing
