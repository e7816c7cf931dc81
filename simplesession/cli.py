"""The ``simplesession`` command: look at, clean up and move the sessions of any storage.

Run ``simplesession --help`` (or ``python -m simplesession --help``). Every failure is one
line on stderr and a non-zero exit status: 1 when something went wrong, 2 for a usage
error, 130 when interrupted. A session that cannot be read is reported on a line of its own
and the command goes on with the rest; then it ends with a summary line and status 1.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from . import __version__, data
from ._console import DURATION_HELP, PROG, LogHandler, Progress, format_duration, human, iso, parse_duration, plural
from .errors import SessionError
from .keys import key_bytes
from .storage import Storage, StorageStats, default_directory
from .storage._fs import flush_to_disk
from .storage.document import check_version
from .storage.urls import FORMS, kind_of, open_storage

__all__ = ["build_parser", "format_duration", "main", "parse_duration"]


class CliError(Exception):
    """A failure to report as one line and exit status 1."""


def _existing(storage: Storage) -> Storage:
    """``storage``, or :class:`CliError` if it is not there (most likely a wrong --dir/--app)."""
    why = storage.missing()
    if why is not None:
        raise CliError(f"no sessions at {storage.location} ({why}); name the store with --dir, --app or --store")
    return storage


def _incomplete(command: str, errors: int) -> str:
    """What it means for ``command`` that ``errors`` sessions could not be read (reported above)."""
    count = f"{plural(errors, 'session')} could not be read (see above)"
    if command == "export":
        verb = "is" if errors == 1 else "are"
        return f"the export is incomplete: {count} and {verb} not in it; nothing in the store was changed"
    return f"{count}; the others were done"


def _missing(storage: Storage, key: str) -> CliError:
    return CliError(f"no session {key!r} at {storage.location}; see the keys with ls")


# -- commands --------------------------------------------------------------------------


def cmd_ls(storage: Storage, args: argparse.Namespace) -> int:
    for key in sorted(_existing(storage).keys()):
        if not args.long:
            print(key)
            continue
        found = storage.describe(key)
        if found is not None:  # None: removed since the listing
            # The last use where the storage keeps it, else when the session expires.
            when = found.used if found.used is not None else found.expires
            print(f"{key}\t{found.size}\t{iso(when) or '-'}")
    return 0


def cmd_show(storage: Storage, args: argparse.Namespace) -> int:
    found = _existing(storage).read_versioned(args.key)
    if found is None:
        raise _missing(storage, args.key)
    print(json.dumps(found[0], indent=2, ensure_ascii=False))
    return 0


def cmd_rm(storage: Storage, args: argparse.Namespace) -> int:
    _existing(storage)
    status = 0
    for key in args.keys:
        try:
            # Under the lock, so that an update in flight cannot write the session back after us.
            with storage.lock(key):
                if storage.describe(key) is None:
                    raise _missing(storage, key)
                storage.delete(key)
        except (CliError, SessionError, ValueError) as error:
            print(f"{PROG}: error: {error}", file=sys.stderr)
            status = 1
    return status


def cmd_path(storage: Storage, args: argparse.Namespace) -> int:
    path = storage.path(args.key)
    if path is None:
        raise CliError(f"path has no meaning for {storage.kind} (session {args.key!r} is {storage.where(args.key)})")
    print(path)
    return 0


def _print_stats(storage: Storage, stats: StorageStats, as_json: bool) -> None:
    about, details = storage.about(), stats.details
    if as_json:
        figures: dict[str, Any] = {figure.name: figure.value for figure in about}
        figures.update(sessions=stats.sessions, bytes=stats.bytes, oldest=iso(stats.oldest), newest=iso(stats.newest))
        figures.update((figure.name, figure.value) for figure in details)
        print(json.dumps(figures, indent=2, ensure_ascii=False))
        return
    rows = [(figure.label, figure.text or str(figure.value)) for figure in about if figure.label]
    rows += [("sessions", str(stats.sessions)), ("size", human(stats.bytes))]
    rows += [("oldest use", iso(stats.oldest) or "-"), ("newest use", iso(stats.newest) or "-")]
    rows += [(figure.label, figure.text or str(figure.value)) for figure in details if figure.label]
    for label, text in rows:
        print(f"{label + ':':<15}{text}")


def cmd_stats(storage: Storage, args: argparse.Namespace) -> int:
    with Progress("counting") as progress:
        stats = _existing(storage).stats(progress)
    _print_stats(storage, stats, args.json)
    return 0


def cmd_upgrade(storage: Storage, args: argparse.Namespace) -> int:
    moved, kept = storage.upgrade(dry_run=args.dry_run)
    verb = "would move" if args.dry_run else "moved"
    print(f"{verb} {plural(moved, 'session')} to the current layout", end="")
    print(f"; kept {kept} in the old one, as the current one holds a newer value" if kept else "")
    return 0


def cmd_sweep(storage: Storage, args: argparse.Namespace) -> int:
    if storage.expires_by_itself:
        print(f"nothing to do: {storage.kind} expires idle sessions itself (a storage's ttl is set as their")
        print("expiry on every write and renewed on every read), and the locks of crashed bots expire too")
        return 0
    with Progress("sweeping") as progress:
        report = _existing(storage).sweep(args.ttl, dry_run=args.dry_run, progress=progress)
    remove = "would remove" if args.dry_run else "removed"
    if args.dry_run:
        print("dry run: nothing was removed")
    if args.ttl is None:
        print("no --ttl given: sessions are kept, only leftover files are cleaned up")
    print(f"scanned {plural(report.scanned, 'session')} in {storage.location}")
    if args.ttl is not None:
        print(f"{remove} {plural(report.removed, 'session')} idle for more than {format_duration(args.ttl)}")
        if report.in_use:
            using = "an update is using it" if report.in_use == 1 else "updates are using them"
            print(f"kept {plural(report.in_use, 'idle session')} because {using}")
    print(f"{remove} {plural(report.debris, 'leftover file')} (temp files of crashed writers, stray lock files)")
    print(f"{'would free' if args.dry_run else 'freed'} {human(report.bytes_freed)}")
    return 0


def _export(storage: Storage, write: Callable[[bytes], object]) -> int:
    """Write every session as one JSON line, in key order; the number written."""
    keys = sorted(storage.keys())
    count = 0
    with Progress("exporting", bar=False) as progress:
        for done, key in enumerate(keys, 1):
            found = storage.read_versioned(key)
            if found is not None:  # None: removed (or set aside as corrupt) since the listing
                line = {"key": key, "version": found[1], "data": found[0]}
                write(json.dumps(line, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n")
                count += 1
            progress(done, len(keys))
    return count


def cmd_export(storage: Storage, args: argparse.Namespace) -> int:
    _existing(storage)
    # A backup changes nothing: a corrupt session is reported and left where it is.
    storage.set_aside_corrupt = False
    if args.file in (None, "-"):
        _export(storage, sys.stdout.buffer.write)
        return 0
    target = Path(args.file)
    # Written beside the target and renamed over it, so a failed export never leaves half a file.
    # mkstemp makes it 0600, which suits a file of personal data.
    try:
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as error:
        raise CliError(f"cannot write {target}: {error.strerror or error}") from error
    try:
        with os.fdopen(fd, "wb") as out:
            count = _export(storage, out.write)
            out.flush()
            flush_to_disk(out.fileno())
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    print(f"exported {plural(count, 'session')} to {target}")
    return 0


def _parse_import(stream: IO[bytes], source: str) -> list[tuple[str, Any, Any]]:
    """Every ``(key, data, version)`` of a JSON lines export; :class:`CliError` for the first bad line."""
    entries: list[tuple[str, Any, Any]] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(stream, 1):

        def bad(problem: str, number: int = number) -> CliError:
            return CliError(f"{source} line {number}: {problem}; nothing was imported")

        if not raw.strip():
            continue
        try:
            doc = data.decode(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise bad("not UTF-8 text") from None
        except ValueError as error:
            raise bad(f"not JSON ({error})") from None
        if type(doc) is not dict:
            raise bad(f"a JSON {type(doc).__name__}, not an object with key, version and data")
        if unknown := sorted(set(doc) - {"key", "version", "data"}):
            raise bad(f"unknown fields {', '.join(map(repr, unknown))} (expected key, version and data)")
        key, value, version = doc.get("key"), doc.get("data"), doc.get("version")
        if "key" not in doc or type(key) is not str:
            raise bad('"key" is missing' if "key" not in doc else f'"key" is {key!r}, not a string')
        if "data" not in doc or value is None:
            raise bad(f'"data" of {key!r} is ' + ("missing" if "data" not in doc else "null (a session cannot be)"))
        try:
            version = None if version is None else check_version(version)
        except TypeError:
            raise bad(f'"version" of {key!r} is {version!r}, not null or a number') from None
        try:
            key_bytes(key)
            value = data.check_copy(value, key)
        except (ValueError, TypeError) as error:
            raise bad(str(error)) from None
        if key in seen:
            raise bad(f"session {key!r} is already at line {seen[key]}")
        seen[key] = number
        entries.append((key, value, version))
    return entries


def cmd_import(storage: Storage, args: argparse.Namespace) -> int:
    source = "stdin" if args.file in (None, "-") else args.file
    try:
        if args.file in (None, "-"):
            entries = _parse_import(sys.stdin.buffer, source)
        else:
            with open(args.file, "rb") as stream:
                entries = _parse_import(stream, source)
    except OSError as error:
        raise CliError(f"cannot read {source}: {error.strerror or error}") from error
    imported = skipped = 0
    with Progress("importing", bar=False) as progress:
        for done, (key, value, version) in enumerate(entries, 1):
            with storage.lock(key):
                if args.skip_existing and storage.has(key):
                    skipped += 1
                else:
                    storage.write(key, value, version=version)
                    imported += 1
            progress(done, len(entries))
    kept = f", kept {plural(skipped, 'existing session')}" if args.skip_existing else ""
    print(f"imported {plural(imported, 'session')} into {storage.location}{kept}")
    return 0


def cmd_copy(_: Storage | None, args: argparse.Namespace) -> int:
    source = _existing(_storage(args, args.source))
    target = _storage(args, args.target, ttl=args.ttl)
    if source.location == target.location:
        raise CliError(f"{source.location} is both the source and the target: copy it somewhere else")
    # A copy changes nothing where it reads: a corrupt session is reported and left there.
    source.set_aside_corrupt = False
    keys = list(source.keys())
    copied = skipped = 0
    with Progress("copying") as progress:
        for done, key in enumerate(keys, 1):
            found = source.read_versioned(key)
            info = source.describe(key)
            if found is not None and info is not None:  # else deleted meanwhile
                used = info.used
                if used is None and info.expires is not None and args.ttl is not None:
                    used = info.expires - args.ttl  # a place that expires sessions keeps no last use
                with target.lock(key):
                    if args.skip_existing and target.has(key):
                        skipped += 1
                    else:
                        target.restore(key, found[0], version=found[1], used=used)
                        copied += 1
            progress(done, len(keys))
    kept = f", kept {plural(skipped, 'session')} it had" if args.skip_existing else ""
    print(f"copied {plural(copied, 'session')} from {source.location} to {target.location}{kept}")
    return 0


# -- the parser ------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``simplesession`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Look at, clean up and move the sessions of a simplesession FileStorage or RedisStorage.",
        epilog="Default folder: $SIMPLESESSION_DIR, else the 'simplesession' app's data folder. "
        "Every command but path and import needs the folder to exist. "
        "Nightly cron sweep: 0 4 * * * simplesession --app mybot sweep --ttl 30d. "
        "Moving to Redis: simplesession --dir DIR export | simplesession --redis URL import",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    _where_options(parser, None)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[Storage, argparse.Namespace], int], text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=text, description=text)
        sub.set_defaults(func=func)
        # Also after the command (``ls --dir X``); given nowhere there, the values before it stand.
        _where_options(sub, argparse.SUPPRESS)
        return sub

    sub = command("ls", cmd_ls, "List every session key, sorted, one per line.")
    sub.add_argument(
        "-l",
        "--long",
        action="store_true",
        help="also size in bytes and last use (UTC; on Redis the expiry time, - for none), tab-separated",
    )
    command("show", cmd_show, "Print a session's data as JSON.").add_argument("key", metavar="KEY")
    sub = command("rm", cmd_rm, "Delete sessions; a missing one is an error, the others are still deleted.")
    sub.add_argument("keys", metavar="KEY", nargs="+")
    command("path", cmd_path, "Print the file that holds (or would hold) a session.").add_argument("key", metavar="KEY")
    sub = command("stats", cmd_stats, "Count sessions, bytes, last uses, temp, corrupt and lock files.")
    sub.add_argument("--json", action="store_true", help="print the figures as JSON")
    sub = command("sweep", cmd_sweep, "Remove sessions idle longer than --ttl, and files left by crashes.")
    sub.add_argument("--ttl", type=parse_duration, metavar="DURATION", help=f"idle time: {DURATION_HELP}")
    sub.add_argument("--dry-run", action="store_true", help="only report what would be removed")
    sub = command("upgrade", cmd_upgrade, "Move sessions from an older key layout (Redis); once, bots stopped.")
    sub.add_argument("--dry-run", action="store_true", help="only count what would be moved")
    sub = command("export", cmd_export, "Write every session as JSON lines: key, version, data.")
    sub.add_argument("file", metavar="FILE", nargs="?", help="output file (mode 0600), default or '-': stdout")
    sub = command(
        "import", cmd_import, "Read sessions from JSON lines (as export writes); all or nothing on bad input."
    )
    sub.add_argument("file", metavar="FILE", nargs="?", help="input file, default or '-': stdin")
    sub.add_argument(
        "--ttl",
        type=parse_duration,
        metavar="DURATION",
        help="with --redis: the bot's ttl, so that the imported sessions expire like the rest "
        f"(without it they have none until the bot next uses them); {DURATION_HELP}",
    )
    mode = sub.add_mutually_exclusive_group()
    mode.add_argument("--replace", action="store_false", dest="skip_existing", help="overwrite sessions (default)")
    mode.add_argument("--skip-existing", action="store_true", help="keep sessions that already exist")
    sub.set_defaults(skip_existing=False)
    sub = command("copy", cmd_copy, "Copy every session from one store to another, with its version and idle clock.")
    sub.add_argument("source", metavar="SOURCE", help=f"the store to copy from: {FORMS}")
    sub.add_argument("target", metavar="TARGET", help="the store to copy into, named the same way")
    sub.add_argument(
        "--ttl",
        type=parse_duration,
        metavar="DURATION",
        help="the bots' ttl: sessions copied into Redis expire as they would have where they were, "
        f"and those copied from Redis keep their idle time; {DURATION_HELP}",
    )
    sub.add_argument("--skip-existing", action="store_true", help="keep sessions the target already has")
    return parser


def _where_options(parser: argparse.ArgumentParser, default: Any) -> None:
    """The options that say where the sessions are, on ``parser`` with ``default`` for each."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--dir", metavar="DIR", default=default, help="the sessions folder")
    where.add_argument(
        "--app",
        metavar="NAME",
        default=default,
        help="the sessions of app NAME, as FileStorage(app_name=NAME) finds them",
    )
    where.add_argument(
        "--redis",
        metavar="URL",
        default=default,
        help="the sessions on a Redis server, e.g. redis://localhost:6379/0, "
        "or on a cluster, by any of its nodes: redis+cluster://host:port",
    )
    where.add_argument("--store", metavar="URL", default=default, help=f"the sessions of any store: {FORMS}")
    parser.add_argument(
        "--trust-folder",
        action="store_true",
        default=False if default is None else default,
        help="use the sessions folder even if another user owns it or may write to it "
        "(by default such a folder is refused, as that user could forge sessions)",
    )
    parser.add_argument(
        "--prefix",
        metavar="PREFIX",
        default=default,
        help="with --redis: the prefix of the RedisStorage's keys (default: simplesession:; "
        "a store's URL may say it too, as ?prefix=PREFIX)",
    )


