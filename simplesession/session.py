"""The session middleware: ``ctx.session`` for every update, loaded and written back."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager, ExitStack
from typing import Any, Protocol, runtime_checkable

from . import data
from .context import Context
from .errors import SessionKeyError
from .storage import FileStorage

__all__ = ["MultiSession", "SessionMiddleware", "SessionStorage", "lazy_session", "multi_session", "session"]

Next = Callable[[], object]
KeyFunction = Callable[[Context], "str | None"]


@runtime_checkable
class SessionStorage(Protocol):
    """The least a storage needs: the three methods of grammY's adapters."""

    def read(self, key: str) -> Any | None: ...

    def write(self, key: str, value: Any) -> None: ...

    def delete(self, key: str) -> None: ...


def chat_key(ctx: Context) -> str | None:
    """The default session key: the chat id as a string (``None`` for updates with no chat)."""
    chat_id = ctx.chat_id
    return None if chat_id is None else str(chat_id)


class _Fragment:
    """The options of one session (of one fragment, for multi sessions)."""

    __slots__ = ("get_session_key", "initial", "lazy", "name", "prefix", "storage")

    def __init__(
        self,
        name: str | None,
        *,
        initial: Callable[[], Any] | None = None,
        storage: SessionStorage | None = None,
        get_session_key: KeyFunction | None = None,
        prefix: str | None = None,
        lazy: bool = False,
    ) -> None:
        where = "session()" if name is None else f"multi_session fragment {name!r}"
        if initial is not None and not callable(initial):
            raise TypeError(
                f"{where}: initial must be a function that makes a new session, such as "
                f"initial=lambda: {{'count': 0}}, not a {type(initial).__name__}: one shared object "
                "would leak changes from one chat into every other"
            )
        if storage is not None and not isinstance(storage, SessionStorage):
            raise TypeError(f"{where}: storage must have read, write and delete methods, not {storage!r}")
        if get_session_key is not None and not callable(get_session_key):
            raise TypeError(f"{where}: get_session_key must be a function of ctx, not {get_session_key!r}")
        if prefix is not None and not isinstance(prefix, str):
            raise TypeError(f"{where}: prefix must be a str, not {prefix!r}")
        self.name = name
        self.initial = initial
        self.storage: SessionStorage = FileStorage() if storage is None else storage
        self.get_session_key = get_session_key
        # Fragments share the default folder, so each gets its own key space by default.
        self.prefix = prefix if prefix is not None else ("" if name is None else f"{name}:")
        self.lazy = bool(lazy)

    def key_for(self, ctx: Context) -> tuple[str | None, str]:
        """The storage key for ``ctx``, or ``None`` and why there is none."""
        if self.get_session_key is None:
            key = chat_key(ctx)
            why = (
                f"update {ctx.update.get('update_id')} ({ctx.kind}) belongs to no chat, so it has no "
                "session key; pass get_session_key= to key sessions by something else"
            )
        else:
            key = self.get_session_key(ctx)
            why = f"get_session_key returned None for update {ctx.update.get('update_id')} ({ctx.kind})"
            if key is not None and not isinstance(key, str):
                raise SessionKeyError(
                    f"get_session_key must return a str or None, not {type(key).__name__} {key!r}; wrap it in str()"
                )
        return (None, why) if key is None else (self.prefix + key, "")


