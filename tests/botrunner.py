"""``Bot.start()`` run in a thread by the tests of the runner."""

from __future__ import annotations

import threading

from simplesession.bot import Bot

JOIN_TIMEOUT = 10.0


class Started:
    """``bot.start()`` running in a thread; :meth:`join` asserts that it returned."""

    def __init__(self, bot: Bot) -> None:
        self.bot = bot
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bot", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.bot.start()
        except BaseException as error:
            self.error = error

    def join(self) -> BaseException | None:
        self.thread.join(JOIN_TIMEOUT)
        assert not self.thread.is_alive(), "start() did not return"
        return self.error
