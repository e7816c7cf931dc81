"""Long polling with worker threads: different chats at once, each chat in order.

The poller (the thread that called ``Bot.start``) fetches updates into a *window*: the
updates taken from the Bot API and not yet acknowledged to it. Worker threads handle them;
updates that share an ordering key wait for each other, in id order. The offset sent with
each ``getUpdates`` is the end of the finished prefix of the window, so the server forgets
an update only once it and every update before it have been handled: a crash brings back
what was unfinished, and at most ``read_ahead`` updates that were already handled.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from typing import TYPE_CHECKING, Any

from .botapi import TOKEN_REFUSED, CallFailed, UpdateFeed
from .context import Context

if TYPE_CHECKING:
    from .bot import Bot

__all__ = ["OrderKey", "default_order_key"]

_log = logging.getLogger("simplesession.bot")

OrderKey = Callable[[Context], Hashable | None]
"""What orders updates: those with the same key are handled one after another; ``None``: unordered."""

# While updates are in the window the server answers getUpdates at once (it still has
# them), so a poll that brought nothing new is repeated after a wait that doubles from
# the first to the last of these, or as soon as the window empties.
_FIRST_BUSY_WAIT = 0.05
_LAST_BUSY_WAIT = 1.0
# How often a waiting poller looks at the stop flag, which a SIGINT handler sets without
# being able to wake it.
_WAKE = 0.1
# How long idle workers get to leave once the run is over.
_WORKER_EXIT = 1.0


def default_order_key(ctx: Context) -> Hashable | None:
    """The chat of the update, else the user who caused it, else ``None``."""
    chat_id = ctx.chat_id
    return chat_id if chat_id is not None else ctx.from_id


class _Job:
    __slots__ = ("key", "started", "update", "update_id")

    def __init__(self, update: dict[str, Any], key: Hashable | None) -> None:
        self.update = update
        self.update_id: int = update["update_id"]
        self.key = key
        self.started = 0.0


class Window:
    """The updates taken and not yet acknowledged, and which of them may run now.

    :param offset: the offset the run starts at (one past the last update taken before).
    :param stopped: set when the run is to stop: from then on no update after the highest
        one started is started.
    """

    def __init__(self, offset: int, stopped: threading.Event) -> None:
        self._changed = threading.Condition(threading.Lock())
        # update id -> finished, in id order (ids are taken in increasing order). The
        # finished prefix is dropped as it forms, so the first entry is never finished.
        self._taken: dict[int, bool] = {}
        self._end = offset
        # key -> the later jobs of a key whose earlier job is ready or running.
        self._lanes: dict[Hashable, deque[_Job]] = {}
        self._ready: deque[_Job] = deque()
        self._running: dict[int, _Job] = {}
        self._stopped = stopped
        self._highest_started = -1
        self._closed = False

    # -- the poller's side ------------------------------------------------------------------

    def offset(self) -> int:
        """One past the finished prefix: the offset to acknowledge."""
        with self._changed:
            return self._offset()

    def _offset(self) -> int:
        return next(iter(self._taken), self._end)

    def __len__(self) -> int:
        with self._changed:
            return len(self._taken)

    def known(self, update: object, asked: int) -> bool:
        """Whether ``update``, in an answer to a poll at offset ``asked``, is one of the
        window's (the server sends them until acknowledged), or was when the poll was made."""
        update_id = update.get("update_id") if isinstance(update, dict) else None
        if type(update_id) is not int or update_id < asked:  # an odd id is not ours, and maybe not hashable
            return False
        with self._changed:
            return update_id < self._offset() or update_id in self._taken

    def add(self, update: dict[str, Any], key: Hashable | None) -> None:
        """Take ``update`` (with a higher id than any taken before) to be handled."""
        job = _Job(update, key)
        with self._changed:
            self._taken[job.update_id] = False
            self._end = job.update_id + 1
            if key is None:
                self._ready.append(job)
            elif key in self._lanes:
                self._lanes[key].append(job)
            else:
                self._lanes[key] = deque()
                self._ready.append(job)
            self._changed.notify_all()

    def wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for ``condition()`` (called with the window locked)."""
        with self._changed:
            return self._changed.wait_for(condition, timeout)

    def size_locked(self) -> int:
        """:func:`len`, for a ``condition`` of :meth:`wait` (the lock is held there)."""
        return len(self._taken)

    def drained_locked(self) -> bool:
        """Whether every update up to the highest one started has finished (lock held)."""
        return not any(update_id <= self._highest_started for update_id in self._taken)

    def close(self) -> None:
        """Let the workers go."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()

    def running(self) -> list[tuple[int, Hashable | None, float]]:
        """``(update id, key, seconds so far)`` of each update being handled."""
        now = time.monotonic()
        with self._changed:
            return [(job.update_id, job.key, now - job.started) for job in self._running.values()]

    # -- the workers' side ------------------------------------------------------------------

    def next_job(self) -> _Job | None:
        """The next update to handle, waiting for one; ``None`` once the run is over."""
        with self._changed:
            while True:
                if self._closed:
                    return None
                job = self._startable()
                if job is not None:
                    job.started = time.monotonic()
                    self._running[job.update_id] = job
                    self._highest_started = max(self._highest_started, job.update_id)
                    return job
                self._changed.wait()

    def _startable(self) -> _Job | None:
        if not self._stopped.is_set():
            return self._ready.popleft() if self._ready else None
        for job in self._ready:
            if job.update_id < self._highest_started:
                self._ready.remove(job)
                return job
        return None

    def finish(self, job: _Job) -> None:
        """Count ``job`` as handled; the next update of its key may run."""
        with self._changed:
            self._running.pop(job.update_id, None)
            if job.update_id in self._taken:
                self._taken[job.update_id] = True
            while self._taken:
                first = next(iter(self._taken))
                if not self._taken[first]:
                    break
                del self._taken[first]
            if job.key is not None:
                lane = self._lanes.get(job.key)
                if lane:
                    self._ready.append(lane.popleft())
                elif lane is not None:
                    del self._lanes[job.key]
            self._changed.notify_all()


