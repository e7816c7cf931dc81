"""simplesession for aiogram 3: FSM storage, event isolation across processes, and ``session``.

    storage = FileStorage(app_name="mybot-fsm")
    dp = Dispatcher(storage=SessionStorage(storage), events_isolation=SessionIsolation(storage))
    dp.update.outer_middleware(SessionMiddleware(initial=lambda: {"count": 0}))

    @dp.message(Command("count"))
    async def count(message: Message, session: dict[str, int]) -> None:
        session["count"] += 1

Every blocking step (waiting for a lock, reading, writing) runs in a worker thread, never on
the event loop. The FSM records and the sessions are kept by any simplesession storage, so
they survive restarts and are shared by every bot process on that storage.

**FSM keys.** One record per aiogram ``StorageKey``, under the key
``<prefix><bot_id>:<chat_id>:<user_id>`` followed, only where they differ from aiogram's
defaults, by ``:thread=<thread_id>``, ``:business=<business_connection_id>`` and
``:destiny=<destiny>`` (in that order; the two strings percent-encoded, so no field can run
into another). The default prefix is ``"aiogram:"``: ``aiogram:123:42:42``. The record is
``{"state": "Form:name", "data": {...}}``; it is deleted once it has neither.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, MutableMapping
from contextlib import asynccontextmanager, contextmanager
from datetime import timedelta
from typing import Any, TypeVar, cast
from urllib.parse import quote

try:
    from aiogram import BaseMiddleware
    from aiogram.fsm.state import State
    from aiogram.fsm.storage.base import DEFAULT_DESTINY, BaseEventIsolation, BaseStorage, StateType, StorageKey
    from aiogram.types import TelegramObject, Update
except ImportError as exc:  # only this module needs aiogram, an optional extra
    raise ImportError(
        "simplesession.contrib.aiogram needs aiogram 3.5 or newer: pip install 'simplesession[aiogram]'"
    ) from exc

from .. import aio
from ..context import Context
from ..session import DEFAULT_SWEEP_INTERVAL, lock_names, multi_session, session
from ..session import SessionMiddleware as _Core
from ..storage.base import Storage

__all__ = ["DEFAULT_PREFIX", "AiogramContext", "SessionIsolation", "SessionMiddleware", "SessionStorage", "fsm_key"]

DEFAULT_PREFIX = "aiogram:"
"""What FSM keys start with, unless ``prefix=`` says otherwise."""

_SESSION = "session"  # the handler's parameter names, as aiogram injects ``data`` by name
_CONTEXT = "session_context"
_T = TypeVar("_T")


def fsm_key(key: StorageKey, prefix: str = DEFAULT_PREFIX) -> str:
    """The simplesession key of an aiogram ``StorageKey`` (the format is in the module's doc).

    Distinct ``StorageKey`` values always give distinct keys: every field counts, also a
    thread id of 0 and an empty business connection id, which aiogram's own key builder drops.
    """
    for field in ("bot_id", "chat_id", "user_id"):
        if type(getattr(key, field)) is not int:
            raise TypeError(f"StorageKey.{field} must be an int, not {getattr(key, field)!r}")
    parts = [f"{prefix}{key.bot_id}", str(key.chat_id), str(key.user_id)]
    if key.thread_id is not None:
        if type(key.thread_id) is not int:
            raise TypeError(f"StorageKey.thread_id must be an int or None, not {key.thread_id!r}")
        parts.append(f"thread={key.thread_id}")
    if key.business_connection_id is not None:
        parts.append(f"business={quote(key.business_connection_id, safe='')}")
    if key.destiny != DEFAULT_DESTINY:
        parts.append(f"destiny={quote(key.destiny, safe='')}")
    return ":".join(parts)


# -- what this task holds ---------------------------------------------------------------------
#
# aiogram takes the isolation's lock around the whole update, and the handler then calls
# update_data: taking the record's lock again there would wait for itself. Nor may one task
# take two locks of one storage that happen to be one lock (FileStorage and SQLiteStorage
# keep 256 lock files, shared by all keys). So the locks that SessionIsolation and
# SessionMiddleware hold are noted in the task's context: a change to a record whose lock
# is among them needs no lock of its own, only to keep the task's own coroutines in turn.


class _Hold:
    __slots__ = ("live", "mutex", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.live = True  # a task started in the scope keeps the note after it ends: this says so
        self.mutex = asyncio.Lock()


_holds: contextvars.ContextVar[tuple[_Hold, ...]] = contextvars.ContextVar("simplesession_aiogram_holds", default=())


def _held(name: str) -> _Hold | None:
    for hold in _holds.get():
        if hold.live and hold.name == name:
            return hold
    return None


@contextmanager
def _holding(names: list[str]) -> Iterator[None]:
    holds = tuple(_Hold(name) for name in names)
    token = _holds.set(_holds.get() + holds)
    try:
        yield
    finally:
        for hold in holds:
            hold.live = False
        _holds.reset(token)


async def _to_end(call: Callable[[], _T]) -> _T:
    """``call()`` in a worker thread, awaited to its end even if the task is cancelled meanwhile:
    a write must not outlast the lock it was made under."""
    future = asyncio.get_running_loop().run_in_executor(None, call)
    cancelled = False
    while not future.done():
        try:
            await asyncio.wait((future,))
        except asyncio.CancelledError:
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return future.result()


def _check_storage(storage: object, who: str) -> Storage:
    if not isinstance(storage, Storage):
        raise TypeError(
            f"{who} needs a simplesession storage (FileStorage, SQLiteStorage, RedisStorage, ...), not {storage!r}"
        )
    return storage


def _check_prefix(prefix: object, who: str) -> str:
    if not isinstance(prefix, str):
        raise TypeError(f"{who}: prefix must be a str, not {prefix!r}")
    return prefix


# -- FSM --------------------------------------------------------------------------------------


class SessionStorage(BaseStorage):
    """aiogram's FSM storage on a simplesession storage: ``Dispatcher(storage=SessionStorage(storage))``.

    As aiogram's own storages: a missing record has no state and ``{}`` as data;
    ``set_state(key, None)`` forgets the state and ``set_data(key, {})`` the data; ``State``
    objects are stored as their name (``"Form:name"``). Data must be JSON data (else
    :class:`~simplesession.SessionDataError`, and nothing is stored). Every change is a
    read-modify-write of the key's record under its lock (so ``update_data`` loses nothing
    to another process), unless this update already holds that lock through
    :class:`SessionIsolation`. A record that is not of this shape is set aside (kept, an
    ERROR logged) and reads as empty. The storage's ``ttl`` applies to the records.

    ``close()``, which aiogram calls on shutdown, leaves the simplesession storage open: it
    is yours, and may serve other dispatchers and the session middleware too.
    """

    def __init__(self, storage: Storage, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.storage = _check_storage(storage, "SessionStorage")
        self.prefix = _check_prefix(prefix, "SessionStorage")

    def __repr__(self) -> str:
        return f"SessionStorage({self.storage!r}, prefix={self.prefix!r})"

    def key(self, key: StorageKey) -> str:
        """The simplesession key of ``key``'s record (see :func:`fsm_key`)."""
        return fsm_key(key, self.prefix)

    async def get_state(self, key: StorageKey) -> str | None:
        name = self.key(key)
        state, _ = await asyncio.to_thread(self._load, name)
        return state

    async def get_data(self, key: StorageKey) -> dict[str, Any]:
        name = self.key(key)
        _, data = await asyncio.to_thread(self._load, name)
        return data

    async def get_value(self, storage_key: StorageKey, dict_key: str, default: Any | None = None) -> Any | None:
        data = await self.get_data(storage_key)
        return data.get(dict_key, default)

    async def set_state(self, key: StorageKey, state: StateType = None) -> None:
        value = state.state if isinstance(state, State) else state
        if value is not None and not isinstance(value, str):
            raise TypeError(f"a state is a str, a State or None, not {state!r}")
        await self._change(key, lambda _, data: (value, data))

    async def set_data(self, key: StorageKey, data: Mapping[str, Any]) -> None:
        new = _dict(data)
        await self._change(key, lambda state, _: (state, new))

    async def update_data(self, key: StorageKey, data: Mapping[str, Any]) -> dict[str, Any]:
        more = _dict(data)
        new = await self._change(key, lambda state, old: (state, {**old, **more}))
        return dict(new)

    async def close(self) -> None:
        """Nothing to do: the simplesession storage stays open (see the class's doc)."""

    def _load(self, name: str) -> tuple[str | None, dict[str, Any]]:
        record = self.storage.read(name)
        if record is None:
            return None, {}
        if isinstance(record, dict) and set(record) <= {"state", "data"}:
            state, data = record.get("state"), record.get("data", {})
            if (state is None or isinstance(state, str)) and isinstance(data, dict):
                return state, data
        self.storage.set_aside(name, 'it is not an aiogram FSM record {"state": str | null, "data": {...}}')
        return None, {}

    async def _change(
        self,
        key: StorageKey,
        change: Callable[[str | None, dict[str, Any]], tuple[str | None, dict[str, Any]]],
    ) -> dict[str, Any]:
        name = self.key(key)

        def apply() -> dict[str, Any]:
            old = self._load(name)
            state, data = change(*old)
            if (state, data) != old:
                if state is None and not data:
                    self.storage.delete(name)
                else:
                    self.storage.write(name, {"state": state, "data": data})
            return data

        hold = _held(self.storage.lock_name(name))
        if hold is not None:  # this update holds the lock already (see _Hold)
            async with hold.mutex:
                return await _to_end(apply)
        async with aio.lock(self.storage, name):
            return await _to_end(apply)


