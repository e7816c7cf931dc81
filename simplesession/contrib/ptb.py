"""Persistence for python-telegram-bot (v20+): each chat's, user's and the bot's data a session of its own.

    from simplesession import FileStorage
    from simplesession.contrib.ptb import SessionPersistence

    app = ApplicationBuilder().token(token).persistence(SessionPersistence(FileStorage())).build()

python-telegram-bot keeps ``chat_data``, ``user_data``, ``bot_data``, the callback data cache
and the states of persistent conversations in memory, and hands them to its persistence every
``update_interval`` seconds (only those of chats and users that had updates since) and when
it shuts down. :class:`SessionPersistence` writes each of them at once, as its own session, under
its lock, in a worker thread; at start-up it reads them all back.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from typing import Any, Protocol, TypeVar

try:
    from telegram.ext import BasePersistence, PersistenceInput
except ImportError as exc:  # only this module needs python-telegram-bot, an optional extra
    raise ImportError(
        "simplesession.contrib.ptb needs python-telegram-bot: pip install 'simplesession[ptb]' "
        "(or, in a checkout of simplesession: pip install -e '.[ptb]')"
    ) from exc

from .. import data
from ..errors import SessionDataError

__all__ = ["DEFAULT_UPDATE_INTERVAL", "SessionPersistence"]

_log = logging.getLogger(__name__)

DEFAULT_UPDATE_INTERVAL = 1.0
"""Seconds between two runs of python-telegram-bot's ``update_persistence`` (its own default
is 60): the most a crash of the process can lose. A run writes only what changed."""

Data = dict[Any, Any]
ConversationKey = tuple["int | str", ...]
CallbackData = tuple[list[tuple[str, float, dict[str, Any]]], dict[str, str]]
"""What python-telegram-bot's callback data cache persists: its keyboards as
``(keyboard uuid, access time, {button uuid: callback_data})`` and ``{query id: keyboard uuid}``."""

_T = TypeVar("_T")
_ID = re.compile(r"-?[1-9][0-9]*|0")  # an int as str() writes it, so that keys and ids map one to one
_JSON_RULE = "JSON data (dict with str keys, list, str, int, float, bool, None)"


class _Store(Protocol):
    """What the persistence needs of a storage; simplesession's own storages all have it."""

    def read(self, key: str) -> Any: ...
    def write(self, key: str, value: Any) -> None: ...
    def delete(self, key: str) -> None: ...
    def keys(self) -> Iterator[str]: ...
    def lock(self, key: str) -> AbstractContextManager[Any]: ...


