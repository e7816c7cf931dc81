"""The README works for a newcomer: its opening, its contents, its commands, and every
Python block on its own.

How each fenced block of README.md is checked:

- A block that is not ``python`` (shell, JSON, output) is not run. The set-up commands of
  the first ``sh`` block are compared with ``.ci/run``, and every ``pip install`` line with
  the extras ``pyproject.toml`` declares.
- Every ``python`` block runs alone, as a reader would paste it into a file and run it: as
  a script (``__name__ == "__main__"``) in a fresh interpreter, with a temporary folder of
  its own as cwd, ``HOME``, ``XDG_DATA_HOME`` and ``SIMPLESESSION_DIR``, no ``BOT_TOKEN``,
  and a deadline. A block that relies on a name from another block fails. Before the block
  runs, a ``sitecustomize`` refuses to resolve any host but loopback, so no block reaches
  the network.
- Without a token a ``Bot`` talks on the console: such a block reads the lines ``RUNS``
  gives it on stdin (none, if it is not listed) and ends at their end; what it prints must
  be what ``RUNS`` says (nothing, if it is not listed). Blocks that only build a bot, or
  only use a storage, are run the same way: their definitions and assertions execute.
- A block that imports ``telebot`` polls a fake Bot API server on loopback
  (``tests/fakebotapi.py``), named by ``BOT_TOKEN`` and ``TELEGRAM_API_URL`` as
  ``examples/telebot_counter.py`` takes it: the test sends it the messages of ``RUNS`` one
  at a time, checks each reply, then stops the process.
- A block that uses ``RedisStorage`` gets the tests' Redis server (``tests/redisserver.py``)
  as ``REDIS_URL``, as ``examples/redis_counter.py`` takes it, and the test checks what it
  stored there; without ``redis-server`` the test is skipped, saying why. A block that uses
  ``PostgresStorage`` gets the tests' PostgreSQL server (``tests/pgserver.py``) as
  ``DATABASE_URL`` in the same way, its table dropped before and after.
"""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakebotapi import FakeBotAPI
from pgserver import drop_tables

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text("utf-8")
LINES = README.splitlines()
TIMEOUT = 60.0

VENV_LINE = "python3 -m venv .venv && . .venv/bin/activate"
RUN_LINE = "pip install -e . && python examples/counter_bot.py"
OPENING_MAX_LINES = 60
OPENING_EXAMPLE_MAX_LINES = 25
REDIS_PREFIX = "mybot:"  # the README's Redis block keeps its sessions under it
POSTGRES_TABLE = "mybot_sessions"  # the README's PostgreSQL block keeps its sessions in it


@dataclass(frozen=True)
class Heading:
    level: int  # 2 for "## ", 3 for "### "
    text: str
    line: int  # index into LINES

    @property
    def anchor(self) -> str:
        return anchor(self.text)


@dataclass(frozen=True)
class Block:
    language: str
    first_line: int  # index into LINES of the block's first line of code
    source: str
    section: str  # the heading's anchor, or "opening" before the first heading
    number: int  # 1 for the first block of its language in its section, and so on

    @property
    def name(self) -> str:
        return f"{self.section}-{self.number}"

    @property
    def padded(self) -> str:
        """The source, after blank lines that make a traceback's line numbers the README's."""
        return "\n" * self.first_line + self.source


@dataclass(frozen=True)
class Run:
    """What a block is given (stdin lines; for a telebot block, messages) and what it answers."""

    given: tuple[str, ...]
    answers: tuple[str, ...]


COUNTS = Run(("/count", "/count"), ("You have sent 1 commands", "You have sent 2 commands"))
RUNS = {
    "opening-1": COUNTS,
    "basic-usage-1": COUNTS,
    "pytelegrambotapi-1": Run(
        ("/count", "/count", "/reset", "/count"),
        ("You have sent 1 commands", "You have sent 2 commands", "Forgotten", "You have sent 1 commands"),
    ),
    "pytelegrambotapi-2": COUNTS,  # AsyncTeleBot
    "pytelegrambotapi-3": Run(("/start", "Ann", "33"), ("What is your name?", "How old are you?", "Ann, 33")),
    "where-the-files-are-1": Run((), ("k~43hat~3a42.json",)),
    "session-data-is-json-data-1": Run(
        (),
        (
            "cannot store session '42': session['items'][2] is a set; sessions hold only JSON data "
            "(dict with str keys, list, str, int, float, bool, None)",
        ),
    ),
    "lazy-sessions-1": Run(("hello",), ("hello",)),
    "multi-sessions-1": Run(("/mute",), ("Muted, friend",)),
    "the-bot-runner-1": Run((), ("count=1",)),
    "cleanup-2": Run((), ("1 0 0 0 0",)),  # the sweep: one session, not idle
    "redis-from-one-machine-to-many-1": COUNTS,
    "postgresql-sessions-in-a-database-1": COUNTS,
    "command-line-1": Run((), ("{'count': 1}",)),
}

