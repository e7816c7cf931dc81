"""The fork server (forkserver.py) gives what a fresh interpreter gives, as far as the tests look.

Each case runs the same code twice, in a fresh ``python`` and in a process forked from the
server, and the two must agree: exit status, output, and the state a program can see.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import forkserver
import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="the fork server needs os.fork")

PROBE = """
    import json, os, sys
    import simplesession

    def stream(s):
        return [s.encoding, s.errors, s.line_buffering, s.write_through, s.isatty(), s.fileno()]

    mask = os.umask(0o22)
    main = sys.modules["__main__"]
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd")) if os.path.isdir("/proc/self/fd") else []
    print(json.dumps({
        "name": __name__,
        "main": [getattr(main, "__file__", None), main.__spec__ is None, main.__dict__ is globals()],
        "argv": sys.argv,
        "path0": sys.path[0],
        "cwd": os.getcwd(),
        "umask": mask,
        "env": os.environ.get("FORKSERVER_PROBE"),
        "streams": [stream(sys.stdin), stream(sys.stdout), stream(sys.stderr)],
        "std": [sys.stdin is sys.__stdin__, sys.stdout is sys.__stdout__, sys.stderr is sys.__stderr__],
        "fds": fds,  # 0, 1, 2, and the one that listdir used: nothing of the server's
        "package": simplesession.__file__,  # the same copy of it
    }))
"""


def fresh(*argv: str, stdin: str | None = None, cwd: str | None = None) -> tuple[int, str, str]:
    done = subprocess.run(
        [sys.executable, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=60,
        cwd=cwd,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def forked(*argv: str, stdin: str | None = None, cwd: str | None = None) -> tuple[int, str, str]:
    assert forkserver.server(os.environ, cwd) is not None, "the server does not suit this environment"
    done = forkserver.run(argv, input=stdin, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(autouse=True)
def _absolute_pythonpath(monkeypatch: pytest.MonkeyPatch) -> None:
    # A relative $PYTHONPATH names other folders from a probe's own working folder; made
    # absolute, it names the folders the tests (and the server) import from, wherever a probe runs.
    given = os.environ.get("PYTHONPATH")
    if given is not None:
        entries = (os.path.normpath(os.path.join(forkserver.LAUNCH_DIR, entry)) for entry in given.split(os.pathsep))
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(entries))


def test_a_forked_program_sees_what_a_fresh_one_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORKSERVER_PROBE", "Zoë")
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o027)
    try:
        seen = [run("-c", textwrap.dedent(PROBE), "a", "b c", stdin="") for run in (fresh, forked)]
    finally:
        os.umask(old)
    assert seen[0][0] == seen[1][0] == 0, seen
    assert json.loads(seen[1][1]) == json.loads(seen[0][1])
    assert json.loads(seen[1][1])["umask"] == 0o027  # the caller's, not the server's


def test_a_forked_module_sees_what_a_fresh_one_sees(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "probe.py").write_text(textwrap.dedent(PROBE), "utf-8")
    monkeypatch.chdir(tmp_path)
    fresh_seen, forked_seen = (run("-m", "probe", "x", stdin="") for run in (fresh, forked))
    assert fresh_seen[0] == forked_seen[0] == 0, (fresh_seen, forked_seen)
    assert json.loads(forked_seen[1]) == json.loads(fresh_seen[1])
    assert json.loads(forked_seen[1])["argv"] == [str(tmp_path / "probe.py"), "x"]


def test_a_forked_script_sees_what_a_fresh_one_sees(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "probe.py").write_text(textwrap.dedent(PROBE), "utf-8")
    script = str(tmp_path / "bin" / "probe.py")
    fresh_seen, forked_seen = (run(script, "x", stdin="") for run in (fresh, forked))
    assert fresh_seen[0] == forked_seen[0] == 0, (fresh_seen, forked_seen)
    assert json.loads(forked_seen[1]) == json.loads(fresh_seen[1])
    assert json.loads(forked_seen[1])["path0"] == str(tmp_path / "bin")


@pytest.mark.parametrize(
    "code",
    [
        "pass",
        "raise SystemExit(3)",
        "raise SystemExit(300)",
        "raise SystemExit('bye')",
        "raise SystemExit",
        "raise ValueError('no')",
        "import sys; sys.stdout.write('unended'); sys.stderr.write('also')",
        "import atexit; atexit.register(print, 'at exit')",
        "import threading, time; threading.Thread(target=lambda: (time.sleep(0.05), print('joined'))).start()",
        "import sys; print(sys.stdin.read().upper())",
        "import os, sys; sys.stdout.write('x'); os.close(1)",
        "import os, signal; os.kill(os.getpid(), signal.SIGTERM)",
    ],
)
def test_a_forked_program_ends_as_a_fresh_one_does(code: str) -> None:
    fresh_end, forked_end = (run("-c", code, stdin="in\n") for run in (fresh, forked))
    assert forked_end[:2] == fresh_end[:2]
    assert forked_end[2].splitlines()[-1:] == fresh_end[2].splitlines()[-1:]


def test_an_unhandled_keyboard_interrupt_ends_the_process_by_sigint() -> None:
    code = "raise KeyboardInterrupt"
    fresh_end, forked_end = (run("-c", code) for run in (fresh, forked))
    assert forked_end[0] == fresh_end[0] == -signal.SIGINT
    assert forked_end[2].splitlines()[-1] == fresh_end[2].splitlines()[-1] == "KeyboardInterrupt"


def test_a_forked_process_is_a_process_of_its_own_that_a_signal_ends() -> None:
    code = "import os, sys, time; print(os.getpid(), flush=True); sys.stdin.readline(); time.sleep(60)"
    process = forkserver.popen(
        ["-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert isinstance(process, forkserver.Forked)
    assert process.stdout is not None
    assert process.stdin is not None
    assert int(process.stdout.readline()) == process.pid != os.getpid()
    assert process.poll() is None
    with pytest.raises(subprocess.TimeoutExpired):
        process.wait(0.01)
    process.stdin.write("go\n")
    process.stdin.flush()
    process.kill()
    assert process.wait(30) == -signal.SIGKILL
    assert process.communicate(timeout=30) == ("", None)


def test_a_relative_pythonpath_seen_from_another_folder_gets_a_fresh_interpreter(tmp_path: Path) -> None:
    assert forkserver.server({**os.environ, "PYTHONPATH": "."}, str(tmp_path)) is None


def test_an_environment_the_server_was_not_started_with_gets_a_fresh_interpreter() -> None:
    env = {**os.environ, "PYTHONIOENCODING": "latin-1"}
    assert forkserver.server(env) is None
    done = forkserver.run(["-c", "import sys; print(sys.stdout.encoding)"], env=env)
    assert (done.returncode, done.stdout) == (0, "iso8859-1\n")
