"""What `pip install` puts in site-packages: one top-level package, with the linked folders inside it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """aesq built as a wheel and installed, without dependencies, into an empty folder."""
    wheels, target = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", wheels, ROOT], check=True)
    (wheel,) = wheels.glob("aesq-*.whl")
    subprocess.run([*pip, "install", "--no-deps", "--target", target, wheel], check=True)
    return target


def test_installs_exactly_one_top_level_package(site: Path) -> None:
    # bin/ holds the `aesq` console script, not a package.
    installed = sorted(
        path.name for path in site.iterdir() if path.name != "bin" and not path.name.endswith(".dist-info")
    )
    assert installed == ["aesq"], f"pip install added {installed}"


def test_the_linked_folders_are_real_subpackages_with_their_data(site: Path) -> None:
    package = site / "aesq"
    for sub in ("flows", "tasks", "models", "migrations"):
        assert (package / sub / "__init__.py").is_file() and not (package / sub).is_symlink(), sub
    assert (package / "migrations" / "script.py.mako").is_file()
    shipped = sorted(path.name for path in (package / "migrations" / "versions").glob("0*.py"))
    assert shipped == sorted(path.name for path in (ROOT / "migrations" / "versions").glob("0*.py"))
    assert {path.name for path in (package / "web" / "templates").iterdir()} >= {"base.html", "asset.html"}
    assert (package / "web" / "static" / "aesq.css").is_file()


def test_the_installed_package_imports_without_the_checkout(site: Path) -> None:
    """From another folder, with only the installed copy on the path, the flows load from site-packages."""
    script = "import aesq.flows.spine, aesq.migrations; print(aesq.flows.spine.__file__)"
    result = subprocess.run(
        [sys.executable, "-I", "-c", f"import sys; sys.path.insert(0, {str(site)!r}); {script}"],
        cwd=site,
        capture_output=True,
        text=True,
        check=True,
    )
    assert result.stdout.strip() == str(site / "aesq" / "flows" / "spine.py")