# Loaded by each block's interpreter before the block: only loopback names resolve.
NO_NETWORK = """\
import ipaddress
import socket

_getaddrinfo = socket.getaddrinfo


def _loopback_only(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else host
    if name is not None and name != "localhost":
        try:
            loopback = ipaddress.ip_address(name).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise socket.gaierror(socket.EAI_NONAME, f"README blocks run without network: {name!r}")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _loopback_only
"""


def anchor(text: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def parse() -> tuple[list[Heading], list[Block]]:
    """The headings (## and ###) and the fenced blocks of the README, code blocks skipped for headings."""
    headings: list[Heading] = []
    blocks: list[Block] = []
    fence: tuple[str, int] | None = None  # the open block's language and first line
    section = "opening"
    numbers: dict[tuple[str, str], int] = {}
    for index, line in enumerate(LINES):
        if fence is None and line.startswith("```"):
            fence = (line[3:].strip(), index + 1)
        elif fence is not None and line.startswith("```"):
            language, first = fence
            number = numbers[section, language] = numbers.get((section, language), 0) + 1
            source = "".join(f"{code}\n" for code in LINES[first:index])
            blocks.append(Block(language, first, source, section, number))
            fence = None
        elif fence is None and (match := re.match(r"(#{2,3}) (.+)$", line)):
            headings.append(Heading(len(match.group(1)), match.group(2).strip(), index))
            section = headings[-1].anchor
    assert fence is None, "a code block of the README is never closed"
    return headings, blocks


HEADINGS, BLOCKS = parse()
PYTHON_BLOCKS = [block for block in BLOCKS if block.language == "python"]


def contents_section() -> tuple[list[str], list[str], list[Heading]]:
    """(the opening's lines, the contents' lines, the headings after the contents)."""
    first = HEADINGS[0]
    assert first.level == 2
    assert first.text == "Contents", "the first section of the README is its table of contents"
    after = HEADINGS[1:]
    return LINES[: first.line], LINES[first.line + 1 : after[0].line], after


def ci_test_command() -> str:
    return [line for line in (ROOT / ".ci" / "run").read_text("utf-8").splitlines() if line.strip()][-1]


# -- the opening, the contents, the commands ----------------------------------------------


def test_ci_runs_the_readme_test_command() -> None:
    set_up = next(block for block in BLOCKS if block.language == "sh").source.splitlines()
    assert next(line for line in set_up if "pytest" in line) == ci_test_command()


def test_the_opening_is_short_and_sets_up_in_two_commands_after_a_venv_line() -> None:
    opening, _, _ = contents_section()
    assert len(opening) <= OPENING_MAX_LINES
    blocks = [block for block in BLOCKS if block.section == "opening"]
    assert [block.language for block in blocks] == ["sh", "python"]
    assert blocks[0].source.splitlines() == [VENV_LINE, RUN_LINE, ci_test_command()]
    assert len(blocks[1].source.splitlines()) <= OPENING_EXAMPLE_MAX_LINES
    assert "[pyTelegramBotAPI](#pytelegrambotapi)" in "\n".join(opening)


def test_the_opening_example_is_the_counter_bot_that_the_set_up_runs() -> None:
    example = (ROOT / "examples" / "counter_bot.py").read_text("utf-8")
    docstring_end = ast.parse(example).body[0].end_lineno
    assert docstring_end is not None
    code = "\n".join(example.splitlines()[docstring_end:]).strip()
    opening_example = next(block for block in PYTHON_BLOCKS if block.section == "opening")
    assert opening_example.source.strip() == code


def test_the_contents_list_every_heading_in_order_and_every_link_finds_its_heading() -> None:
    _, contents, headings = contents_section()
    entries = []
    for line in contents:
        if not line.strip() or line in ("The guide:", "Reference:"):
            continue
        match = re.fullmatch(r"( *)- \[(.+)\]\(#(.+)\)", line)
        assert match, f"not an entry of the contents: {line!r}"
        indent, text, target = match.groups()
        entries.append((2 + len(indent) // 2, text, target))
    assert entries == [(heading.level, heading.text, heading.anchor) for heading in headings]
    anchors = [heading.anchor for heading in HEADINGS]
    assert len(set(anchors)) == len(anchors), "two headings share an anchor"
    links = re.findall(r"\]\(#([^)]+)\)", README)
    assert set(links) <= set(anchors), f"links to no heading: {sorted(set(links) - set(anchors))}"
    reference = [heading.text for heading in headings if heading.level == 2][-3:]
    assert reference == ["Command line", "Guarantees", "Errors"], "the reference comes after the guide"


def test_every_install_line_installs_from_the_checkout() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    declared = pyproject.split("[project.optional-dependencies]", 1)[1].split("\n[", 1)[0]
    extras = set(re.findall(r"(?m)^([\w-]+) = ", declared))
    examples = {f"examples/{path.name}": path.read_text("utf-8") for path in (ROOT / "examples").glob("*.py")}
    texts = {"README.md": README, **examples}
    installs = [
        (name, editable, target)
        for name, text in texts.items()
        for editable, target in re.findall(r"pip install (-e )?('[^']*'|[^\s`)]+)", text)
    ]
    assert len(installs) >= 4
    for name, editable, target in installs:
        match = re.fullmatch(r"\.|'\.\[([\w,-]+)\]'", target)
        line = f"{name}: pip install {editable}{target}"
        assert editable, f"{line} does not install the checkout in place (-e)"
        assert match, f"{line} does not install from the checkout"
        wanted = set((match.group(1) or "").split(",")) - {""}
        assert wanted <= extras, f"{line} names an extra that pyproject.toml does not declare"
    assert "simplesession[" not in README, "the package is not on any index: install it from the checkout"


def test_every_test_the_readme_cites_exists() -> None:
    cited = re.findall(r"`(test_\w+\.py)::(test_\w+)`", README)
    assert len(cited) >= 20
    for filename, name in cited:
        source = (ROOT / "tests" / filename).read_text("utf-8")
        assert re.search(rf"^def {name}\(", source, flags=re.M), f"README cites {filename}::{name}, which is not there"


# -- every Python block, alone ------------------------------------------------------------


def environment(home: Path, **extra: str) -> dict[str, str]:
    """An environment of the block's own: its home, no token, no network beyond loopback."""
    guard = home / "no-network"
    guard.mkdir(exist_ok=True)
    (guard / "sitecustomize.py").write_text(NO_NETWORK, "utf-8")
    # No proxy either: every server a block may reach is on loopback.
    dropped = {"BOT_TOKEN", "TELEGRAM_API_URL", "REDIS_URL", "DATABASE_URL"}
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.lower().endswith("_proxy")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(guard), os.environ.get("PYTHONPATH")]))
    env.update(HOME=str(home), XDG_DATA_HOME=str(home / "data"), SIMPLESESSION_DIR=str(home / "sessions"))
    env.update(extra)
    return env


