"""Architecture checks: package identity, dependency direction, sans-I/O, clean imports."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ["sensing_node", "sip", "rtp", "recorder"]

# What each package may not import (top-level module names).
FORBIDDEN = {
    "sip": {"asyncio", "socket", "time", "threading", "selectors", "av", "aiohttp", "sqlite3",
            "sensing_node", "rtp", "recorder", "uvloop"},
    "rtp": {"asyncio", "socket", "time", "threading", "selectors", "av", "aiohttp", "sqlite3",
            "sensing_node", "sip", "recorder", "uvloop"},
    # The recorder writes files from its own thread and remuxes exports with PyAV; it stays
    # free of the event loop, the HTTP layer and the application.
    "recorder": {"asyncio", "aiohttp", "sensing_node", "sip", "uvloop"},
}


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def imported_names(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_top_level_packages_are_ours():
    import recorder
    import rtp
    import sip

    for module in (sip, rtp, recorder):
        assert Path(module.__file__).resolve().parent.parent == ROOT, module.__file__


def test_cli_guard_reports_no_shadowing():
    from sensing_node.__main__ import check_layout

    assert check_layout() is None


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependency_direction_and_sans_io(package):
    offenders = {
        str(path.relative_to(ROOT)): sorted(imported_names(path) & FORBIDDEN[package])
        for path in modules(package)
    }
    assert {k: v for k, v in offenders.items() if v} == {}


@pytest.mark.parametrize(
    "module",
    [
        ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for package in PACKAGES
        for path in modules(package)
        if path.name != "__main__.py"
    ],
)
def test_module_imports_alone_without_warnings(module):
    """Each module imports in a fresh interpreter with warnings as errors (no import cycles)."""
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", f"import {module}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 0, result.stderr
