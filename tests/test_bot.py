"""Bot: the middleware chain, handler matching, the console and long polling."""

from __future__ import annotations

import ast
import io
import logging
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO, cast

import pytest
from botrunner import JOIN_TIMEOUT, Started
from fakebotapi import BOT_USER, FakeBotAPI

from simplesession import context as context_module
from simplesession.bot import Bot
from simplesession.botapi import TOKEN_REFUSED, BotAPI, CallFailed
from simplesession.context import Context, MessageSender
from simplesession.errors import SessionError

LOGGER = "simplesession.bot"


def message(text: str | None = "hi", chat_id: int = 7, user_id: int = 70, **fields: Any) -> dict[str, Any]:
    msg: dict[str, Any] = {"message_id": 1, "date": 0, "chat": {"id": chat_id, "type": "private"}}
    msg["from"] = {"id": user_id, "is_bot": False, "first_name": "U"}
    if text is not None:
        msg["text"] = text
    msg.update(fields)
    return {"update_id": 1, "message": msg}


def callback_query(data: str = "press", message_text: str = "pick one") -> dict[str, Any]:
    query = {"id": "q1", "from": {"id": 71, "is_bot": False, "first_name": "U"}, "chat_instance": "c", "data": data}
    query["message"] = message(message_text, chat_id=8)["message"]
    return {"update_id": 2, "callback_query": query}


INLINE_QUERY = {
    "update_id": 3,
    "inline_query": {"id": "i1", "from": {"id": 72, "is_bot": False, "first_name": "U"}, "query": "q", "offset": ""},
}


def polling_bot(api: FakeBotAPI, **options: Any) -> Bot:
    options = {"poll_timeout": 0.5, "retry_delay": 0.01, "max_retry_delay": 0.04, **options}
    return Bot(api.token, api_url=api.url, **options)


def echo_until(bot: Bot, last: str) -> list[str]:
    """Make ``bot`` echo every text, and stop after the text ``last``; return the texts seen."""
    seen: list[str] = []

    @bot.on("message:text")
    def echo(ctx: Context) -> None:
        assert ctx.text is not None
        seen.append(ctx.text)
        ctx.reply(f"echo {ctx.text}")
        if ctx.text == last:
            bot.stop()

    return seen


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


# -- the middleware chain ------------------------------------------------------------------


def test_middlewares_run_in_order_around_the_handler() -> None:
    bot = Bot()
    calls: list[str] = []

    def recording(name: str) -> Callable[[Context, Callable[[], None]], None]:
        def mw(ctx: Context, next: Callable[[], None]) -> None:
            calls.append(f"{name} before")
            next()
            calls.append(f"{name} after")

        return mw

    bot.use(recording("a"))
    bot.use(recording("b"))

    @bot.on("message")
    def handler(ctx: Context) -> None:
        calls.append("handler")

    bot.handle_update(message())
    assert calls == ["a before", "b before", "handler", "b after", "a after"]


def test_middleware_that_does_not_call_next_stops_the_chain() -> None:
    bot = Bot()
    calls: list[str] = []

    @bot.use
    def gate(ctx: Context, next: Callable[[], None]) -> None:
        calls.append("gate")

    @bot.use
    def later(ctx: Context, next: Callable[[], None]) -> None:
        calls.append("later")
        next()

    @bot.on("message")
    def handler(ctx: Context) -> None:
        calls.append("handler")

    bot.handle_update(message())
    assert calls == ["gate"]


def test_middlewares_and_handlers_share_one_context() -> None:
    bot = Bot()
    seen: list[Context] = []

    @bot.use
    def record(ctx: Context, next: Callable[[], None]) -> None:
        seen.append(ctx)
        next()

    bot.on("message")(seen.append)
    update = message()
    bot.handle_update(update)
    assert len(seen) == 2
    assert seen[0] is seen[1]
    assert seen[0].update is update
    assert seen[0].bot is bot


def test_handler_exception_propagates_out_of_handle_update_through_middlewares() -> None:
    bot = Bot()
    calls: list[str] = []

    @bot.use
    def mw(ctx: Context, next: Callable[[], None]) -> None:
        try:
            next()
        finally:
            calls.append("middleware saw the end")

    @bot.on("message")
    def boom(ctx: Context) -> None:
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        bot.handle_update(message())
    assert calls == ["middleware saw the end"]


