"""telebot's states on simplesession's storages: :class:`StateStorage` and :class:`AsyncStateStorage`.

    bot = TeleBot(token, state_storage=StateStorage(FileStorage()))
    bot = AsyncTeleBot(token, state_storage=AsyncStateStorage(FileStorage()))

Each (bot, chat, user, thread, business connection) has one stored record,
``{"state": name, "data": {...}}``, changed only under its key's lock: ``storage.lock``
for the blocking bot, :func:`simplesession.aio.lock` (and the I/O in a worker thread) for
the async one. So ``add_data`` from concurrent updates loses nothing, and a crash leaves
each record as it was or as it became.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import ContextVar
from functools import partial
from types import TracebackType
from typing import Any, TypeAlias, TypeVar

from telebot.asyncio_storage import StateStorageBase as _AsyncBase
from telebot.storage import StateStorageBase as _Base

from .. import aio
from ..storage.base import Storage
from ..storage.locks import KeyLock

__all__ = ["AsyncStateStorage", "StateStorage"]

_T = TypeVar("_T")

Record: TypeAlias = "dict[str, Any]"
Id: TypeAlias = "int | str"
StateName: TypeAlias = "str | int"

# What a change of a record leaves to store: a record, None to delete it, or _KEEP.
_KEEP: Any = object()
Change: TypeAlias = "Callable[[Record | None], tuple[Record | None, Any]]"


class _States:
    """What both storages share: keys, records and the changes made to them."""

    def __init__(self, storage: Storage, *, prefix: str = "state:") -> None:
        if not isinstance(storage, Storage):
            raise TypeError(f"a state storage needs one of simplesession's storages (with locks), not {storage!r}")
        if not isinstance(prefix, str):
            raise TypeError(f"prefix must be a str, not {prefix!r}")
        self.storage = storage
        self.prefix = prefix

    def key(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> str:
        """The storage key of one record: ``<prefix><bot_id>/<chat_id>/<user_id>``, then
        ``/thread:<message_thread_id>`` and ``/business:<business_connection_id>`` when given
        (an empty bot id when there is none: telebot passes the id of its token)."""
        key = f"{self.prefix}{'' if bot_id is None else bot_id}/{chat_id}/{user_id}"
        if message_thread_id:  # as telebot's own keys: a falsy part is left out
            key += f"/thread:{message_thread_id}"
        if business_connection_id:
            key += f"/business:{business_connection_id}"
        return key

    def _read(self, key: str) -> Record | None:
        value = self.storage.read(key)
        if value is not None and not (isinstance(value, dict) and isinstance(value.get("data"), dict)):
            raise ValueError(
                f"{key!r} holds {type(value).__name__} data, not a telebot state record: does something else "
                "store under the state storage's prefix? Give it a prefix of its own"
            )
        return value

    def _apply(self, key: str, change: Change) -> Any:
        """``change`` the record of ``key`` (its lock held by the caller); what it returns."""
        record, result = change(self._read(key))
        if record is None:
            self.storage.delete(key)
        elif record is not _KEEP:
            self.storage.write(key, record)
        return result

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.storage!r}, prefix={self.prefix!r})"


def _name(state: Any) -> StateName:
    name = getattr(state, "name", state)  # a telebot State: its name, "Group:field"
    if isinstance(name, (str, int)) and not isinstance(name, bool):
        return name
    if name is None and state is not None:
        raise TypeError(f"the state {state!r} has no name: define it in a StatesGroup")
    raise TypeError(f"a state is a telebot State, a str or an int, not {state!r}")


def _set_state(state: StateName, record: Record | None) -> tuple[Record | None, Any]:
    if record is None:
        return {"state": state, "data": {}}, True
    return {**record, "state": state}, True


def _delete_state(record: Record | None) -> tuple[Record | None, Any]:
    return (None, True) if record is not None else (_KEEP, False)


def _set_data(key: str, name: str, value: Any, record: Record | None) -> tuple[Record | None, Any]:
    if record is None:  # as telebot's own storages: data belongs to a state
        raise RuntimeError(f"no state for {key!r}: set_state before add_data")
    record["data"][name] = value
    return record, True


def _save(data: Any, record: Record | None) -> tuple[Record | None, Any]:
    if record is None:
        return _KEEP, False
    if not isinstance(data, dict):
        raise TypeError(f"state data is a dict, not {type(data).__name__}")
    return {**record, "data": data}, True


def _reset_data(record: Record | None) -> tuple[Record | None, Any]:
    return _save({}, record)


class StateStorage(_States, _Base):
    """A state storage for the blocking ``TeleBot(token, state_storage=StateStorage(storage))``.

    ``bot.set_state``, ``get_state``, ``delete_state``, ``add_data``, ``reset_data``,
    ``retrieve_data`` and ``get_data`` keep their records in ``storage`` (any of
    simplesession's storages), one per key of :meth:`key`, under ``prefix`` (default
    ``"state:"``). States are stored by name (a ``State``'s ``.name``); data must be JSON
    data. Every change reads and writes under the key's lock; ``retrieve_data`` holds it
    from the start of its ``with`` block to the end, and writes the data back then, unless
    the block raised (the thread's other calls on that key go through inside the block; the
    block's ``data`` is written over the record's at its end). As telebot's own storages,
    ``add_data`` without a state raises ``RuntimeError``.
    """

    def set_state(
        self,
        chat_id: Id,
        user_id: Id,
        state: Any,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(self._change(key, partial(_set_state, _name(state))))

    def get_state(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> StateName | None:
        record = self._read(self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id))
        return None if record is None else record.get("state")

    def delete_state(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(self._change(key, _delete_state))

    def set_data(
        self,
        chat_id: Id,
        user_id: Id,
        key: str,
        value: Any,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        name = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(self._change(name, partial(_set_data, name, key, value)))

    def get_data(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> dict[str, Any]:
        record = self._read(self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id))
        return {} if record is None else dict(record["data"])

    def reset_data(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(self._change(key, _reset_data))

    def get_interactive_data(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> _Interactive:
        """What ``bot.retrieve_data`` returns: ``with ... as data:`` holds the key's lock, and
        writes ``data`` back at the end of the block (if a state is set and nothing raised)."""
        return _Interactive(self, self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id))

    def save(
        self,
        chat_id: Id,
        user_id: Id,
        data: dict[str, Any],
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(self._change(key, partial(_save, data)))

    def _change(self, key: str, change: Change) -> Any:
        # The thread's lock is re-entrant: a change inside a retrieve_data block goes through.
        with self.storage.lock(key):
            return self._apply(key, change)


class _Interactive:
    """``with bot.retrieve_data(...) as data:`` on a :class:`StateStorage`."""

    def __init__(self, states: StateStorage, key: str) -> None:
        self._states = states
        self._key = key
        self._lock: KeyLock | None = None
        self.data: dict[str, Any] = {}

    def __enter__(self) -> dict[str, Any]:
        lock = self._states.storage.lock(self._key)
        lock.__enter__()
        try:
            record = self._states._read(self._key)
        except BaseException:
            lock.__exit__(None, None, None)
            raise
        self.data = {} if record is None else record["data"]
        self._lock = lock
        return self.data

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        lock, self._lock = self._lock, None
        if lock is None:
            return
        try:
            if exc_type is None:
                # Read again: the block may have changed the state meanwhile (the lock is re-entrant).
                self._states._apply(self._key, partial(_save, self.data))
        finally:
            lock.__exit__(None, None, None)


class AsyncStateStorage(_States, _AsyncBase):
    """A state storage for ``AsyncTeleBot(token, state_storage=AsyncStateStorage(storage))``.

    As :class:`StateStorage`, for coroutines: each change holds the key with
    :func:`simplesession.aio.lock` (other coroutines of the loop, threads and processes
    wait) and reads and writes in a worker thread, never on the event loop. Inside
    ``async with bot.retrieve_data(...)``, which holds the key, the same key's other methods
    (``set_state``, say) go through without waiting for the block (also from tasks it
    starts, while it lasts); at its end the block writes its ``data`` over the record's.
    """

    async def set_state(
        self,
        chat_id: Id,
        user_id: Id,
        state: Any,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(await self._change(key, partial(_set_state, _name(state))))

    async def get_state(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> StateName | None:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        record = await _in_thread(self._read, key)
        return None if record is None else record.get("state")

    async def delete_state(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(await self._change(key, _delete_state))

    async def set_data(
        self,
        chat_id: Id,
        user_id: Id,
        key: str,
        value: Any,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        name = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(await self._change(name, partial(_set_data, name, key, value)))

    async def get_data(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> dict[str, Any]:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        record = await _in_thread(self._read, key)
        return {} if record is None else dict(record["data"])

    async def reset_data(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(await self._change(key, _reset_data))

    def get_interactive_data(
        self,
        chat_id: Id,
        user_id: Id,
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> _AsyncInteractive:
        """What ``bot.retrieve_data`` returns: ``async with ... as data:`` holds the key's lock,
        and writes ``data`` back at the end of the block (if a state is set and nothing raised)."""
        return _AsyncInteractive(self, self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id))

    async def save(
        self,
        chat_id: Id,
        user_id: Id,
        data: dict[str, Any],
        business_connection_id: str | None = None,
        message_thread_id: int | None = None,
        bot_id: int | None = None,
    ) -> bool:
        key = self.key(chat_id, user_id, business_connection_id, message_thread_id, bot_id)
        return bool(await self._change(key, partial(_save, data)))

    async def _change(self, key: str, change: Change) -> Any:
        async with self._locked(key):
            return await _in_thread(self._apply, key, change)

    @asynccontextmanager
    async def _locked(self, key: str) -> AsyncIterator[None]:
        storage = self.storage
        if any(hold.active and hold.storage is storage and hold.key == key for hold in _holding.get()):
            yield  # held already, by the retrieve_data block this runs in
            return
        async with aio.lock(storage, key):
            hold = _Hold(storage, key)
            _holding.set((*_holding.get(), hold))
            try:
                yield
            finally:
                # Tasks started in the block copied the context: the flag tells them it ended.
                hold.active = False
                _holding.set(tuple(other for other in _holding.get() if other is not hold))


class _Hold:
    """A key that a retrieve_data block holds, as its context (and its tasks') sees it."""

    __slots__ = ("active", "key", "storage")

    def __init__(self, storage: Storage, key: str) -> None:
        self.storage = storage
        self.key = key
        self.active = True


_holding: ContextVar[tuple[_Hold, ...]] = ContextVar("simplesession_telebot_states_held", default=())


class _AsyncInteractive:
    """``async with bot.retrieve_data(...) as data:`` on an :class:`AsyncStateStorage`."""

    def __init__(self, states: AsyncStateStorage, key: str) -> None:
        self._states = states
        self._key = key
        self._locked: Any = None
        self.data: dict[str, Any] = {}

    async def __aenter__(self) -> dict[str, Any]:
        locked = self._states._locked(self._key)
        await locked.__aenter__()
        try:
            record = await _in_thread(self._states._read, self._key)
        except BaseException:
            await locked.__aexit__(None, None, None)
            raise
        self.data = {} if record is None else record["data"]
        self._locked = locked
        return self.data

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        locked, self._locked = self._locked, None
        if locked is None:
            return
        try:
            if exc_type is None:
                # Read again: the block may have changed the state meanwhile.
                await _in_thread(self._states._apply, self._key, partial(_save, self.data))
        finally:
            await locked.__aexit__(None, None, None)


async def _in_thread(call: Callable[..., _T], *args: Any) -> _T:
    """``call(*args)`` in a worker thread. If the caller is cancelled meanwhile, it still
    waits for the thread to finish: a write must not land after its lock is released."""
    done = asyncio.get_running_loop().run_in_executor(None, partial(call, *args))
    try:
        return await asyncio.shield(done)
    except asyncio.CancelledError:
        while not done.done():
            try:
                await asyncio.wait({done})
            except asyncio.CancelledError:
                continue  # bounded: the thread ends by itself
        raise
