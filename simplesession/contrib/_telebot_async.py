"""Sessions for pyTelegramBotAPI's ``AsyncTeleBot``: :class:`AsyncSessionMiddleware`.

Built on :mod:`simplesession.aio`: ``pre_process`` loads the session in a worker thread
(updates of one chat queue on the loop first) and ``post_process`` writes it back there.
AsyncTeleBot runs each update as a task of its own; where it skips ``post_process`` (a
later middleware's ``CancelUpdate``, an exception, a handler it refuses to call, a
cancelled task), the end of that task ends the update: nothing written, locks released.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import timedelta
from functools import partial, partialmethod
from typing import Any

from telebot.asyncio_handler_backends import BaseMiddleware

from .. import aio
from ..session import DEFAULT_SWEEP_INTERVAL
from ..session import SessionMiddleware as Core
from ._telebot_common import (
    SESSION,
    SYNC_TELEBOT,
    UPDATE_TYPES,
    TelebotContext,
    TelebotKeyFunction,
    UpdateTypes,
    claim,
    core,
    given,
    multi_core,
    replace,
)

__all__ = ["AsyncSessionMiddleware"]

_log = logging.getLogger("simplesession.contrib.telebot")

_SYNC_REFUSED = (
    "AsyncSessionMiddleware is for AsyncTeleBot: the blocking TeleBot would call its pre_process "
    "and drop the coroutine it returns, so no handler would get a session. Give "
    "telebot.TeleBot(token, use_class_middlewares=True) a SessionMiddleware, with the same options"
)


class AsyncSessionMiddleware(UpdateTypes, BaseMiddleware):
    """A middleware for ``AsyncTeleBot``: ``bot.setup_middleware(AsyncSessionMiddleware(...))``.

    AsyncTeleBot needs no ``use_class_middlewares`` (it has only class middlewares). Takes
    the options of :func:`simplesession.session` (``initial``, ``storage``, ``prefix``,
    ``ttl``, ``migrations``, ``validate``, ``max_size``, ``sweep_interval``), with
    ``get_session_key`` given the telebot object (``Message``, ``CallbackQuery``, ...). The
    default key is the chat id.

    A handler (``async def``) that names a ``session`` parameter gets the session; one that
    names ``data`` can replace it, ``data["session"] = {...}``, or delete it,
    ``data["session"] = None``. For updates with no session key, ``session`` is a
    :class:`~simplesession.contrib.telebot.LazySession` that raises ``SessionKeyError`` when
    touched.

    The session is loaded before the handler runs, its lock held by the update's task
    until ``post_process``, which writes it back only if it changed and the handler did not
    raise. Loading, waiting for the lock and writing happen in worker threads; updates of
    one chat queue on the event loop, so AsyncTeleBot's concurrent tasks lose no update.
    ``lazy=True`` is refused: a lazy session would read on the event loop when first touched.
    """

    update_sensitive = True  # telebot then passes the update's kind, which the core's Context needs
    _other_bot = SYNC_TELEBOT
    _refusal = _SYNC_REFUSED

    def __init__(self, *, get_session_key: TelebotKeyFunction | None = None, **options: Any) -> None:
        # BaseMiddleware.__init__ does nothing, so it is not called.
        self._setup(core(get_session_key, options))

    @classmethod
    def multi(
        cls, *, sweep_interval: float | timedelta | None = DEFAULT_SWEEP_INTERVAL, **fragments: Mapping[str, Any]
    ) -> AsyncSessionMiddleware:
        """Several sessions per update, as :func:`simplesession.multi_session`: ``session.user``, ...

        ``AsyncSessionMiddleware.multi(user={"initial": ..., "get_session_key": ...}, chat={...})``:
        each fragment's ``get_session_key`` gets the telebot object. ``session.user = None``
        deletes one fragment, ``data["session"] = None`` all of them.
        """
        middleware = cls.__new__(cls)
        middleware._setup(multi_core(sweep_interval, fragments))
        return middleware

    def _setup(self, core: Core) -> None:
        self._sessions = aio.Sessions(core)  # refuses lazy sessions, saying why
        self.update_types = list(UPDATE_TYPES)
        self._key = f"simplesession:{id(self):x}"  # no identifier: no handler can name it
        self._reaping: set[asyncio.Task[None]] = set()  # strong references, until each is done

    async def _pre(self, kind: str, obj: Any, data: dict[str, Any]) -> None:
        claim(data, "AsyncSessionMiddleware.multi")
        ctx = TelebotContext(kind, obj)
        pending = _Pending(await self._sessions.begin(ctx), ctx)  # begin unlocks by itself if it fails
        data[self._key] = pending
        # No await from begin to here: the update's task cannot end in between unseen.
        task = asyncio.current_task()
        if task is not None:  # AsyncTeleBot gathers each update's dispatch: a task of its own
            task.add_done_callback(partial(self._reap, pending))
        pending.given = data[SESSION] = given(self._sessions.middleware, ctx, lazy=False)

    async def _post(self, kind: str, obj: Any, data: dict[str, Any], exception: BaseException | None) -> None:
        pending = data.get(self._key)
        if not isinstance(pending, _Pending) or pending.done:
            return
        pending.done = True
        failed = exception is not None
        try:
            if not failed:
                replace(pending.ctx, data, pending.given)  # replaced, or deleted with None
        except BaseException:
            failed = True
            raise
        finally:
            await self._sessions.end(pending.run, failed=failed)

    def _reap(self, pending: _Pending, task: asyncio.Task[Any]) -> None:
        """The update's task ended: end its sessions, if post_process did not."""
        if pending.done:
            return
        pending.done = True
        # Its handler did not run or did not finish: nothing is written, the locks go.
        _log.debug("session %r: its update ended before post_process; nothing written", pending.ctx.session_key)
        ending = task.get_loop().create_task(self._sessions.end(pending.run, failed=True))
        self._reaping.add(ending)
        ending.add_done_callback(partial(self._reaped, pending))

    def _reaped(self, pending: _Pending, ending: asyncio.Task[None]) -> None:
        self._reaping.discard(ending)
        if not ending.cancelled() and ending.exception() is not None:
            _log.error("session %r: could not release its lock", pending.ctx.session_key, exc_info=ending.exception())


# update_sensitive: telebot awaits pre_process_<kind> and post_process_<kind>.
for _kind in UPDATE_TYPES:
    setattr(AsyncSessionMiddleware, f"pre_process_{_kind}", partialmethod(AsyncSessionMiddleware._pre, _kind))
    setattr(AsyncSessionMiddleware, f"post_process_{_kind}", partialmethod(AsyncSessionMiddleware._post, _kind))


class _Pending:
    """One update between our pre_process and its end."""

    __slots__ = ("ctx", "done", "given", "run")

    def __init__(self, run: aio.Run, ctx: TelebotContext) -> None:
        self.run = run
        self.ctx = ctx
        self.given: Any = None  # what the handler got as ``session``
        self.done = False