def test_middleware_exception_propagates_and_no_handler_runs() -> None:
    bot = Bot()
    handled: list[Context] = []

    @bot.use
    def broken(ctx: Context, next: Callable[[], None]) -> None:
        raise KeyError("broken")

    bot.on("message")(handled.append)
    with pytest.raises(KeyError, match="broken"):
        bot.handle_update(message())
    assert handled == []


def test_calling_next_twice_is_refused() -> None:
    bot = Bot()
    handled: list[Context] = []

    @bot.use
    def twice(ctx: Context, next: Callable[[], None]) -> None:
        next()
        next()

    bot.on("message")(handled.append)
    with pytest.raises(RuntimeError, match=r"next\(\) twice"):
        bot.handle_update(message())
    assert len(handled) == 1


def test_non_callables_are_refused() -> None:
    bot = Bot()
    with pytest.raises(TypeError, match="middleware"):
        bot.use("not a middleware")  # type: ignore[type-var]
    with pytest.raises(TypeError, match="handler"):
        bot.on("message")(42)  # type: ignore[type-var]


# -- matching handlers -------------------------------------------------------------------


@pytest.mark.parametrize("text", ["/count", "/count 3 4", "/count@MyBot", "/count@MyBot 5", "/count\nmore"])
def test_command_matches_bare_with_arguments_or_addressed_to_a_bot(text: str) -> None:
    bot = Bot()
    handled: list[str | None] = []
    bot.command("count")(lambda ctx: handled.append(ctx.text))
    bot.handle_update(message(text))
    assert handled == [text]


@pytest.mark.parametrize("text", ["/counter", "count", "/Count", "hello /count", " /count", "/cou", "", None])
def test_command_does_not_match_other_texts(text: str | None) -> None:
    bot = Bot()
    handled: list[Context] = []
    bot.command("count")(handled.append)
    bot.handle_update(message(text))
    assert handled == []


def test_command_name_may_start_with_a_slash() -> None:
    bot = Bot()
    handled: list[Context] = []
    bot.command("/start")(handled.append)
    bot.handle_update(message("/start"))
    assert len(handled) == 1


@pytest.mark.parametrize("name", ["", "/", "two words", "a@b", "x" * 33, "/-dash"])
def test_bad_command_names_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="command name"):
        Bot().command(name)


def test_command_in_a_caption_matches() -> None:
    bot = Bot()
    handled: list[Context] = []
    bot.command("count")(handled.append)
    bot.handle_update(message(None, caption="/count", photo=[{"file_id": "p"}]))
    assert len(handled) == 1


def test_command_ignores_a_button_pressed_under_a_command_message() -> None:
    bot = Bot()
    handled: list[Context] = []
    bot.command("count")(handled.append)
    bot.handle_update(callback_query(message_text="/count"))
    assert handled == []


def test_only_the_first_matching_handler_runs() -> None:
    bot = Bot()
    calls: list[str] = []
    bot.command("count")(lambda ctx: calls.append("command"))
    bot.on("message:text")(lambda ctx: calls.append("text"))
    bot.on("message")(lambda ctx: calls.append("message"))
    bot.handle_update(message("/count"))
    bot.handle_update(message("hello"))
    bot.handle_update(message(None, photo=[{"file_id": "p"}]))
    assert calls == ["command", "text", "message"]


KINDS = ["message", "message:photo", "edited_message", "callback_query", "callback_query:data", "inline_query"]


def matched_kinds(update: dict[str, Any]) -> list[str]:
    """Which of KINDS an ``on(kind)`` handler matches ``update`` for."""
    matched: list[str] = []
    for kind in KINDS:
        bot = Bot()
        bot.on(kind)(lambda ctx, kind=kind: matched.append(kind))
        bot.handle_update(update)
    return matched


@pytest.mark.parametrize(
    ("update", "kinds"),
    [
        (message(), ["message"]),
        (message(None, photo=[{"file_id": "p"}]), ["message", "message:photo"]),
        ({"update_id": 1, "edited_message": message()["message"]}, ["edited_message"]),
        (callback_query(), ["callback_query", "callback_query:data"]),
        (INLINE_QUERY, ["inline_query"]),
    ],
    ids=["message", "photo", "edited_message", "callback_query", "inline_query"],
)
def test_on_matches_its_kind_only(update: dict[str, Any], kinds: list[str]) -> None:
    assert matched_kinds(update) == kinds


