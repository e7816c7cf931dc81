"""FileStorage in folders it must not trust, and in stores that nobody can write.

A folder another user owns, or that others may write to, is refused unless the user says
otherwise (``trust_folder=True``); every folder the store makes is private whatever the
umask. A store that cannot be written (a read-only mount, a folder without write
permission, no free inodes) still serves reads, also of chats that never took a lock.
Mounts and other users need root: those tests are skipped without it.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simplesession import Bot, Context, CorruptSessionError, FileStorage, StorageError, session
from simplesession.cli import main

NOBODY = 65534
as_root = pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="needs root (another user, mounts)")


def refused(action: Any, *words: str) -> StorageError:
    with pytest.raises(StorageError) as info:
        action()
    for word in words:
        assert word in str(info.value), info.value
    return info.value


def reading_bot(storage: FileStorage, seen: list[Any]) -> Bot:
    """A bot whose /show only reads the session, and whose /count changes it."""
    bot = Bot(output=open(os.devnull, "w"))  # noqa: SIM115 - lives as long as the bot
    bot.use(session(initial=lambda: {"count": 0}, storage=storage))

    @bot.command("show")
    def show(ctx: Context) -> None:
        seen.append(ctx.session["count"])

    @bot.command("count")
    def count(ctx: Context) -> None:
        ctx.session["count"] += 1

    return bot


def update(chat: int, text: str) -> dict[str, Any]:
    return {"update_id": 1, "message": {"message_id": 1, "chat": {"id": chat}, "text": text}}


# -- folders another user controls ---------------------------------------------------------------


@as_root
def test_a_store_folder_of_another_user_is_refused_saying_why_and_how(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Another local user made the folder first (say SIMPLESESSION_DIR=/tmp/bot) and put a
    # forged session in it.
    root = tmp_path / "bot"
    FileStorage(root).write("42", {"balance": 1_000_000})
    for path in [root, *root.rglob("*")]:
        os.chown(path, NOBODY, NOBODY, follow_symlinks=False)
    storage = FileStorage(root)
    words = (str(root), "belongs to", str(NOBODY), "chown", "trust_folder=True")
    refused(lambda: storage.read("42"), *words)
    refused(lambda: storage.write("43", {"v": 1}), *words)
    refused(lambda: list(storage.keys()), *words)
    refused(lambda: storage.lock("42").__enter__(), *words)
    assert main(["--dir", str(root), "ls"]) == 1
    assert "--trust-folder" in capsys.readouterr().err
    # Told to, it trusts the folder.
    assert FileStorage(root, trust_folder=True).read("42") == {"balance": 1_000_000}
    assert main(["--dir", str(root), "--trust-folder", "ls"]) == 0
    assert capsys.readouterr().out == "42\n"


@as_root
def test_a_sub_folder_of_another_user_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "sessions"
    FileStorage(root).write("42", {"v": 1})
    shard = FileStorage(root).path("42").parent
    os.chown(shard, NOBODY, NOBODY)
    refused(lambda: FileStorage(root).read("42"), str(shard), "belongs to")
    assert FileStorage(root, trust_folder=True).read("42") == {"v": 1}


@pytest.mark.parametrize("who", [stat.S_IWGRP, stat.S_IWOTH], ids=["group", "others"])
@pytest.mark.parametrize("folder", ["the store's own", "a shard", ".locks", "corrupt"])
def test_a_folder_others_may_write_to_is_refused_saying_why_and_how(tmp_path: Path, folder: str, who: int) -> None:
    root = tmp_path / "sessions"
    storage = FileStorage(root)
    storage.write("42", {"v": 1})
    storage.write("other", {"v": 1})
    # Makes the lock and corrupt folders; "42"'s lock file is first opened below.
    storage.set_aside("other", "a test makes the corrupt folder")
    assert storage.lock_name("other") != storage.lock_name("42")
    target = {
        "the store's own": root,
        "a shard": storage.path("42").parent,
        ".locks": root / ".locks",
        "corrupt": root / "corrupt",
    }[folder]
    target.chmod(0o700 | who)
    fresh = FileStorage(root, cache_size=0)
    words = (str(target), "can be written by", "chmod go-w", "trust_folder=True")
    if folder == ".locks":
        refused(lambda: fresh.lock("42").__enter__(), *words)
    elif folder == "corrupt":
        storage.path("42").write_bytes(b"{not json")
        assert isinstance(refused(lambda: fresh.read("42"), *words), CorruptSessionError)
        assert storage.path("42").read_bytes() == b"{not json"  # not moved into that folder
    else:
        refused(lambda: fresh.read("42"), *words)
    target.chmod(0o755)  # readable by all is no risk: only who may write matters
    assert FileStorage(root, cache_size=0).read("42") in ({"v": 1}, None)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o277], ids=oct)
def test_every_folder_the_store_makes_is_private_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "made" / "by" / "the store" / "sessions"
    old = os.umask(umask)
    try:
        storage = FileStorage(root)
        with storage.lock("42"):
            storage.write("42", {"v": 1})
        storage.set_aside("42", "a test makes the corrupt folder")
    finally:
        os.umask(old)
    made = [root.parent.parent.parent, root.parent.parent, root.parent, root]
    made += [root / ".locks", root / "corrupt", storage.path("42").parent]
    assert {str(path): oct(stat.S_IMODE(path.stat().st_mode)) for path in made} == {
        str(path): oct(0o700) for path in made
    }
    assert stat.S_IMODE(tmp_path.stat().st_mode) == 0o700  # what was there is left as it was


# -- stores that nobody can write -----------------------------------------------------------------


@contextlib.contextmanager
def mounted(target: Path, *options: str) -> Iterator[None]:
    """``mount *options target`` for the block, then detached (even with files open on it)."""
    target.mkdir(exist_ok=True)
    try:
        subprocess.run(["mount", *options, str(target)], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"cannot mount here: {exc}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(target)], check=False, capture_output=True)


def read_only_view(source: Path, target: Path) -> contextlib.ExitStack:
    """``source`` seen read-only at ``target``, as through a read-only mount."""
    stack = contextlib.ExitStack()
    stack.enter_context(mounted(target, "--bind", str(source)))
    subprocess.run(["mount", "-o", "remount,bind,ro", str(target)], check=True, capture_output=True)
    return stack


@as_root
@pytest.mark.parametrize("locks", ["no lock folder", "no lock file of this chat"])
def test_a_read_only_mount_serves_reads_also_of_chats_that_never_took_a_lock(tmp_path: Path, locks: str) -> None:
    source = tmp_path / "sessions"
    writer = FileStorage(source)
    writer.write("42", {"count": 3})
    writer.write("43", {"count": 5})
    if locks == "no lock file of this chat":
        with writer.lock("other"):
            pass
        assert writer.lock_name("42") != writer.lock_name("other")
    with read_only_view(source, tmp_path / "ro"):
        storage = FileStorage(tmp_path / "ro")
        seen: list[Any] = []
        bot = reading_bot(storage, seen)
        bot.handle_update(update(42, "/show"))
        bot.handle_update(update(43, "/show"))
        bot.handle_update(update(42, "/show"))  # again, with the lock still made of nothing
        assert seen == [3, 5, 3]
        assert storage.read("42") == {"count": 3}
        assert sorted(storage.keys()) == ["42", "43"]
        error = refused(lambda: bot.handle_update(update(42, "/count")), str(storage.path("42")))
        assert error.errno == errno.EROFS
        error = refused(lambda: storage.write("44", {"v": 1}), str(storage.path("44")))
        assert error.errno == errno.EROFS
    assert FileStorage(source).read("42") == {"count": 3}


@as_root
def test_a_write_under_a_lock_taken_without_a_lock_file_is_refused(tmp_path: Path) -> None:
    # Such a lock keeps no other process out: if the store became writable meanwhile, a
    # write made under it could undo another's.
    source = tmp_path / "sessions"
    FileStorage(source).write("42", {"count": 3})
    with read_only_view(source, tmp_path / "ro"):
        storage = FileStorage(tmp_path / "ro")
        with storage.lock("42"):
            subprocess.run(["mount", "-o", "remount,bind,rw", str(tmp_path / "ro")], check=True)
            refused(lambda: storage.write("42", {"count": 4}), "lock file", "keeps no other process out")
            assert storage.read("42") == {"count": 3}
        with storage.lock("42"):  # the store can be written now: a real lock, and writes
            storage.write("42", {"count": 4})
    assert FileStorage(source).read("42") == {"count": 4}


@as_root
def test_a_store_without_free_inodes_serves_reads_and_refuses_writes_clearly(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with mounted(disk, "-t", "tmpfs", "-o", "size=4m,nr_inodes=64,mode=0700", "tmpfs"):
        writer = FileStorage(disk / "sessions")
        writer.write("42", {"count": 3})
        with writer.lock("other"):
            pass
        filler = 0
        with contextlib.suppress(OSError):
            while filler < 1000:  # bounded: the file system has 64 inodes
                (disk / f"filler-{filler}").touch()
                filler += 1
        assert 0 < filler < 1000
        storage = FileStorage(disk / "sessions")
        seen: list[Any] = []
        reading_bot(storage, seen).handle_update(update(42, "/show"))
        assert seen == [3]
        error = refused(lambda: storage.write("44", {"v": 1}), str(storage.path("44")))
        assert error.errno == errno.ENOSPC
        assert storage.read("42") == {"count": 3}


CHILD = """
    import errno, json, sys
    from simplesession import FileStorage, StorageError
    storage = FileStorage(sys.argv[1])
    with storage.lock("42"):
        value = storage.read("42")
    try:
        storage.write("42", {"count": 4})
    except StorageError as error:
        print(json.dumps([value, errno.errorcode[error.errno]]))
