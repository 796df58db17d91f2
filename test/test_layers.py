"""Imports run down the layers (docs/ARCHITECTURE.md), checked by parsing every module's imports with ast.

Lazy imports inside functions count: they load the same module, only later.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from conftest import REPO_ROOT

PACKAGE = REPO_ROOT / "ttt_kd_ros"
CORE = ("scan", "geometry", "model", "checkpoint_format", "adapt", "teacher", "teacher_weights", "dense_teacher",
        "oracle_teacher", "teacher_probe", "targets", "segmenter", "sparse", "labels", "metrics", "losses")
"""The core: plain Python + numpy + torch, knows nothing of messages, files, datasets or ROS."""
MESSAGE_LAYER = ("msgs", "transforms")
"""Message codecs, the one scan path and transform math: no rclpy, no ROS layer."""
ABOVE_CORE = ("msgs", "transforms", "data", "replay", "evaluation", "tools", "ros", "compose", "node_parameters",
              "demo_figures")


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


def _in(path: Path, tops: tuple[str, ...]) -> bool:
    relative = path.relative_to(PACKAGE)
    first = relative.parts[0].removesuffix(".py")
    return first in tops


def _offending(path: Path, prefixes: tuple[str, ...]) -> list[str]:
    return sorted(name for name in _imports(path) if any(name == p or name.startswith(p + ".") for p in prefixes))


def test_layers_every_module_parses_and_the_walk_sees_them() -> None:
    assert len(MODULES) > 40
    assert any(_in(p, ("ros",)) for p in MODULES) and any(_in(p, ("msgs",)) for p in MODULES)


def test_layers_only_ros_imports_rclpy() -> None:
    bad = {_module_name(p): _offending(p, ("rclpy",)) for p in MODULES if not _in(p, ("ros",))}
    assert {name: found for name, found in bad.items() if found} == {}


@pytest.mark.parametrize("layer", ["core", "message", "sources"])
def test_layers_core_message_layer_and_sources_never_import_ros(layer: str) -> None:
    """Only tools and ros/ itself reach into ros/; data/ and replay/ get messages from the message layer."""
    tops = {"core": CORE, "message": MESSAGE_LAYER, "sources": ("data", "replay", "evaluation", "compose",
                                                                               "node_parameters")}[layer]
    bad = {_module_name(p): _offending(p, ("ttt_kd_ros.ros",)) for p in MODULES if _in(p, tops)}
    assert {name: found for name, found in bad.items() if found} == {}


def test_layers_core_imports_nothing_above_it() -> None:
    above = tuple(f"ttt_kd_ros.{name}" for name in ABOVE_CORE)
    bad = {_module_name(p): _offending(p, above) for p in MODULES if _in(p, CORE)}
    assert {name: found for name, found in bad.items() if found} == {}


def test_layers_walk_catches_a_lazy_rclpy_import(tmp_path: Path) -> None:
    module = tmp_path / "lazy.py"
    module.write_text("def f():\n    from rclpy.node import Node\n    return Node\n")
    assert _imports(module) >= {"rclpy.node", "rclpy.node.Node"}
