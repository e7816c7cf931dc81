"""A fake Telegram Bot API server on loopback, for tests of the long-polling runner."""

from __future__ import annotations

import copy
import http
import json
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any
from urllib.parse import parse_qsl, urlsplit

__all__ = ["FakeBotAPI", "Reply"]

# However long a client asks getUpdates to wait, a test never waits longer than this.
MAX_POLL_WAIT = 5.0
BOT_USER = {"id": 999, "is_bot": True, "first_name": "Fake", "username": "FakeBot"}
# Methods whose answer is just ``true``; they change nothing here.
TRUE_METHODS = frozenset({"deleteWebhook", "setMyCommands", "deleteMyCommands", "close", "logOut"})


@dataclass(frozen=True)
class Reply:
    """One answer as it goes on the wire, honest or not.

    ``body`` ``None`` closes the connection without an answer. ``trickle`` sends the body
    (with ``trickle_headers``, the status line and headers too) one byte per ``trickle``
    seconds. ``content_length`` is the length announced (default: the true one);
    ``chunked`` sends the body in chunks with no length.
    """

    status: int = 200
    body: bytes | None = b""
    trickle: float = 0.0
    trickle_headers: bool = False
    content_length: int | None = None
    chunked: bool = False

    @classmethod
    def of(cls, answer: dict[str, Any] | str | bytes, status: int = 200, **options: Any) -> Reply:
        """A reply with ``answer`` as its body: a dict as JSON (``NaN`` and ``Infinity`` allowed)."""
        if isinstance(answer, dict):
            answer = json.dumps(answer)
        return cls(status, answer.encode() if isinstance(answer, str) else answer, **options)


