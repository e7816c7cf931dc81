"""The sdist is the whole project, so that its unpacked tree runs the README's test command.

The sdist is built offline (``python -m build --sdist --no-isolation``, with the build
requirements the test extra installs) from a copy of the project's files, so the checkout
is left as it was. CI also unpacks an sdist and runs the test command in it (``.ci/run``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parent.parent

# What building or running leaves in a tree, which is not the project's.
_MADE = {"__pycache__", ".pytest_cache", ".hypothesis", ".mypy_cache", ".ruff_cache", "node_modules", "build", "dist"}
_MADE |= {".git", ".venv", "venv", ".tox", ".nox", ".eggs"}
_MADE_BY_SDIST = {"PKG-INFO", "setup.cfg"}  # at the top of an unpacked sdist


def project_files() -> list[str]:
    """The project's files, relative to its root: git's list in a checkout, else (in an
    unpacked sdist) every file but what building and running made."""
    if (ROOT / ".git").exists():
        done = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, text=True, timeout=60, check=True
        )
        return sorted(name for name in done.stdout.split("\0") if name and (ROOT / name).is_file())
    found = []
    for path in ROOT.rglob("*"):
        parts = path.relative_to(ROOT).parts
        if any(part in _MADE or part.endswith(".egg-info") for part in parts) or not path.is_file():
            continue
        if len(parts) == 1 and parts[0] in _MADE_BY_SDIST:
            continue
        found.append("/".join(parts))
    return sorted(found)


def unmet_build_requirements() -> list[str]:
    pyproject = (ROOT / "pyproject.toml").read_text("utf-8")
    listed = re.search(r"^requires = \[(.*?)\]", pyproject, flags=re.M)
    assert listed, "pyproject.toml names no build requirements"
    unmet = []
    for text in [*re.findall(r'"([^"]+)"', listed.group(1)), "build"]:
        requirement = Requirement(text)
        try:
            installed = metadata.version(requirement.name)
        except metadata.PackageNotFoundError:
            unmet.append(f"{text} (not installed)")
            continue
        if not requirement.specifier.contains(installed, prereleases=True):
            unmet.append(f"{text} (installed: {installed})")
    return unmet


class Sdist:
    def __init__(self, path: Path, output: str) -> None:
        self.output = output
        with tarfile.open(path) as archive:
            names = archive.getnames()
            top = names[0].split("/")[0]
            self.members = {name.split("/", 1)[1] for name in names if "/" in name and archive.getmember(name).isfile()}
            self.pkg_info = self._text(archive, f"{top}/PKG-INFO")
            self.license = self._text(archive, f"{top}/LICENSE")

    @staticmethod
    def _text(archive: tarfile.TarFile, name: str) -> str:
        """The text of member ``name``; empty if the sdist lacks it (the tests then say what is wrong)."""
        try:
            member = archive.extractfile(name)
        except KeyError:
            return ""
        return "" if member is None else member.read().decode("utf-8")


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Sdist:
    unmet = unmet_build_requirements()
    assert not unmet, f"building needs {', '.join(unmet)}: pip install -e '.[test]' installs them"
    work = tmp_path_factory.mktemp("sdist")
    source = work / "source"
    for name in project_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / name, source / name)
    done = subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(work / "dist"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    (path,) = (work / "dist").glob("*.tar.gz")
    return Sdist(path, output)


def test_the_sdist_holds_every_file_of_the_project(sdist: Sdist) -> None:
    files = project_files()
    # What the tests import or read, whichever way the list above was made.
    needed = ["tests/conftest.py", "tests/helpers.py", "tests/fakebotapi.py", "tests/redisserver.py"]
    needed += ["tests/hookstorage.py", "examples/counter_bot.py", "bench/run.py", ".ci/run", "README.md"]
    assert set(needed) <= set(files)
    assert sorted(set(files) - sdist.members) == []


def test_the_sdist_builds_without_warnings_and_states_its_licence_and_pythons(sdist: Sdist) -> None:
    noise = [
        line
        for line in sdist.output.splitlines()
        if re.search(r"warn|deprecat|!!", line, flags=re.I) and "no previously-included files" not in line
    ]
    assert noise == []
    assert "\nLicense-Expression: MIT\n" in sdist.pkg_info
    assert "\nLicense-File: LICENSE\n" in sdist.pkg_info
    for version in ("3.10", "3.11", "3.12", "3.13"):
        assert f"\nClassifier: Programming Language :: Python :: {version}\n" in sdist.pkg_info
    assert sdist.license.startswith("MIT License\n\nCopyright (c) 2026 the simplesession authors\n")
