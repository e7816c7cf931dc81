"""The session middleware: ``ctx.session`` for every update, loaded and written back."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import timedelta
from typing import Any, TypeAlias

from . import data
from .context import Context
from .errors import SessionError, SessionKeyError
from .fragment import DEFAULT_MAX_SIZE, Fragment, KeyFunction
from .storage.document import Version
from .storage.plain import PlainStorage, SessionStore
from .storage.values import SweepReport, ttl_seconds

__all__ = [
    "DEFAULT_MAX_SIZE",
    "DEFAULT_SWEEP_INTERVAL",
    "MultiSession",
    "SessionMiddleware",
    "SessionStorage",
    "lazy_session",
    "multi_session",
    "session",
]

_log = logging.getLogger(__name__)

DEFAULT_SWEEP_INTERVAL = 3600.0
"""Seconds between the starts of two automatic sweeps, by default."""

Next = Callable[[], object]

SessionStorage = PlainStorage
"""The least a storage needs: the three methods of grammY's adapters."""


class _Slot:
    """One session of one update: loaded on demand, written back if it changed.

    A single session (no ``run``) is its own update's run, and what ``ctx.session`` reads
    through: it takes its lock on load and releases it in :meth:`finish`. The sessions of a
    multi session leave their locks to their :class:`_Run`, and forget it once it has
    finished.
    """

    __slots__ = (
        "_baseline",
        "_ended",
        "_held",
        "_loaded",
        "_run",
        "_stored",
        "_value",
        "_version",
        "fragment",
        "key",
        "why",
    )

    def __init__(self, run: _Run | None, fragment: Fragment, key: str | None, why: str) -> None:
        self._run = run
        self.fragment = fragment
        self.key = key
        self.why = why
        self._loaded = False
        self._value: Any = None
        self._stored = False
        self._version: Version | None = None
        self._baseline: bytes | None = None
        self._held: AbstractContextManager[object] | None = None
        self._ended = False  # once the update has ended, loading would take a lock nobody frees

    def get(self) -> Any:
        if not self._loaded:
            self.load()
        return self._value

    def set(self, value: Any) -> None:
        if not self._loaded:
            self.load()
        self._value = value

    def load(self) -> None:
        # Read before _ended: a finishing run sets _ended before it clears _run, so a slot of
        # a multi session that finds no run also finds its update ended, and never takes
        # the single session's lock below.
        run = self._run
        if self.key is None:
            raise SessionKeyError(f"no session for this update: {self.why}")
        if self._ended:
            raise SessionError(
                f"the session {self.key!r} was first touched after its update had ended, so it was never loaded; "
                "use ctx.session inside the handler"
            )
        fragment, key = self.fragment, self.key
        if run is not None:
            run.lock()
        elif self._held is None:
            lock = fragment.lock(key)
            lock.__enter__()
            self._held = lock
        got = fragment.storage.read_for_session(key, fragment.versioned)
        if got is None:
            value = self._version = None
            self._stored, self._baseline = False, b"null"
        else:
            value, self._version, raw = got
            self._stored = True
            self._baseline = raw if raw is not None else _dumps(value)
            if fragment.migrations:
                value = fragment.migrate(key, value, self._version)
            if fragment.validate is not None:
                try:
                    checked = fragment.validate(value)
                except Exception as exc:
                    fragment.storage.set_aside(key, f"validate() refused it: {type(exc).__name__}: {exc}")
                    value, self._stored, self._baseline = None, False, None
                else:
                    if checked is not None:
                        value = checked
        if value is None and fragment.initial is not None:
            value = fragment.initial()
            if not self._stored:
                self._baseline = _dumps(value)
                self._version = fragment.latest
        self._value = value
        self._loaded = True

    def lock_of(self) -> tuple[str, AbstractContextManager[object]] | None:
        """The name and lock of this session, if it has a key."""
        key = self.key
        if key is None:
            return None
        storage = self.fragment.storage
        return storage.lock_name(key), storage.lock(key)

    def change(self) -> Callable[[], None] | None:
        """How to write this session back (checked already), or ``None`` if unchanged."""
        if not self._loaded:
            return None
        key, fragment = self.key, self.fragment
        storage = fragment.storage
        assert key is not None
        if self._value is None:
            return (lambda: storage.delete(key)) if self._stored else None
        # Only a migration changes a session's version: a bot without migrations keeps the one
        # stored, so that migrations added back later do not run again on it.
        version = fragment.latest if fragment.migrations else self._version
        unchanged = self._version == version
        if unchanged:
            # Most updates change nothing: then the value's JSON is the stored one, and writing
            # it would store the same bytes, so it needs no checked copy. Whatever the JSON
            # encoder refuses is left for the check below to name.
            try:
                if data.encode(self._value) == self._baseline:
                    return None
            except (TypeError, ValueError, RecursionError):
                pass
        value = data.check_copy(self._value, key)
        raw = data.encode(value)
        if raw == self._baseline and unchanged:
            return None
        fragment.check_size(key, raw)
        return lambda: fragment.storage.write_for_session(key, value, raw, version)

    def finish(self, failed: bool) -> None:
        """Write back what changed (unless the handler ``failed``), then release the lock."""
        try:
            if not failed:
                write = self.change()
                if write is not None:
                    write()
        finally:
            self._ended = True
            held, self._held = self._held, None
            if held is not None:
                held.__exit__(None, None, None)