def _url(args: argparse.Namespace) -> str:
    """The store the options name, as a URL (``--dir``/``--app``: a folder, ``file:`` relative or absolute)."""
    if args.store is not None:
        return str(args.store)
    if args.redis is not None:
        return str(args.redis)
    # --app finds the folder FileStorage(app_name=...) uses in the bot, $SIMPLESESSION_DIR included.
    directory = Path(args.dir).expanduser() if args.dir is not None else default_directory(args.app or "simplesession")
    path = os.path.abspath(directory)
    if path.startswith("//"):  # POSIX lets "//x" mean its own thing; here it is "/x", and not a URL's host
        path = "/" + path.lstrip("/")
    return f"file:{path}"


def _storage(args: argparse.Namespace, url: str | None = None, *, ttl: float | None = None) -> Storage:
    """The storage at ``url`` (default: the one the options name), with the options that apply to its kind."""
    url = _url(args) if url is None else url
    options: dict[str, Any] = {}
    kind = kind_of(url)
    if kind in ("file", "sqlite"):
        # Every command reads each session once at most: no cache.
        options.update(cache_size=0, trust_folder=args.trust_folder)
    elif kind == "redis":
        options.update(ttl=ttl)
        if args.prefix is not None:  # else the URL's ?prefix=, or RedisStorage's default
            options.update(prefix=args.prefix)
    try:
        return open_storage(url, **options)
    except ImportError as error:
        raise CliError(str(error)) from None


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        given = [f"--{name}" for name in ("dir", "app", "redis", "store") if getattr(args, name) is not None]
        if len(given) > 1:  # one before the command and one after it, which the group cannot see
            parser.error(f"argument {given[1]}: not allowed with argument {given[0]}")
        if args.command == "copy" and given:
            parser.error(f"argument {given[0]}: copy takes its two stores as SOURCE and TARGET")
        try:
            kinds = [kind_of(url) for url in ((args.source, args.target) if args.command == "copy" else (_url(args),))]
        except ValueError as error:
            parser.error(str(error))
        if args.prefix is not None and "redis" not in kinds:
            parser.error("argument --prefix: only with a Redis store (--redis, or --store redis://...)")
        if args.trust_folder and not {"file", "sqlite"} & set(kinds):
            parser.error("argument --trust-folder: only with a folder (--dir, --app, --store file:... or sqlite:...)")
        if args.command == "import" and args.ttl is not None and kinds != ["redis"]:
            # A file's idle clock is its modification time, which the import sets to now.
            parser.error("argument --ttl: only into Redis (imported files count as used now; sweep --ttl ages them)")
    except SystemExit as stop:  # --help, or a usage error argparse has reported
        return stop.code if isinstance(stop.code, int) else 2
    logger = logging.getLogger("simplesession")
    handler, propagate = LogHandler(logging.WARNING), logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    try:
        storage = None if args.command == "copy" else _storage(args, ttl=args.ttl if args.command == "import" else None)
        status: int = args.func(storage, args)
        sys.stdout.flush()
        if handler.errors and status == 0:
            print(f"{PROG}: error: {_incomplete(args.command, handler.errors)}", file=sys.stderr)
            status = 1
        return status
    except BrokenPipeError:
        # The reader went away (``| head``): stop quietly, as a tool killed by SIGPIPE would,
        # and keep the interpreter from failing again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (CliError, SessionError, ValueError) as error:  # ValueError: a key that is not valid Unicode
        message = str(error)
    except OSError as error:
        message = f"{error.strerror}: {error.filename}" if error.filename and error.strerror else str(error)
    except KeyboardInterrupt:
        print(f"{PROG}: error: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug: still one line, not a traceback
        message = f"unexpected {type(error).__name__}: {error} (this is a bug; please report it)"
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 1
