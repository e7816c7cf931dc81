"""Sessions for pyTelegramBotAPI: each handler of a ``TeleBot`` gets its ``session``.

    bot = TeleBot(token, use_class_middlewares=True)
    bot.setup_middleware(SessionMiddleware(initial=lambda: {"count": 0}))

    @bot.message_handler(commands=["count"])
    def count(message, session):
        session["count"] += 1

The session core (:mod:`simplesession.session`) does all the work; this module turns
telebot's ``pre_process``/``post_process`` calls into the core's ``begin``/``end`` and
makes sure every update ends, even on the paths where telebot skips ``post_process``.
"""

from __future__ import annotations

import inspect
import json
import logging
import sys
import threading
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from datetime import timedelta
from functools import partialmethod
from types import FrameType
from typing import TYPE_CHECKING, Any, cast

try:
    from telebot.handler_backends import BaseMiddleware
except ImportError as exc:  # only this module needs telebot, an optional extra
    raise ImportError(
        "simplesession.contrib.telebot needs pyTelegramBotAPI: pip install pyTelegramBotAPI "
        "(or, in a checkout of simplesession: pip install -e '.[telebot]')"
    ) from exc

from ..context import Context
from ..session import DEFAULT_SWEEP_INTERVAL, multi_session, session
from ..session import SessionMiddleware as _Core

if TYPE_CHECKING:
    from ..session import AnyRun

__all__ = ["UPDATE_TYPES", "LazySession", "SessionMiddleware"]

_log = logging.getLogger(__name__)

_SESSION = "session"  # the ``data`` key, so the name of the handler's parameter

# fmt: off
UPDATE_TYPES = (
    # messages, and buttons pressed under them
    "message", "edited_message", "channel_post", "edited_channel_post",
    "business_message", "edited_business_message", "callback_query",
    # from a user, in no chat
    "inline_query", "chosen_inline_query", "shipping_query", "pre_checkout_query", "poll_answer",
    # about a chat
    "my_chat_member", "chat_member", "chat_join_request", "message_reaction", "chat_boost", "removed_chat_boost",
)
# fmt: on
"""The update kinds (telebot's names) that get a session: those that come from a chat or a user."""

# telebot names one kind differently from its field in the Bot API's Update.
_API_FIELDS = {"chosen_inline_query": "chosen_inline_result"}

# AsyncTeleBot's module, which awaits what a middleware's pre_process returns.
_ASYNC_TELEBOT = "telebot.async_telebot"
_ASYNC_REFUSED = (
    "SessionMiddleware is for the blocking TeleBot: AsyncTeleBot awaits its middlewares, and "
    "simplesession has no async telebot middleware yet. Use telebot.TeleBot(token, "
    "use_class_middlewares=True) with bot.setup_middleware(SessionMiddleware(...)): its handlers "
    "run in worker threads (or simplesession.Bot, the library's own runner)"
)

TelebotKeyFunction = Callable[[Any], "str | None"]
"""``get_session_key`` here: the telebot object (a ``Message``, a ``CallbackQuery``, ...) to a key."""