def _dumps(value: Any) -> bytes | None:
    try:
        return data.encode(value)
    except (TypeError, ValueError, RecursionError):
        return None  # not JSON data: the write-back check says where


class _Run:
    """The sessions of one update's multi session, and the locks that guard them until write-back."""

    def __init__(self) -> None:
        self.slots: dict[str | None, _Slot] = {}
        self._held: list[AbstractContextManager[object]] = []
        self._locked = False

    def lock(self) -> None:
        # Every session of the update is locked at once, in one global order, so two
        # updates that share several sessions can never deadlock.
        if self._locked:
            return
        self._locked = True
        locks: dict[str, AbstractContextManager[object]] = {}
        for slot in self.slots.values():
            named = slot.lock_of()
            if named is not None:
                locks.setdefault(*named)
        for name in sorted(locks):
            locks[name].__enter__()
            self._held.append(locks[name])

    def finish(self, failed: bool) -> None:
        """Write back what changed (unless the handler ``failed``), then release the locks."""
        try:
            if not failed:
                writes = [w for w in (slot.change() for slot in self.slots.values()) if w is not None]
                for write in writes:
                    write()
        finally:
            for slot in self.slots.values():
                slot._ended = True
                slot._run = None  # the slots and their run refer to each other: no cycle to collect
            # A release may fail (a Redis write-back goes with it): the others are released all
            # the same, and the first failure goes on.
            failure: BaseException | None = None
            while self._held:
                try:
                    self._held.pop().__exit__(None, None, None)
                except BaseException as exc:
                    failure = failure or exc
            if failure is not None:
                raise failure


AnyRun: TypeAlias = "_Run | _Slot"
"""What :meth:`SessionMiddleware.begin` returns for :meth:`SessionMiddleware.end`."""


def lock_names(run: AnyRun) -> tuple[list[str], list[str]]:
    """The names of the locks ``run`` takes when it loads, in the order it takes them, and
    the keys of its sessions."""
    slots = run.slots.values() if isinstance(run, _Run) else (run,)
    keyed = [(slot.fragment.storage, slot.key) for slot in slots if slot.key is not None]
    return sorted({storage.lock_name(key) for storage, key in keyed}), [key for _, key in keyed]


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


class _Sweeper:
    """Runs the storages' sweeps in the background of updates, one small slice at a time.

    A pass starts every ``interval`` seconds; while it lasts, each update that ends runs at
    most one slice (a 256th of a FileStorage), so no update pays for a whole sweep.
    """

    def __init__(self, storages: list[SessionStore], interval: float) -> None:
        self._storages = storages
        self._interval = interval
        self._gap = interval / 1024
        self._mutex = threading.Lock()
        self._slices: Iterator[SweepReport] | None = None
        self._report = SweepReport()
        self._pass_started = self._last_slice = time.monotonic()

    def step(self) -> None:
        now = time.monotonic()
        if self._slices is None and now - self._pass_started < self._interval:
            return
        if now - self._last_slice < self._gap or not self._mutex.acquire(blocking=False):
            return
        try:
            self._last_slice = now
            if self._slices is None:
                self._pass_started = now
                self._report = SweepReport()
                self._slices = (part for storage in self._storages for part in storage.sweep_slices())
            try:
                self._report += next(self._slices)
            except StopIteration:
                self._slices = None
                _log.debug("sweep finished: %s", self._report)
        except Exception:
            self._slices = None
            _log.warning("automatic sweep failed; it will try again next time", exc_info=True)
        finally:
            self._mutex.release()


