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


# ----- the application's own layout ------------------------------------------------------------

# The parts of `sensing_node`, lowest first: a part may import the parts before it and itself,
# never one after it (type-only imports included). Parts on the same rank do not import each
# other: the simulated peers talk to the node over sockets only.
APP_LAYERS: list[set[str]] = [
    {"runtime"},
    {"settings"},
    {"access"},
    {"transport"},
    {"devices", "sim"},
    {"media"},
    {"recording"},
    {"cascade"},
    {"node"},
    {"api", "console"},  # console: the page's static files, served by api/console.py
    {"app"},
    {"__main__"},
]
APP = ROOT / "sensing_node"


def _part(path: Path) -> str:
    rel = path.relative_to(APP)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _rank(part: str) -> int:
    for rank, parts in enumerate(APP_LAYERS):
        if part in parts:
            return rank
    raise AssertionError(f"sensing_node/{part} is in no layer of APP_LAYERS")


def _app_imports(path: Path) -> list[tuple[str, bool]]:
    """(absolute module, deferred) for every import of sensing_node modules in `path`;
    deferred: type-only, or inside a function (run when it is called, not at import)."""
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts)
    if path.name != "__init__.py":
        package = package.rpartition(".")[0]
    else:
        package = package.removesuffix(".__init__")
    tree = ast.parse(path.read_text(), str(path))
    deferred: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            deferred.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            deferred.update(id(sub) for stmt in node.body for sub in ast.walk(stmt))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names = [module] if node.module else [f"{module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        else:
            continue
        found += [(name, id(node) in deferred) for name in names
                  if name.split(".")[0] == "sensing_node"]
    return found


def test_every_app_module_belongs_to_a_layer():
    for path in modules("sensing_node"):
        if path.parent != APP or path.name != "__init__.py":
            _rank(_part(path))


def test_app_imports_only_downward():
    offenders = []
    for path in modules("sensing_node"):
        if path.parent == APP and path.name == "__init__.py":
            continue
        part = _part(path)
        for module, _ in _app_imports(path):
            target = module.split(".")[1] if "." in module else ""
            if target and target != part and _rank(target) >= _rank(part):
                offenders.append(f"{path.relative_to(ROOT)} imports {module}")
    assert offenders == []


def test_app_has_no_import_cycle():
    """Module-level imports between the application's modules form no cycle (type-only imports
    and imports inside functions may point back within a part, e.g. a stream naming its hub's
    type, a media worker loading the WebRTC module with its first viewer)."""
    graph: dict[str, set[str]] = {}
    names = {}
    for path in modules("sensing_node"):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        names[name] = path
    for name, path in names.items():
        graph[name] = set()
        for module, deferred in _app_imports(path):
            if deferred:
                continue
            while module and module not in names:
                module = module.rpartition(".")[0]
            if module and module != name:
                graph[name].add(module)
    state: dict[str, int] = {}

    def visit(name: str, trail: list[str]) -> None:
        state[name] = 1
        for dep in sorted(graph[name]):
            if state.get(dep) == 1:
                raise AssertionError("import cycle: " + " -> ".join(trail + [name, dep]))
            if dep not in state:
                visit(dep, trail + [name])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [])


def test_every_package_is_installed():
    """pyproject.toml lists every package directory, so an installed node has all of it."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["packages"])
    found = {
        ".".join(init.parent.relative_to(ROOT).parts)
        for package in PACKAGES for init in (ROOT / package).rglob("__init__.py")
    }
    assert found - listed == set()
