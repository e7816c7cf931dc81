"""The runner against a Bot API server that lies: odd waits, replays, trickles, floods."""

from __future__ import annotations

import itertools
import json
import logging
import math
import shutil
import ssl
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from botrunner import JOIN_TIMEOUT, Started
from fakebotapi import FakeBotAPI

from simplesession import bot as bot_module
from simplesession.bot import Bot
from simplesession.botapi import MAX_ANSWER_BYTES, BotAPI, CallFailed
from simplesession.context import Context

# How much later than asked a wait may end, on a loaded machine.
SLACK = 1.5
# The runner's waits, short so that the many waits here take little time (each is a lower
# bound the test checks; test_bot.py checks the defaults): the back-off runs RETRY, 2 x RETRY,
# 4 x RETRY = MAX_RETRY, MAX_RETRY, ...
RETRY, MAX_RETRY, MAX_SERVER_WAIT, POLL = 0.02, 0.08, 0.12, 0.2
BACK_OFF = [RETRY, 2 * RETRY, MAX_RETRY, MAX_RETRY]
# A server that sends one byte per TRICKLE, and a call deadline it cannot meet that way.
TRICKLE, DEADLINE = 0.02, 0.2


def polling_bot(api: FakeBotAPI, **options: Any) -> Bot:
    options = {
        "poll_timeout": POLL,
        "retry_delay": RETRY,
        "max_retry_delay": MAX_RETRY,
        "max_server_wait": MAX_SERVER_WAIT,
        **options,
    }
    return Bot(api.token, api_url=api.url, **options)


def handled_ids(bot: Bot, stop_at: str | None = None) -> list[int]:
    """Record the id of each update ``bot`` handles; stop it after the text ``stop_at``."""
    seen: list[int] = []

    @bot.on("message")
    def record(ctx: Context) -> None:
        seen.append(ctx.update["update_id"])
        if ctx.text == stop_at:
            bot.stop()

    return seen


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name.startswith("simplesession") and r.levelno == logging.WARNING
    ]


def gaps(api: FakeBotAPI) -> list[float]:
    """The time between one getUpdates call and the next."""
    times = [t for t, _ in api.polls]
    return [later - earlier for earlier, later in itertools.pairwise(times)]


def offsets(api: FakeBotAPI) -> list[int]:
    return [offset for _, offset in api.polls]


def too_many_requests(retry_after: Any) -> dict[str, Any]:
    return {
        "ok": False,
        "error_code": 429,
        "description": "Too Many Requests",
        "parameters": {"retry_after": retry_after},
    }


# -- waits the server asks for -------------------------------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "shown"),
    [("Infinity", "inf"), ("1e9", "1e+09"), ("1e400", "inf"), (str(10**400), "inf")],
)
def test_a_wait_beyond_max_server_wait_is_cut_to_it_and_logged(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture, retry_after: str, shown: str
) -> None:
    # Raw JSON: Infinity, 1e400 and a 401-digit integer are what a server may send.
    api.answer_next(f'{{"ok": false, "error_code": 429, "parameters": {{"retry_after": {retry_after}}}}}', 429)
    api.push("after the wait")
    bot = polling_bot(api)
    seen = handled_ids(bot, stop_at="after the wait")
    assert run(bot).join() is None
    assert seen == [1]
    (waited,) = gaps(api)[:1]
    assert MAX_SERVER_WAIT <= waited < MAX_SERVER_WAIT + SLACK
    (warning,) = warnings(caplog)
    assert f"retrying in {MAX_SERVER_WAIT:g} s, not the {shown} s the server asked for" in warning
    assert f"max_server_wait ({MAX_SERVER_WAIT:g} s)" in warning