class SessionMiddleware:
    """The middleware that :func:`session`, :func:`lazy_session` and :func:`multi_session` make.

    Call it as ``mw(ctx, next)``. Integrations that cannot wrap the handler call
    :meth:`begin` before it and :meth:`end` after it.
    """

    def __init__(self, fragments: list[Fragment], *, multi: bool, sweep_interval: float | timedelta | None) -> None:
        self.fragments = fragments
        self.multi = multi
        interval = ttl_seconds(sweep_interval, "sweep_interval")
        storages = list({id(f.storage): f.storage for f in fragments}.values())
        self._sweeper = _Sweeper(storages, interval) if interval is not None and storages else None

    def __call__(self, ctx: Context, next: Next) -> None:
        run = self.begin(ctx)
        try:
            next()
        except BaseException:
            self.end(run, failed=True)
            raise
        self.end(run, failed=False)

    def begin(self, ctx: Context) -> AnyRun:
        """Install ``ctx.session``; load it now unless lazy (then on first touch)."""
        run = self.prepare(ctx)
        self.load(run)
        return run

    def prepare(self, ctx: Context) -> AnyRun:
        """Install ``ctx.session`` without reading anything: :meth:`load` reads it.

        An async integration calls it on the event loop, to learn the run's locks
        (:func:`lock_names`) before it hands the loading to a worker thread.
        """
        if not self.multi:
            fragment = self.fragments[0]
            key, why = fragment.key_for(ctx)
            slot = ctx._session = _Slot(None, fragment, key, why)
            return slot
        # Every key first: a get_session_key that raises leaves no half-built run behind.
        keys = [(fragment, *fragment.key_for(ctx)) for fragment in self.fragments]
        run = _Run()
        for fragment, key, why in keys:
            run.slots[fragment.name] = _Slot(run, fragment, key, why)
        ctx._session = _MultiHolder(run.slots)
        return run

    def load(self, run: AnyRun) -> None:
        """Load the sessions of ``run`` that are not lazy (taking their locks)."""
        slots: Iterable[_Slot] = run.slots.values() if isinstance(run, _Run) else (run,)
        try:
            for slot in slots:
                if not slot.fragment.lazy and slot.key is not None:
                    slot.load()
        except BaseException:
            run.finish(failed=True)
            raise

    def end(self, run: AnyRun, *, failed: bool) -> None:
        """Write back what changed (unless the handler ``failed``) and release the locks."""
        try:
            run.finish(failed)
        finally:
            if self._sweeper is not None:
                self._sweeper.step()


def session(
    *,
    initial: Callable[[], Any] | None = None,
    storage: SessionStorage | None = None,
    get_session_key: KeyFunction | None = None,
    prefix: str = "",
    ttl: float | timedelta | None = None,
    migrations: Mapping[Version, Callable[[Any], Any]] | None = None,
    validate: Callable[[Any], Any] | None = None,
    max_size: int | None = DEFAULT_MAX_SIZE,
    sweep_interval: float | timedelta | None = DEFAULT_SWEEP_INTERVAL,
    lazy: bool = False,
) -> SessionMiddleware:
    """A middleware that gives every update ``ctx.session``.

    :param initial: makes the session of a chat that has none yet, e.g. ``lambda: {"count": 0}``.
        Without it a new session is ``None`` until the handler assigns one.
    :param storage: where sessions live; default a :class:`~simplesession.FileStorage`.
    :param get_session_key: ``ctx`` to key (a ``str``); default the chat id. Returning
        ``None`` means this update has no session.
    :param prefix: put before every key, to share one storage between bots or uses.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read
        nor written reads as missing; it is the storage's ttl (a given storage must have
        none, or the same).
    :param migrations: ``{version: function}``; a stored session older than the newest
        version is passed through the newer functions in numeric order, and written back
        with the newest version.
    :param validate: called with each loaded session; returns fixed data (or ``None`` to
        keep it), or raises: then the session is set aside, an ERROR logged, and the
        handler gets a fresh initial session.
    :param max_size: the most bytes of JSON a session may take; the storage's own
        ``max_size`` holds too, so the smaller counts (``None``: only the storage's; no limit
        for a storage of your own with no ``max_size``).
    :param sweep_interval: seconds between automatic sweeps of idle sessions and
        leftovers, run in small slices after updates (``None``: never).
    :param lazy: read the session only when the handler first touches ``ctx.session``.

    The session is locked from load to write-back and written only if its JSON form
    changed; a handler that raises writes nothing; ``ctx.session = None`` deletes it.
    """
    fragment = Fragment(
        None,
        initial=initial,
        storage=storage,
        get_session_key=get_session_key,
        prefix=prefix,
        ttl=ttl,
        migrations=migrations,
        validate=validate,
        max_size=max_size,
        lazy=lazy,
    )
    return SessionMiddleware([fragment], multi=False, sweep_interval=sweep_interval)


def lazy_session(**options: Any) -> SessionMiddleware:
    """:func:`session` with ``lazy=True``: an update that never touches ``ctx.session`` costs nothing."""
    options.setdefault("lazy", True)
    return session(**options)


_FRAGMENT_OPTIONS = frozenset(
    {"initial", "storage", "get_session_key", "prefix", "ttl", "migrations", "validate", "max_size", "lazy"}
)


def multi_session(
    *, sweep_interval: float | timedelta | None = DEFAULT_SWEEP_INTERVAL, **fragments: Mapping[str, Any]
) -> SessionMiddleware:
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
        built.append(Fragment(name, **options))
    return SessionMiddleware(built, multi=True, sweep_interval=sweep_interval)
