"""Sessions for pyTelegramBotAPI: each handler of a ``TeleBot`` gets its ``session``.

    bot = TeleBot(token, use_class_middlewares=True)
    bot.setup_middleware(SessionMiddleware(initial=lambda: {"count": 0}))

    @bot.message_handler(commands=["count"])
    def count(message, session):
        session["count"] += 1

For ``AsyncTeleBot``: ``bot.setup_middleware(AsyncSessionMiddleware(...))``, the same options,
``async def`` handlers. telebot's states in a simplesession storage:
``TeleBot(token, state_storage=StateStorage(storage))``, or ``AsyncStateStorage`` for
``AsyncTeleBot``.

The session core (:mod:`simplesession.session`) does all the work; this module turns
telebot's ``pre_process``/``post_process`` calls into the core's ``begin``/``end`` and
makes sure every update ends, even on the paths where telebot skips ``post_process``. The
async middleware and the state storages live in private modules beside it, and are
imported from here.
"""

from __future__ import annotations

import inspect
import logging
import sys
import threading
from collections.abc import Mapping
from datetime import timedelta
from functools import partialmethod
from types import FrameType
from typing import TYPE_CHECKING, Any

try:
    from telebot.handler_backends import BaseMiddleware
except ImportError as exc:  # only this module needs telebot, an optional extra
    raise ImportError(
        "simplesession.contrib.telebot needs pyTelegramBotAPI: pip install pyTelegramBotAPI "
        "(or, in a checkout of simplesession: pip install -e '.[telebot]')"
    ) from exc

from ..session import DEFAULT_SWEEP_INTERVAL
from ..session import SessionMiddleware as _Core
from ._telebot_async import AsyncSessionMiddleware
from ._telebot_common import (
    ASYNC_TELEBOT,
    SESSION,
    UPDATE_TYPES,
    LazySession,
    TelebotContext,
    TelebotKeyFunction,
    UpdateTypes,
    claim,
    core,
    given,
    multi_core,
    replace,
)
from ._telebot_states import AsyncStateStorage, StateStorage

if TYPE_CHECKING:
    from ..session import AnyRun

__all__ = [
    "UPDATE_TYPES",
    "AsyncSessionMiddleware",
    "AsyncStateStorage",
    "LazySession",
    "SessionMiddleware",
    "StateStorage",
    "TelebotKeyFunction",
]

_log = logging.getLogger(__name__)

_ASYNC_REFUSED = (
    "SessionMiddleware is for the blocking TeleBot (telebot.TeleBot(token, use_class_middlewares=True)); "
    "AsyncTeleBot awaits its middlewares: give it an AsyncSessionMiddleware, with the same options, "
    "bot.setup_middleware(simplesession.contrib.telebot.AsyncSessionMiddleware(...))"
)