class _Slot:
    """One session of one update: loaded on demand, written back if its JSON changed."""

    __slots__ = ("_baseline", "_loaded", "_run", "_stored", "_value", "fragment", "key", "why")

    def __init__(self, run: _Run, fragment: _Fragment, key: str | None, why: str) -> None:
        self._run = run
        self.fragment = fragment
        self.key = key
        self.why = why
        self._loaded = False
        self._value: Any = None
        self._stored = False
        self._baseline: bytes | None = None

    def get(self) -> Any:
        if not self._loaded:
            self.load()
        return self._value

    def set(self, value: Any) -> None:
        if not self._loaded:
            self.load()
        self._value = value

    def load(self) -> None:
        if self.key is None:
            raise SessionKeyError(f"no session for this update: {self.why}")
        self._run.lock()
        stored = self.fragment.storage.read(self.key)
        self._stored = stored is not None
        if stored is None and self.fragment.initial is not None:
            stored = self.fragment.initial()
        self._value = stored
        try:
            self._baseline = data.encode(stored)
        except (TypeError, ValueError):
            self._baseline = None  # not JSON data: the write-back check says where
        self._loaded = True

    def lock_of(self) -> AbstractContextManager[object] | None:
        lock = getattr(self.fragment.storage, "lock", None)
        return None if self.key is None or lock is None else lock(self.key)

    def change(self) -> Callable[[], None] | None:
        """How to write this session back (checked already), or ``None`` if unchanged."""
        if not self._loaded:
            return None
        key, storage = self.key, self.fragment.storage
        assert key is not None
        if self._value is None:
            return (lambda: storage.delete(key)) if self._stored else None
        value = data.check_copy(self._value, key)
        if data.encode(value) == self._baseline:
            return None
        return lambda: storage.write(key, value)


class _Run:
    """The sessions of one update, and the locks that guard them until write-back."""

    def __init__(self, slots: Mapping[str | None, _Slot] | None = None) -> None:
        self.slots: dict[str | None, _Slot] = dict(slots or {})
        self._locks = ExitStack()
        self._locked = False

    def lock(self) -> None:
        # Every session of the update is locked at once, in one global order, so two
        # updates that share several sessions can never deadlock.
        if self._locked:
            return
        self._locked = True
        locks: dict[str, AbstractContextManager[object]] = {}
        for slot in self.slots.values():
            lock = slot.lock_of()
            if lock is not None:
                name = getattr(lock, "name", None) or f"{id(slot.fragment.storage):x}:{slot.key}"
                locks.setdefault(name, lock)
        for name in sorted(locks):
            self._locks.enter_context(locks[name])

    def finish(self, failed: bool) -> None:
        """Write back what changed (unless the handler ``failed``), then release the locks."""
        with self._locks:
            if not failed:
                writes = [w for w in (slot.change() for slot in self.slots.values()) if w is not None]
                for write in writes:
                    write()


class _SingleHolder:
    """``ctx.session`` of a single session."""

    __slots__ = ("slot",)

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot

    @property
    def key(self) -> str | None:
        return self.slot.key

    def get(self) -> Any:
        return self.slot.get()

    def set(self, value: Any) -> None:
        self.slot.set(value)


class MultiSession:
    """``ctx.session`` of a multi session: one attribute per fragment.

    ``ctx.session.user`` reads the ``user`` fragment; assigning to it replaces it, and
    assigning ``None`` deletes it.
    """

    __slots__ = ("_slots",)

    def __init__(self, slots: dict[str | None, _Slot]) -> None:
        object.__setattr__(self, "_slots", slots)

    def __getattr__(self, name: str) -> Any:
        return self._slot(name).get()

    def __setattr__(self, name: str, value: Any) -> None:
        self._slot(name).set(value)

    def __dir__(self) -> list[str]:
        return [str(name) for name in self._slots]

    def __repr__(self) -> str:
        return f"<MultiSession {', '.join(map(str, self._slots))}>"

    def _slot(self, name: str) -> _Slot:
        try:
            return self._slots[name]  # type: ignore[no-any-return]
        except KeyError:
            known = ", ".join(map(str, self._slots))
            raise AttributeError(f"no session fragment {name!r}; the fragments are: {known}") from None


class _MultiHolder:
    __slots__ = ("session",)

    def __init__(self, slots: dict[str | None, _Slot]) -> None:
        self.session = MultiSession(slots)

    @property
    def key(self) -> dict[str, str | None]:
        return {str(name): slot.key for name, slot in self.session._slots.items()}

    def get(self) -> MultiSession:
        return self.session

    def set(self, value: Any) -> None:
        if value is not None:
            raise TypeError("assign fragments one by one (ctx.session.user = ...); only None deletes them all")
        for slot in self.session._slots.values():
            if slot.key is not None:
                slot.set(None)


