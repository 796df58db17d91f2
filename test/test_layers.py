"""Imports run down the layers of docs/ARCHITECTURE.md, checked by parsing every module's imports with ast.

The layer table is read from the ``layers`` block of docs/ARCHITECTURE.md itself, so the document and the check
cannot disagree: every folder and root module of the package must sit in exactly one layer, import only from its
own layer or lower ones, and the folder-level import graph must have no loop (two folders of one layer that import
each other are a loop too). Lazy imports inside functions count: they load the same module, only later.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "ttt_kd_ros"
ARCHITECTURE = REPO_ROOT / "docs" / "ARCHITECTURE.md"
MAX_ROOT_MODULES = 15
"""Modules at the package root (``__init__`` included): past this, a newcomer cannot see the folders for files."""


def read_layers(text: str) -> list[tuple[str, list[str]]]:
    """[(layer, [units])] top to bottom from the text between the ``layers:begin`` / ``layers:end`` markers.

    Each line is ``name  unit unit ...``; a unit is a folder (``ros/``) or a root module (``segmenter.py``).
    """
    match = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", text, re.S)
    if match is None:
        raise ValueError(f"{ARCHITECTURE}: no <!-- layers:begin --> ... <!-- layers:end --> block")
    layers = []
    for line in match.group(1).splitlines():
        words = line.strip().strip("`").split()
        if len(words) >= 2 and not line.strip().startswith(("```", "layer ")):
            layers.append((words[0], [w.removesuffix("/").removesuffix(".py") for w in words[1:]]))
    return layers


LAYERS = read_layers(ARCHITECTURE.read_text())
RANK = {unit: depth for depth, (_, units) in enumerate(LAYERS) for unit in units}
"""unit -> its layer's depth (0 = top)."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every module name ``path`` imports (absolute; relative imports resolved against its package)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rsplit(".", 1)[0]
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    return names


MODULES = sorted(PACKAGE.rglob("*.py"))


def _unit(path: Path) -> str:
    """The folder or root module a file belongs to."""
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _units_imported(path: Path) -> set[str]:
    """Package units (folders / root modules) that ``path`` imports, its own excluded."""
    found = set()
    for name in _imports(path):
        parts = name.split(".")
        if parts[0] == "ttt_kd_ros" and len(parts) > 1 and parts[1] in RANK:
            found.add(parts[1])
    return found - {_unit(path)}


def _unit_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {unit: set() for unit in RANK}
    for path in MODULES:
        if _unit(path) in RANK:
            graph[_unit(path)] |= _units_imported(path)
    return graph


def _package_units() -> set[str]:
    """Every folder (a package) and root module of ttt_kd_ros except ``__init__``."""
    return {p.name.removesuffix(".py") for p in PACKAGE.iterdir()
            if (p.suffix == ".py" and p.name != "__init__.py") or (p / "__init__.py").is_file()}


def test_layers_table_names_every_folder_and_root_module_once() -> None:
    listed = [unit for _, units in LAYERS for unit in units]
    assert len(listed) == len(set(listed)), "a unit sits in two layers"
    assert set(listed) == _package_units()


def test_layers_package_root_holds_at_most_fifteen_modules() -> None:
    root_modules = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(root_modules) <= MAX_ROOT_MODULES, root_modules


def test_layers_imports_never_reach_a_higher_layer() -> None:
    up = {}
    for path in MODULES:
        unit = _unit(path)
        higher = sorted(u for u in _units_imported(path) if RANK[u] < RANK[unit])
        if higher:
            up[_module_name(path)] = higher
    assert up == {}


def test_layers_folders_form_no_loop() -> None:
    """Depth-first search over the unit graph: a back edge is a loop (a.b imports c, c imports a)."""
    graph = _unit_graph()
    state: dict[str, int] = {}
    loops: list[list[str]] = []

    def visit(unit: str, trail: list[str]) -> None:
        state[unit] = 1
        for nxt in sorted(graph[unit]):
            if state.get(nxt) == 1:
                loops.append([*trail[trail.index(nxt):], unit, nxt] if nxt in trail else [unit, nxt])
            elif nxt not in state:
                visit(nxt, [*trail, unit])
        state[unit] = 2

    for unit in sorted(graph):
        if unit not in state:
            visit(unit, [])
    assert loops == []


def test_layers_only_ros_imports_rclpy() -> None:
    bad = {_module_name(p): sorted(n for n in _imports(p) if n == "rclpy" or n.startswith("rclpy."))
           for p in MODULES if _unit(p) != "ros"}
    assert {name: found for name, found in bad.items() if found} == {}


def test_layers_ros_imports_no_tools() -> None:
    bad = {_module_name(p): sorted(n for n in _imports(p) if n.startswith("ttt_kd_ros.tools"))
           for p in MODULES if _unit(p) == "ros"}
    assert {name: found for name, found in bad.items() if found} == {}


def test_layers_walk_catches_a_lazy_import_and_an_upward_one(tmp_path: Path) -> None:
    """The checks see what they claim to see: a lazy rclpy import, and an import from a higher layer."""
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from rclpy.node import Node\n"
                      "    from ttt_kd_ros.ros import node\n    return Node\n")
    assert _imports(module) >= {"rclpy.node", "rclpy.node.Node", "ttt_kd_ros.ros"}
    assert RANK["ros"] < RANK["segmenter"] < RANK["scan"]


def test_layers_reader_refuses_a_document_without_the_table() -> None:
    with pytest.raises(ValueError, match="layers:begin"):
        read_layers("# Architecture\n\nno table here\n")
