"""The exceptions simplesession raises.

Everything the library raises on purpose derives from :class:`SessionError`, so one
``except SessionError`` catches it all. Storage failures are also :class:`OSError`, and
bad session data is also :class:`TypeError`, so code that already catches those keeps
working.
"""

from __future__ import annotations

__all__ = [
    "CorruptSessionError",
    "LockLost",
    "LockTimeout",
    "MigrationError",
    "SessionDataError",
    "SessionError",
    "SessionKeyError",
    "StorageError",
]


class SessionError(Exception):
    """Root of every error simplesession raises on purpose."""


class StorageError(SessionError, OSError):
    """A storage could not do what was asked.

    :ivar key: the session key involved, or ``None``.
    :ivar path: the file or address involved, or ``None``.
    """

    def __init__(self, message: str, *, key: str | None = None, path: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.path = path

    def __str__(self) -> str:
        # OSError formats itself from errno/strerror when those are set; always show our message.
        return str(self.args[0])


class LockTimeout(StorageError, TimeoutError):
    """A session's lock was not acquired within the storage's ``lock_timeout``.

    :ivar timeout: the number of seconds waited.
    """

    def __init__(
        self, message: str, *, key: str | None = None, path: str | None = None, timeout: float | None = None
    ) -> None:
        super().__init__(message, key=key, path=path)
        self.timeout = timeout


class LockLost(StorageError):
    """A session's lock expired while its holder still used it, so nothing was written.

    The holder was paused or cut off for longer than the lock's expiry (a Redis lock's
    ``lock_expiry``), and another update may have changed the session since: the newer value
    stays. Running the update again is safe.
    """


class CorruptSessionError(StorageError):
    """A stored session cannot be decoded and could not be moved out of the way.

    :ivar path: the file holding the undecodable bytes.
    """


class SessionKeyError(SessionError):
    """There is no session key for this update, or the key is not a usable string."""


class SessionDataError(SessionError, TypeError):
    """A session value is not JSON data, or is too large.

    :ivar key: the session key whose value was refused.
    :ivar where: the place inside the value, such as ``session['items'][2]``.
    """

    def __init__(self, message: str, *, key: str | None = None, where: str | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.where = where


class MigrationError(SessionError):
    """A session could not be brought up to the current schema version.

    The stored session is left as it was.

    :ivar key: the session key.
    :ivar version: the version whose migration failed (or the unknown stored version).
    """

    def __init__(self, message: str, *, key: str | None = None, version: float | None = None) -> None:
        super().__init__(message)
        self.key = key
        self.version = version
