"""Sessions as JSON files, one per key, under a data directory."""

from __future__ import annotations

import functools
import logging
import os
import re
import stat
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import platformdirs

from ..data import DEFAULT_MAX_SIZE
from ..errors import StorageError
from ..keys import SUFFIX, encode_key, is_hashed_name, key_bytes, key_from_name
from . import stripes, upkeep
from ._folders import CORRUPT_DIR, LOCK_DIR, BadFolder, Folder, Store
from ._fs import TEMP_PREFIX, NotAFile, ReadFailed, Stamp, TooLarge, settled
from .base import Storage
from .document import BadDocument, decode_document
from .locks import LOCK_STRIPES
from .stripes import FileStripes
from .values import Figure, KeyInfo, Listed, StorageStats, Stored, SweepReport, Unreadable, aside_suffix

__all__ = ["CORRUPT_DIR", "DEBRIS_AGE", "LOCK_DIR", "LOCK_STRIPES", "TEMP_PREFIX", "FileStorage", "default_directory"]

_log = logging.getLogger(__name__)

SHARDS = 256
# A temporary file exists for the microseconds of one write; one this old was left by a
# writer that crashed.
DEBRIS_AGE = 3600.0
_STRIPE_NAME = re.compile(r"[0-9a-f]{3}\.lock")


def default_directory(app_name: str = "simplesession") -> Path:
    """Where a :class:`FileStorage` keeps sessions when given no directory.

    ``$SIMPLESESSION_DIR`` if set, else ``sessions`` in the user's data folder for ``app_name``
    (for example ``~/.local/share/simplesession/sessions`` on Linux).
    """
    env = os.environ.get("SIMPLESESSION_DIR")
    if env:
        return Path(env).expanduser()
    return Path(platformdirs.user_data_dir(app_name, appauthor=False)) / "sessions"