@pytest.mark.parametrize("retry_after", [0, -1, math.nan])
def test_a_wait_below_the_back_off_delay_gets_the_delay_and_polls_never_come_back_to_back(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture, retry_after: float
) -> None:
    api.answer_next(too_many_requests(retry_after), 429, times=4)
    api.push("after the waits")
    bot = polling_bot(api)
    seen = handled_ids(bot, stop_at="after the waits")
    assert run(bot).join() is None
    assert seen == [1]
    expected = BACK_OFF
    taken = gaps(api)[:4]
    assert all(want <= got < want + SLACK for want, got in zip(expected, taken, strict=True)), taken
    asked = "nan" if math.isnan(retry_after) else f"{retry_after:g}"
    assert [w.rsplit("; ", 1)[1].split(":")[0] for w in warnings(caplog)] == [
        f"retrying in {want:g} s, not the {asked} s the server asked for" for want in expected
    ]


@pytest.mark.parametrize("retry_after", ["5", True, [1], {"seconds": 1}])
def test_a_retry_after_that_is_no_number_is_named_in_the_log_and_the_back_off_used(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture, retry_after: Any
) -> None:
    api.answer_next(too_many_requests(retry_after), 429, times=2)
    api.push("after the waits")
    bot = polling_bot(api)
    seen = handled_ids(bot, stop_at="after the waits")
    assert run(bot).join() is None
    assert seen == [1]
    taken = gaps(api)[:2]
    assert all(want <= got < want + SLACK for want, got in zip(BACK_OFF[:2], taken, strict=True)), taken
    logged = warnings(caplog)
    assert len(logged) == 2
    assert all("is not a number" in w for w in logged)
    assert [w.rsplit("; ", 1)[1] for w in logged] == [f"retrying in {want:g} s" for want in BACK_OFF[:2]]


@pytest.mark.parametrize(
    "options",
    [
        {"max_server_wait": math.inf},
        {"max_retry_delay": math.inf},
        {"poll_timeout": math.nan},
        {"retry_delay": True},
        {"max_retry_delay": 60, "max_server_wait": 30},
    ],
)
def test_waits_that_are_not_finite_and_ordered_seconds_are_refused(options: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"must be a finite number|need 0 < retry_delay"):
        Bot(**options)


# -- offsets and update ids --------------------------------------------------------------------


def test_updates_served_newest_first_are_each_handled_once_in_id_order(
    api: FakeBotAPI, run: Callable[[Bot], Started]
) -> None:
    api.newest_first = True
    for n in range(9):
        api.push(f"update {n}")
    bot = polling_bot(api)
    seen = handled_ids(bot)
    running = run(bot)
    api.wait_until(lambda: any(offset == 10 for offset in offsets(api)), what="a poll with offset 10")
    bot.stop()
    assert running.join() is None
    assert seen == list(range(1, 10))
    assert api.acknowledged_offset == 10
    assert offsets(api) == sorted(offsets(api))


