"""The test suite's PostgreSQL server: without PostgreSQL the PostgreSQL tests say what is missing and how to get it."""

from __future__ import annotations

import os
from pathlib import Path

import pgserver
import pytest
from pgserver import URL_VARIABLE, postgres_server


@pytest.fixture
def no_postgres(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_VARIABLE, raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no initdb on it
    monkeypatch.setattr(pgserver, "DEBIAN_BINARIES", str(tmp_path / "*" / "bin" / "initdb"))


@pytest.mark.usefixtures("no_postgres")
def test_without_postgresql_the_postgresql_tests_skip_naming_it_and_how_to_install_it() -> None:
    with pytest.raises(pytest.skip.Exception) as skipped, postgres_server():
        raise AssertionError("a server was started without PostgreSQL")
    message = str(skipped.value)
    assert "no PostgreSQL (initdb)" in message
    assert "apt-get install postgresql" in message
    assert f"${URL_VARIABLE}" in message


@pytest.mark.usefixtures("no_postgres")
def test_without_postgresql_in_ci_the_postgresql_tests_fail_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed, postgres_server():
        raise AssertionError("a server was started without PostgreSQL")
    message = str(failed.value)
    assert message.startswith("CI must run the PostgreSQL tests")
    assert "apt-get install postgresql" in message


def test_a_url_given_is_used_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(URL_VARIABLE, "postgresql://someone@127.0.0.1:1/db")
    with postgres_server() as url:
        assert url == "postgresql://someone@127.0.0.1:1/db"


def test_the_throw_away_cluster_is_private_and_unprivileged(postgres_url: str) -> None:
    import psycopg

    if os.environ.get(URL_VARIABLE):
        pytest.skip(f"the server of ${URL_VARIABLE} was not made here")
    with psycopg.connect(postgres_url) as conn:
        listen, sockets, folder = (
            conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("listen_addresses", "unix_socket_directories", "data_directory")
        )
    assert listen == "127.0.0.1"
    assert Path(sockets) == Path(folder).parent  # in its temporary folder, as all of it
    assert Path(folder).stat().st_uid != 0  # PostgreSQL refuses to run as root
    password = postgres_url.split("@")[0].rsplit(":", 1)[1]
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(postgres_url.replace(password, "wrong"))
