"""The test suite's Redis server: without redis-server the Redis tests say what is missing and how to get it."""

from __future__ import annotations

from pathlib import Path

import pytest
from redisserver import URL_VARIABLE, redis_server


@pytest.fixture
def no_redis_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(URL_VARIABLE, raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))  # an empty folder: no redis-server on it


@pytest.mark.usefixtures("no_redis_server")
def test_without_redis_server_the_redis_tests_skip_naming_it_and_how_to_install_it() -> None:
    with pytest.raises(pytest.skip.Exception) as skipped, redis_server():
        raise AssertionError("a server was started without redis-server")
    message = str(skipped.value)
    assert "no redis-server on PATH" in message
    assert "apt-get install redis-server" in message
    assert f"${URL_VARIABLE}" in message


@pytest.mark.usefixtures("no_redis_server")
def test_without_redis_server_in_ci_the_redis_tests_fail_naming_it_and_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception) as failed, redis_server():
        raise AssertionError("a server was started without redis-server")
    message = str(failed.value)
    assert message.startswith("CI must run the Redis tests")
    assert "apt-get install redis-server" in message
