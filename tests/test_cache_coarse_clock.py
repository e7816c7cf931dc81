"""A cached session is never stale where file times are coarse: git's rule for "racily clean"
entries, on a real loop-mounted ext4 of 1-second times and with simulated coarse stamps."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import simplesession.storage.document as document_module
from simplesession import FileStorage
from simplesession.storage._folders import Folder
from simplesession.storage._fs import Stamp, settled

SECOND = 1_000_000_000


# -- the rule -----------------------------------------------------------------------------------


NOW = 1_700_000_000 * SECOND


@pytest.mark.parametrize(
    ("mtime", "since", "expected"),
    [
        (NOW + 123_456_789, NOW + 123_456_789, True),  # nanosecond times: no later file can share one
        (NOW + 123_456_789, NOW, True),  # even one seen before its time (a clock set back)
        (NOW + 123_456_780, NOW + 123_456_781, False),  # 10 ns coarse, as far as it shows
        (NOW + 123_456_780, NOW + 123_456_790, True),
        (NOW + 120_000_000, NOW + 125_000_000, False),  # 10 ms (exFAT)
        (NOW + 120_000_000, NOW + 130_000_000, True),
        (NOW, NOW + SECOND, False),  # whole seconds: as coarse as FAT's 2 s
        (NOW, NOW + 2 * SECOND - 1, False),
        (NOW, NOW + 2 * SECOND, True),
        (NOW - 3600 * SECOND, NOW, True),  # written long ago
    ],
)
def test_a_stamp_is_trusted_only_once_no_later_file_can_have_its_time(mtime: int, since: int, expected: bool) -> None:
    assert settled(mtime, since) is expected


# -- simulated coarse times ----------------------------------------------------------------------


@pytest.fixture
def coarse(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stamps as a file system of whole-second times that always reuses the freed inode gives them."""

    def coarse_stamp(stamp: Stamp) -> Stamp:
        return 1, stamp[1] - stamp[1] % SECOND, stamp[2]

    real_read, real_stamp, real_replace = Folder.read, Folder.stamp, Folder.replace

    def read(self: Folder, name: str, limit: int | None = None) -> tuple[Stamp, bytes]:
        stamp, raw = real_read(self, name, limit)
        return coarse_stamp(stamp), raw

    monkeypatch.setattr(Folder, "read", read)
    monkeypatch.setattr(Folder, "stamp", lambda self, name: coarse_stamp(real_stamp(self, name)))
    monkeypatch.setattr(Folder, "replace", lambda self, *args: coarse_stamp(real_replace(self, *args)))


@pytest.mark.usefixtures("coarse")
def test_a_warm_cache_never_serves_a_value_replaced_within_the_same_second(tmp_path: Path) -> None:
    cached, other = FileStorage(tmp_path), FileStorage(tmp_path, cache_size=0)
    for n in range(100, 110):  # each write takes the same size, stamp time and inode
        cached.write("k", {"n": n})
        assert cached.read("k") == {"n": n}
        other.write("k", {"n": n + 100})
        assert cached.read("k") == {"n": n + 100}