def write(block: Block, home: Path) -> Path:
    script = home / "snippet.py"
    script.write_text(block.padded, "utf-8")
    return script


def run_alone(block: Block, home: Path, lines: tuple[str, ...] = (), **extra: str) -> subprocess.CompletedProcess[str]:
    """Run ``block`` by itself, as a script, with ``lines`` on stdin."""
    return subprocess.run(
        [sys.executable, str(write(block, home))],
        input="".join(f"{line}\n" for line in lines),
        capture_output=True,
        text=True,
        cwd=home,
        env=environment(home, **extra),
        timeout=TIMEOUT,
        check=False,
    )


def where(block: Block) -> str:
    last = block.first_line + block.source.count("\n")
    return f"README.md lines {block.first_line + 1}-{last} ({block.name})"


def test_the_readme_has_python_blocks_and_each_one_run_is_for_a_block() -> None:
    names = [block.name for block in PYTHON_BLOCKS]
    assert len(names) >= 15
    assert set(RUNS) <= set(names), f"RUNS names no block: {sorted(set(RUNS) - set(names))}"


def test_a_block_is_run_alone_without_the_network(tmp_path: Path) -> None:
    # The runner itself: a name from another block is not there, nor is the network.
    first, second, third = (tmp_path / name for name in ("first", "second", "third"))
    for home in (first, second, third):
        home.mkdir()
    assert run_alone(Block("python", 0, "storage = 1\n", "test", 1), first).returncode == 0
    done = run_alone(Block("python", 0, "print(storage)\n", "test", 2), second)
    assert done.returncode != 0
    assert "NameError: name 'storage' is not defined" in done.stderr
    reach_out = 'import urllib.request\nurllib.request.urlopen("https://api.telegram.org", timeout=5)\n'
    done = run_alone(Block("python", 0, reach_out, "test", 3), third)
    assert done.returncode != 0
    assert "README blocks run without network: 'api.telegram.org'" in done.stderr


