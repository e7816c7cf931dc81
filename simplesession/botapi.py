"""The Bot API transport: calls to a Telegram Bot API server, JSON over HTTP."""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.request
from typing import Any

from .errors import SessionError

__all__ = ["TOKEN_REFUSED", "BotAPI", "CallFailed"]

# Telegram answers 401 to a revoked token and 404 to a malformed one; retrying helps neither.
TOKEN_REFUSED = (401, 404)


class CallFailed(Exception):
    """A Bot API call failed.

    :ivar code: the Bot API error code (mostly the HTTP status), ``None`` for network trouble.
    :ivar retry_after: the seconds the server asked to wait before calling again, if it did.
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
        """Call ``method`` with ``params`` and return its result; blocks up to ``timeout`` seconds.

        Raises :class:`CallFailed` when the call does not reach the server, the server
        refuses it, or its answer is not a Bot API answer.
        """
        request = urllib.request.Request(
            f"{self.url}/bot{self.token}/{method}",
            data=json.dumps(params).encode(),
            headers={"Content-Type": "application/json"},
        )
        status: int | None = None
        try:
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    status = response.status
                    body = response.read()
            except urllib.error.HTTPError as error:
                # The Bot API explains its errors in a JSON body, whatever the status.
                status = error.code
                with error:
                    body = error.read()
            answer = json.loads(body)
        except (OSError, http.client.HTTPException, ValueError) as error:
            if status is not None and status >= 400:
                raise CallFailed(f"HTTP {status}", code=status) from error
            raise CallFailed(_describe(error)) from error
        if not isinstance(answer, dict):
            raise CallFailed(f"HTTP {status}: the answer is not a Bot API answer")
        if answer.get("ok") is True:
            return answer.get("result")
        code = answer.get("error_code")
        code = code if isinstance(code, int) else status
        parameters = answer.get("parameters")
        retry_after = parameters.get("retry_after") if isinstance(parameters, dict) else None
        raise CallFailed(
            f"HTTP {code}: {answer.get('description') or 'no description'}",
            code=code,
            retry_after=retry_after if isinstance(retry_after, (int, float)) else None,
        )

    def token_refused(self, error: CallFailed) -> SessionError:
        """The error to raise when this server refused the token, as ``error`` tells."""
        return SessionError(
            f"the Bot API at {self.url} refused the bot token ({error}); "
            "check the token @BotFather gave you, and api_url"
        )


def _describe(error: BaseException) -> str:
    if isinstance(error, urllib.error.URLError):
        if isinstance(error.reason, str):
            return error.reason
        error = error.reason
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ValueError):
        return f"malformed answer: {error}"
    return str(error) or type(error).__name__