class Spy:
    """Counts the reads and stats of session files, and the documents decoded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.reads = self.stats = self.decodes = 0
        read, stamp, decode = Folder.read, Folder.stamp, document_module.decode_document

        def counting_read(folder: Folder, name: str, limit: int | None = None) -> tuple[Stamp, bytes]:
            self.reads += 1
            return read(folder, name, limit)

        def counting_stamp(folder: Folder, name: str) -> Stamp:
            self.stats += 1
            return stamp(folder, name)

        def counting_decode(*args: Any) -> Any:
            self.decodes += 1
            return decode(*args)

        monkeypatch.setattr(Folder, "read", counting_read)
        monkeypatch.setattr(Folder, "stamp", counting_stamp)
        monkeypatch.setattr(document_module, "decode_document", counting_decode)

    def counts(self) -> tuple[int, int, int]:
        counts = self.stats, self.reads, self.decodes
        self.reads = self.stats = self.decodes = 0
        return counts


@pytest.mark.usefixtures("coarse")
def test_on_coarse_times_a_fresh_file_is_compared_not_decoded_and_an_old_one_costs_one_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path)
    storage.write("k", {"n": 1})
    spy = Spy(monkeypatch)  # over the coarse stamps
    assert storage.read("k") == {"n": 1}
    assert spy.counts() == (1, 1, 0)  # its time may be another file's: read again, and the bytes compared
    long_ago = (os.stat(storage.path("k")).st_mtime_ns // SECOND - 3600) * SECOND
    os.utime(storage.path("k"), ns=(long_ago, long_ago))
    assert storage.read("k") == {"n": 1}
    assert spy.counts() == (1, 1, 0)  # a new time: read, the same bytes, now beyond doubt
    for _ in range(3):
        assert storage.read("k") == {"n": 1}
    assert spy.counts() == (3, 0, 0)  # the hot path: one stat each, no read


def test_on_nanosecond_times_a_hit_right_after_a_write_costs_one_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path)
    spy = Spy(monkeypatch)
    for n in range(50):  # its time is odd: the file system kept every digit, so no later file can share it
        storage.write("k", {"n": n})
        assert storage.read("k") == {"n": n}
        assert spy.counts() == (1, 0, 0)


def test_on_nanosecond_times_a_hit_on_an_old_file_costs_one_stat(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    storage = FileStorage(tmp_path)
    storage.write("k", {"n": 1})
    long_ago = os.stat(storage.path("k")).st_mtime_ns - 3600 * SECOND + 1
    os.utime(storage.path("k"), ns=(long_ago, long_ago))
    assert storage.read("k") == {"n": 1}
    spy = Spy(monkeypatch)
    for _ in range(3):
        assert storage.read("k") == {"n": 1}
    assert spy.counts() == (3, 0, 0)


# -- a real file system of 1-second times --------------------------------------------------------


def _run(*command: str) -> None:
    subprocess.run(command, check=True, capture_output=True, timeout=60)


@pytest.fixture
def coarse_ext4() -> Iterator[Path]:
    """A fresh ext4 with 128-byte inodes (so 1-second file times), loop-mounted in a temporary folder."""
    if os.geteuid() != 0:
        pytest.skip("mounting a file system image needs root")
    if shutil.which("mkfs.ext4") is None or shutil.which("mount") is None:
        pytest.skip("needs mkfs.ext4 and mount (e2fsprogs, util-linux)")
    with tempfile.TemporaryDirectory() as temp:
        image, mountpoint = Path(temp) / "ext4.img", Path(temp) / "mnt"
        mountpoint.mkdir()
        with open(image, "wb") as out:
            out.truncate(16 << 20)
        _run("mkfs.ext4", "-q", "-F", "-I", "128", str(image))
        try:
            _run("mount", "-o", "loop", str(image), str(mountpoint))
        except subprocess.CalledProcessError as error:
            pytest.skip(f"cannot loop-mount a file system image here: {error.stderr.decode().strip()}")
        try:
            yield mountpoint
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                _run("umount", str(mountpoint))


WRITER = """
import sys
from simplesession import FileStorage

storage = FileStorage(sys.argv[1], cache_size=0)
for line in sys.stdin:  # each line: two writes of the same size, then an answer
    n = int(line)
    storage.write("k", {"n": n})
    storage.write("k", {"n": n + 100})
    print("done", flush=True)
"""


def test_a_warm_cache_never_serves_a_stale_value_on_ext4_of_one_second_times(coarse_ext4: Path) -> None:
    folder = coarse_ext4 / "sessions"
    cached = FileStorage(folder)
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(WRITER), str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    assert writer.stdin is not None
    assert writer.stdout is not None
    ambiguous = 0
    try:
        for n in range(100, 108):
            cached.write("k", {"n": n})
            assert cached.read("k") == {"n": n}  # warm
            seen = os.stat(cached.path("k"))
            writer.stdin.write(f"{n + 100}\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "done\n"
            now = os.stat(cached.path("k"))
            # The file system really gave the latest file the stamp of the one cached.
            ambiguous += (now.st_ino, now.st_mtime_ns, now.st_size) == (seen.st_ino, seen.st_mtime_ns, seen.st_size)
            assert cached.read("k") == {"n": n + 200}
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    assert ambiguous > 0