class SessionPersistence(BasePersistence[Data, Data, Data]):
    """A ``telegram.ext.BasePersistence`` on any simplesession storage.

    Give it to ``ApplicationBuilder().persistence(...)``. Each piece of data is a session of
    its own, under these keys (``prefix`` is ``"ptb:"`` by default):

    - ``ptb:chat:<chat id>``: that chat's ``chat_data``; ``ptb:user:<user id>``: ``user_data``;
    - ``ptb:bot``: ``bot_data``;
    - ``ptb:callback_data``: the callback data cache (with ``arbitrary_callback_data``), as
      ``{"keyboards": [[uuid, access time, {button uuid: data}], ...], "queries": {...}}``;
    - ``ptb:conv:<name>:<key as JSON>``: the state of one conversation of a persistent
      ``ConversationHandler``, as ``{"name": ..., "key": [...], "state": ...}``; the key, a
      tuple, is stored as a JSON list (its ints stay ints, its strs strs) and comes back a tuple.

    Whatever python-telegram-bot hands over (``update_chat_data()`` and the others, which its
    ``update_persistence`` calls every ``update_interval`` seconds and at ``shutdown()``) is
    written before the call returns, if its JSON differs from what this persistence last read
    or wrote there, under the key's lock; ``drop_chat_data()``/``drop_user_data()`` delete the
    key, and an ended conversation is deleted too. So a crash loses at most what changed since
    the last run, never a chat already written, and a deleted chat never comes back. The
    storage's I/O runs in worker threads (``asyncio.to_thread``), never on the event loop.

    The data must be JSON data, as all sessions: ``chat_data``, ``user_data`` and
    ``bot_data`` plain dicts with str keys (the default context types), conversation states
    and callback data JSON values too. Anything else raises
    :class:`~simplesession.SessionDataError` naming the chat (or user, ...) and the place in
    the value; that chat's stored data stays as it was, and the others are written all the same.

    One running ``Application`` per storage and ``prefix``: python-telegram-bot keeps the data
    in memory, and two processes would overwrite each other's, as with ``PicklePersistence``.

    :param storage: where the sessions go: any storage with ``read``, ``write``, ``delete``,
        ``keys`` and ``lock`` (all of simplesession's storages).
    :param prefix: what every key starts with, so that several bots can share one storage.
    :param store_data: which kinds of data to keep (python-telegram-bot's ``PersistenceInput``).
    :param update_interval: seconds between two runs of ``update_persistence``: the most
        changes a crash can lose (default :data:`DEFAULT_UPDATE_INTERVAL`, 1 s).
    """

    def __init__(
        self,
        storage: _Store,
        *,
        prefix: str = "ptb:",
        store_data: PersistenceInput | None = None,
        update_interval: float = DEFAULT_UPDATE_INTERVAL,
    ) -> None:
        missing = [
            name for name in ("read", "write", "delete", "keys", "lock") if not callable(getattr(storage, name, None))
        ]
        if missing:
            raise TypeError(
                f"SessionPersistence needs a storage with {', '.join(missing)} (it lists the stored chats "
                "at start-up and locks each one it writes): use one of simplesession's storages"
            )
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {type(prefix).__name__}")
        super().__init__(store_data=store_data, update_interval=update_interval)
        self.storage = storage
        self.prefix = prefix
        # The JSON of what each key holds, as this process last read or wrote it: a run of
        # update_persistence hands over bot_data and every used chat, changed or not.
        self._written: dict[str, bytes] = {}
        # The newest call for each key: a write still running in a thread when a later one
        # was handed over (its caller cancelled, say) must not land after it.
        self._latest: dict[str, int] = {}
        self._tickets = itertools.count()
        self._books = threading.Lock()  # guards both dicts, which worker threads use
        self._running: set[asyncio.Future[Any]] = set()

    # -- keys --------------------------------------------------------------------------

    def chat_key(self, chat_id: int) -> str:
        """The key of a chat's ``chat_data``: ``ptb:chat:<chat id>``."""
        return f"{self.prefix}chat:{_check_id(chat_id, 'chat')}"

    def user_key(self, user_id: int) -> str:
        """The key of a user's ``user_data``: ``ptb:user:<user id>``."""
        return f"{self.prefix}user:{_check_id(user_id, 'user')}"

    @property
    def bot_key(self) -> str:
        """The key of ``bot_data``: ``ptb:bot``."""
        return f"{self.prefix}bot"

    @property
    def callback_data_key(self) -> str:
        """The key of the callback data cache: ``ptb:callback_data``."""
        return f"{self.prefix}callback_data"

    def conversation_key(self, name: str, key: ConversationKey) -> str:
        """The key of one conversation's state: ``ptb:conv:<name>:<key as a JSON list>``."""
        return f"{self.prefix}conv:{name}:{_key_json(key)}"

    # -- loading, at start-up ------------------------------------------------------------

    async def get_chat_data(self) -> dict[int, Data]:
        """Every stored chat's ``chat_data``, by chat id (an int)."""
        return await self._call(self._load_ids, "chat")

    async def get_user_data(self) -> dict[int, Data]:
        """Every stored user's ``user_data``, by user id (an int)."""
        return await self._call(self._load_ids, "user")

    async def get_bot_data(self) -> Data:
        """The stored ``bot_data``, or ``{}``."""
        return await self._call(self._load_bot)

    async def get_callback_data(self) -> CallbackData | None:
        """The stored callback data cache, or ``None``."""
        return await self._call(self._load_callback_data)

    async def get_conversations(self, name: str) -> dict[ConversationKey, object]:
        """The states of the conversations of the handler ``name``, by key (a tuple)."""
        return await self._call(self._load_conversations, name)

    # -- writing, as python-telegram-bot hands it over -------------------------------------

    async def update_chat_data(self, chat_id: int, data: Data) -> None:
        """Store ``chat_data`` of ``chat_id`` now (if it changed)."""
        await self._put(self.chat_key(chat_id), data, f"chat_data of chat {chat_id}", "chat_data")

    async def update_user_data(self, user_id: int, data: Data) -> None:
        """Store ``user_data`` of ``user_id`` now (if it changed)."""
        await self._put(self.user_key(user_id), data, f"user_data of user {user_id}", "user_data")

    async def update_bot_data(self, data: Data) -> None:
        """Store ``bot_data`` now (if it changed)."""
        await self._put(self.bot_key, data, "bot_data", "bot_data")

    async def update_callback_data(self, data: CallbackData) -> None:
        """Store the callback data cache now (if it changed)."""
        keyboards, queries = data
        value = {"keyboards": [[uuid, when, buttons] for uuid, when, buttons in keyboards], "queries": queries}
        await self._put(self.callback_data_key, value, "the callback data cache", "callback_data")

    async def update_conversation(self, name: str, key: ConversationKey, new_state: object | None) -> None:
        """Store the state of one conversation now; ``None`` (it ended) deletes it."""
        stored = self.conversation_key(name, key)
        if new_state is None:
            await self._drop(stored)
            return
        value = {"name": name, "key": list(key), "state": new_state}
        await self._put(stored, value, f"conversation {name!r} {key!r}", "conversation")

    async def drop_chat_data(self, chat_id: int) -> None:
        """Delete the stored ``chat_data`` of ``chat_id``."""
        await self._drop(self.chat_key(chat_id))

    async def drop_user_data(self, user_id: int) -> None:
        """Delete the stored ``user_data`` of ``user_id``."""
        await self._drop(self.user_key(user_id))

    async def refresh_chat_data(self, chat_id: int, chat_data: Data) -> None:
        """Nothing: the data in memory is the newest (one Application per storage and prefix)."""

    async def refresh_user_data(self, user_id: int, user_data: Data) -> None:
        """Nothing: the data in memory is the newest."""

    async def refresh_bot_data(self, bot_data: Data) -> None:
        """Nothing: the data in memory is the newest."""

    async def flush(self) -> None:
        """Wait for the writes still running (each update was written when it was handed over)."""
        while self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    # -- the worker threads' side ----------------------------------------------------------

    async def _call(self, function: Callable[..., _T], *args: Any) -> _T:
        # A task of its own, shielded: if the caller is cancelled the thread goes on anyway,
        # and flush() still waits for it.
        task = asyncio.ensure_future(asyncio.to_thread(function, *args))
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        return await asyncio.shield(task)

    def _ticket(self, key: str) -> int:
        with self._books:
            ticket = self._latest[key] = next(self._tickets)
        return ticket

    async def _put(self, key: str, value: Any, what: str, root: str) -> None:
        await self._call(self._store, key, value, self._ticket(key), what, root)

    async def _drop(self, key: str) -> None:
        await self._call(self._remove, key, self._ticket(key))

    def _store(self, key: str, value: Any, ticket: int, what: str, root: str) -> None:
        refused: data.NotSessionData | None = None
        try:
            checked = data.checked_copy(value)
        except data.NotSessionData as problem:
            refused = problem
        if refused is not None:  # raised here, so that it carries no traceback of the checks
            where = root + refused.where.removeprefix("session")
            raise SessionDataError(
                f"cannot store {what} ({key!r}): {where} {refused.what}; SessionPersistence stores only "
                f"{_JSON_RULE}, so {what} stays as it was stored before",
                key=key,
                where=where,
            )
        raw = data.encode(checked)
        with self.storage.lock(key):
            with self._books:
                if self._latest.get(key) != ticket or self._written.get(key, _NOTHING) == raw:
                    return  # a later call wins, or the store holds this already
            self.storage.write(key, checked)
            with self._books:
                self._written[key] = raw

    def _remove(self, key: str, ticket: int) -> None:
        with self.storage.lock(key):
            with self._books:
                if self._latest.get(key) != ticket:
                    return
            self.storage.delete(key)
            with self._books:
                self._written.pop(key, None)

    def _read(self, key: str) -> Any:
        value = self.storage.read(key)
        if value is not None:
            with self._books:
                self._written[key] = data.encode(value)
        return value

    def _keys(self, head: str) -> list[str]:
        return [key for key in self.storage.keys() if key.startswith(head)]  # noqa: SIM118 (not a dict)

    def _load_ids(self, kind: str) -> dict[int, Data]:
        head = f"{self.prefix}{kind}:"
        loaded: dict[int, Data] = {}
        for key in self._keys(head):
            ident = key[len(head) :]
            if not _ID.fullmatch(ident):
                _log.warning("%r: not a %s id after %r; left alone", key, kind, head)
                continue
            value = self._read(key)
            if value is None:
                continue  # deleted or expired since it was listed
            if type(value) is not dict:
                self._unusable(key, f"{kind}_data is a {type(value).__name__}, not a dict")
                continue
            loaded[int(ident)] = value
        return loaded

    def _load_bot(self) -> Data:
        value = self._read(self.bot_key)
        if value is None:
            return {}
        if type(value) is not dict:
            self._unusable(self.bot_key, f"bot_data is a {type(value).__name__}, not a dict")
            return {}
        return value

    def _load_callback_data(self) -> CallbackData | None:
        key = self.callback_data_key
        value = self._read(key)
        if value is None:
            return None
        try:
            keyboards = [(_str(uuid), _number(when), _dict(buttons)) for uuid, when, buttons in value["keyboards"]]
            queries = {_str(query): _str(uuid) for query, uuid in _dict(value["queries"]).items()}
        except (TypeError, ValueError, KeyError) as exc:
            self._unusable(key, f"not a callback data cache ({exc!r})")
            return None
        return keyboards, queries

    def _load_conversations(self, name: str) -> dict[ConversationKey, object]:
        loaded: dict[ConversationKey, object] = {}
        for key in self._keys(f"{self.prefix}conv:{name}:"):
            value = self._read(key)
            if value is None:
                continue
            if type(value) is not dict or value.get("name") != name:
                if type(value) is dict and type(value.get("name")) is str:
                    continue  # another handler's, whose name starts with this one's and a colon
                self._unusable(key, "not a conversation's state")
                continue
            parts = value.get("key")
            if type(parts) is not list or not all(type(part) in (int, str) for part in parts) or "state" not in value:
                self._unusable(key, "not a conversation's state")
                continue
            loaded[tuple(parts)] = value["state"]
        return loaded

    def _unusable(self, key: str, reason: str) -> None:
        # Stored, but not what python-telegram-bot can take: kept for a human, out of the
        # way (the storage logs an ERROR), and the bot starts that piece afresh.
        set_aside = getattr(self.storage, "set_aside", None)
        if callable(set_aside):
            set_aside(key, f"SessionPersistence cannot load it: {reason}")
        else:
            _log.error("%r: SessionPersistence cannot load it: %s; ignored", key, reason)
        with self._books:
            self._written.pop(key, None)


_NOTHING = data.encode({})  # what a key that holds nothing is taken to hold: an empty dict is not written


def _check_id(ident: int, kind: str) -> int:
    if type(ident) is not int:
        raise TypeError(f"a {kind} id is an int, not {type(ident).__name__}: {ident!r}")
    return ident


def _key_json(key: ConversationKey) -> str:
    if type(key) is not tuple or not all(type(part) in (int, str) for part in key):
        raise TypeError(f"a conversation key is a tuple of ints and strs, not {key!r}")
    return json.dumps(list(key), ensure_ascii=False, separators=(",", ":"))


def _str(value: object) -> str:
    if type(value) is not str:
        raise TypeError(f"{value!r} is not a str")
    return value


def _number(value: object) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise TypeError(f"{value!r} is not a number")
    return float(value)


def _dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeError(f"{value!r} is not a dict")
    return value
