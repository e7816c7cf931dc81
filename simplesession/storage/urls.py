"""One way to name any store: ``open_storage(url)``, which the command line's ``--store`` takes too."""

from __future__ import annotations

import os
import re
from typing import Any
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit

from .base import Storage
from .file import FileStorage

__all__ = ["FORMS", "kind_of", "open_storage", "shown"]

FORMS = (
    "file:DIR, file:///ABSOLUTE/DIR, sqlite:PATH, sqlite:///ABSOLUTE/PATH, redis://HOST:PORT/DB, rediss://..., "
    "unix:///SOCKET, redis+cluster://HOST:PORT, postgresql://USER@HOST/DATABASE; "
    "a Redis URL may end in ?prefix=PREFIX, a PostgreSQL one in ?table=TABLE"
)
"""The names :func:`open_storage` takes, for messages."""

_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
_KINDS = {
    "file": "file",
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "redis": "redis",
    "rediss": "redis",
    "unix": "redis",
    "redis+cluster": "redis",
    "rediss+cluster": "redis",
}


def open_storage(url: str, **options: Any) -> Storage:
    """The storage that ``url`` names; ``options`` go to its constructor.

    - ``file:DIR`` (relative to the working folder, ``~`` expanded) or ``file:///ABS/DIR``:
      a :class:`FileStorage` in that folder.
    - ``sqlite:PATH`` or ``sqlite:///ABS/PATH``: a :class:`~simplesession.SQLiteStorage` in
      that database file.
    - ``postgresql://`` (or ``postgres://``) connection URLs, as libpq reads them: a
      :class:`~simplesession.PostgresStorage` (``table=`` and the rest as options). A
      ``table`` in the URL's query (``...?table=sessions``) names the table too.
    - ``redis://``, ``rediss://`` (TLS) or ``unix://`` (a socket) URLs, as redis-py reads
      them: a :class:`~simplesession.RedisStorage` on that server (``prefix=`` and the
      rest as options); ``redis+cluster://HOST:PORT`` (or ``rediss+cluster://``) for a
      cluster, by any of its nodes. A ``prefix`` in the URL's query (``...?prefix=bot1:``)
      is the prefix too.

    The table and the prefix are the store's, not the client's: they are taken out of the
    URL before it reaches the client, and one given both ways must be the same.

    ``ValueError`` for anything else, saying which forms work.
    """
    kind = kind_of(url)
    if kind == "file":
        return FileStorage(_folder(url), **options)
    if kind == "sqlite":
        from .sqlite import SQLiteStorage

        return SQLiteStorage(_folder(url), **options)
    if kind == "postgres":
        from .postgres import PostgresStorage

        url, options = _taking(url, "table", options)
        return PostgresStorage(url, **options)
    from .redis import RedisStorage

    url, options = _taking(url, "prefix", options)
    return RedisStorage(url, **options)


def _taking(url: str, name: str, options: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """``url`` without the query parameter ``name``, and ``options`` with its value in them."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    values = [value for key, value in query if key == name]
    if not values:
        return url, options
    if len(values) > 1 or (name in options and options[name] != values[0]):
        given = [*values, *([options[name]] if name in options else [])]
        raise ValueError(f"{shown(url)!r}: {name} is given more than once, differently: {given!r}")
    rest = urlencode([(key, value) for key, value in query if key != name])
    return parts._replace(query=rest).geturl(), {**options, name: values[0]}


def kind_of(url: str) -> str:
    """What kind of store ``url`` names: ``"file"``, ``"sqlite"``, ``"redis"`` or ``"postgres"``;
    ``ValueError`` if none."""
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
    """The local path a ``file:`` or ``sqlite:`` URL names."""
    scheme, _, rest = url.partition(":")
    if rest.startswith("//"):
        parts = urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise ValueError(f"{url!r} names a folder on host {parts.netloc!r}: only local folders (file:///DIR)")
        if parts.query or parts.fragment:
            raise ValueError(f"{url!r}: a {scheme}: URL takes no ?query or #fragment")
        rest = unquote(parts.path)
    if not rest:
        raise ValueError(f"{url!r} names no place: {scheme}:PATH or {scheme}:///ABSOLUTE/PATH")
    return os.path.expanduser(rest)


def shown(url: str) -> str:
    """``url`` with its password, if any, replaced by ``***``: for messages and logs."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://[^/@:]*:)[^/@]*@", r"\1***@", url)