class FileStorage(Storage):
    """One human-readable JSON file per session, safe across threads, processes and crashes.

    :param directory: where the files live; default :func:`default_directory`. Created on
        the first write, mode 0700; files are 0600, as sessions hold personal data.
    :param app_name: names the default directory.
    :param cache_size: how many sessions the in-memory front cache keeps (0: none). A hit
        costs one ``stat`` and no read or parse; a file another process replaced is re-read.
    :param fsync: also flush each write to the disk (file and folder), so that it survives
        a power loss, at a large cost in speed. Without it a write survives any crash of
        the process, but not of the machine.
    :param lock_timeout: seconds :meth:`lock` waits before raising
        :class:`~simplesession.LockTimeout`; ``None`` waits for ever.
    :param ttl: seconds (or a ``timedelta``) after which a session that was neither read
        nor written reads as missing; :meth:`sweep` then removes its file.
    :param trust_folder: use the folder even if another user could change it. By default a
        folder of the store (its own, a shard, ``.locks``, ``corrupt``) that belongs to
        another user than the one this process runs as (its effective uid) and root, or
        that its group or other users may write to, is refused with a
        :class:`~simplesession.StorageError` saying how to fix it, as such a user could
        forge sessions (the rule of OpenSSH's ``StrictModes``). Links inside the store are
        never followed, whatever this says.
    :param max_size: the most bytes of JSON a session may take: a bigger one is refused,
        and a file too big for one is set aside without being read (see :class:`Storage`).

    Files live in 256 shard folders. Each file records ``{"format": 1, "key": ...,
    "data": ...}``. Writes go to a temporary file that replaces the old one in one step,
    so a killed process leaves every session at its old or its new value. A file that cannot
    be decoded is moved into the ``corrupt`` folder (never deleted), an ERROR is logged, and
    the key reads as missing. A session's idle clock is its file's modification time.

    Nothing outside the folder is ever created, changed, moved or deleted: each folder is
    opened once, kept, and the files in it are reached through it, with no link followed.
    A link or a file where one of the store's folders belongs raises a
    :class:`~simplesession.StorageError` naming it; a link (or fifo, device, folder) where a
    session's file belongs is set aside like a corrupt file, unread. Every folder made is
    0700 whatever the umask, those the store's folder is in included.

    In a store that cannot be written (a read-only mount, a folder without write
    permission, no free inodes), reads go on: a lock whose lock file cannot be made is held
    within this process only, as then no process can write the session either; a write
    made while holding such a lock is refused.
    """

    kind = "files"

    def __init__(
        self,
        directory: str | os.PathLike[str] | None = None,
        *,
        app_name: str = "simplesession",
        cache_size: int = 1024,
        fsync: bool = False,
        lock_timeout: float | None = 10.0,
        ttl: float | timedelta | None = None,
        trust_folder: bool = False,
        max_size: int = DEFAULT_MAX_SIZE,
    ) -> None:
        self.directory = Path(os.path.abspath(default_directory(app_name) if directory is None else directory))
        self.fsync = bool(fsync)
        self.trust_folder = bool(trust_folder)
        self._dir = str(self.directory)
        store = self._folders = Store(self._dir, trust=self.trust_folder)
        self._corrupt_dir = store.corrupt
        self._lock_dir = store.locks
        self._places = store.places  # looked up on every call, without a call
        self._locate_new = store.locate
        # No reference back to the storage: it is let go (and its folders closed) at once.
        make_lock_dir = functools.partial(_make, store.locks, fsync=self.fsync)
        super().__init__(
            locks=FileStripes(store.locks, make_lock_dir, store.locate),
            ttl=ttl,
            lock_timeout=lock_timeout,
            cache_size=cache_size,
            max_size=max_size,
        )

    def __repr__(self) -> str:
        return f"FileStorage({self._dir!r})"

    def path(self, key: str) -> Path:
        """The file that holds (or would hold) ``key``'s session."""
        folder, name, _ = self._locate(key)
        return Path(folder.file(name))

    # -- what the command line shows -----------------------------------------------------

    @property
    def location(self) -> str:
        return self._dir

    def where(self, key: str) -> str:
        return str(self.path(key))

    def missing(self) -> str | None:
        try:
            st = os.stat(self._dir)
        except (FileNotFoundError, NotADirectoryError):
            return "it does not exist"
        except OSError:
            return None  # there, but out of reach: the first use says which folder keeps it out, and why
        return None if stat.S_ISDIR(st.st_mode) else "it is not a directory"

    def about(self) -> list[Figure]:
        return [Figure("directory", "directory", self._dir), Figure("corrupt_dir", None, self._corrupt_dir.path)]

    def describe(self, key: str) -> KeyInfo | None:
        st = self._status(self._locate(key), key, "look at")
        if st is None:
            return None
        used = st.st_mtime_ns / 1e9
        return KeyInfo(self.where(key), st.st_size, used, None if self.ttl is None else used + self.ttl)

    def stats(self, progress: Callable[[int, int], object] | None = None) -> StorageStats:
        """Counts and sizes of what the folder holds (``progress(done, 256)`` after each shard)."""
        stats = StorageStats()
        temp = 0
        for shard in range(SHARDS):
            folder = self._folders.shards[f"{shard:02x}"]
            for name in self._listing(folder):
                try:
                    st = folder.stat(name)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    raise self._error("list", None, folder.file(name), exc) from exc
                if name.startswith(TEMP_PREFIX):
                    temp += 1
                elif name.endswith(SUFFIX):
                    stats.saw(st.st_size, st.st_mtime_ns / 1e9)
            if progress is not None:
                progress(shard + 1, SHARDS)
        corrupt, locks = (len(self._listing(folder)) for folder in (self._corrupt_dir, self._lock_dir))
        stats.details = [
            Figure("temp_files", "temp files", temp),
            Figure(
                "corrupt_files",
                "corrupt files",
                corrupt,
                f"{corrupt} (in {self._corrupt_dir.path})" if corrupt else "0",
            ),
            Figure("lock_files", "lock files", locks),
        ]
        return stats

    def _listing(self, folder: Folder) -> list[str]:
        """The names in ``folder``: none if it is missing."""
        try:
            return folder.names()
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise self._error("list", None, folder.path, exc) from exc

    # -- the hooks -------------------------------------------------------------------------

    def _locate(self, key: str) -> tuple[Folder, str, str]:
        if type(key) is not str:
            key_bytes(key)  # raises, saying what a key must be
        return self._places.get(key) or self._locate_new(key)

    def _get(self, key: str) -> Stored | None:
        folder, name, _ = self._places.get(key) or self._locate_new(key)
        try:
            stamp, raw = folder.read(name, self._read_limit(key))
        except FileNotFoundError:
            return None
        except NotAFile as exc:
            raise Unreadable(f"it is {exc.strerror}") from exc
        except TooLarge as exc:
            raise Unreadable(self._too_large(exc.size)) from exc
        except (PermissionError, IsADirectoryError, ReadFailed) as exc:
            raise Unreadable(f"it cannot be read: {exc.strerror}") from exc
        except OSError as exc:
            raise self._error("read", key, folder.file(name), exc) from exc
        return raw, stamp

    def _stamp(self, key: str, known: Any) -> Stamp | None:
        folder, name, _ = self._places.get(key) or self._locate_new(key)
        try:
            return folder.stamp(name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error("read", key, folder.file(name), exc) from exc

    def _put(self, key: str, document: bytes) -> Stamp:
        folder, name, lock = self._places.get(key) or self._locate_new(key)
        if stripes.lockless_holds:
            stripes.refuse_lockless(key, folder.file(name), lock, "write")
        try:
            stamp = folder.replace(name, document, self.fsync)
        except FileNotFoundError:
            try:
                folder.make(self.fsync)  # the first write to this shard
            except OSError as exc:
                raise _error("write", key, folder.file(name), exc, f" (making its folder {folder.path})") from exc
            try:
                stamp = folder.replace(name, document, self.fsync)
            except OSError as exc:
                raise self._error("write", key, folder.file(name), exc) from exc
        except OSError as exc:
            raise self._error("write", key, folder.file(name), exc) from exc
        if self.fsync:
            self._sync(folder, key)
        return stamp

    def _delete(self, key: str) -> None:
        folder, name, lock = self._places.get(key) or self._locate_new(key)
        if stripes.lockless_holds:
            stripes.refuse_lockless(key, folder.file(name), lock, "delete")
        try:
            folder.unlink(name)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise self._error("delete", key, folder.file(name), exc) from exc
        if self.fsync:
            self._sync(folder, key)

    def _settled(self, stamp: Any, since: int) -> bool:
        # Coarse file times (whole seconds on ext2/3, HFS+, ext4 with small inodes) let a file
        # written within the same second on a reused inode, and of the same size, look like
        # the one cached: until its time is older than the file system's granularity allows,
        # a hit reads the file again.
        return settled(stamp[1], since)

    def _age(self, stamp: Any) -> float:
        return (time.time_ns() - stamp[1]) / 1e9  # type: ignore[no-any-return]

    def _touch(self, key: str, stamp: Any) -> Stamp | None:
        folder, name, _ = self._places.get(key) or self._locate_new(key)
        now = time.time_ns() | 1  # odd, as a write's (see Folder.replace)
        try:
            folder.set_times(name, now)
        except OSError as exc:
            _log.debug("could not refresh the idle clock of %s: %s", folder.file(name), exc)
            return None
        return stamp[0], now, stamp[2]

    def _set_used(self, key: str, used: float) -> None:
        folder, name, _ = self._places.get(key) or self._locate_new(key)
        try:
            folder.set_times(name, int(used * 1e9) | 1)  # odd, as a write's (see Folder.replace)
        except OSError as exc:
            raise self._error("set the idle clock of", key, folder.file(name), exc) from exc

    def _idle(self, key: str) -> tuple[float, int] | None:
        st = self._status(self._locate(key), key, "remove the idle")
        return None if st is None else ((time.time_ns() - st.st_mtime_ns) / 1e9, st.st_size)

    def _status(self, place: tuple[Folder, str, str], key: str, action: str) -> os.stat_result | None:
        """The status of ``key``'s file at ``place`` (``None``: there is none); ``action`` is for errors."""
        folder, name, _ = place
        try:
            return folder.stat(name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._error(action, key, folder.file(name), exc) from exc

    def _scan(self, clock: bool) -> Iterator[list[Listed]]:
        for shard in self._shards():
            page = self._list(shard, clock, None)
            if page:
                yield page

    def _sweep_pages(self, clock: bool, dry_run: bool) -> Iterator[tuple[list[Listed], SweepReport]]:
        """One page per shard folder (1/256 of the sessions), then one for the lock files."""
        for shard in range(SHARDS):
            report = SweepReport()
            yield self._list(f"{shard:02x}", clock, (report, dry_run)), report
        yield [], self._sweep_locks(dry_run)

    @property
    def sweep_size(self) -> int:
        return SHARDS + 1

    def _move_aside(self, key: str, expected: Stored | None) -> str | None:
        folder, name, _ = self._places.get(key) or self._locate_new(key)
        if expected is not None:
            try:
                if folder.stamp(name) != expected[1]:
                    return None  # replaced since it was read
            except FileNotFoundError:
                return None
            except OSError:
                pass  # the move says what is wrong
        return self._move_file_aside(folder, name, key)

    # -- listing and sweeping ----------------------------------------------------------------

    def _shards(self) -> list[str]:
        names = self._listing(self._folders.top)
        return sorted(n for n in names if len(n) == 2 and all(c in "0123456789abcdef" for c in n))

    def _list(self, shard: str, clock: bool, sweep: tuple[SweepReport, bool] | None) -> list[Listed]:
        """The sessions in one shard folder; when sweeping, its old temporary files are removed too."""
        folder = self._folders.shards[shard]
        now = time.time_ns()
        page = []
        for name in self._listing(folder):
            try:
                if name.startswith(TEMP_PREFIX):
                    if sweep is not None:
                        self._sweep_temp(folder, name, now, *sweep)
                    continue
                if name.startswith("k"):
                    key = key_from_name(name)
                    if key is None or encode_key(key)[0] != shard:
                        continue
                elif is_hashed_name(name):
                    key = self._key_of_hashed(folder, name)
                    if key is None:
                        continue
                else:
                    continue
                if not clock:
                    page.append(Listed(key))
                    continue
                st = folder.stat(name)
                page.append(Listed(key, (now - st.st_mtime_ns) / 1e9, st.st_size))
            except FileNotFoundError:
                continue  # replaced or removed since the listing
            except StorageError:
                raise
            except OSError as exc:
                raise self._error("list", None, folder.file(name), exc) from exc
        return page

    @staticmethod
    def _sweep_temp(folder: Folder, name: str, now: int, report: SweepReport, dry_run: bool) -> None:
        st = folder.stat(name)
        if now - st.st_mtime_ns > DEBRIS_AGE * 1e9:
            if not dry_run:
                folder.unlink(name)  # a link itself, if one was planted: never what it points to
            report.debris += 1
            report.bytes_freed += st.st_size

    def _sweep_locks(self, dry_run: bool) -> SweepReport:
        # Lock files of the current stripes are permanent (a lock dies with its process, so
        # none is ever stale); anything else in the lock folder is a leftover.
        report = SweepReport()
        folder = self._lock_dir
        for name in self._listing(folder):
            if _STRIPE_NAME.fullmatch(name) and int(name[:3], 16) < LOCK_STRIPES:
                continue
            try:
                size = folder.stat(name).st_size
                if not dry_run:
                    folder.unlink(name)
            except (FileNotFoundError, IsADirectoryError, PermissionError):
                continue
            except OSError as exc:
                raise self._error("remove the leftover", None, folder.file(name), exc) from exc
            report.debris += 1
            report.bytes_freed += size
        return report

    def _key_of_hashed(self, folder: Folder, name: str) -> str | None:
        """The key recorded in a file named by its key's hash, if the file is that key's."""
        try:
            _, raw = folder.read(name, self._read_limit(None))
            key = decode_document(raw)[0]
        except FileNotFoundError:
            return None
        except (OSError, BadDocument, TooLarge) as exc:
            if isinstance(exc, TooLarge):
                reason = self._too_large(exc.size)
            elif isinstance(exc, NotAFile):
                reason = f"it is {exc.strerror}"
            else:
                reason = f"it cannot be read: {exc.strerror}" if isinstance(exc, OSError) else str(exc)
            reason = f"the file is corrupt: {reason}"
            if not self.set_aside_corrupt:
                upkeep.log_left(None, reason, folder.file(name))
                return None
            try:
                where = self._move_file_aside(folder, name, None)
            except StorageError as error:
                raise upkeep.cannot_set_aside(None, folder.file(name), reason, error) from error
            if where is not None:
                upkeep.log_set_aside(None, reason, folder.file(name), where)
            return None
        return key if encode_key(key) == (os.path.basename(folder.path), name) else None

    def _move_file_aside(self, folder: Folder, name: str, key: str | None) -> str | None:
        """Move a file into ``corrupt/``, keeping its bytes for a human; where it went."""
        new_name = f"{name}.{aside_suffix()}"
        try:
            self._corrupt_dir.make(self.fsync)
            folder.rename(name, self._corrupt_dir, new_name)
        except FileNotFoundError:
            return None
        except OSError as exc:
            why = exc.strerror or str(exc)
            raise StorageError(
                f"it could not be moved to {self._corrupt_dir.path}: {why}", key=key, path=folder.file(name)
            ) from exc
        return self._corrupt_dir.file(new_name)

    # -- folders and errors ------------------------------------------------------------------

    def _make(self, folder: Folder, key: str | None) -> None:
        _make(folder, key, fsync=self.fsync)

    def _sync(self, folder: Folder, key: str | None) -> None:
        try:
            folder.sync()
        except OSError as exc:
            raise self._error("sync the folder of", key, folder.path, exc) from exc

    @staticmethod
    def _error(action: str, key: str | None, path: str, exc: OSError) -> StorageError:
        return _error(action, key, path, exc)


def _make(folder: Folder, key: str | None, *, fsync: bool) -> None:
    """Make ``folder`` if it is missing; a :class:`~simplesession.StorageError` saying why it cannot be."""
    try:
        folder.make(fsync)
    except OSError as exc:
        raise _error("create the folder for", key, folder.path, exc) from exc


def _error(action: str, key: str | None, path: str, exc: OSError, doing: str = "") -> StorageError:
    whose = f"session {key!r}" if key is not None else "the sessions" if action == "list" else "a session"
    if isinstance(exc, BadFolder):
        # The folder is what is wrong, and the error says what to do about it.
        error = StorageError(f"could not {action} {whose}: {exc.strerror}", key=key, path=exc.filename)
    else:
        error = StorageError(
            f"could not {action} {whose} at {path}{doing}: {exc.strerror or exc}; "
            "check that the folder exists, is writable and has free space",
            key=key,
            path=path,
        )
    error.errno = exc.errno
    return error