def _dict(data: object) -> dict[str, Any]:
    if not isinstance(data, Mapping):
        raise TypeError(f"FSM data must be a dict, not {type(data).__name__}")
    return dict(data)


class SessionIsolation(BaseEventIsolation):
    """aiogram's event isolation, held across processes:
    ``Dispatcher(storage=..., events_isolation=SessionIsolation(storage))``.

    The updates of one FSM key (by default one user in one chat) run one at a time, whichever
    of the bot processes on ``storage`` gets them; aiogram loads the state only once the
    lock is held. The lock is that of the key's record (:func:`fsm_key` with ``prefix``), so
    with the same storage and prefix as the :class:`SessionStorage`, the record's changes
    take no further lock. Waiting longer than the storage's ``lock_timeout`` raises
    :class:`~simplesession.LockTimeout`.
    """

    def __init__(self, storage: Storage, *, prefix: str = DEFAULT_PREFIX) -> None:
        self.storage = _check_storage(storage, "SessionIsolation")
        self.prefix = _check_prefix(prefix, "SessionIsolation")

    def __repr__(self) -> str:
        return f"SessionIsolation({self.storage!r}, prefix={self.prefix!r})"

    @asynccontextmanager
    async def lock(self, key: StorageKey) -> AsyncGenerator[None, None]:
        name = fsm_key(key, self.prefix)
        async with aio.lock(self.storage, name):
            with _holding([self.storage.lock_name(name)]):
                yield

    async def close(self) -> None:
        """Nothing to do: the simplesession storage stays open."""


