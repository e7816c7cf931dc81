from __future__ import annotations

from pathlib import Path

import pytest

from simplesession import FileStorage, MemoryStorage, Storage


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # No test may touch the user's real data folder: point both the override and the
    # platform's own data folder into a temporary directory.
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("SIMPLESESSION_DIR", str(home / "default-sessions"))
    monkeypatch.setenv("XDG_DATA_HOME", str(home / "xdg-data"))
    monkeypatch.setenv("HOME", str(home))


STORAGES = ["memory", "file", "file-nocache"]


def make_storage(kind: str, directory: Path) -> Storage:
    if kind == "memory":
        return MemoryStorage()
    if kind == "file":
        return FileStorage(directory)
    if kind == "file-nocache":
        return FileStorage(directory, cache_size=0)
    raise ValueError(kind)


@pytest.fixture(params=STORAGES)
def storage(request: pytest.FixtureRequest, tmp_path: Path) -> Storage:
    """Every storage adapter, each on its own empty place."""
    return make_storage(request.param, tmp_path / "sessions")