def test_on_message_text_skips_a_photo_without_text() -> None:
    bot = Bot()
    calls: list[str] = []
    bot.on("message:text")(lambda ctx: calls.append("text"))
    bot.on("message:photo")(lambda ctx: calls.append("photo"))
    bot.handle_update(message(None, photo=[{"file_id": "p"}]))
    bot.handle_update(message("words"))
    assert calls == ["photo", "text"]


def test_update_no_handler_matches_is_ignored() -> None:
    bot = Bot()
    bot.on("callback_query")(lambda ctx: pytest.fail("should not run"))
    bot.handle_update(message())


@pytest.mark.parametrize("kind", ["", ":text", "message:", "a:b:c"])
def test_bad_kinds_are_refused(kind: str) -> None:
    with pytest.raises(ValueError, match="kind"):
        Bot().on(kind)


# -- the context handlers see -----------------------------------------------------------


@pytest.mark.parametrize(
    ("update", "chat_id", "from_id", "text"),
    [
        (message("hello", chat_id=5, user_id=50), 5, 50, "hello"),
        ({"update_id": 1, "edited_message": message("fixed", chat_id=6, user_id=60)["message"]}, 6, 60, "fixed"),
        (callback_query(message_text="menu"), 8, 71, "menu"),
        (INLINE_QUERY, None, 72, None),
    ],
    ids=["message", "edited_message", "callback_query", "inline_query"],
)
def test_context_fields_from_handle_update(
    update: dict[str, Any], chat_id: int | None, from_id: int | None, text: str | None
) -> None:
    bot = Bot()
    seen: list[Context] = []
    bot.use(lambda ctx, next: seen.append(ctx))
    bot.handle_update(update)
    (ctx,) = seen
    assert (ctx.chat_id, ctx.from_id, ctx.text) == (chat_id, from_id, text)


def test_reply_on_the_console_prints_the_text() -> None:
    out = io.StringIO()
    bot = Bot(output=out)
    bot.on("message")(lambda ctx: ctx.reply("hello back"))
    bot.handle_update(message("hello"))
    assert out.getvalue() == "hello back\n"


def test_reply_sends_with_any_object_that_has_send_message() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.sent: list[tuple[int, str, dict[str, Any]]] = []

        def send_message(self, chat_id: int, text: str, **options: Any) -> Any:
            self.sent.append((chat_id, text, options))
            return "sent"

    recorder = Recorder()
    senders: list[MessageSender] = [recorder, Bot()]  # mypy checks that both are senders
    assert Context(message(chat_id=5), bot=senders[0]).reply("x", parse_mode="HTML") == "sent"
    assert recorder.sent == [(5, "x", {"parse_mode": "HTML"})]


def test_context_module_does_not_import_the_bot_module() -> None:
    # Read from the source: the package imports bot anyway, so sys.modules cannot tell,
    # and an import under TYPE_CHECKING never runs.
    tree = ast.parse(Path(context_module.__file__ or "").read_text("utf-8"))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(filter(None, ["simplesession" if node.level else "", node.module]))
            modules.add(base)
            # "from . import bot" imports a module too.
            modules.update(f"{base}.{alias.name}" for alias in node.names)
    assert "simplesession.errors" in modules, modules
    assert "simplesession.bot" not in modules, modules


def test_call_api_without_a_token_is_refused_clearly() -> None:
    with pytest.raises(SessionError, match="no token"):
        Bot().call_api("getMe")


@pytest.mark.parametrize(
    "options",
    [{"poll_timeout": -1}, {"retry_delay": 0}, {"retry_delay": 5, "max_retry_delay": 1}],
)
def test_bad_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        Bot(**options)


@pytest.mark.parametrize("token", ["has space", "a/b", "tab\there"])
def test_malformed_tokens_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match="token"):
        Bot(token)


# -- the console ---------------------------------------------------------------------------