class SessionMiddleware(UpdateTypes, BaseMiddleware):
    """A class middleware for ``TeleBot(token, use_class_middlewares=True)``.

    Takes the options of :func:`simplesession.session` (``initial``, ``storage``, ``prefix``,
    ``ttl``, ``migrations``, ``validate``, ``max_size``, ``sweep_interval``, ``lazy``), with one
    difference: ``get_session_key`` gets the telebot object (``Message``, ``CallbackQuery``,
    ...). The default key is the chat id, also for a button pressed under a message.

    A handler that names a ``session`` parameter gets the session (``def h(message, session)``).
    One that names ``data`` (``def h(message, data)``) can replace it,
    ``data["session"] = {...}``, or delete it, ``data["session"] = None``. With ``lazy=True``,
    and for updates with no session key, ``session`` is a :class:`LazySession`.

    The session is locked from ``pre_process`` to ``post_process`` (both run in the one
    worker thread that handles the update) and written back there only if it changed and
    the handler did not raise. ``update_types`` may be narrowed to a subset of
    :data:`UPDATE_TYPES`.

    ``AsyncTeleBot`` is refused when it sets the middleware up, pointing to
    :class:`AsyncSessionMiddleware`: it would await each ``pre_process``, which here is a
    blocking call, and every update would fail.
    """

    update_sensitive = True  # telebot then passes the update's kind, which the core's Context needs
    _other_bot = ASYNC_TELEBOT
    _refusal = _ASYNC_REFUSED

    def __init__(self, *, get_session_key: TelebotKeyFunction | None = None, **options: Any) -> None:
        # BaseMiddleware.__init__ does nothing, so it is not called.
        self._setup(core(get_session_key, options), lazy=bool(options.get("lazy")))

    @classmethod
    def multi(
        cls, *, sweep_interval: float | timedelta | None = DEFAULT_SWEEP_INTERVAL, **fragments: Mapping[str, Any]
    ) -> SessionMiddleware:
        """Several sessions per update, as :func:`simplesession.multi_session`: ``session.user``, ...

        ``SessionMiddleware.multi(user={"initial": ..., "get_session_key": ...}, chat={...})``:
        each fragment's ``get_session_key`` gets the telebot object. ``session.user = None``
        deletes one fragment, ``data["session"] = None`` all of them.
        """
        middleware = cls.__new__(cls)
        middleware._setup(multi_core(sweep_interval, fragments), lazy=False)
        return middleware

    def _setup(self, core: _Core, *, lazy: bool) -> None:
        self._core = core
        self.update_types = list(UPDATE_TYPES)
        self._lazy = lazy
        self._key = f"simplesession:{id(self):x}"  # no identifier: no handler can name it
        self._local = threading.local()

    def _pre(self, kind: str, obj: Any, data: dict[str, Any]) -> None:
        dispatcher = sys._getframe(1)
        if dispatcher.f_code.co_flags & inspect.CO_COROUTINE:
            # Called from a coroutine, which will await the None this returns: whatever
            # async dispatcher this is, refuse before the session's lock is taken.
            raise TypeError(_ASYNC_REFUSED)
        self._reap(dispatcher)
        claim(data, "SessionMiddleware.multi")
        ctx = TelebotContext(kind, obj)
        pending = _Pending(self._core.begin(ctx), ctx, dispatcher)  # begin unlocks by itself if it fails
        self._pending().append(pending)
        data[self._key] = _Guard(self, pending)
        pending.given = data[SESSION] = given(self._core, ctx, lazy=self._lazy)

    def _post(self, kind: str, obj: Any, data: dict[str, Any], exception: BaseException | None) -> None:
        guard = data.get(self._key)
        if not isinstance(guard, _Guard) or guard.pending.done:
            return
        pending, failed = guard.pending, exception is not None
        try:
            if not failed:
                replace(pending.ctx, data, pending.given)
        except BaseException:
            failed = True
            raise
        finally:
            self._finish(pending, failed=failed)

    def _finish(self, pending: _Pending, *, failed: bool) -> None:
        if pending.done:
            return
        pending.done = True
        self._pending().remove(pending)
        self._core.end(pending.run, failed=failed)

    def _abandon(self, pending: _Pending, why: str, level: int) -> None:
        # An update that never reached post_process: its handler did not run or did not
        # finish, so nothing is written; the locks go, in the thread that holds them.
        _log.log(level, "session %r: %s; nothing written, lock released", pending.ctx.session_key, why)
        try:
            self._finish(pending, failed=True)
        except Exception:
            _log.exception("session %r: could not release its lock", pending.ctx.session_key)

    def _reap(self, dispatcher: FrameType) -> None:
        # An exception that escapes telebot's dispatch (a later middleware's pre_process, a
        # handler's KeyboardInterrupt) skips post_process, and its traceback keeps ``data``
        # (so the guard) alive, in a worker that keeps it. This thread's next update ends
        # such leftovers; one whose dispatch is still on the stack is a nested one, and live.
        pending = self._pending()
        if not pending:
            return
        live: set[tuple[int, object]] = set()
        frame: FrameType | None = dispatcher
        while frame is not None:
            live.add((id(frame), frame.f_code))
            frame = frame.f_back
        for left in [p for p in pending if p.dispatcher not in live]:
            self._abandon(left, "its update ended with an exception before post_process", logging.WARNING)

    def _pending(self) -> list[_Pending]:
        # Per thread: pre_process and post_process of an update run in one thread, and the
        # locks (reentrant, thread-owned) must be released by it.
        pending: list[_Pending] | None = getattr(self._local, "pending", None)
        if pending is None:
            pending = self._local.pending = []
        return pending


# update_sensitive: telebot calls pre_process_<kind> and post_process_<kind>.
for _kind in UPDATE_TYPES:
    setattr(SessionMiddleware, f"pre_process_{_kind}", partialmethod(SessionMiddleware._pre, _kind))
    setattr(SessionMiddleware, f"post_process_{_kind}", partialmethod(SessionMiddleware._post, _kind))


class _Pending:
    """One update between our pre_process and its end."""

    __slots__ = ("ctx", "dispatcher", "done", "given", "owner", "run")

    def __init__(self, run: AnyRun, ctx: TelebotContext, dispatcher: FrameType) -> None:
        self.run = run
        self.ctx = ctx
        self.given: Any = None  # what the handler got as ``session``
        self.owner = threading.get_ident()
        # Who dispatched the update, by identity: a reference would keep ``data`` alive.
        self.dispatcher = (id(dispatcher), dispatcher.f_code)
        self.done = False


class _Guard:
    """Sits in telebot's ``data``: when telebot drops ``data`` without calling
    post_process (a later middleware's ``CancelUpdate``, a handler signature telebot
    refuses), the update ends here, at once, in the thread that holds its locks."""

    __slots__ = ("middleware", "pending")

    def __init__(self, middleware: SessionMiddleware, pending: _Pending) -> None:
        self.middleware = middleware
        self.pending = pending

    def __del__(self) -> None:
        if not self.pending.done and threading.get_ident() == self.pending.owner:
            self.middleware._abandon(self.pending, "the update was cancelled before post_process", logging.DEBUG)