"""


def without_root_powers(*argv: str) -> subprocess.CompletedProcess[str]:
    """Python with ``argv``, as root without the power to override permissions (so as any user)."""
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("needs setpriv to drop root's power over permissions")
    result = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", sys.executable, *argv],
        capture_output=True,
        text=True,
        env=os.environ.copy(),
        timeout=60,
        check=False,
    )
    if result.returncode and "setpriv:" in result.stderr:
        pytest.skip(f"setpriv cannot drop capabilities here: {result.stderr.strip()}")
    return result


@as_root
def test_a_store_this_user_cannot_write_serves_reads(tmp_path: Path) -> None:
    # Its folders 0500, seen by root without the power to override permissions (which is
    # what keeps root from being stopped by them), as any other user would see them.
    root = tmp_path / "sessions"
    FileStorage(root).write("42", {"count": 3})
    for path in [root, *root.rglob("*")]:
        path.chmod(0o500 if path.is_dir() else 0o400)
    result = without_root_powers("-c", textwrap.dedent(CHILD), str(root))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == [{"count": 3}, "EACCES"]
    root.chmod(0o700)
    assert FileStorage(root).read("42") == {"count": 3}


@as_root
def test_a_folder_of_root_is_trusted_by_every_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root could change anything anyway; so could the user itself. Anyone else may not.
    roots, own, others = tmp_path / "roots", tmp_path / "own", tmp_path / "others"
    for root in (roots, own, others):
        FileStorage(root).write("42", {"v": 1})
    for owner, root in ((1000, own), (NOBODY, others)):
        for path in [root, *root.rglob("*")]:
            os.chown(path, owner, owner)
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    assert FileStorage(roots).read("42") == {"v": 1}
    assert FileStorage(own).read("42") == {"v": 1}
    refused(lambda: FileStorage(others).read("42"), "belongs to", str(NOBODY), "(uid 1000)")


@as_root
@pytest.mark.parametrize("closed", ["the store's own", "the folder it is in", "a shard"])
def test_a_folder_that_cannot_be_opened_is_named_with_its_mode_and_the_session_is_kept(
    tmp_path: Path, closed: str
) -> None:
    root = tmp_path / "home" / "sessions"
    storage = FileStorage(root)
    storage.write("42", {"count": 3})
    shard = storage.path("42").parent
    blamed = {"the store's own": root, "the folder it is in": root.parent, "a shard": shard}[closed]
    blamed.chmod(0)
    try:
        for command in (["show", "42"], ["rm", "42"], ["ls"], ["stats"]):
            if closed == "a shard" and command == ["ls"]:
                continue  # the listing opens the shards only to look into them: stats does
            result = without_root_powers("-m", "simplesession", *command, "--dir", str(root))
            lines = result.stderr.splitlines()
            assert result.returncode == 1, (command, result)
            assert len(lines) == 1, (command, result.stderr)
            assert f"{blamed} (mode 0000" in lines[0], (command, lines[0])
            assert f"chmod u+rwx {blamed}" in lines[0], (command, lines[0])
            for wrong in (".locks", "corrupt", "set aside", "is unusable"):
                assert wrong not in lines[0], (command, lines[0])
    finally:
        blamed.chmod(0o700)
    assert FileStorage(root).read("42") == {"count": 3}  # neither removed nor set aside
    assert not (root / "corrupt").exists()
