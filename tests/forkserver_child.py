"""The fork server itself (see forkserver.py), run as ``python -c <this file's text> FD MODULE...``.

It imports the modules, then forks a process per request that arrives on the socket FD:
one byte with four file descriptors (the new process's stdin, stdout and stderr, and a
socket for the reply), then the request as JSON on that socket. The reply is the new
process's pid, then its wait status when it ends, each on a line of its own.
"""

from __future__ import annotations

import atexit
import builtins
import contextlib
import importlib.machinery
import io
import json
import os
import runpy
import select
import signal
import socket
import sys
import threading
import traceback
import types
from typing import Any, TextIO


def stream(fd: int, template: TextIO) -> io.TextIOWrapper:
    """A standard stream on ``fd``, made as the interpreter makes them (Python/pylifecycle.c)."""
    reading = fd == 0
    buffered = not template.write_through  # type: ignore[attr-defined]
    # Not closed here: the stream lives as long as the process (closefd=False, as the interpreter's).
    binary: Any = open(fd, "rb" if reading else "wb", -1 if buffered or reading else 0, closefd=False)  # noqa: SIM115
    raw = binary.raw if hasattr(binary, "raw") else binary
    text = io.TextIOWrapper(
        binary,
        encoding=template.encoding,
        errors=template.errors,
        newline="\n",
        line_buffering=buffered and (raw.isatty() or fd == 2),
        write_through=not buffered,
    )
    text.mode = "r" if reading else "w"  # type: ignore[misc]
    return text


def run(request: dict[str, Any], templates: tuple[TextIO, TextIO, TextIO]) -> None:
    """In the forked process: become what ``python *argv`` would be, run, and end as it would."""
    os.umask(request["umask"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.stdin, sys.stdout, sys.stderr = (stream(fd, template) for fd, template in enumerate(templates))
    sys.__stdin__, sys.__stdout__, sys.__stderr__ = sys.stdin, sys.stdout, sys.stderr  # type: ignore[misc]
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __loader__=importlib.machinery.BuiltinImporter)
    sys.modules["__main__"] = main
    status, interrupted = 0, False
    try:
        option, *args = request["argv"]
        if option == "-c":  # sys.path[0] as the interpreter sets it for each way of starting
            sys.argv = ["-c", *args[1:]]
            sys.path[0] = ""
            exec(compile(args[0], "<string>", "exec"), main.__dict__)
        elif option == "-m":
            sys.argv = ["-m", *args[1:]]
            sys.path[0] = os.getcwd()
            runpy._run_module_as_main(args[0], alter_argv=True)  # type: ignore[attr-defined]
        else:
            sys.argv = [option, *args]
            sys.path[0] = os.path.dirname(os.path.realpath(option))
            loader = importlib.machinery.SourceFileLoader("__main__", option)
            main.__dict__.update(__file__=option, __cached__=None, __loader__=loader)
            with open(option, "rb") as script:
                source = script.read()
            exec(compile(source, option, "exec"), main.__dict__)
    except SystemExit as stop:
        if stop.code is None:
            status = 0
        elif isinstance(stop.code, int):
            status = stop.code
        else:
            print(stop.code, file=sys.stderr)
            status = 1
    except BaseException as error:
        sys.excepthook(type(error), error, error.__traceback__)
        interrupted, status = isinstance(error, KeyboardInterrupt), 1
    # The interpreter's ending: threads joined, atexit, streams flushed (status 120 if that fails).
    threading._shutdown()  # type: ignore[attr-defined]
    atexit._run_exitfuncs()
    for name in ("stdout", "stderr"):
        try:
            getattr(sys, name).flush()
        except Exception as error:
            print(f"Exception ignored on flushing sys.{name}: {error!r}", file=sys.__stderr__)
            status = 120
    if interrupted:  # an unhandled KeyboardInterrupt ends the process by SIGINT
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    os._exit(status & 0xFF)


def serve(control: socket.socket) -> None:
    templates = (sys.__stdin__, sys.__stdout__, sys.__stderr__)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so that SIGCHLD wakes the loop
    replies: dict[int, socket.socket] = {}
    while True:
        try:
            ready = select.select([control.fileno(), wake_r], [], [])[0]
        except InterruptedError:
            continue
        if wake_r in ready:
            try:
                while os.read(wake_r, 4096):
                    pass
            except BlockingIOError:
                pass
            reap(replies)
        if control.fileno() not in ready:
            continue
        message, fds, _, _ = socket.recv_fds(control, 1, 4)
        if not message:
            return  # the tests are over
        reply = socket.socket(fileno=fds[3])
        chunks = []
        while chunk := reply.recv(1 << 16):
            chunks.append(chunk)
        request = json.loads(b"".join(chunks))
        pid = os.fork()
        if pid == 0:
            try:
                signal.set_wakeup_fd(-1)
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                for target, fd in enumerate(fds[:3]):
                    os.dup2(fd, target)
                os.closerange(3, os.sysconf("SC_OPEN_MAX"))  # as Popen's close_fds
                run(request, templates)  # type: ignore[arg-type]
            except BaseException:
                traceback.print_exc()
            finally:
                os._exit(70)
        for fd in fds[:3]:
            os.close(fd)
        reply.sendall(b"%d\n" % pid)
        replies[pid] = reply
        reap(replies)


def reap(replies: dict[int, socket.socket]) -> None:
    """Report the wait status of each process that has ended."""
    while replies:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        reply = replies.pop(pid, None)
        if reply is not None:
            with contextlib.suppress(OSError):  # the test may have stopped waiting
                reply.sendall(b"%d\n" % status)
            reply.close()


if __name__ == "__main__":
    for name in sys.argv[2:]:  # "?": only if installed
        try:
            __import__(name.rstrip("?"))
        except ImportError:
            if not name.endswith("?"):
                raise
    serve(socket.socket(fileno=int(sys.argv[1])))