def test_console_lines_become_messages_and_replies_print_in_order() -> None:
    out = io.StringIO()
    bot = Bot(input=io.StringIO("/count\nhello\n\nlast"), output=out, console_chat_id=11)
    seen: list[tuple[Any, ...]] = []

    @bot.on("message")
    def echo(ctx: Context) -> None:
        seen.append((ctx.update["update_id"], ctx.chat_id, ctx.from_id, ctx.text))
        ctx.reply(f"got {ctx.text!r}")

    bot.start()
    assert seen == [(1, 11, 11, "/count"), (2, 11, 11, "hello"), (3, 11, 11, ""), (4, 11, 11, "last")]
    assert out.getvalue().splitlines() == ["got '/count'", "got 'hello'", "got ''", "got 'last'"]


def test_console_update_looks_like_a_private_message() -> None:
    updates: list[dict[str, Any]] = []
    bot = Bot(input=io.StringIO("hi\r\n"), output=io.StringIO())
    bot.use(lambda ctx, next: updates.append(ctx.update))
    bot.start()
    (update,) = updates
    msg = update["message"]
    assert msg["text"] == "hi"
    assert msg["chat"] == {"id": 1, "type": "private", "first_name": "Console"}
    assert msg["from"] == {"id": 1, "is_bot": False, "first_name": "Console"}
    assert msg["message_id"] == update["update_id"] == 1
    assert isinstance(msg["date"], int)