# -- sessions ---------------------------------------------------------------------------------


class AiogramContext(Context):
    """The :class:`~simplesession.Context` of an aiogram update, handed to ``get_session_key``
    and to handlers as ``session_context``.

    ``ctx.update`` is the update as the Bot API sends it (a dict), so ``ctx.chat_id``,
    ``ctx.from_id`` and any key function written for :class:`~simplesession.Bot` work
    unchanged; ``ctx.event`` is aiogram's ``Update``. ``ctx.session = None`` deletes the
    session, ``ctx.session = value`` replaces it.
    """

    __slots__ = ("event",)

    def __init__(self, event: Update) -> None:
        super().__init__(event.model_dump(mode="json", by_alias=True, exclude_none=True))
        self.event = event


class SessionMiddleware(BaseMiddleware):
    """``session`` for aiogram handlers: ``dp.update.outer_middleware(SessionMiddleware(initial=...))``.

    Takes the options of :func:`simplesession.session` (``initial``, ``storage``,
    ``get_session_key``, ``prefix``, ``ttl``, ``migrations``, ``validate``, ``max_size``,
    ``sweep_interval``), with their meaning there: the default key is the chat id;
    ``get_session_key`` gets an :class:`AiogramContext`. ``lazy=True`` is refused: a lazy
    session would be read on the event loop.

    A handler that names a ``session`` parameter gets the session; one that names
    ``session_context`` gets the :class:`AiogramContext`, to replace the session
    (``session_context.session = {...}``) or delete it (``session_context.session = None``).
    An update with no key (no chat) gets a ``session`` that raises
    :class:`~simplesession.SessionKeyError` when used.

    The session is loaded and locked before the handlers run and written back after them,
    only if it changed and nothing raised (an error that an ``errors`` handler deals with
    still counts: aiogram handles it outside this middleware). Updates of one chat never
    interleave, across tasks and processes.
    """

    def __init__(self, **options: Any) -> None:
        self._setup(session(**options))

    @classmethod
    def multi(
        cls, *, sweep_interval: float | timedelta | None = DEFAULT_SWEEP_INTERVAL, **fragments: Mapping[str, Any]
    ) -> SessionMiddleware:
        """Several sessions per update, as :func:`simplesession.multi_session`: ``session.user``, ...

        ``SessionMiddleware.multi(user={"initial": ..., "get_session_key": ...}, chat={...})``;
        ``session.user = None`` deletes one fragment, ``session_context.session = None`` all.
        """
        middleware = cls.__new__(cls)
        middleware._setup(multi_session(sweep_interval=sweep_interval, **fragments))
        return middleware

    def _setup(self, core: _Core) -> None:
        self._core = core
        self._sessions = aio.Sessions(core)

    async def __call__(
        self,
        handler: Callable[[TelegramObject, dict[str, Any]], Awaitable[Any]],
        event: TelegramObject,
        data: dict[str, Any],
    ) -> Any:
        update = event if isinstance(event, Update) else data.get("event_update")
        if not isinstance(update, Update):
            raise TypeError(
                f"SessionMiddleware got a {type(event).__name__} without its update: register it with "
                "dp.update.outer_middleware(SessionMiddleware(...))"
            )
        if _SESSION in data or _CONTEXT in data:
            raise TypeError(
                "data['session'] is taken (by another SessionMiddleware?): register one per dispatcher, "
                "and SessionMiddleware.multi(name={...}, ...) for several sessions per update"
            )
        ctx = AiogramContext(update)
        run = await self._sessions.begin(ctx)
        try:
            with _holding(lock_names(run.run)[0]):
                key = ctx.session_key
                data[_SESSION] = ctx.session if self._core.multi or key is not None else _NoSession(ctx)
                data[_CONTEXT] = ctx
                result = await handler(event, data)
        except BaseException:
            await self._sessions.end(run, failed=True)
            raise
        await self._sessions.end(run, failed=False)
        return result


class _NoSession(MutableMapping[str, Any]):
    """The ``session`` of an update with no session key: any use raises ``SessionKeyError``, saying why."""

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    def _dict(self) -> dict[str, Any]:
        return cast("dict[str, Any]", self._ctx.session)  # raises SessionKeyError

    def __getitem__(self, key: str) -> Any:
        return self._dict()[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._dict()[key] = value

    def __delitem__(self, key: str) -> None:
        del self._dict()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def __repr__(self) -> str:
        return "<no session: this update has no session key>"
