"""The Bot API transport: calls to a Telegram Bot API server, JSON over HTTP.

Nothing a server answers is trusted: each call ends by one deadline however slowly the
answer comes, answers have a size limit, and :class:`UpdateFeed` checks the updates.
"""

from __future__ import annotations

import http.client
import io
import json
import logging
import socket
import time
import urllib.error
import urllib.request
from typing import Any, cast

from .errors import SessionError

__all__ = ["MAX_ANSWER_BYTES", "TOKEN_REFUSED", "BotAPI", "CallFailed", "UpdateFeed"]

_log = logging.getLogger(__name__)

# Telegram answers 401 to a revoked token and 404 to a malformed one; retrying helps neither.
TOKEN_REFUSED = (401, 404)
# Far above any real answer (100 updates of a few KB each), low enough that a server
# streaming without end cannot fill the memory.
MAX_ANSWER_BYTES = 16 * 1024 * 1024
# What a server says (descriptions, odd values) goes into log lines: keep them short.
_QUOTE_CHARS = 200
# Telegram takes update ids and offsets as signed 64-bit integers.
_MAX_UPDATE_ID = 2**63 - 2


class CallFailed(Exception):
    """A Bot API call failed.

    :ivar code: the Bot API error code (mostly the HTTP status), ``None`` for network trouble.
    :ivar retry_after: the seconds the server asked to wait before calling again, if it
        asked with a number; as the server sent it, so possibly negative, infinite or NaN.
    """

    def __init__(self, message: str, *, code: int | None = None, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


class BotAPI:
    """One bot's calls to a Bot API server.

    :param token: the bot token, put in each call's URL as it is.
    :param api_url: the Bot API server, such as ``"https://api.telegram.org"``.
    """

    __slots__ = ("token", "url")

    def __init__(self, token: str, api_url: str) -> None:
        self.token = token
        self.url = api_url.rstrip("/")

    def call(self, method: str, params: dict[str, Any], timeout: float) -> Any:
        """Call ``method`` with ``params`` and return its result, within ``timeout`` seconds.

        ``timeout`` bounds the whole call — connecting, sending, and reading the answer to
        its end — not each read. Raises :class:`CallFailed` when the call does not reach
        the server, the server refuses it, or its answer is not a Bot API answer (also
        when it is longer than :data:`MAX_ANSWER_BYTES` or comes too slowly).
        """
        request = urllib.request.Request(
            f"{self.url}/bot{self.token}/{method}",
            data=json.dumps(params).encode(),
            headers={"Content-Type": "application/json"},
        )
        status: int | None = None
        try:
            try:
                with _opener().open(request, timeout=timeout) as response:
                    status = response.status
                    body = _read_bounded(response)
            except urllib.error.HTTPError as error:
                # The Bot API explains its errors in a JSON body, whatever the status.
                status = error.code
                with error:
                    body = _read_bounded(error)
            answer = json.loads(body)
        # RecursionError: JSON nested deeper than the parser can go.
        except (OSError, http.client.HTTPException, ValueError, RecursionError) as error:
            # Not a success, and no Bot API body to explain it (a redirect is not followed).
            if status is not None and status >= 300:
                raise CallFailed(f"HTTP {status}", code=status) from error
            raise CallFailed(_describe(error)) from error
        if not isinstance(answer, dict):
            raise CallFailed(f"HTTP {status}: the answer is not a Bot API answer")
        if answer.get("ok") is True:
            return answer.get("result")
        code = answer.get("error_code")
        code = code if isinstance(code, int) and not isinstance(code, bool) else status
        message = f"HTTP {code}: {_quote(answer.get('description') or 'no description')}"
        parameters = answer.get("parameters")
        asked = parameters.get("retry_after") if isinstance(parameters, dict) else None
        retry_after = _number(asked)
        if asked is not None and retry_after is None:
            message += f" (retry_after {_quote(asked)} is not a number)"
        raise CallFailed(message, code=code, retry_after=retry_after)

    def token_refused(self, error: CallFailed) -> SessionError:
        """The error to raise when this server refused the token, as ``error`` tells."""
        return SessionError(
            f"the Bot API at {self.url} refused the bot token ({error}); "
            "check the token @BotFather gave you, and api_url"
        )


class UpdateFeed:
    """What a runner takes from ``getUpdates`` answers: each update id at most once.

    :attr:`offset` is one past the highest update id taken, the offset to ask for next;
    it never goes down, but by :meth:`release` of updates taken and never handled. A
    server may serve updates in any order, again, or malformed:
    :meth:`fresh` keeps only well-formed updates not taken yet, in id order.
    """

    __slots__ = ("offset",)

    def __init__(self) -> None:
        self.offset = 0

    def fresh(self, result: object) -> list[dict[str, Any]]:
        """The updates of a ``getUpdates`` result not taken yet, in id order, each once.

        The rest is logged and skipped. Raises :class:`CallFailed` when ``result`` is not a list.
        """
        if not isinstance(result, list):
            raise CallFailed(f"the answer is not a list of updates but {_quote(result)}")
        by_id: dict[int, dict[str, Any]] = {}
        malformed = stale = repeated = 0
        for update in result:
            update_id = update.get("update_id") if isinstance(update, dict) else None
            if not isinstance(update_id, int) or isinstance(update_id, bool) or not 0 <= update_id <= _MAX_UPDATE_ID:
                malformed += 1
            elif update_id < self.offset:
                stale += 1
            elif update_id in by_id:
                repeated += 1
            else:
                by_id[update_id] = cast(dict[str, Any], update)
        if malformed:
            _log.warning(
                "getUpdates served %d malformed updates (no object with a valid update_id); skipped them", malformed
            )
        if stale or repeated:
            again = [f"{stale} updates below offset {self.offset}"] if stale else []
            again += [f"{repeated} repeats within one answer"] if repeated else []
            _log.warning("getUpdates served %s; skipped them, so that no update is handled twice", " and ".join(again))
        return [by_id[update_id] for update_id in sorted(by_id)]

    def take(self, update: dict[str, Any]) -> None:
        """Count ``update`` (one :meth:`fresh` gave) as taken: the offset moves past it."""
        self.offset = max(self.offset, int(update["update_id"]) + 1)

    def release(self, offset: int) -> None:
        """Count the updates from ``offset`` on as not taken: none of them was handled.

        A runner that stops with updates it took but did not start gives them back, so
        that it takes them again when it starts again.
        """
        self.offset = min(self.offset, offset)


# -- one deadline for the whole call -----------------------------------------------------


class _Deadline:
    __slots__ = ("end",)

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        return left


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each given only the time left, so a trickle cannot stretch a call."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int | None:
        self._sock.settimeout(self._deadline.left())
        return self._raw.readinto(buffer)

    def close(self) -> None:
        self._raw.close()
        super().close()


class _DeadlineSocket:
    """A connected socket as ``http.client`` uses it (send, read, close), within a deadline."""

    def __init__(self, sock: socket.socket, deadline: _Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))

    def close(self) -> None:
        self._sock.close()


