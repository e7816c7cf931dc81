"""``open_storage(url)``: one name for any store, as the command line's ``--store`` takes it."""

from __future__ import annotations

import re
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
from pgserver import drop_tables

from simplesession import FileStorage, PostgresStorage, RedisStorage, SQLiteStorage, open_storage


def test_a_relative_file_url_is_a_folder_under_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("file:bot/sessions", ttl=60)
    assert isinstance(storage, FileStorage)
    assert storage.ttl == 60  # options reach the constructor
    storage.write("42", {"count": 1})
    assert FileStorage(tmp_path / "bot" / "sessions").read("42") == {"count": 1}


def test_an_absolute_file_url_is_decoded_and_a_tilde_is_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "with space"
    storage = open_storage(f"file://{tmp_path}/with%20space")
    assert isinstance(storage, FileStorage)
    assert storage.directory == folder
    assert open_storage(f"file://localhost{folder}").directory == folder  # type: ignore[attr-defined]
    monkeypatch.setenv("HOME", str(tmp_path))
    assert open_storage("file:~/sessions").directory == tmp_path / "sessions"  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("url", "words"),
    [
        ("file://elsewhere/srv/sessions", ["host 'elsewhere'", "only local folders"]),
        ("file:", ["names no place"]),
        ("sqlite:", ["names no place", "sqlite:PATH"]),
        ("file:///srv/x?mode=ro", ["no ?query"]),
        ("/srv/sessions", ["file:/srv/sessions", "redis://"]),
        ("sessions", ["file:sessions"]),
        ("mongodb://u:secret@db/sessions", ["mongodb", "file:DIR", "redis://"]),
    ],
)
def test_a_url_that_names_no_store_is_refused_saying_which_forms_work(url: str, words: list[str]) -> None:
    with pytest.raises(ValueError, match=re.escape(words[0])) as info:
        open_storage(url)
    for word in words:
        assert word in str(info.value), info.value
    assert "secret" not in str(info.value)  # a password is never echoed


def test_something_else_than_a_string_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="URL string"):
        open_storage(Path("/srv/sessions"))  # type: ignore[arg-type]


def test_a_redis_url_is_a_redis_storage_with_its_options(redis_url: str, redis_prefix: str) -> None:
    storage = open_storage(redis_url, prefix=redis_prefix)
    assert isinstance(storage, RedisStorage)
    storage.write("42", {"count": 2})
    assert RedisStorage(redis_url, prefix=redis_prefix).read("42") == {"count": 2}


def test_a_sqlite_url_is_a_sqlite_storage_in_that_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    storage = open_storage("sqlite:bot/sessions.db", ttl=60)
    assert isinstance(storage, SQLiteStorage)
    assert storage.ttl == 60
    storage.write("42", {"count": 3})
    assert SQLiteStorage(tmp_path / "bot" / "sessions.db").read("42") == {"count": 3}
    assert open_storage(f"sqlite://{tmp_path}/bot/sessions.db").read("42") == {"count": 3}


def test_a_postgresql_url_is_a_postgres_storage_with_its_options(postgres_url: str) -> None:
    table = f"test_{uuid.uuid4().hex}"
    storage = open_storage(postgres_url, table=table)
    try:
        assert isinstance(storage, PostgresStorage)
        storage.write("42", {"count": 4})
        assert storage.read("42") == {"count": 4}
    finally:
        storage.close()
        drop_tables(postgres_url, table)


def _with_query(url: str, query: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{query}"


def test_a_redis_url_may_name_its_prefix_and_keeps_the_clients_options(redis_url: str, redis_prefix: str) -> None:
    url = _with_query(redis_url, f"socket_timeout=5&prefix={quote(redis_prefix)}")
    storage = open_storage(url)
    assert storage.prefix == redis_prefix  # type: ignore[attr-defined]
    storage.write("42", {"count": 5})
    assert RedisStorage(redis_url, prefix=redis_prefix).read("42") == {"count": 5}
    assert open_storage(url, prefix=redis_prefix).read("42") == {"count": 5}  # the same twice is fine
    with pytest.raises(ValueError, match="prefix is given more than once, differently"):
        open_storage(url, prefix="other:")


def test_a_postgresql_url_may_name_its_table(postgres_url: str) -> None:
    table = f"test_{uuid.uuid4().hex}"
    url = _with_query(postgres_url, f"connect_timeout=5&table={table}")
    storage = open_storage(url)
    try:
        assert isinstance(storage, PostgresStorage)
        assert storage.table == table
        storage.write("42", {"count": 6})
        with PostgresStorage(postgres_url, table=table) as same:
            assert same.read("42") == {"count": 6}
            same.close()
        with pytest.raises(ValueError, match="table is given more than once"):
            open_storage(_with_query(url, "table=other"))
    finally:
        storage.close()
        drop_tables(postgres_url, table)