def _work(bot: Bot, window: Window) -> None:
    while True:
        job = window.next_job()
        if job is None:
            return
        try:
            bot._handle_logged(job.update)
        except BaseException:
            # SystemExit and the like: in the polling thread they would end start(); here
            # they would end this thread, and with the last one the handling of updates.
            _log.exception("handling update %s raised an exit; stopping", job.update_id)
            bot.stop()
        finally:
            window.finish(job)


def _order_key(bot: Bot, update: dict[str, Any]) -> Hashable | None:
    try:
        key = bot.order_key(Context(update, bot))
        hash(key)
    except Exception:
        _log.exception("order_key failed for update %s; handling it unordered", update.get("update_id"))
        return None
    return key


def poll_with_workers(bot: Bot, feed: UpdateFeed) -> None:
    """``bot.start()`` with ``bot.workers`` threads: long polling until stopped."""
    window = Window(feed.offset, bot._stop)
    workers = [
        threading.Thread(target=_work, args=(bot, window), name=f"simplesession-worker-{n}", daemon=True)
        for n in range(bot.workers)
    ]
    for worker in workers:
        worker.start()
    acknowledged = feed.offset
    # Ctrl-C may interrupt the poller only in a Bot API call, where it holds no lock and
    # changes nothing (see Bot._on_sigint); elsewhere it only sets the stop flag.
    bot._busy = True
    try:
        acknowledged = _poll(bot, feed, window, acknowledged)
    except KeyboardInterrupt:
        bot._interrupted = True  # a second Ctrl-C stops waiting for the handlers
        _log.info("interrupted (Ctrl-C): stopping")
    else:
        bot._log_interrupted()
    finally:
        drained = False
        try:
            drained = _finish(bot, window)
        finally:
            window.close()
            if drained:  # else some are still in handlers, and stay there
                for worker in workers:
                    worker.join(_WORKER_EXIT)
            offset = window.offset()
            # Updates taken but not handled come again on the next start() of this bot.
            feed.release(offset)
            bot._busy = False
            if offset != acknowledged:
                bot._acknowledge(offset)
        _log.info("stopped polling")


