"""Shared fixtures: capsules built from their committed sources, copies with custom manifests."""

from __future__ import annotations

import importlib.util
import shutil
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from tests.harness import Runtime

REPO = Path(__file__).resolve().parent.parent
CAPSULE_ROOTS = (REPO / "tests" / "capsules", REPO / "capsules" / "examples")


def _load_build_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capsule_build", REPO / "capsules" / "build.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def capsules() -> dict[str, Path]:
    """Every test and example capsule, built from source (incrementally), by package name."""
    build = _load_build_tool()
    found: dict[str, Path] = {}
    for root in CAPSULE_ROOTS:
        for directory in build.capsule_dirs(root):
            build.build_capsule(directory)
            name = tomllib.loads((directory / "Capsule.toml").read_text())["package"]["name"]
            found[name] = directory
    return found


def copy_capsule(
    source: Path, destination_root: Path, name: str | None = None, extra_toml: str = ""
) -> Path:
    """Copy a built capsule, optionally renaming its package and appending manifest tables."""
    manifest = (source / "Capsule.toml").read_text()
    original = tomllib.loads(manifest)["package"]["name"]
    name = name or original
    target = destination_root / name
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("*.c", "*.wat"))
    if name != original:
        manifest = manifest.replace(f'name = "{original}"', f'name = "{name}"', 1)
    (target / "Capsule.toml").write_text(manifest + "\n" + extra_toml)
    return target


@pytest.fixture
def runtime(tmp_path: Path) -> Iterator[Runtime]:
    """A real broker in a fresh ASTRID_HOME (no workers yet)."""
    home, workspace = tmp_path / "home", tmp_path / "ws"
    home.mkdir()
    workspace.mkdir()
    rt = Runtime(home, workspace, f"ipc://{tmp_path}/broker.ipc")
    rt.start_broker()
    yield rt
    rt.stop()
