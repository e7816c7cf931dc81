"""What the blocking and the async telebot middlewares share: update kinds, keys, contexts.

Both turn telebot's ``pre_process``/``post_process`` calls into the session core's
``begin``/``end``; this module builds the core for them and turns telebot objects into the
core's :class:`~simplesession.Context`, so that the default keys are the core's own.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator, Mapping, MutableMapping
from datetime import timedelta
from typing import Any, cast

from ..context import Context
from ..session import SessionMiddleware as Core
from ..session import multi_session, session

SESSION = "session"  # the ``data`` key, so the name of the handler's parameter

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

# The modules of the two bots: each reads a middleware's update_types from its own module.
SYNC_TELEBOT = "telebot"
ASYNC_TELEBOT = "telebot.async_telebot"

TelebotKeyFunction = Callable[[Any], "str | None"]
"""``get_session_key`` here: the telebot object (a ``Message``, a ``CallbackQuery``, ...) to a key."""


def core(get_session_key: TelebotKeyFunction | None, options: dict[str, Any]) -> Core:
    """The session core for ``session(**options)``, its key function given the telebot object."""
    return session(get_session_key=_telebot_key(get_session_key), **options)


def multi_core(sweep_interval: float | timedelta | None, fragments: Mapping[str, Mapping[str, Any]]) -> Core:
    """The session core for ``multi_session(**fragments)``, each key function given the telebot object."""
    adapted: dict[str, Any] = {}
    for name, options in fragments.items():
        if isinstance(options, Mapping) and options.get("get_session_key") is not None:
            options = {**options, "get_session_key": _telebot_key(options["get_session_key"])}
        adapted[name] = options
    return multi_session(sweep_interval=sweep_interval, **adapted)


def caller_module() -> str | None:
    """The module that called the caller of this function (a property's reader, say)."""
    name = sys._getframe(2).f_globals.get("__name__")
    return name if isinstance(name, str) else None


class UpdateTypes:
    """``update_types`` of both middlewares: the update kinds (telebot's names) that get a
    session, :data:`UPDATE_TYPES` or fewer.

    A middleware never sees the bot it is given to, but each kind of bot reads this from its
    own module, at ``setup_middleware`` and for every update before any ``pre_process``: so a
    bot of the other kind (:attr:`_other_bot`) is refused here, taking no lock and losing no
    update.
    """

    _other_bot: str
    _refusal: str
    _update_types: list[str]

    @property
    def update_types(self) -> list[str]:
        if caller_module() == self._other_bot:
            raise TypeError(self._refusal)
        return self._update_types

    @update_types.setter
    def update_types(self, kinds: list[str]) -> None:
        self._update_types = kinds


def claim(data: dict[str, Any], multi: str) -> None:
    """Refuse a second session middleware before it takes any lock."""
    if SESSION in data:
        raise TypeError(
            "data['session'] is taken (by another session middleware?): set up one per bot, "
            f"and {multi}(name={{...}}, ...) for several sessions per update"
        )


def given(core: Core, ctx: Context, *, lazy: bool) -> Any:
    """What a handler gets as ``session``: the loaded value, a MultiSession, or a LazySession
    (lazy, or no key: touching it raises SessionKeyError, saying why)."""
    if core.multi or (not lazy and ctx.session_key is not None):
        return ctx.session  # loaded already, or a MultiSession: no I/O
    return LazySession(ctx)


def replace(ctx: Context, data: dict[str, Any], before: Any) -> None:
    """Put what the handler left in ``data["session"]`` back in ``ctx``, if it replaced
    (or deleted, with ``None``) what it was given."""
    value = data.get(SESSION, before)
    if value is not before:
        ctx.session = value


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


class TelebotContext(Context):
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
        return get_session_key(cast(TelebotContext, ctx).obj)

    return key
