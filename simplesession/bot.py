"""A small blocking bot runner: long polling of the Telegram Bot API, or the console offline."""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from types import FrameType
from typing import Any, TextIO, TypeVar

from .botapi import TOKEN_REFUSED, BotAPI, CallFailed, UpdateFeed
from .context import Context
from .errors import SessionError
from .runner import OrderKey, default_order_key, poll_with_workers

__all__ = ["Bot", "Handler", "Middleware"]

_log = logging.getLogger(__name__)

Handler = Callable[[Context], Any]
"""A handler: called with the context of an update it matched."""
Middleware = Callable[[Context, Callable[[], None]], Any]
"""A middleware: called as ``mw(ctx, next)``; ``next()`` runs the rest of the chain."""

_H = TypeVar("_H", bound=Handler)
_M = TypeVar("_M", bound=Middleware)

_COMMAND_NAME = re.compile(r"[A-Za-z0-9_]{1,32}")
# Deadlines of whole Bot API calls. A poll may take poll_timeout, plus this for the
# network; the last acknowledging call and call_api ask for no waiting.
_POLL_MARGIN = 10.0
_ACK_TIMEOUT = 10.0
_CALL_TIMEOUT = 30.0
# A call the server refused with 429 (Too Many Requests) was not carried out, so it is
# safe to make again: this many times, after the wait the server asks for.
_FLOOD_RETRIES = 3