class FakeBotAPI:
    """A Bot API server speaking ``getMe``, ``getUpdates`` and ``sendMessage``.

    Use it as a context manager and pass :attr:`url` as a bot's ``api_url`` and
    :attr:`token` as its token. Queue updates with :meth:`push`; read what the bot sent in
    :attr:`sent`. ``getUpdates`` has the real semantics: updates below the offset a
    client sends are forgotten for good, and with none pending it waits up to its
    ``timeout`` for one.

    It can also lie, as a hostile or broken server would: :attr:`newest_first` serves each
    batch in reverse, :attr:`repeat` serves each update that many times in a batch,
    :attr:`replay` ignores offsets (everything ever pushed comes again), and
    :meth:`answer_next` scripts the next answers byte for byte.
    """

    def __init__(self, token: str = "123456:fake-TOKEN", *, tls: ssl.SSLContext | None = None) -> None:
        """``tls``: serve HTTPS with this server context (the client must trust its certificate)."""
        self.token = token
        self.scheme = "https" if tls else "http"
        self.sent: list[dict[str, Any]] = []
        self.calls: list[str] = []
        self.acknowledged_offset = 0
        # (time.monotonic(), offset) of each getUpdates call.
        self.polls: list[tuple[float, int]] = []
        # The parameters of each getUpdates call, and the update ids each answer carried.
        self.poll_params: list[dict[str, Any]] = []
        self.served: list[list[int]] = []
        self.newest_first = False
        self.repeat = 1
        self.replay = False
        self.next_update_id = 1
        self._pending: list[dict[str, Any]] = []
        self._next_message_id = 1
        self._script: deque[Reply] = deque()
        self._send_script: deque[Reply] = deque()
        self._changed = threading.Condition()
        self._closed = False
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.fake = self
        if tls is not None:
            # The handshake happens in each request's thread, on its first read.
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True, do_handshake_on_connect=False)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.01}, name="FakeBotAPI", daemon=True
        )

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{self.scheme}://{host!s}:{port}"

    def __enter__(self) -> FakeBotAPI:
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving; wake every waiting ``getUpdates`` so that it answers at once."""
        with self._changed:
            self._closed = True
            self._changed.notify_all()
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    # -- scripting the server ----------------------------------------------------------

    def push(
        self, update_or_text: dict[str, Any] | str, chat_id: int = 42, *, user_id: int | None = None
    ) -> dict[str, Any]:
        """Queue an update: a dict (its ``update_id`` is assigned), or a text message to ``chat_id``."""
        with self._changed:
            update_id = self.next_update_id
            self.next_update_id += 1
            if isinstance(update_or_text, str):
                sender = {"id": chat_id if user_id is None else user_id, "is_bot": False, "first_name": "Tester"}
                update: dict[str, Any] = {
                    "message": {
                        "message_id": update_id,
                        "date": int(time.time()),
                        "chat": {"id": chat_id, "type": "private"},
                        "from": sender,
                        "text": update_or_text,
                    }
                }
            else:
                update = copy.deepcopy(update_or_text)
            update["update_id"] = update_id
            self._pending.append(update)
            self._changed.notify_all()
            return copy.deepcopy(update)

    def push_command(self, text: str, chat_id: int = 42, *, user_id: int | None = None) -> dict[str, Any]:
        """Queue a text message to ``chat_id`` as Telegram sends it, with its ``entities``: a
        command at its start (``/count``, ``/count@FakeBot arg``) is marked as one, which
        python-telegram-bot's ``CommandHandler`` looks for."""
        sender = {"id": chat_id if user_id is None else user_id, "is_bot": False, "first_name": "Tester"}
        message: dict[str, Any] = {
            "message_id": self.next_update_id,
            "date": int(time.time()),
            "chat": {"id": chat_id, "type": "private" if chat_id > 0 else "group"},
            "from": sender,
            "text": text,
        }
        if text.startswith("/"):
            command = text.split(maxsplit=1)[0]
            # Offsets and lengths count UTF-16 code units, as the Bot API counts them.
            message["entities"] = [
                {"type": "bot_command", "offset": 0, "length": len(command.encode("utf-16-le")) // 2}
            ]
        return self.push({"message": message})

    def fail_next(self, status: int = 500, times: int = 1) -> None:
        """Answer the next ``times`` ``getUpdates`` calls with HTTP ``status``.

        A 429 asks the client to retry after 0.2 s, in the Bot API's ``parameters``.
        """
        answer: dict[str, Any] = {"ok": False, "error_code": status, "description": http.HTTPStatus(status).phrase}
        if status == 429:
            answer["description"] = "Too Many Requests: retry after 0.2"
            answer["parameters"] = {"retry_after": 0.2}
        self.answer_next(answer, status=status, times=times)

    def drop_next(self, times: int = 1) -> None:
        """Close the connection of the next ``times`` ``getUpdates`` calls without answering."""
        self.reply_next(Reply(body=None), times)

    def garble_next(self, times: int = 1) -> None:
        """Answer the next ``times`` ``getUpdates`` calls with 200 and a body that is not JSON."""
        self.answer_next("<html>502 Bad Gateway</html>", times=times)

    def answer_next(
        self, answer: dict[str, Any] | str | bytes, status: int = 200, times: int = 1, **options: Any
    ) -> None:
        """Answer the next ``times`` ``getUpdates`` calls with ``answer``, whatever is pending.

        ``options`` are those of :class:`Reply`, such as ``trickle=0.05``.
        """
        self.reply_next(Reply.of(answer, status, **options), times)

    def reply_next(self, reply: Reply, times: int = 1) -> None:
        """Send ``reply`` to the next ``times`` ``getUpdates`` calls."""
        with self._changed:
            self._script.extend([reply] * times)

    def fail_sends_next(self, times: int = 1, retry_after: Any = 0.2) -> None:
        """Refuse the next ``times`` ``sendMessage`` calls with 429, asking to retry after ``retry_after``."""
        answer = {
            "ok": False,
            "error_code": 429,
            "description": f"Too Many Requests: retry after {retry_after}",
            "parameters": {"retry_after": retry_after},
        }
        with self._changed:
            self._send_script.extend([Reply.of(answer, 429)] * times)

    def wait_for_sent(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """Wait until at least ``n`` messages were sent; return them all. Fails after ``timeout``."""
        self.wait_until(lambda: len(self.sent) >= n, timeout, f"{n} sent messages")
        with self._changed:
            return list(self.sent)

    def wait_until(self, condition: Callable[[], bool], timeout: float = 5.0, what: str = "the condition") -> None:
        """Wait until ``condition()`` (checked after every request) holds; fail after ``timeout``."""
        with self._changed:
            if not self._changed.wait_for(condition, timeout):
                raise AssertionError(f"no {what} within {timeout} s; calls={self.calls} sent={self.sent}")

    # -- serving -----------------------------------------------------------------------

    def _answer(self, token: str, method: str, params: dict[str, Any]) -> Reply:
        """The reply to one call."""
        with self._changed:
            self.calls.append(method)
            self._changed.notify_all()
        if token != self.token:
            return Reply.of({"ok": False, "error_code": 401, "description": "Unauthorized"}, 401)
        if method == "getMe":
            return Reply.of({"ok": True, "result": BOT_USER})
        if method == "getUpdates":
            return self._get_updates(params)
        if method == "sendMessage":
            with self._changed:
                if self._send_script:
                    return self._send_script.popleft()
            status, answer = self._send_message(params)
            return Reply.of(answer, status)
        if method in TRUE_METHODS:
            # What python-telegram-bot calls when it starts and stops polling.
            return Reply.of({"ok": True, "result": True})
        return Reply.of({"ok": False, "error_code": 404, "description": "Not Found"}, 404)

    def _get_updates(self, params: dict[str, Any]) -> Reply:
        with self._changed:
            offset = int(params.get("offset", 0))
            self.polls.append((time.monotonic(), offset))
            self.poll_params.append(dict(params))
            self._changed.notify_all()
            if self._script:
                return self._script.popleft()
            if offset > 0:
                if not self.replay:
                    self._pending = [u for u in self._pending if u["update_id"] >= offset]
                self.acknowledged_offset = max(self.acknowledged_offset, offset)
                self._changed.notify_all()
            deadline = time.monotonic() + min(float(params.get("timeout", 0)), MAX_POLL_WAIT)
            while not self._pending and not self._closed:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._changed.wait(remaining)
            limit = int(params.get("limit", 100))
            batch = [update for update in self._pending[:limit] for _ in range(self.repeat)]
            if self.newest_first:
                batch.reverse()
            self.served.append([update["update_id"] for update in batch])
            return Reply.of({"ok": True, "result": batch})

    def _send_message(self, params: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        if "chat_id" not in params or not params.get("text"):
            return 400, {"ok": False, "error_code": 400, "description": "Bad Request: message text is empty"}
        with self._changed:
            self.sent.append(params)
            message_id = self._next_message_id
            self._next_message_id += 1
            self._changed.notify_all()
        message = {
            "message_id": message_id,
            "date": int(time.time()),
            "chat": {"id": params["chat_id"], "type": "private"},
            "from": BOT_USER,
            "text": params["text"],
        }
        return 200, {"ok": True, "result": message}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Clients that send concurrently (python-telegram-bot with concurrent updates) open many
    # connections at once: more than the default backlog of 5, which would refuse some.
    request_queue_size = 128
    fake: FakeBotAPI


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    # Parameters come as the Bot API takes them: a JSON body, a form body or the query
    # string (pyTelegramBotAPI sends them in the query string, even with POST).
    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        if self.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            self._serve({**self._query(), **dict(parse_qsl(body.decode()))})
            return
        try:
            params = json.loads(body) if body else {}
        except ValueError:
            self._reply(400, {"ok": False, "error_code": 400, "description": "Bad Request: body is not JSON"})
            return
        self._serve({**self._query(), **(params if isinstance(params, dict) else {})})

    def do_GET(self) -> None:
        if self.headers.get("Content-Length"):
            self.do_POST()  # AsyncTeleBot (aiohttp) sends its parameters as a form body, also with GET
            return
        self._serve(self._query())

    def _query(self) -> dict[str, Any]:
        return dict(parse_qsl(urlsplit(self.path).query))

    def _serve(self, params: dict[str, Any]) -> None:
        # Paths look like /bot<token>/<method>.
        parts = self.path.split("?", 1)[0].strip("/").split("/")
        if len(parts) != 2 or not parts[0].startswith("bot"):
            self._reply(404, {"ok": False, "error_code": 404, "description": "Not Found"})
            return
        self._send(self.server.fake._answer(parts[0].removeprefix("bot"), parts[1], params))

    def _reply(self, status: int, answer: dict[str, Any]) -> None:
        self._send(Reply.of(answer, status))

    def _send(self, reply: Reply) -> None:
        if reply.body is None:
            self.close_connection = True
            return
        body = reply.body
        if reply.chunked:
            body = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in _parts(body, 65536)) + b"0\r\n\r\n"
        length = len(reply.body) if reply.content_length is None else reply.content_length
        framing = "Transfer-Encoding: chunked" if reply.chunked else f"Content-Length: {length}"
        phrase = http.HTTPStatus(reply.status).phrase if reply.status in set(http.HTTPStatus) else "Whatever"
        head = (
            f"HTTP/1.1 {reply.status} {phrase}\r\nContent-Type: application/json\r\n{framing}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        self.close_connection = True
        try:
            if reply.trickle_headers:
                body = head + body
            else:
                self.wfile.write(head)
            if not reply.trickle:
                self.wfile.write(body)
                return
            for byte in _parts(body, 1):
                if self.server.fake._closed:
                    return
                self.wfile.write(byte)
                time.sleep(reply.trickle)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client went away (a bot process that was stopped): nobody to answer

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean


def _parts(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]
