"""Bot(workers=N): chats at once, each chat in order, bounded read-ahead, acknowledged as finished."""

from __future__ import annotations

import io
import logging
import random
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterator
from pathlib import Path
from typing import Any

import pytest
from botrunner import JOIN_TIMEOUT, Started
from fakebotapi import FakeBotAPI

from simplesession import FileStorage, session
from simplesession.bot import Bot
from simplesession.context import Context
from simplesession.errors import SessionError
from simplesession.runner import default_order_key

LOGGER = "simplesession.bot"
CHATS, PER_CHAT = 20, 50
# A handler that waits at a barrier gives up after this: only a runner that never runs
# the two updates at once makes it wait that long.
MEET = 10.0


def polling_bot(api: FakeBotAPI, **options: Any) -> Bot:
    options = {"poll_timeout": 0.5, "retry_delay": 0.01, "max_retry_delay": 0.04, "workers": 4, **options}
    return Bot(api.token, api_url=api.url, **options)


def push_flood(api: FakeBotAPI, chats: int = CHATS, per_chat: int = PER_CHAT) -> None:
    """``per_chat`` messages "0", "1", ... to each of ``chats`` chats (1 to ``chats``), interleaved."""
    for n in range(per_chat):
        for chat in range(1, chats + 1):
            api.push(str(n), chat_id=chat)


def wait_for(condition: Callable[[], bool], what: str) -> None:
    """Wait until ``condition()`` holds (it changes in the bot's threads); fail after JOIN_TIMEOUT."""
    deadline = time.monotonic() + JOIN_TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {JOIN_TIMEOUT} s"
        time.sleep(0.005)


def log_lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


class Recorder:
    """A handler that records, per chat, the texts it handled and how many ran at once."""

    def __init__(self, bot: Bot, expected: int, sleep: float = 0.004, seed: int = 1) -> None:
        self.bot = bot
        self.expected = expected
        self.by_chat: dict[Hashable, list[str]] = defaultdict(list)
        self.ids: list[int] = []
        self.most_at_once = 0
        self.chats_overlapped = False
        self._running: Counter[Hashable] = Counter()
        self._lock = threading.Lock()
        self._random = random.Random(seed)
        self._sleep = sleep
        bot.on("message")(self)

    def __call__(self, ctx: Context) -> None:
        chat = ctx.chat_id
        with self._lock:
            self._running[chat] += 1
            self.chats_overlapped |= self._running[chat] > 1
            self.most_at_once = max(self.most_at_once, self._running.total())
            pause = self._random.uniform(0, self._sleep)
        time.sleep(pause)
        ctx.reply(f"echo {ctx.text}")
        with self._lock:
            self._running[chat] -= 1
            assert ctx.text is not None
            self.by_chat[chat].append(ctx.text)
            self.ids.append(ctx.update["update_id"])
            if len(self.ids) == self.expected:
                self.bot.stop()


# -- concurrency and order ---------------------------------------------------------------------


