"""What the command line reads and writes besides sessions: durations, sizes, progress, log lines."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from typing import ClassVar

__all__ = [
    "DURATION_HELP",
    "PROG",
    "LogHandler",
    "Progress",
    "format_duration",
    "human",
    "iso",
    "parse_duration",
    "plural",
]

PROG = "simplesession"
_UNITS = {"w": 604800, "d": 86400, "h": 3600, "m": 60, "s": 1}
DURATION_HELP = "e.g. 30d, 12h, 90m, 45s, 2w, 1d12h, or seconds (3600)"
# A century: longer is a slip of the keyboard, and far longer would overflow a float.
_MAX_DURATION = 36525 * 86400


def parse_duration(text: str) -> float:
    """Seconds in ``text`` (``30d``, ``1d12h``, ``3600``); ``ArgumentTypeError`` if not positive."""
    spec = text.strip().lower()
    if re.fullmatch(r"[0-9]+", spec):
        parts = [(spec, "s")]
    elif re.fullmatch(r"([0-9]+[wdhms])+", spec):
        parts = re.findall(r"([0-9]+)([wdhms])", spec)
    elif re.fullmatch(r"-[0-9.wdhms]+", spec):
        raise argparse.ArgumentTypeError(f"{text!r} is negative; a duration must be positive ({DURATION_HELP})")
    else:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration ({DURATION_HELP})")
    # Digits are counted first: int() refuses numerals of thousands of digits with a traceback.
    too_long = any(len(n.lstrip("0")) > 12 for n, _ in parts)
    total = 0 if too_long else sum(int(n) * _UNITS[unit] for n, unit in parts)
    if too_long or total > _MAX_DURATION:
        shown = repr(text) if len(text) <= 30 else f"{text[:20]!r}... ({len(text)} characters)"
        raise argparse.ArgumentTypeError(
            f"{shown} is longer than a century; a duration must be 1s to {format_duration(_MAX_DURATION)}"
        )
    seconds = float(total)
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is zero; a duration must be positive ({DURATION_HELP})")
    return seconds


def format_duration(seconds: float) -> str:
    """Whole ``seconds`` the way a user writes them: ``30d``, ``1d12h``, ``2w`` (weeks only when exact)."""
    rest, parts = int(seconds), []
    for unit, size in _UNITS.items():
        if rest >= size and (unit != "w" or rest % size == 0):
            parts.append(f"{rest // size}{unit}")
            rest %= size
    return "".join(parts)


class Progress:
    """A one-line progress indicator on stderr, drawn only when stderr is a terminal."""

    WIDTH = 24
    current: ClassVar[Progress | None] = None  # the one on screen, which log lines must clear

    def __init__(self, label: str, *, bar: bool = True) -> None:
        self.label = label
        self.bar = bar
        self.enabled = sys.stderr.isatty()
        self.shown = ""
        self.drawn_at = 0.0
        # A terminal without UTF-8 cannot show block characters; ASCII still reads.
        try:
            "█░".encode(sys.stderr.encoding or "ascii")
            self.marks = "█░"
        except (UnicodeEncodeError, LookupError):
            self.marks = "#-"

    def __enter__(self) -> Progress:
        Progress.current = self
        return self

    def __exit__(self, *exc_info: object) -> None:
        Progress.current = None
        if self.shown:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self.bar:
            filled = min(self.WIDTH, done * self.WIDTH // max(total, 1))
            percent = min(100, done * 100 // max(total, 1))
            text = f"{self.label} {self.marks[0] * filled}{self.marks[1] * (self.WIDTH - filled)} {percent:3d}%"
        else:
            text = f"{self.label} {done}/{total}"
        now = time.monotonic()
        # Redrawing for every item would cost more than the work; the last state always shows.
        if text == self.shown or (done < total and now - self.drawn_at < 0.05):
            return
        sys.stderr.write(f"\r{text}\x1b[K")
        sys.stderr.flush()
        self.shown, self.drawn_at = text, now

    @classmethod
    def clear(cls) -> None:
        """Erase the progress line so another line can take its place; the next update redraws it."""
        if cls.current is not None and cls.current.shown:
            sys.stderr.write("\r\x1b[K")
            cls.current.shown = ""


class LogHandler(logging.Handler):
    # The library logs a corrupt file it moved aside; show it as one line, not over a progress bar.
    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.errors = 0  # sessions the library could not read (or other trouble it logged as errors)

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR:
            self.errors += 1
        try:
            Progress.clear()
            sys.stderr.write(f"{PROG}: {record.getMessage()}\n")
            sys.stderr.flush()
        except Exception:
            self.handleError(record)


def iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(timestamp))


def human(size: int) -> str:
    """``812 bytes``, or ``1.2 KiB (1234 bytes)``: readable, yet exact."""
    if size < 1024:
        return f"{size} bytes"
    amount, units = size / 1024, ["KiB", "MiB", "GiB", "TiB"]
    while amount >= 1024 and len(units) > 1:
        amount, units = amount / 1024, units[1:]
    return f"{amount:.1f} {units[0]} ({size} bytes)"


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