class SessionMiddleware(BaseMiddleware):
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

    ``AsyncTeleBot`` is refused when it sets the middleware up: it would await each
    ``pre_process``, which here is a blocking call, and every update would fail.
    """

    update_sensitive = True  # telebot then passes the update's kind, which the core's Context needs

    def __init__(self, *, get_session_key: TelebotKeyFunction | None = None, **options: Any) -> None:
        # BaseMiddleware.__init__ does nothing, so it is not called.
        self._setup(session(get_session_key=_telebot_key(get_session_key), **options), lazy=bool(options.get("lazy")))

    @classmethod
    def multi(
        cls, *, sweep_interval: float | timedelta | None = DEFAULT_SWEEP_INTERVAL, **fragments: Mapping[str, Any]
    ) -> SessionMiddleware:
        """Several sessions per update, as :func:`simplesession.multi_session`: ``session.user``, ...

        ``SessionMiddleware.multi(user={"initial": ..., "get_session_key": ...}, chat={...})``:
        each fragment's ``get_session_key`` gets the telebot object. ``session.user = None``
        deletes one fragment, ``data["session"] = None`` all of them.
        """
        adapted: dict[str, Any] = {}
        for name, options in fragments.items():
            if isinstance(options, Mapping) and options.get("get_session_key") is not None:
                options = {**options, "get_session_key": _telebot_key(options["get_session_key"])}
            adapted[name] = options
        middleware = cls.__new__(cls)
        middleware._setup(multi_session(sweep_interval=sweep_interval, **adapted), lazy=False)
        return middleware

    @property
    def update_types(self) -> list[str]:
        """The update kinds that get a session (telebot's names): :data:`UPDATE_TYPES`, or fewer."""
        # The middleware never sees the bot it is given to; but AsyncTeleBot reads this
        # from its own module, at setup_middleware (hasattr) and for every update, before
        # any pre_process: refusing there takes no lock and loses no update.
        if sys._getframe(1).f_globals.get("__name__") == _ASYNC_TELEBOT:
            raise TypeError(_ASYNC_REFUSED)
        return self._update_types

    @update_types.setter
    def update_types(self, kinds: list[str]) -> None:
        self._update_types = kinds

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
        if _SESSION in data:
            raise TypeError(
                "data['session'] is taken (by another SessionMiddleware?): set up one per bot, "
                "and SessionMiddleware.multi(name={...}, ...) for several sessions per update"
            )
        ctx = _TelebotContext(kind, obj)
        pending = _Pending(self._core.begin(ctx), ctx, dispatcher)  # begin unlocks by itself if it fails
        self._pending().append(pending)
        data[self._key] = _Guard(self, pending)
        if self._core.multi or (not self._lazy and ctx.session_key is not None):
            pending.given = ctx.session  # the loaded value, or a MultiSession (no I/O)
        else:
            pending.given = LazySession(ctx)
        data[_SESSION] = pending.given

    def _post(self, kind: str, obj: Any, data: dict[str, Any], exception: BaseException | None) -> None:
        guard = data.get(self._key)
        if not isinstance(guard, _Guard) or guard.pending.done:
            return
        pending, failed = guard.pending, exception is not None
        try:
            value = data.get(_SESSION, pending.given)
            if not failed and value is not pending.given:
                pending.ctx.session = value  # replaced, or deleted with None
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


class LazySession(MutableMapping[str, Any]):
    """The ``session`` of a lazy middleware: read (and locked) on first use, not at all without.

    It acts on the session dict: ``session["count"] += 1``, ``"x" in session``, ...;
    ``session.value`` is the session itself, whatever its JSON type (``None`` if there is
    none and no ``initial``). Replace or delete it through ``data``, as a non-lazy one.
    Updates with no session key get one too: touching it raises ``SessionKeyError``.
    """

    __slots__ = ("_ctx",)

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx

    @property
    def value(self) -> Any:
        """The session, loaded now if it was not yet."""
        return self._ctx.session

    def _dict(self) -> dict[str, Any]:
        value = self._ctx.session
        if not isinstance(value, dict):
            raise TypeError(f"this session is a {type(value).__name__}, not a dict; session.value is the session")
        return value

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
        return f"<LazySession {self._ctx.session_key!r}>"


class _TelebotContext(Context):
    """The core's Context over a telebot object, so that it keys and loads sessions unchanged."""

    __slots__ = ("obj",)

    def __init__(self, kind: str, obj: Any) -> None:
        super().__init__({_API_FIELDS.get(kind, kind): _raw(obj)})
        self.obj = obj


def _raw(obj: Any) -> dict[str, Any]:
    raw = getattr(obj, "json", None)  # Message and CallbackQuery keep what the Bot API sent
    if isinstance(raw, str):
        raw = json.loads(raw)
    if isinstance(raw, dict):
        return raw
    # The other types keep no raw dict: rebuild the part that default keys look at.
    raw = {}
    chat = getattr(obj, "chat", None)
    if chat is not None:
        raw["chat"] = {"id": chat.id}
    user = getattr(obj, "from_user", None) or getattr(obj, "user", None)
    if user is not None:
        raw["from"] = {"id": user.id}
    return raw


def _telebot_key(get_session_key: TelebotKeyFunction | None) -> Callable[[Context], str | None] | None:
    if get_session_key is None:
        return None
    if not callable(get_session_key):
        raise TypeError(f"get_session_key must be a function of the telebot object, not {get_session_key!r}")

    def key(ctx: Context) -> str | None:
        return get_session_key(cast(_TelebotContext, ctx).obj)

    return key


class _Pending:
    """One update between our pre_process and its end."""

    __slots__ = ("ctx", "dispatcher", "done", "given", "owner", "run")

    def __init__(self, run: AnyRun, ctx: _TelebotContext, dispatcher: FrameType) -> None:
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
