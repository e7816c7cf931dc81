"""One way to name any store: ``open_storage(url)``, which the command line's ``--store`` takes too."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import unquote, urlsplit

from .base import Storage
from .file import FileStorage

__all__ = ["FORMS", "kind_of", "open_storage", "shown"]

FORMS = "file:DIR, file:///ABSOLUTE/DIR, redis://HOST:PORT/DB, rediss://..., unix:///SOCKET"
"""The names :func:`open_storage` takes, for messages."""

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_KINDS = {"file": "file", "redis": "redis", "rediss": "redis", "unix": "redis"}


def open_storage(url: str, **options: Any) -> Storage:
    """The storage that ``url`` names; ``options`` go to its constructor.

    - ``file:DIR`` (relative to the working folder, ``~`` expanded) or ``file:///ABS/DIR``:
      a :class:`FileStorage` in that folder.
    - ``redis://``, ``rediss://`` (TLS) or ``unix://`` (a socket) URLs, as redis-py reads
      them: a :class:`~simplesession.RedisStorage` on that server (``prefix=`` and the
      rest as options).

    ``ValueError`` for anything else, saying which forms work.
    """
    kind = kind_of(url)
    if kind == "file":
        return FileStorage(_folder(url), **options)
    from .redis import RedisStorage

    return RedisStorage(url, **options)


def kind_of(url: str) -> str:
    """What kind of store ``url`` names: ``"file"`` or ``"redis"``; ``ValueError`` if none."""
    if not isinstance(url, str):
        raise TypeError(f"open_storage takes a URL string, not {type(url).__name__}")
    match = _SCHEME.match(url)
    scheme = match.group(1).lower() if match else ""
    kind = _KINDS.get(scheme)
    if kind is not None:
        return kind
    if not scheme or len(scheme) == 1:  # a path, or a Windows drive letter
        raise ValueError(f"{shown(url)!r} names no kind of store: for a folder write file:{url} ({FORMS})")
    raise ValueError(f"{shown(url)!r}: no store is named {scheme}:... ({FORMS})")


def _folder(url: str) -> str:
    """The folder a ``file:`` URL names."""
    rest = url[len("file:") :]
    if rest.startswith("//"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r} names a folder on host {parts.netloc!r}: only local folders (file:///DIR)")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: a file: URL takes no ?query or #fragment")
        rest = unquote(parts.path)
    if not rest:
        raise ValueError(f"{url!r} names no folder: file:DIR or file:///ABSOLUTE/DIR")
    return os.path.expanduser(rest)


def shown(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: for messages and logs."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*@", r"\1***@", url)
