"""The context of one update: the update itself, its session, and a way to answer."""

from __future__ import annotations

from typing import Any, Protocol

from .errors import SessionError

__all__ = ["Context", "MessageSender", "SessionHolder"]

# Update fields whose value is a message; the first present one is ctx.message.
_MESSAGE_FIELDS = (
    "message",
    "edited_message",
    "channel_post",
    "edited_channel_post",
    "business_message",
    "edited_business_message",
)
# Update fields whose value carries the acting user in "from".
_FROM_FIELDS = (
    *_MESSAGE_FIELDS,
    "callback_query",
    "inline_query",
    "chosen_inline_result",
    "shipping_query",
    "pre_checkout_query",
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "message_reaction",
)
# Update fields whose value names a chat directly.
_CHAT_FIELDS = (
    "my_chat_member",
    "chat_member",
    "chat_join_request",
    "message_reaction",
    "message_reaction_count",
    "chat_boost",
    "removed_chat_boost",
    "deleted_business_messages",
)


class SessionHolder(Protocol):
    """What a session middleware installs on a context (see :mod:`simplesession.session`)."""

    @property
    def key(self) -> Any: ...

    def get(self) -> Any: ...

    def set(self, value: Any) -> None: ...


class MessageSender(Protocol):
    """What :meth:`Context.reply` sends with, such as a :class:`~simplesession.Bot`."""

    def send_message(self, chat_id: int, text: str, **options: Any) -> Any:
        """Send ``text`` to the chat ``chat_id``; ``options`` are further ``sendMessage`` fields."""


class Context:
    """One update, as a handler sees it.

    :ivar update: the raw update, a dict as the Bot API sends it.
    :ivar bot: what replies are sent with: the :class:`~simplesession.Bot` that received
        the update, any other :class:`MessageSender`, or ``None``.
    """

    __slots__ = ("_session", "bot", "update")

    def __init__(self, update: dict[str, Any], bot: MessageSender | None = None) -> None:
        if not isinstance(update, dict):
            raise TypeError(f"an update is a dict as the Bot API sends it, not {type(update).__name__}")
        self.update = update
        self.bot = bot
        self._session: SessionHolder | None = None

    def __repr__(self) -> str:
        return f"<Context update_id={self.update.get('update_id')} chat_id={self.chat_id}>"

    @property
    def kind(self) -> str | None:
        """The update's type, such as ``"message"`` or ``"callback_query"``."""
        return next((k for k in self.update if k != "update_id"), None)

    @property
    def message(self) -> dict[str, Any] | None:
        """The message of the update (also the one a pressed button belongs to), or ``None``."""
        for field in _MESSAGE_FIELDS:
            message = self.update.get(field)
            if message is not None:
                return message  # type: ignore[no-any-return]
        query = self.update.get("callback_query")
        if query is not None:
            return query.get("message")  # type: ignore[no-any-return]
        return None

    @property
    def text(self) -> str | None:
        """The message's text (or caption), or ``None``."""
        message = self.message
        if message is None:
            return None
        return message.get("text", message.get("caption"))

    @property
    def chat_id(self) -> int | None:
        """The id of the chat the update belongs to, or ``None`` (an inline query, say)."""
        message = self.message
        chat = message.get("chat") if message is not None else None
        if chat is None:
            for field in _CHAT_FIELDS:
                value = self.update.get(field)
                if value is not None:
                    chat = value.get("chat")
                    break
        return None if chat is None else chat.get("id")

    @property
    def from_id(self) -> int | None:
        """The id of the user who caused the update, or ``None``."""
        for field in _FROM_FIELDS:
            value = self.update.get(field)
            if value is not None:
                sender = value.get("from") or value.get("user")
                return None if sender is None else sender.get("id")
        return None

    @property
    def session(self) -> Any:
        """The session of this update (installed by a session middleware)."""
        holder = self._session  # read on every access of every update: no call to spare
        return self._holder().get() if holder is None else holder.get()

    @session.setter
    def session(self, value: Any) -> None:
        self._holder().set(value)

    @property
    def session_key(self) -> Any:
        """The session key in use: a string, ``None``, or for multi sessions a dict of them."""
        return self._holder().key

    def reply(self, text: str, **options: Any) -> Any:
        """Send ``text`` to this update's chat."""
        if self.bot is None:
            raise SessionError("this context has no bot to reply with; create it with Context(update, bot)")
        chat_id = self.chat_id
        if chat_id is None:
            raise SessionError(f"cannot reply to a {self.kind} update: it belongs to no chat")
        return self.bot.send_message(chat_id, text, **options)

    def _holder(self) -> SessionHolder:
        if self._session is None:
            raise SessionError(
                "ctx.session is not set up: install the middleware first, e.g. bot.use(session(initial=dict))"
            )
        return self._session
