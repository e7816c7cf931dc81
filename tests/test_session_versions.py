"""A session's stored schema version: kept by bots without migrations, changed only by a migration."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from simplesession import Context, FileStorage, MemoryStorage, Storage, session
from simplesession.session import SessionMiddleware


def run(mw: SessionMiddleware, handler: Callable[[Context], object], chat_id: int = 42) -> Context:
    ctx = Context({"update_id": 1, "message": {"message_id": 1, "chat": {"id": chat_id}, "text": "/count"}})
    mw(ctx, lambda: handler(ctx))
    return ctx


def bump(ctx: Context) -> None:
    ctx.session["count"] += 1


@pytest.fixture(params=["file", "memory"])
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    return FileStorage(tmp_path / "sessions") if request.param == "file" else MemoryStorage()


def test_empty_migrations_are_refused_saying_what_to_give() -> None:
    with pytest.raises(ValueError, match=r"migrations=\{\} is empty") as info:
        session(migrations={}, storage=MemoryStorage())
    assert "leave migrations out" in str(info.value)


def test_a_bot_without_migrations_keeps_the_stored_version_of_a_session_it_changes(storage: Storage) -> None:
    storage.write("42", {"count": 1}, version=3)
    run(session(storage=storage, sweep_interval=None), bump)
    assert storage.read_versioned("42") == ({"count": 2}, 3)


def test_a_bot_without_migrations_writes_nothing_for_a_versioned_session_it_only_reads(
    tmp_path: Path,
) -> None:
    storage = FileStorage(tmp_path)
    storage.write("42", {"count": 1}, version=3)
    before = storage.path("42").stat()
    ctx = run(session(storage=storage, sweep_interval=None), lambda ctx: ctx.session)
    assert ctx.session == {"count": 1}
    after = storage.path("42").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_migrations_added_back_later_run_only_the_steps_a_session_has_not_had(storage: Storage) -> None:
    calls: list[int] = []

    def step(version: int) -> Callable[[Any], Any]:
        def migrate(data: Any) -> Any:
            calls.append(version)
            return {**data, f"v{version}": True}

        return migrate

    storage.write("42", {"count": 1}, version=3)
    run(session(storage=storage, sweep_interval=None), bump)  # a release without migrations
    mw = session(storage=storage, migrations={2: step(2), 3: step(3), 4: step(4)}, sweep_interval=None)
    assert run(mw, lambda ctx: ctx.session).session == {"count": 2, "v4": True}
    assert calls == [4]
    assert storage.read_versioned("42") == ({"count": 2, "v4": True}, 4)