def test_console_handler_error_is_logged_and_the_next_line_handled(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    bot = Bot(input=io.StringIO("fail\nfine\n"), output=out)

    @bot.on("message")
    def handler(ctx: Context) -> None:
        if ctx.text == "fail":
            raise ValueError("handler broke")
        ctx.reply("ok")

    bot.start()
    assert out.getvalue() == "ok\n"
    (record,) = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert "update 1" in record.getMessage()


def test_console_stop_from_a_handler_ends_after_the_current_line() -> None:
    bot = Bot(input=io.StringIO("one\ntwo\nthree\n"), output=io.StringIO())
    seen: list[str | None] = []

    @bot.on("message")
    def handler(ctx: Context) -> None:
        seen.append(ctx.text)
        if ctx.text == "two":
            bot.stop()

    bot.start()
    assert seen == ["one", "two"]


def test_start_while_running_is_refused() -> None:
    bot = Bot(input=io.StringIO("x\n"), output=io.StringIO())
    errors: list[BaseException] = []

    @bot.on("message")
    def again(ctx: Context) -> None:
        try:
            bot.start()
        except RuntimeError as error:
            errors.append(error)

    bot.start()
    assert len(errors) == 1
    assert "already running" in str(errors[0])


# -- long polling ----------------------------------------------------------------------------


def test_polling_handles_updates_in_order_and_replies_to_their_chats(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    api.push("one", chat_id=1)
    api.push("two", chat_id=2)
    api.push("three", chat_id=1)
    bot = polling_bot(api)
    seen = echo_until(bot, "three")
    assert run(bot).join() is None
    assert seen == ["one", "two", "three"]
    assert [(m["chat_id"], m["text"]) for m in api.sent] == [(1, "echo one"), (2, "echo two"), (1, "echo three")]


def test_updates_arriving_while_polling_are_handled(api: FakeBotAPI, run: Callable[[Bot], Started]) -> None:
    bot = polling_bot(api)
    echo_until(bot, "second")
    running = run(bot)
    api.push("first")
    api.wait_for_sent(1)
    api.push("second")
    assert running.join() is None
    assert [m["text"] for m in api.sent] == ["echo first", "echo second"]


def test_stop_acknowledges_handled_updates_so_a_restart_does_not_see_them(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    for text in ["a", "b", "c"]:
        last = api.push(text)
    first = polling_bot(api)
    echo_until(first, "c")
    assert run(first).join() is None
    assert api.acknowledged_offset == last["update_id"] + 1

    second = polling_bot(api)
    seen = echo_until(second, "new")
    api.push("new")
    assert run(second).join() is None
    assert seen == ["new"]


def test_stop_from_a_handler_leaves_later_updates_for_the_next_run(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    first_update = api.push("stop here")
    api.push("later")
    first = polling_bot(api)
    echo_until(first, "stop here")
    assert run(first).join() is None
    assert api.acknowledged_offset == first_update["update_id"] + 1

    second = polling_bot(api)
    seen = echo_until(second, "later")
    assert run(second).join() is None
    assert seen == ["later"]


def test_stop_from_another_thread_returns_from_start(api: FakeBotAPI, run: Callable[[Bot], Started]) -> None:
    bot = polling_bot(api, poll_timeout=0.1)  # stop() waits for the poll under way
    running = run(bot)
    api.wait_until(lambda: "getUpdates" in api.calls, what="getUpdates call")
    bot.stop()
    assert running.join() is None


def test_server_error_is_logged_once_and_polling_goes_on(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_next(500)
    api.push("after the error")
    bot = polling_bot(api)
    seen = echo_until(bot, "after the error")
    assert run(bot).join() is None
    assert seen == ["after the error"]
    (warning,) = warnings(caplog)
    assert "getUpdates failed" in warning
    assert "500" in warning
    assert "retrying in 0.01 s" in warning


def test_dropped_connection_is_logged_and_survived(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.drop_next()
    api.push("after the drop")
    bot = polling_bot(api)
    seen = echo_until(bot, "after the drop")
    assert run(bot).join() is None
    assert seen == ["after the drop"]
    (warning,) = warnings(caplog)
    assert "getUpdates failed" in warning
    assert "retrying" in warning


def test_malformed_answer_is_logged_and_survived(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.garble_next()
    api.push("after the garbage")
    bot = polling_bot(api)
    seen = echo_until(bot, "after the garbage")
    assert run(bot).join() is None
    assert seen == ["after the garbage"]
    (warning,) = warnings(caplog)
    assert "getUpdates failed (malformed answer" in warning


def test_too_many_requests_waits_as_long_as_the_server_asks(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_next(429)
    api.push("after the flood wait")
    bot = polling_bot(api)
    seen = echo_until(bot, "after the flood wait")
    assert run(bot).join() is None
    assert seen == ["after the flood wait"]
    (warning,) = warnings(caplog)
    assert "429" in warning
    assert "retrying in 0.2 s" in warning


def test_backoff_doubles_up_to_the_cap_and_resets_after_success(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_next(502, times=4)
    api.push("first")
    bot = polling_bot(api, retry_delay=0.01, max_retry_delay=0.04)
    seen: list[str | None] = []

    @bot.on("message")
    def handler(ctx: Context) -> None:
        seen.append(ctx.text)
        if ctx.text == "first":
            api.fail_next(503)
            api.push("second")
        else:
            bot.stop()

    assert run(bot).join() is None
    assert seen == ["first", "second"]
    delays = [w.rsplit("retrying in ", 1)[1] for w in warnings(caplog)]
    assert delays == ["0.01 s", "0.02 s", "0.04 s", "0.04 s", "0.01 s"]


def test_unreachable_server_is_retried_until_stopped(
    run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    bot = Bot("1:x", api_url=f"http://127.0.0.1:{port}", poll_timeout=0.5, retry_delay=0.01, max_retry_delay=0.02)
    running = run(bot)
    deadline = time.monotonic() + JOIN_TIMEOUT
    while len(warnings(caplog)) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    bot.stop()
    assert running.join() is None
    assert len(warnings(caplog)) >= 3
    assert all("getUpdates failed" in w for w in warnings(caplog))


def test_refused_token_makes_start_raise_a_clear_error(api: FakeBotAPI, run: Callable[[Bot], Started]) -> None:
    bot = Bot("123:wrong", api_url=api.url, poll_timeout=0.5, retry_delay=0.01)
    error = run(bot).join()
    assert isinstance(error, SessionError)
    assert "refused the bot token" in str(error)
    assert "401" in str(error)


def test_handler_exception_is_logged_and_polling_goes_on(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    poisoned = api.push("poison")
    last = api.push("fine")
    bot = polling_bot(api)

    @bot.on("message")
    def handler(ctx: Context) -> None:
        if ctx.text == "poison":
            raise ValueError("handler broke")
        bot.stop()

    assert run(bot).join() is None
    (record,) = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert record.exc_info is not None
    assert f"update {poisoned['update_id']}" in record.getMessage()
    assert api.acknowledged_offset == last["update_id"] + 1


def test_bot_api_call_returns_the_result_or_raises_with_the_code(api: FakeBotAPI) -> None:
    bot_api = BotAPI(api.token, api.url + "/")
    assert bot_api.call("getMe", {}, JOIN_TIMEOUT) == BOT_USER
    api.fail_next(429)
    with pytest.raises(CallFailed, match="HTTP 429: Too Many Requests") as failed:
        bot_api.call("getUpdates", {"timeout": 0}, JOIN_TIMEOUT)
    assert (failed.value.code, failed.value.retry_after) == (429, 0.2)
    with pytest.raises(CallFailed) as failed:
        BotAPI("1:wrong", api.url).call("getMe", {}, JOIN_TIMEOUT)
    assert failed.value.code in TOKEN_REFUSED


def test_send_message_failure_raises_with_the_api_description(api: FakeBotAPI) -> None:
    bot = polling_bot(api)
    with pytest.raises(SessionError, match="message text is empty"):
        bot.send_message(42, "")
    with pytest.raises(SessionError, match="noSuchMethod failed"):
        bot.call_api("noSuchMethod")


def test_send_message_returns_the_sent_message(api: FakeBotAPI) -> None:
    bot = polling_bot(api)
    sent = bot.send_message(42, "hello", parse_mode="HTML")
    assert sent["text"] == "hello"
    assert sent["chat"]["id"] == 42
    assert api.sent == [{"chat_id": 42, "text": "hello", "parse_mode": "HTML"}]


def test_start_in_a_thread_leaves_sigint_alone(api: FakeBotAPI, run: Callable[[Bot], Started]) -> None:
    before = signal.getsignal(signal.SIGINT)
    during: list[Any] = []
    bot = polling_bot(api)

    @bot.on("message")
    def handler(ctx: Context) -> None:
        during.append(signal.getsignal(signal.SIGINT))
        bot.stop()

    api.push("x")
    assert run(bot).join() is None
    assert during == [before]


# -- Ctrl-C ------------------------------------------------------------------------------------


@pytest.fixture
def sentinel_sigint() -> Iterator[Callable[[int, Any], None]]:
    """A recognisable SIGINT handler installed for the test; the original comes back after."""
    assert threading.current_thread() is threading.main_thread()

    def sentinel(signum: int, frame: Any) -> None:
        raise AssertionError("the sentinel SIGINT handler ran while the bot was running")

    original = signal.signal(signal.SIGINT, sentinel)
    yield sentinel
    signal.signal(signal.SIGINT, original)


def test_ctrl_c_during_a_handler_lets_it_finish_then_stops(
    sentinel_sigint: Callable[[int, Any], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    out = io.StringIO()
    bot = Bot(input=io.StringIO("press\nnever\n"), output=out)
    calls: list[str] = []

    @bot.on("message")
    def handler(ctx: Context) -> None:
        calls.append(f"start {ctx.text}")
        signal.raise_signal(signal.SIGINT)
        calls.append(f"finish {ctx.text}")
        ctx.reply("done")

    bot.start()
    assert calls == ["start press", "finish press"]
    assert out.getvalue() == "done\n"
    assert signal.getsignal(signal.SIGINT) is sentinel_sigint
    assert any("Ctrl-C" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


def test_second_ctrl_c_interrupts_a_stuck_handler(sentinel_sigint: Callable[[int, Any], None]) -> None:
    bot = Bot(input=io.StringIO("stuck\nnever\n"), output=io.StringIO())
    calls: list[str] = []

    @bot.on("message")
    def handler(ctx: Context) -> None:
        signal.raise_signal(signal.SIGINT)
        calls.append("after first")
        signal.raise_signal(signal.SIGINT)
        calls.append("after second")

    bot.start()
    assert calls == ["after first"]
    assert signal.getsignal(signal.SIGINT) is sentinel_sigint


class _CtrlCInput:
    """Console input where the user presses Ctrl-C while the bot waits for a line."""

    def readline(self) -> str:
        signal.raise_signal(signal.SIGINT)
        return "unreachable\n"


def test_ctrl_c_while_waiting_stops_cleanly(
    sentinel_sigint: Callable[[int, Any], None], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    bot = Bot(input=cast(TextIO, _CtrlCInput()), output=io.StringIO())
    bot.on("message")(lambda ctx: pytest.fail("no line was read"))
    bot.start()
    assert signal.getsignal(signal.SIGINT) is sentinel_sigint
    assert any("interrupted" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)