def _poll(bot: Bot, feed: UpdateFeed, window: Window, acknowledged: int) -> int:
    """Poll until stopped; return the offset last sent to the server."""
    delay = bot.retry_delay
    busy_wait = _FIRST_BUSY_WAIT
    half = bot.read_ahead // 2
    stopped = bot._stop.is_set
    stuck: set[int] = set()
    while not stopped():
        _report_stuck(bot, window, stuck)
        # Polling pauses while more than half the window is taken, so that each call
        # brings at least that many new updates (an answer repeats the whole window).
        if not window.wait(lambda: window.size_locked() <= half, _WAKE):
            continue
        offset, ahead = window.offset(), len(window)
        asked_at = time.monotonic()
        try:
            bot._busy = False
            try:
                result = bot._get_updates(offset, timeout=0 if ahead else None, limit=bot.read_ahead)
            finally:
                bot._busy = True
            if isinstance(result, list):
                # The window's own updates come back until acknowledged: not news, not a fault.
                result = [update for update in result if not window.known(update, offset)]
            updates = feed.fresh(result)
        except CallFailed as error:
            if error.code in TOKEN_REFUSED:
                raise bot._api().token_refused(error) from None
            bot._stop.wait(bot._wait_after("getUpdates", error, delay))
            delay = min(delay * 2, bot.max_retry_delay)
            continue
        acknowledged = offset
        if not updates:
            took = time.monotonic() - asked_at
            if ahead:
                # Only the window came back: wait for handlers, or a while, before asking again.
                _sliced_wait(bot, window, lambda: window.size_locked() == 0, busy_wait)
                busy_wait = min(busy_wait * 2, _LAST_BUSY_WAIT)
            elif took < bot.poll_timeout / 2:
                _log.warning(
                    "getUpdates brought nothing new after %.2g s of the %g s it may wait; polling again in %g s",
                    took,
                    bot.poll_timeout,
                    delay,
                )
                bot._stop.wait(delay)
                delay = min(delay * 2, bot.max_retry_delay)
            continue
        delay = bot.retry_delay
        busy_wait = _FIRST_BUSY_WAIT
        # A server may answer with more than the limit asked for: the rest comes again.
        for update in updates[: bot.read_ahead - len(window)]:
            feed.take(update)
            window.add(update, _order_key(bot, update))
    return acknowledged


def _report_stuck(bot: Bot, window: Window, stuck: set[int]) -> None:
    """Warn once of each handler still running past ``slow_handler``: one that never
    returns holds back the acknowledgement, and with it, once the read-ahead fills, every chat."""
    if bot.slow_handler is None:
        return
    running = window.running()
    stuck.intersection_update(update_id for update_id, _, _ in running)
    for update_id, key, seconds in running:
        if seconds > bot.slow_handler and update_id not in stuck:
            stuck.add(update_id)
            _log.warning(
                "update %s (key %r) is still running after %.3g s, over slow_handler (%g s)",
                update_id,
                key,
                seconds,
                bot.slow_handler,
            )


def _sliced_wait(bot: Bot, window: Window, condition: Callable[[], bool], timeout: float) -> bool:
    end = time.monotonic() + timeout
    while not bot._stop.is_set():
        left = end - time.monotonic()
        if left <= 0:
            return False
        if window.wait(condition, min(left, _WAKE)):
            return True
    return False


def _finish(bot: Bot, window: Window) -> bool:
    """Let running handlers, and the updates before them, finish within ``bot.stop_timeout``;
    whether they did."""
    bot._stop.set()
    end = time.monotonic() + bot.stop_timeout
    try:
        while True:
            left = end - time.monotonic()
            if window.wait(window.drained_locked, min(max(left, 0), _WAKE)):
                return True
            if left <= 0:
                break
        why = f"after {bot.stop_timeout:g} s (stop_timeout)"
    except KeyboardInterrupt:
        why = "on a second Ctrl-C"
    running = sorted(window.running())
    if running:
        _log.warning(
            "stopped waiting %s for %d handlers still running: %s; their updates will come again",
            why,
            len(running),
            ", ".join(f"update {u} (key {k!r}, {s:.1f} s)" for u, k, s in running),
        )
    return False