def test_a_server_replaying_old_and_repeated_updates_gets_each_handled_once_and_is_not_polled_in_a_spin(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.replay = api.newest_first = True
    api.repeat = 2
    for n in range(3):
        api.push(f"update {n}")
    bot = polling_bot(api)
    seen = handled_ids(bot)
    running = run(bot)
    # Past the whole back-off: at its cap, then one more answer at the cap.
    api.wait_until(lambda: len(api.polls) >= 6, what="six polls")
    bot.stop()
    assert running.join() is None
    assert seen == [1, 2, 3]
    assert offsets(api)[0] == 0
    assert set(offsets(api)[1:]) == {4}
    # Every answer after the first brings nothing new: paced by the back-off, never in a spin.
    assert 6 <= len(api.polls) <= 8  # stop() ends it after the poll under way
    taken = gaps(api)[1:]
    assert all(want <= got for want, got in zip(BACK_OFF + [MAX_RETRY] * 3, taken, strict=False)), taken
    logged = warnings(caplog)
    assert "getUpdates served 3 repeats within one answer; skipped them" in logged[0]
    # Each later answer: what was skipped, then the pause.
    assert all(w.startswith("getUpdates served 6 updates below offset 4; skipped them") for w in logged[1::2])
    assert all("brought nothing new" in w for w in logged[2::2])


def test_a_server_that_answers_at_once_with_nothing_is_backed_off_not_polled_in_a_spin(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.answer_next({"ok": True, "result": []}, times=4)
    api.push("after the empty answers")
    bot = polling_bot(api)
    seen = handled_ids(bot, stop_at="after the empty answers")
    assert run(bot).join() is None
    assert seen == [1]
    taken = gaps(api)[:4]
    assert all(want <= got < want + SLACK for want, got in zip(BACK_OFF, taken, strict=True)), taken
    logged = warnings(caplog)
    assert len(logged) == 4
    assert all("brought nothing new after" in w and f"of the {POLL:g} s it may wait" in w for w in logged), logged


def test_malformed_and_old_updates_are_logged_and_skipped_and_the_offset_never_goes_back(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    good = {"update_id": 5, "message": {"message_id": 1, "chat": {"id": 1, "type": "private"}, "text": "good"}}
    malformed: list[Any] = [
        "junk",
        None,
        {"update_id": True, "message": {}},
        {"update_id": "7"},
        {"update_id": 1.5},
        {"update_id": -3},
        {"update_id": 2**64},
        {"message": {}},
    ]
    api.answer_next({"ok": True, "result": [*malformed, good]})
    old = {**good, "update_id": 2}
    api.answer_next({"ok": True, "result": [old, good]})
    api.next_update_id = 6
    api.push("last")
    bot = polling_bot(api)
    seen = handled_ids(bot, stop_at="last")
    assert run(bot).join() is None
    assert seen == [5, 6]
    # The last call acknowledges the last update after stop().
    assert offsets(api) == [0, 6, 6, 7]
    assert api.acknowledged_offset == 7
    logged = warnings(caplog)
    assert "served 8 malformed updates" in logged[0]
    assert "served 2 updates below offset 6; skipped them" in logged[1]


def test_a_bot_started_again_never_handles_an_update_twice_even_when_its_acknowledgement_was_lost(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    for text in ["a", "b", "c"]:
        api.push(text)
    bot = polling_bot(api)
    seen: list[str | None] = []

    @bot.on("message")
    def record(ctx: Context) -> None:
        seen.append(ctx.text)
        if ctx.text in ("c", "d"):
            api.fail_next(500)  # the acknowledging call after stop() fails
            bot.stop()

    assert run(bot).join() is None
    assert any("could not acknowledge" in w for w in warnings(caplog))
    api.push("d")
    assert run(bot).join() is None
    assert seen == ["a", "b", "c", "d"]


# -- answers that are no Bot API answers --------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "<html>502 Bad Gateway</html>",
        '{"ok": false}',
        '{"ok": true, "result": {"update_id": 1}}',
        '{"ok": true}',
        "[" * 100_000 + "]" * 100_000,
        json.dumps({"ok": False, "description": "evil\nline " * 10_000}),
    ],
    ids=["html", "ok-false-no-description", "result-not-a-list", "no-result", "nested-too-deep", "huge-description"],
)
def test_an_answer_that_is_no_bot_api_answer_is_logged_in_one_short_line_and_backed_off(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture, body: str
) -> None:
    api.answer_next(body, times=3)
    api.push("after the garbage")
    bot = polling_bot(api)
    seen = handled_ids(bot, stop_at="after the garbage")
    assert run(bot).join() is None
    assert seen == [1]
    taken = gaps(api)[:3]
    assert all(want <= got < want + SLACK for want, got in zip(BACK_OFF[:3], taken, strict=True)), taken
    logged = warnings(caplog)
    assert len(logged) == 3
    assert all("getUpdates failed" in w and "\n" not in w and len(w) < 500 for w in logged), logged


# -- deadlines and sizes -------------------------------------------------------------------------


@pytest.mark.parametrize("trickle_headers", [False, True], ids=["body", "headers-and-body"])
def test_an_answer_trickled_byte_by_byte_fails_the_call_at_its_deadline(api: FakeBotAPI, trickle_headers: bool) -> None:
    # Each byte comes well within the deadline; all of them would take seconds.
    api.answer_next({"ok": True, "result": [], "pad": "x" * 100}, trickle=TRICKLE, trickle_headers=trickle_headers)
    started = time.monotonic()
    with pytest.raises(CallFailed, match="timed out"):
        BotAPI(api.token, api.url).call("getUpdates", {"timeout": 0}, DEADLINE)
    assert time.monotonic() - started < DEADLINE + 0.5


def test_a_poll_trickled_byte_by_byte_ends_at_poll_timeout_plus_the_margin_and_polling_goes_on(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bot_module, "_POLL_MARGIN", 0.1)
    api.answer_next({"ok": True, "result": [], "pad": "x" * 100}, trickle=TRICKLE)
    api.push("after the trickle")
    bot = polling_bot(api, poll_timeout=0.1)
    seen = handled_ids(bot, stop_at="after the trickle")
    assert run(bot).join() is None
    assert seen == [1]
    assert gaps(api)[0] < 0.1 + 0.1 + RETRY + SLACK
    (warning,) = warnings(caplog)
    assert "getUpdates failed (timed out)" in warning


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command to make a certificate")
def test_calls_over_https_work_and_keep_the_whole_call_deadline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"),
            *("-keyout", str(key), "-out", str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1"),
        ],
        check=True,
        capture_output=True,
        timeout=30,
    )
    # The client's default context trusts this certificate only: it is verified as usual.
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    with FakeBotAPI(tls=tls) as api:
        assert api.url.startswith("https://")
        bot_api = BotAPI(api.token, api.url)
        assert bot_api.call("getMe", {}, JOIN_TIMEOUT)["username"] == "FakeBot"
        api.answer_next({"ok": True, "result": [], "pad": "x" * 100}, trickle=TRICKLE)
        started = time.monotonic()
        with pytest.raises(CallFailed, match="timed out"):
            bot_api.call("getUpdates", {"timeout": 0}, DEADLINE)
        assert time.monotonic() - started < DEADLINE + 0.5


@pytest.mark.parametrize("chunked", [False, True], ids=["with-length", "chunked"])
def test_an_answer_over_the_size_limit_is_refused(api: FakeBotAPI, chunked: bool) -> None:
    pad = "x" * MAX_ANSWER_BYTES
    api.answer_next({"ok": True, "result": [], "pad": pad}, chunked=chunked)
    with pytest.raises(CallFailed, match=f"longer than {MAX_ANSWER_BYTES} bytes|over {MAX_ANSWER_BYTES}"):
        BotAPI(api.token, api.url).call("getUpdates", {"timeout": 0}, JOIN_TIMEOUT)


def test_an_announced_length_over_the_limit_is_refused_before_reading(api: FakeBotAPI) -> None:
    api.answer_next({"ok": True, "result": []}, content_length=2**40, trickle=0.05)
    started = time.monotonic()
    with pytest.raises(CallFailed, match=f"would be {2**40} bytes, over {MAX_ANSWER_BYTES}"):
        BotAPI(api.token, api.url).call("getUpdates", {"timeout": 0}, JOIN_TIMEOUT)
    assert time.monotonic() - started < 0.5


def test_an_oversized_poll_is_logged_and_backed_off_and_polling_goes_on(
    api: FakeBotAPI, run: Callable[[Bot], Started], caplog: pytest.LogCaptureFixture
) -> None:
    api.answer_next({"ok": True, "result": [], "pad": "x" * MAX_ANSWER_BYTES}, chunked=True)
    api.push("after the flood")
    bot = polling_bot(api)
    seen = handled_ids(bot, stop_at="after the flood")
    assert run(bot).join() is None
    assert seen == [1]
    (warning,) = warnings(caplog)
    assert f"longer than {MAX_ANSWER_BYTES} bytes" in warning
    assert f"retrying in {RETRY:g} s" in warning