class SessionMiddleware:
    """The middleware that :func:`session`, :func:`lazy_session` and :func:`multi_session` make.

    Call it as ``mw(ctx, next)``. Integrations that cannot wrap the handler call
    :meth:`begin` before it and the returned run's ``finish(failed)`` after it.
    """

    def __init__(self, fragments: list[_Fragment], *, multi: bool) -> None:
        self.fragments = fragments
        self.multi = multi

    def __call__(self, ctx: Context, next: Next) -> None:
        run = self.begin(ctx)
        try:
            next()
        except BaseException:
            run.finish(failed=True)
            raise
        run.finish(failed=False)

    def begin(self, ctx: Context) -> _Run:
        """Install ``ctx.session``; load it now unless lazy (then on first touch)."""
        run = _Run()
        for fragment in self.fragments:
            key, why = fragment.key_for(ctx)
            run.slots[fragment.name] = _Slot(run, fragment, key, why)
        ctx._session = _MultiHolder(run.slots) if self.multi else _SingleHolder(run.slots[None])
        try:
            for slot in run.slots.values():
                if not slot.fragment.lazy and slot.key is not None:
                    slot.load()
        except BaseException:
            run.finish(failed=True)
            raise
        return run


def session(
    *,
    initial: Callable[[], Any] | None = None,
    storage: SessionStorage | None = None,
    get_session_key: KeyFunction | None = None,
    prefix: str = "",
    lazy: bool = False,
) -> SessionMiddleware:
    """A middleware that gives every update ``ctx.session``.

    :param initial: makes the session of a chat that has none yet, e.g. ``lambda: {"count": 0}``.
        Without it a new session is ``None`` until the handler assigns one.
    :param storage: where sessions live; default a :class:`~simplesession.FileStorage`.
    :param get_session_key: ``ctx`` to key (a ``str``); default the chat id. Returning
        ``None`` means this update has no session.
    :param prefix: put before every key, to share one storage between bots or uses.
    :param lazy: read the session only when the handler first touches ``ctx.session``.

    The session is locked from load to write-back and written only if its JSON form
    changed; a handler that raises writes nothing; ``ctx.session = None`` deletes it.
    """
    fragment = _Fragment(
        None, initial=initial, storage=storage, get_session_key=get_session_key, prefix=prefix, lazy=lazy
    )
    return SessionMiddleware([fragment], multi=False)


def lazy_session(**options: Any) -> SessionMiddleware:
    """:func:`session` with ``lazy=True``: an update that never touches ``ctx.session`` costs nothing."""
    options.setdefault("lazy", True)
    return session(**options)


_FRAGMENT_OPTIONS = frozenset({"initial", "storage", "get_session_key", "prefix", "lazy"})


def multi_session(**fragments: Mapping[str, Any]) -> SessionMiddleware:
    """Several independent sessions per update, as ``ctx.session.<name>``.

    Each keyword names a fragment and gives it the options of :func:`session` as a dict.
    A fragment's keys get the prefix ``"<name>:"`` unless it sets ``prefix`` itself, so
    fragments can share a storage. The locks of all fragments are taken together, in one
    fixed order, when the first one is needed.
    """
    if not fragments:
        raise TypeError("multi_session needs at least one fragment, e.g. multi_session(user={...})")
    built = []
    for name, options in fragments.items():
        if not isinstance(options, Mapping):
            raise TypeError(f"multi_session fragment {name!r} must be a dict of session options, not {options!r}")
        unknown = set(options) - _FRAGMENT_OPTIONS
        if unknown:
            raise TypeError(
                f"multi_session fragment {name!r}: unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(_FRAGMENT_OPTIONS))}"
            )
        built.append(_Fragment(name, **options))
    return SessionMiddleware(built, multi=True)