def test_chats_run_at_once_on_at_most_n_workers_and_each_chat_in_order(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    push_flood(api)
    bot = polling_bot(api, workers=4)
    handler = Recorder(bot, CHATS * PER_CHAT)
    assert run(bot).join() is None
    assert 1 < handler.most_at_once <= 4
    assert not handler.chats_overlapped
    expected = [str(n) for n in range(PER_CHAT)]
    assert dict(handler.by_chat) == {chat: expected for chat in range(1, CHATS + 1)}
    assert sorted(handler.ids) == list(range(1, CHATS * PER_CHAT + 1))
    replies: dict[int, list[str]] = defaultdict(list)
    for sent in api.sent:
        replies[sent["chat_id"]].append(sent["text"])
    assert replies == {chat: [f"echo {n}" for n in range(PER_CHAT)] for chat in range(1, CHATS + 1)}
    assert api.acknowledged_offset == CHATS * PER_CHAT + 1


def meeting_bot(api: FakeBotAPI, parties: int, **options: Any) -> tuple[Bot, list[str]]:
    """A bot whose handler waits until ``parties`` handlers run at once (or MEET passes)."""
    bot = polling_bot(api, **options)
    barrier = threading.Barrier(parties, timeout=MEET)
    met: list[str] = []

    @bot.on("message")
    def meet(ctx: Context) -> None:
        barrier.wait()
        met.append(f"{ctx.chat_id}:{ctx.text}")
        if len(met) == parties:
            bot.stop()

    return bot, met


def test_updates_of_different_chats_run_at_the_same_time(api: FakeBotAPI, run: Callable[[Bot], Started]) -> None:
    for chat in (1, 2, 3):
        api.push("hello", chat_id=chat)
    bot, met = meeting_bot(api, 3, workers=3)
    assert run(bot).join() is None
    assert sorted(met) == ["1:hello", "2:hello", "3:hello"]


def test_an_order_key_of_none_runs_updates_of_one_chat_at_the_same_time(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    api.push("a", chat_id=1)
    api.push("b", chat_id=1)
    bot, met = meeting_bot(api, 2, workers=2, order_key=lambda ctx: None)
    assert run(bot).join() is None
    assert sorted(met) == ["1:a", "1:b"]


def test_one_order_key_for_all_runs_everything_one_at_a_time_in_id_order(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    push_flood(api, chats=5, per_chat=10)
    bot = polling_bot(api, workers=4, order_key=lambda ctx: "everyone")
    handler = Recorder(bot, 50)
    assert run(bot).join() is None
    assert handler.most_at_once == 1
    assert handler.ids == list(range(1, 51))


def test_updates_without_a_chat_are_ordered_by_their_user(api: FakeBotAPI, run: Callable[[Bot], Started]) -> None:
    def inline(user: int, query: str) -> dict[str, Any]:
        sender = {"id": user, "is_bot": False, "first_name": "U"}
        return {"inline_query": {"id": query, "from": sender, "query": query, "offset": ""}}

    for n in range(30):
        api.push(inline(1 + n % 3, str(n)))
    bot = polling_bot(api, workers=4)
    seen: dict[int, list[int]] = defaultdict(list)
    running: Counter[int] = Counter()
    overlapped = False
    lock = threading.Lock()

    @bot.on("inline_query")
    def record(ctx: Context) -> None:
        nonlocal overlapped
        assert ctx.from_id is not None
        with lock:
            running[ctx.from_id] += 1
            overlapped |= running[ctx.from_id] > 1
        time.sleep(0.002)
        with lock:
            running[ctx.from_id] -= 1
            seen[ctx.from_id].append(int(ctx.update["inline_query"]["query"]))
            if sum(map(len, seen.values())) == 30:
                bot.stop()

    assert run(bot).join() is None
    assert not overlapped
    assert seen == {user: list(range(user - 1, 30, 3)) for user in (1, 2, 3)}


def test_the_default_order_key_is_the_chat_else_the_user_else_none() -> None:
    message = {"update_id": 1, "message": {"message_id": 1, "chat": {"id": -5}, "from": {"id": 9}}}
    inline = {"update_id": 2, "inline_query": {"id": "q", "from": {"id": 9}, "query": ""}}
    poll = {"update_id": 3, "poll": {"id": "p", "question": "?", "options": []}}
    assert [default_order_key(Context(u)) for u in (message, inline, poll)] == [-5, 9, None]


def test_an_order_key_that_fails_is_logged_and_its_update_still_handled(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    def key(ctx: Context) -> Hashable | None:
        if ctx.text == "bad":
            raise LookupError("no key")
        unhashable: Any = []
        return unhashable if ctx.text == "unhashable" else ctx.chat_id

    for text in ("bad", "unhashable", "fine"):
        api.push(text)
    bot = polling_bot(api, order_key=key)
    handler = Recorder(bot, 3)
    assert run(bot).join() is None
    assert sorted(handler.by_chat[42]) == ["bad", "fine", "unhashable"]
    errors = log_lines(caplog, logging.ERROR)
    assert errors == [f"order_key failed for update {n}; handling it unordered" for n in (1, 2)]


# -- bounded read-ahead --------------------------------------------------------------------------


def test_polling_pauses_while_the_read_ahead_is_taken_and_no_answer_goes_beyond_it(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    push_flood(api, chats=10, per_chat=10)
    bot = polling_bot(api, workers=2, read_ahead=10)
    release = threading.Event()
    started: list[int] = []

    @bot.on("message")
    def blocked(ctx: Context) -> None:
        started.append(ctx.update["update_id"])
        assert release.wait(JOIN_TIMEOUT)
        if len(started) == 100:
            bot.stop()

    running = run(bot)
    wait_for(lambda: len(started) == 2, "two handlers running")
    polls = len(api.polls)
    # Whatever the wait, no poll comes while the handlers hold the window full.
    assert not release.wait(0.3)
    assert len(api.polls) == polls
    assert sorted(started) == [1, 2]
    release.set()
    assert running.join() is None
    assert sorted(started) == list(range(1, 101))
    assert all(params["limit"] == 10 for params in api.poll_params[:-1])
    # Each answer brings updates at most read_ahead past the offset acknowledged with it.
    for (_, offset), served in zip(api.polls, api.served, strict=False):
        assert all(max(offset, 1) <= update_id < max(offset, 1) + 10 for update_id in served), (offset, served)


def test_an_answer_beyond_the_limit_asked_for_is_taken_only_as_far_as_the_read_ahead(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    flood = [api.push(str(n), chat_id=1 + n % 3) for n in range(30)]
    api.answer_next({"ok": True, "result": flood})
    bot = polling_bot(api, workers=2, read_ahead=10)
    handler = Recorder(bot, 30)
    assert run(bot).join() is None
    assert sorted(handler.ids) == list(range(1, 31))
    # Updates 11 to 30 of the first answer were left to come again.
    assert 11 in api.served[0]


# -- stopping ---------------------------------------------------------------------------------------


def test_stop_lets_running_handlers_finish_and_every_update_is_handled_once_across_restarts(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    push_flood(api, chats=10, per_chat=20)
    handled: Counter[int] = Counter()
    lock = threading.Lock()

    def runner(stop_after: int) -> Bot:
        bot = polling_bot(api, workers=4, read_ahead=30)

        @bot.on("message")
        def count(ctx: Context) -> None:
            time.sleep(0.002)
            with lock:
                handled[ctx.update["update_id"]] += 1
                if handled.total() >= stop_after:
                    bot.stop()

        return bot

    assert run(runner(stop_after=50)).join() is None
    first = handled.total()
    assert first >= 50
    # Everything handled was acknowledged, nothing more: the rest comes to the next bot.
    assert api.acknowledged_offset == max(handled) + 1
    assert sorted(handled) == list(range(1, max(handled) + 1))
    assert run(runner(stop_after=200)).join() is None
    assert handled == {update_id: 1 for update_id in range(1, 201)}


def test_the_same_bot_started_again_handles_what_it_took_but_did_not_start(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    push_flood(api, chats=2, per_chat=10)
    bot = polling_bot(api, workers=2, read_ahead=20)
    seen: list[int] = []
    lock = threading.Lock()

    @bot.on("message")
    def record(ctx: Context) -> None:
        with lock:
            seen.append(ctx.update["update_id"])
            if len(seen) in (3, 20):
                bot.stop()

    assert run(bot).join() is None
    assert 3 <= len(seen) < 20
    assert run(bot).join() is None
    assert sorted(seen) == list(range(1, 21))


def test_stop_waits_stop_timeout_at_most_logs_the_running_handler_and_acknowledges_only_finished(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.push("stuck", chat_id=1)
    for _ in range(3):
        api.push("quick", chat_id=2)
    bot = polling_bot(api, workers=2, stop_timeout=0.2)
    release = threading.Event()
    quick: list[int] = []

    @bot.on("message")
    def handler(ctx: Context) -> None:
        if ctx.text == "stuck":
            release.wait(JOIN_TIMEOUT)
        else:
            quick.append(ctx.update["update_id"])
            if len(quick) == 3:
                bot.stop()

    try:
        assert run(bot).join() is None
    finally:
        release.set()
    assert quick == [2, 3, 4]
    (warning,) = log_lines(caplog, logging.WARNING)
    assert "after 0.2 s (stop_timeout)" in warning
    assert "update 1 (key 1," in warning
    assert api.acknowledged_offset <= 1  # update 1 comes again


# -- slow and failing handlers ----------------------------------------------------------------------


@pytest.mark.parametrize("workers", [1, 3])
def test_a_slow_handler_is_logged_with_its_update_and_chat(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture, workers: int
) -> None:
    api.push("slow", chat_id=5)
    api.push("fast", chat_id=6)
    bot = polling_bot(api, workers=workers, slow_handler=0.05)
    done: list[str] = []

    @bot.on("message")
    def handler(ctx: Context) -> None:
        if ctx.text == "slow":
            time.sleep(0.1)
        done.append(str(ctx.text))
        if len(done) == 2:
            bot.stop()

    assert run(bot).join() is None
    slow = [w for w in log_lines(caplog, logging.WARNING) if "slow_handler" in w and " took " in w]
    assert len(slow) == 1
    assert slow[0].startswith("update 1 (chat 5) took ")
    assert slow[0].endswith("over slow_handler (0.05 s)")


def test_a_handler_that_does_not_return_is_reported_while_it_runs(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    """With workers, the poller warns of a stuck handler before it ends (once), naming its update and chat."""
    api.push("stuck", chat_id=5)
    api.push("other", chat_id=6)
    bot = polling_bot(api, workers=2, slow_handler=0.05)
    release = threading.Event()

    @bot.on("message")
    def handler(ctx: Context) -> None:
        if ctx.text == "stuck":
            release.wait(JOIN_TIMEOUT)

    started = run(bot)
    try:
        wait_for(
            lambda: any("still running" in w for w in log_lines(caplog, logging.WARNING)),
            "a warning about the stuck handler",
        )
        time.sleep(0.3)  # several more polls: still one warning
    finally:
        release.set()
        bot.stop()
    assert started.join() is None
    stuck = [w for w in log_lines(caplog, logging.WARNING) if "still running" in w]
    assert len(stuck) == 1
    assert stuck[0].startswith("update 1 (key 5) is still running after ")
    assert stuck[0].endswith("over slow_handler (0.05 s)")


def test_no_slow_handler_warning_under_the_threshold_or_when_off(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    push_flood(api, chats=3, per_chat=3)
    Recorder(bot := polling_bot(api, slow_handler=None), 9, sleep=0.002)
    assert run(bot).join() is None
    Recorder(bot := polling_bot(api, slow_handler=30), 1)
    api.push("one more")
    assert run(bot).join() is None
    assert not [w for w in log_lines(caplog, logging.WARNING) if "slow_handler" in w]


def test_a_failing_handler_is_logged_and_the_others_go_on(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    push_flood(api, chats=4, per_chat=5)
    bot = polling_bot(api)
    handled: list[int] = []
    lock = threading.Lock()

    @bot.on("message")
    def handler(ctx: Context) -> None:
        with lock:
            handled.append(ctx.update["update_id"])
            if len(handled) == 20:
                bot.stop()
        if ctx.chat_id == 2:
            raise ValueError("chat 2 is broken")

    assert run(bot).join() is None
    assert sorted(handled) == list(range(1, 21))
    errors = [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.ERROR]
    assert sorted(r.getMessage() for r in errors) == sorted(
        f"handling update {n} failed; going on with the next one" for n in range(2, 21, 4)
    )
    assert api.acknowledged_offset == 21


def test_a_handler_that_exits_stops_the_bot_rather_than_a_worker(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.push("exit")
    bot = polling_bot(api)
    bot.on("message")(lambda ctx: exec("raise SystemExit(3)"))
    assert run(bot).join() is None
    assert "handling update 1 raised an exit; stopping" in log_lines(caplog, logging.ERROR)
    assert api.acknowledged_offset == 2


# -- an untrusted server ------------------------------------------------------------------------------


@pytest.mark.parametrize("lie", ["newest_first", "repeat", "replay"])
def test_a_lying_server_gets_each_update_handled_once_per_chat_in_order(
    api: FakeBotAPI, run: Callable[[Bot], Started], lie: str
) -> None:
    # A server that ignores offsets serves the same first `limit` updates for ever: a
    # runner can only get as many as its read-ahead from it.
    setattr(api, lie, 3 if lie == "repeat" else True)
    push_flood(api, chats=5, per_chat=4)
    bot = polling_bot(api, read_ahead=20)
    handler = Recorder(bot, 20)
    assert run(bot).join() is None
    assert sorted(handler.ids) == list(range(1, 21))
    assert dict(handler.by_chat) == {chat: [str(n) for n in range(4)] for chat in range(1, 6)}


# -- 429 on sends --------------------------------------------------------------------------------------


def test_a_reply_refused_with_429_is_sent_after_the_wait_the_server_asks(
    api: FakeBotAPI, caplog: pytest.LogCaptureFixture
) -> None:
    api.fail_sends_next(2, retry_after=0.05)
    bot = polling_bot(api)
    ctx = Context(api.push("hi", chat_id=3), bot)
    assert ctx.reply("hello")["text"] == "hello"
    assert api.sent == [{"chat_id": 3, "text": "hello"}]
    assert (
        log_lines(caplog, logging.WARNING)
        == ["sendMessage failed (HTTP 429: Too Many Requests: retry after 0.05); retrying in 0.05 s"] * 2
    )


def test_a_429_wait_is_clamped_and_the_retries_are_bounded(api: FakeBotAPI, caplog: pytest.LogCaptureFixture) -> None:
    api.fail_sends_next(4, retry_after=1e9)
    bot = polling_bot(api, retry_delay=0.01, max_retry_delay=0.02, max_server_wait=0.03)
    with pytest.raises(SessionError, match="sendMessage failed: HTTP 429"):
        bot.send_message(3, "hello")
    assert api.sent == []
    waits = [w.split("retrying in ")[1].split(",")[0] for w in log_lines(caplog, logging.WARNING)]
    assert waits == ["0.03 s"] * 3
    assert bot.call_api("sendMessage", chat_id=3, text="later")["text"] == "later"


def test_other_errors_of_a_send_are_not_retried(api: FakeBotAPI) -> None:
    bot = polling_bot(api)
    with pytest.raises(SessionError, match="message text is empty"):
        bot.send_message(3, "")
    assert api.calls == ["sendMessage"]


# -- sessions -------------------------------------------------------------------------------------------


def test_sessions_on_files_count_every_update_of_every_chat_with_four_workers(
    api: FakeBotAPI, run: Callable[[Bot], Started], tmp_path: Path
) -> None:
    for _ in range(PER_CHAT):
        for chat in range(1, CHATS + 1):
            api.push("/count", chat_id=chat)
    bot = polling_bot(api, workers=4)
    bot.use(session(initial=lambda: {"count": 0}, storage=FileStorage(tmp_path)))
    done = Counter[int]()
    lock = threading.Lock()

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1
        ctx.reply(str(ctx.session["count"]))
        with lock:
            done[0] += 1
            if done[0] == CHATS * PER_CHAT:
                bot.stop()

    assert run(bot).join() is None
    stored = FileStorage(tmp_path, cache_size=0)
    assert {chat: stored.read(str(chat)) for chat in range(1, CHATS + 1)} == {
        chat: {"count": PER_CHAT} for chat in range(1, CHATS + 1)
    }
    replies: dict[int, list[str]] = defaultdict(list)
    for sent in api.sent:
        replies[sent["chat_id"]].append(sent["text"])
    assert all(texts == [str(n) for n in range(1, PER_CHAT + 1)] for texts in replies.values())


# -- options ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "options",
    [
        {"workers": 0},
        {"workers": 2.0},
        {"workers": True},
        {"read_ahead": 0},
        {"read_ahead": 101},
        {"slow_handler": float("nan")},
        {"stop_timeout": -1},
    ],
)
def test_bad_runner_options_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(options))):
        Bot("1:x", **options)


def test_an_order_key_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="order_key"):
        Bot("1:x", order_key="chat")  # type: ignore[arg-type]


def test_the_console_handles_lines_one_by_one_whatever_the_workers() -> None:
    out = io.StringIO()
    bot = Bot(input=io.StringIO("a\nb\nc\n"), output=out, workers=4)
    bot.on("message")(lambda ctx: ctx.reply(ctx.text.upper()))
    bot.start()
    assert out.getvalue() == "A\nB\nC\n"


@pytest.fixture(autouse=True)
def _no_leftover_workers() -> Iterator[None]:
    before = set(threading.enumerate())
    yield
    deadline = time.monotonic() + JOIN_TIMEOUT
    while time.monotonic() < deadline:
        left = [t for t in set(threading.enumerate()) - before if t.name.startswith("simplesession-worker")]
        if not left:
            return
        time.sleep(0.01)
    raise AssertionError(f"worker threads left running: {left}")