@pytest.mark.parametrize("block", PYTHON_BLOCKS, ids=lambda block: block.name)
def test_readme_python_block_runs_alone(block: Block, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    expected = RUNS.get(block.name, Run((), ()))
    if re.search(r"^(from|import) telebot\b", block.source, flags=re.M):
        pytest.importorskip("telebot")
        run_telebot_block(block, tmp_path, expected)
        return
    extra = {}
    redis_url = None
    if "RedisStorage(" in block.source:
        pytest.importorskip("redis")
        redis_url = request.getfixturevalue("redis_url")
        forget_redis_keys(redis_url, REDIS_PREFIX)
        extra["REDIS_URL"] = redis_url
    postgres_url = None
    if "PostgresStorage(" in block.source:
        pytest.importorskip("psycopg")
        postgres_url = request.getfixturevalue("postgres_url")
        drop_tables(postgres_url, POSTGRES_TABLE)
        extra["DATABASE_URL"] = postgres_url
    try:
        done = run_alone(block, tmp_path, expected.given, **extra)
        assert done.returncode == 0, f"{where(block)} failed alone:\n{done.stderr}"
        assert tuple(done.stdout.splitlines()) == expected.answers, where(block)
        if redis_url is not None:
            from simplesession import RedisStorage

            # The console is chat 1, and it sent /count twice.
            assert RedisStorage(redis_url, prefix=REDIS_PREFIX).read("1") == {"count": 2}
        if postgres_url is not None and expected.given:
            from simplesession import PostgresStorage

            with PostgresStorage(postgres_url, table=POSTGRES_TABLE) as storage:
                assert storage.read("1") == {"count": 2}
    finally:
        if redis_url is not None:
            forget_redis_keys(redis_url, REDIS_PREFIX)
        if postgres_url is not None:
            drop_tables(postgres_url, POSTGRES_TABLE)


def forget_redis_keys(url: str, prefix: str) -> None:
    import redis

    with redis.Redis.from_url(url) as client:
        for name in list(client.scan_iter(match=prefix + "*", count=1000)):
            client.delete(name)


def run_telebot_block(block: Block, home: Path, expected: Run) -> None:
    """Run the block against a fake Bot API server: one message, then its reply, in turn."""
    with FakeBotAPI() as api, (home / "out.txt").open("w") as out, (home / "err.txt").open("w") as err:
        env = environment(home, BOT_TOKEN=api.token, TELEGRAM_API_URL=api.url)
        bot = subprocess.Popen(
            [sys.executable, str(write(block, home))],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
            cwd=home,
            env=env,
        )
        try:
            for sent, text in enumerate(expected.given, start=1):
                api.push(text)
                deadline = time.monotonic() + TIMEOUT
                while len(api.sent) < sent and bot.poll() is None and time.monotonic() < deadline:
                    time.sleep(0.02)
                assert len(api.sent) >= sent, f"{where(block)}: no reply to {text!r}:\n{(home / 'err.txt').read_text()}"
        finally:
            bot.terminate()
            bot.wait(TIMEOUT)
    assert tuple(message["text"] for message in api.sent) == expected.answers, where(block)