class _Connection(http.client.HTTPConnection):
    """Takes its ``timeout`` as the budget of the whole exchange, from connecting on."""

    _deadline: _Deadline

    def connect(self) -> None:
        if not isinstance(self.timeout, (int, float)):
            raise TypeError("a Bot API call needs a timeout in seconds")
        self._deadline = _Deadline(self.timeout)
        self.timeout = self._deadline.left()
        super().connect()
        # For HTTPS this runs between TCP and TLS (see _HTTPSConnection's bases): the
        # handshake, bounded as a whole by the socket timeout, gets only what is left.
        self.sock.settimeout(self._deadline.left())

    def _bound(self) -> None:
        # http.client only sends, makes a reader and closes: the wrapper covers each.
        self.sock = cast(socket.socket, _DeadlineSocket(self.sock, self._deadline))


class _HTTPConnection(_Connection):
    def connect(self) -> None:
        super().connect()
        self._bound()


class _HTTPSConnection(http.client.HTTPSConnection, _Connection):
    def connect(self) -> None:
        super().connect()
        self._bound()


class _HTTPHandler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPConnection, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_HTTPSConnection, req)


def _opener() -> urllib.request.OpenerDirector:
    # Made per call, so proxy settings in the environment count as urlopen's do. No
    # redirects: the Bot API makes none, and one to another scheme would leave the deadline.
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _HTTPHandler(),
        _HTTPSHandler(),
        urllib.request.HTTPDefaultErrorHandler(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _read_bounded(response: Any) -> bytes:
    declared = response.headers.get("Content-Length")
    if declared is not None and declared.strip().isdigit() and int(declared) > MAX_ANSWER_BYTES:
        raise http.client.HTTPException(f"the answer would be {int(declared)} bytes, over {MAX_ANSWER_BYTES}")
    body = cast(bytes, response.read(MAX_ANSWER_BYTES + 1))
    if len(body) > MAX_ANSWER_BYTES:
        raise http.client.HTTPException(f"the answer is longer than {MAX_ANSWER_BYTES} bytes")
    return body


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        return float(value)
    except OverflowError:  # an int too large for a float: as good as infinite
        return float("inf")


def _quote(value: object) -> str:
    if isinstance(value, (list, dict)):
        return f"a {type(value).__name__} of {len(value)}"
    text = value if isinstance(value, str) else repr(value)
    clipped = "".join(c if c.isprintable() else "?" for c in text[:_QUOTE_CHARS])
    return clipped + "..." if len(text) > _QUOTE_CHARS else clipped


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError):
        if isinstance(error.reason, str):
            return error.reason
        error = error.reason
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, (ValueError, RecursionError)):
        return f"malformed answer: {_quote(str(error))}"
    return _quote(str(error)) or type(error).__name__
