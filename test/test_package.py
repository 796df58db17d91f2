"""Checks a ROS maintainer runs on an ament_python package before release."""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from conftest import REPO_ROOT

from ttt_kd_ros import package_files


def _setup_py_console_scripts() -> list[str]:
    tree = ast.parse((REPO_ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "CONSOLE_SCRIPTS" for t in node.targets):
            return [ast.literal_eval(elt) for elt in node.value.elts]
    raise AssertionError("setup.py has no CONSOLE_SCRIPTS list")


def test_package_xml_is_format3_with_required_dependencies() -> None:
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    assert root.tag == "package" and root.attrib["format"] == "3"
    assert root.findtext("name") == "ttt_kd_ros"
    exec_deps = {e.text for e in root.findall("exec_depend")}
    for dep in ("rclpy", "sensor_msgs", "message_filters", "std_msgs", "std_srvs", "diagnostic_msgs",
                "rcl_interfaces", "tf2_ros_py", "python3-numpy"):
        assert dep in exec_deps, f"package.xml lacks exec_depend {dep}"
    assert root.find("export/build_type").text == "ament_python"


# Keys a robot's `rosdep install` must not meet: invented pip keys fail the whole install, python3-torch pulls a
# distribution torch over the robot's CUDA build, and packages the code never imports only cost install time.
REFUSED_KEYS = ("python3-torch", "cv_bridge", "python3-safetensors-pip", "python3-transformers-pip",
                "python3-rosbags-pip", "ament_copyright")


def test_package_xml_has_no_invented_or_harmful_rosdep_keys() -> None:
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    declared = {e.text for e in root if e.tag.endswith("depend")}
    assert not declared & set(REFUSED_KEYS), declared & set(REFUSED_KEYS)
    assert not any(key.endswith("-pip") for key in declared)
    exec_deps = {e.text for e in root.findall("exec_depend")}
    assert "sensor_msgs_py" not in exec_deps  # only the parity test uses it
    imported = set()
    for path in (REPO_ROOT / "ttt_kd_ros").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                imported.add(node.module.split(".")[0])
    assert "cv_bridge" not in imported and "sensor_msgs_py" not in imported
    requirements = (REPO_ROOT / "requirements.txt").read_text()
    for pip_only in ("mcap", "safetensors", "transformers", "rosbags"):  # imported, no rosdep key: pip, documented
        assert pip_only in imported and f"\n{pip_only}" in requirements, pip_only


def test_package_xml_version_matches_setup_py() -> None:
    root = ET.parse(REPO_ROOT / "package.xml").getroot()
    import ttt_kd_ros

    assert root.findtext("version") == ttt_kd_ros.__version__
    assert f'version="{ttt_kd_ros.__version__}"' in (REPO_ROOT / "setup.py").read_text()


def test_console_scripts_point_at_importable_callables() -> None:
    scripts = _setup_py_console_scripts()
    for spec in scripts:
        name, target = (s.strip() for s in spec.split("="))
        module_name, func_name = target.split(":")
        module = importlib.import_module(module_name)
        assert callable(getattr(module, func_name)), f"{name}: {target} is not callable"


@pytest.mark.parametrize("script", sorted(p.name for p in (REPO_ROOT / "scripts").glob("*.py")))
def test_every_script_imports(script: str) -> None:
    """The docs' commands run scripts/*.py: each must at least import against the package as it is now (a
    renamed package name once broke benchmark_budget.py with nothing noticing). Their mains do not run here."""
    path = REPO_ROOT / "scripts" / script
    spec = importlib.util.spec_from_file_location(f"script_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert callable(getattr(module, "main", None)), f"{script}: no main()"


def test_console_scripts_are_documented_in_readme() -> None:
    readme = (REPO_ROOT / "README.md").read_text()
    for spec in _setup_py_console_scripts():
        name = spec.split("=")[0].strip()
        assert name in readme, f"console script {name} is not mentioned in README.md"


def test_resource_marker_exists_for_ament_index() -> None:
    assert (REPO_ROOT / "resource" / "ttt_kd_ros").is_file()


def test_share_file_resolves_from_source_tree(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(package_files, "_ament_share_dir", lambda: None)
    monkeypatch.setattr(package_files, "_prefix_share_dir", lambda: None)
    assert package_files.share_dir() == package_files.SOURCE_ROOT
    assert package_files.share_file("package.xml") == package_files.SOURCE_ROOT / "package.xml"


def test_share_file_missing_names_places_tried() -> None:
    with pytest.raises(FileNotFoundError, match="no_such_file"):
        package_files.share_file("config", "no_such_file.yaml")


def test_pip_install_put_share_files_under_prefix() -> None:
    installed = Path(sys.prefix) / "share" / "ttt_kd_ros"
    if not (installed / "package.xml").is_file():
        pytest.skip(f"package not installed with `pip install .` under {sys.prefix}")
    assert (installed / "launch" / "segment.launch.py").is_file()
    assert (installed / "config" / "segment.yaml").is_file()
    marker = Path(sys.prefix) / "share" / "ament_index" / "resource_index" / "packages" / "ttt_kd_ros"
    assert marker.is_file()


def test_share_file_resolves_through_ament_index_when_prefix_listed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("ament_index_python")
    installed = Path(sys.prefix) / "share" / "ttt_kd_ros"
    if not (installed / "package.xml").is_file():
        pytest.skip("package not installed with `pip install .`")
    monkeypatch.setenv("AMENT_PREFIX_PATH", sys.prefix)
    assert package_files._ament_share_dir() == installed
    assert package_files.share_file("launch", "segment.launch.py") == installed / "launch" / "segment.launch.py"