class Bot:
    """A blocking bot: middlewares and handlers, run by long polling or on the console.

    :param token: the bot token from @BotFather. ``None`` (or empty) runs on the console:
        each line of ``input`` is a message from one chat, replies go to ``output``.
    :param api_url: the Bot API server, for a self-hosted one.
    :param poll_timeout: seconds the server may hold a ``getUpdates`` call open; also
        bounds how long :meth:`start` takes to return after :meth:`stop`.
    :param retry_delay: first wait after a failed poll; it doubles on each failure in a
        row, up to ``max_retry_delay``.
    :param max_server_wait: the longest wait a server's ``retry_after`` gets; a shorter
        one than the current back-off delay gets that delay.
    :param workers: threads handling updates. With 1 (the default) the polling thread
        handles each update itself, one after another; with more, updates with different
        ordering keys run at the same time, and those with the same key one after another
        in id order.
    :param order_key: ``order_key(ctx)`` gives the ordering key of an update (any hashable
        value; ``None``: no order at all). Default: the chat id, else the user id.
    :param read_ahead: with ``workers`` > 1, the most updates taken from the server and
        not yet acknowledged (1 to 100): what a crash may bring back, and what waits in memory.
    :param slow_handler: seconds after which an update counts as slow: logged at WARNING
        with its id and chat when it finishes; ``None``: never.
    :param stop_timeout: with ``workers`` > 1, how long :meth:`stop` (or Ctrl-C) waits for
        running handlers before :meth:`start` returns anyway, logging them.
    :param console_chat_id: the chat (and user) id of console messages.
    :param input: where console lines come from (default ``sys.stdin``).
    :param output: where console replies go (default ``sys.stdout``).
    """

    def __init__(
        self,
        token: str | None = None,
        *,
        api_url: str = "https://api.telegram.org",
        poll_timeout: float = 30,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
        max_server_wait: float = 300.0,
        workers: int = 1,
        order_key: OrderKey | None = None,
        read_ahead: int = 100,
        slow_handler: float | None = 10.0,
        stop_timeout: float = 30.0,
        console_chat_id: int = 1,
        input: TextIO | None = None,
        output: TextIO | None = None,
    ) -> None:
        if token is not None and (not isinstance(token, str) or any(c.isspace() or c == "/" for c in token)):
            raise ValueError("token must be a bot token from @BotFather, such as '123456:ABC-DEF1234ghIkl'")
        for name, value in [
            ("poll_timeout", poll_timeout),
            ("retry_delay", retry_delay),
            ("max_retry_delay", max_retry_delay),
            ("max_server_wait", max_server_wait),
            ("stop_timeout", stop_timeout),
            *([("slow_handler", slow_handler)] if slow_handler is not None else []),
        ]:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number of seconds, not {value!r}")
        if poll_timeout < 0 or stop_timeout < 0:
            raise ValueError(
                f"poll_timeout and stop_timeout must be >= 0 seconds, not {poll_timeout!r}, {stop_timeout!r}"
            )
        for name, count, most in [("workers", workers, 1000), ("read_ahead", read_ahead, 100)]:
            if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= most:
                raise ValueError(f"{name} must be a whole number from 1 to {most}, not {count!r}")
        if order_key is not None and not callable(order_key):
            raise TypeError(f"order_key is a function order_key(ctx), not {type(order_key).__name__}")
        if not 0 < retry_delay <= max_retry_delay <= max_server_wait:
            raise ValueError(
                "need 0 < retry_delay <= max_retry_delay <= max_server_wait, not "
                f"{retry_delay!r}, {max_retry_delay!r} and {max_server_wait!r}"
            )
        self.token = token or None
        self.api_url = api_url.rstrip("/")
        self.poll_timeout = poll_timeout
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_server_wait = max_server_wait
        self.workers = workers
        self.order_key: Callable[[Context], Hashable | None] = order_key or default_order_key
        self.read_ahead = read_ahead
        self.slow_handler = slow_handler
        self.stop_timeout = stop_timeout
        self.console_chat_id = console_chat_id
        self._input = input
        self._output = output
        self._middlewares: list[Middleware] = []
        self._handlers: list[tuple[Callable[[Context], bool], Handler]] = []
        self._stop = threading.Event()
        # Kept from one start() to the next, so that no update is handled twice even when
        # the last acknowledgement was lost; a new one for another token or server.
        self._feed: tuple[tuple[str, str], UpdateFeed] | None = None
        self._running = threading.Lock()
        # Only touched in the main thread (by start() and the SIGINT handler it installs).
        self._busy = False
        self._interrupted = False

    # -- building the bot --------------------------------------------------------------

    def use(self, middleware: _M) -> _M:
        """Add a middleware ``mw(ctx, next)`` to the chain; returns it, so it works as a decorator."""
        if not callable(middleware):
            raise TypeError(f"a middleware is a callable mw(ctx, next), not {type(middleware).__name__}")
        self._middlewares.append(middleware)
        return middleware

    def command(self, name: str) -> Callable[[_H], _H]:
        """Decorate a handler for the command ``/name`` (``"name"`` and ``"/name"`` both work).

        It matches a message whose text (or caption) starts with ``/name`` followed by
        nothing, by arguments (``/name 3``) or by a bot's name (``/name@SomeBot``).
        Commands are case-sensitive, as in Telegram.
        """
        if not isinstance(name, str) or not _COMMAND_NAME.fullmatch(name.removeprefix("/")):
            raise ValueError(f"a command name is 1-32 letters, digits or underscores, such as 'count', not {name!r}")
        command = "/" + name.removeprefix("/")

        def matches(ctx: Context) -> bool:
            # Only new messages: a button under a message that reads "/count" is no command.
            if "message" not in ctx.update and "channel_post" not in ctx.update:
                return False
            text = ctx.text
            if not isinstance(text, str) or not text.startswith("/"):
                return False
            return text.split(maxsplit=1)[0].partition("@")[0] == command

        return self._handler(matches)

    def on(self, kind: str) -> Callable[[_H], _H]:
        """Decorate a handler for updates of one kind.

        ``kind`` is an update field, such as ``"message"``, ``"edited_message"`` or
        ``"callback_query"``; ``"kind:field"`` also requires that field in it, such as
        ``"message:text"`` (text messages only) or ``"callback_query:data"``.
        """
        if not isinstance(kind, str):
            raise TypeError(f"kind is a string such as 'message' or 'message:text', not {type(kind).__name__}")
        field, colon, sub = kind.partition(":")
        if not field or (colon and not sub) or ":" in sub:
            raise ValueError(f"kind is an update field, optionally with ':field', such as 'message:text', not {kind!r}")

        def matches(ctx: Context) -> bool:
            value = ctx.update.get(field)
            if value is None:
                return False
            return not sub or (isinstance(value, dict) and value.get(sub) is not None)

        return self._handler(matches)

    def _handler(self, matches: Callable[[Context], bool]) -> Callable[[_H], _H]:
        def register(handler: _H) -> _H:
            if not callable(handler):
                raise TypeError(f"a handler is a callable handler(ctx), not {type(handler).__name__}")
            self._handlers.append((matches, handler))
            return handler

        return register

    # -- running one update ------------------------------------------------------------

    def handle_update(self, update: dict[str, Any]) -> None:
        """Run the middlewares once for ``update``, then the first handler that matches it.

        Exceptions from middlewares and handlers propagate to the caller.
        """
        self._run_chain(tuple(self._middlewares), 0, Context(update, self))

    def _run_chain(self, chain: tuple[Middleware, ...], index: int, ctx: Context) -> None:
        # A method, not a closure that calls itself: such a closure is a reference cycle,
        # which would keep every update's context and session alive until the next garbage
        # collection, and make those collections run far more often.
        if index == len(chain):
            self._dispatch(ctx)
            return
        called = False

        def next_() -> None:
            nonlocal called
            if called:
                raise RuntimeError(f"middleware {chain[index]!r} called next() twice")
            called = True
            self._run_chain(chain, index + 1, ctx)

        chain[index](ctx, next_)

    def _dispatch(self, ctx: Context) -> None:
        for matches, handler in self._handlers:
            if matches(ctx):
                handler(ctx)
                return

    def _handle_logged(self, update: dict[str, Any]) -> None:
        started = time.monotonic()
        try:
            self.handle_update(update)
        except Exception:
            _log.exception("handling update %s failed; going on with the next one", update.get("update_id"))
        took = time.monotonic() - started
        if self.slow_handler is not None and took > self.slow_handler:
            _log.warning(
                "update %s (chat %s) took %.3g s to handle, over slow_handler (%g s)",
                update.get("update_id"),
                Context(update).chat_id,
                took,
                self.slow_handler,
            )

    # -- talking -----------------------------------------------------------------------

    def send_message(self, chat_id: int, text: str, **options: Any) -> Any:
        """Send ``text`` to a chat (Bot API ``sendMessage``) and return the sent message.

        On the console, print ``text`` and return ``None``. Raises :class:`SessionError`
        with the Bot API's description when the message cannot be sent.
        """
        if self.token is None:
            output = self._output or sys.stdout
            output.write(f"{text}\n")
            output.flush()
            return None
        return self.call_api("sendMessage", chat_id=chat_id, text=text, **options)

    def call_api(self, method: str, **params: Any) -> Any:
        """Call any Bot API method, such as ``answerCallbackQuery``, and return its result.

        A call refused with 429 (Too Many Requests) is made again after the wait the server
        asks for, kept between ``retry_delay`` and ``max_server_wait``, up to 3 times.
        Raises :class:`SessionError` when the call fails, or on the console.
        """
        if self.token is None:
            raise SessionError(f"cannot call {method}: this bot has no token, so it only talks on the console")
        api = self._api()
        delay = self.retry_delay
        for retry in range(_FLOOD_RETRIES + 1):
            try:
                return api.call(method, params, _CALL_TIMEOUT)
            except CallFailed as error:
                # Only 401: a 404 here may as well be a misspelt method.
                if error.code == 401:
                    raise api.token_refused(error) from None
                if error.code != 429 or retry == _FLOOD_RETRIES:
                    raise SessionError(f"{method} failed: {error}") from error
                time.sleep(self._wait_after(method, error, delay))
                delay = min(delay * 2, self.max_retry_delay)
        raise AssertionError("unreachable")

    def _api(self) -> BotAPI:
        # Made for each call, as token and api_url are public attributes and each call
        # has always read them afresh.
        if self.token is None:
            raise RuntimeError("a bot without a token makes no Bot API calls")
        return BotAPI(self.token, self.api_url)

    # -- running -----------------------------------------------------------------------

    def start(self) -> None:
        """Handle updates until :meth:`stop`, Ctrl-C or (on the console) end of input.

        Blocks. With a token it long-polls the Bot API, retrying network and server
        errors with back-off; it raises :class:`SessionError` if the token is refused.
        A handler's exception is logged and the next update handled. Ctrl-C while an
        update is handled lets that update finish, then stops; a second Ctrl-C
        interrupts it. With ``workers`` > 1, stopping fetches nothing more, lets the
        running handlers (and the updates before them) finish within ``stop_timeout``,
        acknowledges what was handled, and returns; a second Ctrl-C stops the waiting.
        """
        if not self._running.acquire(blocking=False):
            raise RuntimeError("this bot is already running")
        try:
            self._stop.clear()
            self._interrupted = False
            with self._ctrl_c_finishes_the_update():
                if self.token is None:
                    self._run_console()
                else:
                    self._run_polling()
        finally:
            self._running.release()

    def stop(self) -> None:
        """Make a running :meth:`start` return after the current updates (or poll). Thread-safe."""
        self._stop.set()

    def _run_polling(self) -> None:
        _log.info("polling %s for updates", self.api_url)
        feed = self._update_feed()
        if self.workers > 1:
            poll_with_workers(self, feed)
            return
        acknowledged = feed.offset
        delay = self.retry_delay
        try:
            while not self._stop.is_set():
                asked, asked_at = feed.offset, time.monotonic()
                try:
                    updates = feed.fresh(self._get_updates(asked))
                except CallFailed as error:
                    if error.code in TOKEN_REFUSED:
                        raise self._api().token_refused(error) from None
                    self._stop.wait(self._wait_after("getUpdates", error, delay))
                    delay = min(delay * 2, self.max_retry_delay)
                    continue
                acknowledged = asked
                took = time.monotonic() - asked_at
                if not updates and took < self.poll_timeout / 2:
                    # Nothing new, long before the timeout: a server that does not hold
                    # polls open, or serves old updates again. Back off rather than spin.
                    _log.warning(
                        "getUpdates brought nothing new after %.2g s of the %g s it may wait; polling again in %g s",
                        took,
                        self.poll_timeout,
                        delay,
                    )
                    self._stop.wait(delay)
                    delay = min(delay * 2, self.max_retry_delay)
                    continue
                delay = self.retry_delay
                self._busy = True
                try:
                    for update in updates:
                        # Taken before handling: an update whose handler fails is acknowledged
                        # too, or a poisoned update would come back forever.
                        feed.take(update)
                        self._handle_logged(update)
                        if self._stop.is_set():
                            break
                finally:
                    self._busy = False
        except KeyboardInterrupt:
            _log.info("interrupted (Ctrl-C): stopping")
        else:
            self._log_interrupted()
        if feed.offset != acknowledged:
            self._acknowledge(feed.offset)
        _log.info("stopped polling")

    def _acknowledge(self, offset: int) -> None:
        # The server forgets updates only when asked for later ones; ask once more so
        # that a restart does not handle these again.
        try:
            self._api().call("getUpdates", {"offset": offset, "timeout": 0, "limit": 1}, _ACK_TIMEOUT)
        except CallFailed as error:
            _log.warning("could not acknowledge the handled updates (%s); they may come again", error)

    def _update_feed(self) -> UpdateFeed:
        source = (self.token or "", self.api_url)
        if self._feed is None or self._feed[0] != source:
            self._feed = (source, UpdateFeed())
        return self._feed[1]

    def _get_updates(self, offset: int, timeout: float | None = None, limit: int | None = None) -> Any:
        timeout = self.poll_timeout if timeout is None else timeout
        # The Bot API takes whole seconds; send 30, not 30.0.
        wire_timeout = int(timeout) if float(timeout).is_integer() else timeout
        params: dict[str, Any] = {"offset": offset, "timeout": wire_timeout}
        if limit is not None:
            params["limit"] = limit
        return self._api().call("getUpdates", params, timeout + _POLL_MARGIN)

    def _wait_after(self, method: str, error: CallFailed, delay: float) -> float:
        """How long to wait after a failed call: the back-off ``delay``, or what the server
        asked for, kept between ``delay`` and ``max_server_wait``."""
        asked = error.retry_after
        if asked is None:
            _log.warning("%s failed (%s); retrying in %g s", method, error, delay)
            return delay
        # NaN compares false to everything: it gets the back-off delay.
        wait = min(asked, self.max_server_wait) if asked >= delay else delay
        if wait == asked:
            _log.warning("%s failed (%s); retrying in %g s", method, error, wait)
        else:
            _log.warning(
                "%s failed (%s); retrying in %g s, not the %g s the server asked for: "
                "waits are kept between the back-off delay and max_server_wait (%g s)",
                method,
                error,
                wait,
                asked,
                self.max_server_wait,
            )
        return wait

    def _run_console(self) -> None:
        source = self._input or sys.stdin
        isatty = getattr(source, "isatty", None)
        if isatty is not None and isatty():
            # Someone is typing: say what this is and how to leave (not when input is piped).
            print(
                f"simplesession console: you are chat {self.console_chat_id}. Type messages "
                "(commands start with /); Ctrl-D quits.",
                file=sys.stderr,
                flush=True,
            )
        try:
            for update_id in itertools.count(1):
                if self._stop.is_set():
                    break
                line = source.readline()
                if not line:
                    break
                self._busy = True
                try:
                    self._handle_logged(self._console_update(update_id, line.removesuffix("\n").removesuffix("\r")))
                finally:
                    self._busy = False
        except KeyboardInterrupt:
            _log.info("interrupted (Ctrl-C): stopping")
        else:
            self._log_interrupted()

    def _console_update(self, update_id: int, text: str) -> dict[str, Any]:
        person = {"id": self.console_chat_id, "is_bot": False, "first_name": "Console"}
        message = {
            "message_id": update_id,
            "date": int(time.time()),
            "chat": {"id": self.console_chat_id, "type": "private", "first_name": "Console"},
            "from": person,
            "text": text,
        }
        return {"update_id": update_id, "message": message}

    @contextlib.contextmanager
    def _ctrl_c_finishes_the_update(self) -> Iterator[None]:
        # Python lets only the main thread install signal handlers; elsewhere Ctrl-C is not ours.
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._on_sigint)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous if previous is not None else signal.SIG_DFL)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        # Interrupting a handler would lose its session write: let the update finish, then
        # stop. No logging here: a signal handler may run in the middle of a log write.
        if self._busy and not self._interrupted:
            self._interrupted = True
            self._stop.set()
            return
        raise KeyboardInterrupt

    def _log_interrupted(self) -> None:
        if self._interrupted:
            _log.info("interrupted (Ctrl-C): stopped after the update being handled")
