"""Node parameters (YAML, -p overrides, checks), the runner's arguments and the launch file's, in one process.

Nodes here are created but never spin: parameters need an rclpy context, not DDS traffic.
"""

from __future__ import annotations

import ast
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO_ROOT

rclpy = pytest.importorskip("rclpy")


from rclpy.context import Context  # noqa: E402
from rclpy.node import Node  # noqa: E402
from rclpy.parameter import Parameter  # noqa: E402

from ttt_kd_ros.geometry import project_points  # noqa: E402
from ttt_kd_ros.parameters.table import NODE_NAME, RUNTIME_PARAMETERS  # noqa: E402
from ttt_kd_ros.ros import segment_command  # noqa: E402
from ttt_kd_ros.ros.params import (  # noqa: E402
    PARAMETERS,
    ParameterError,
    accept_integers_for_doubles,
    check_update,
    read_parameters,
    segmenter_config,
)
from ttt_kd_ros.scan import CameraIntrinsics, CameraView  # noqa: E402

SHIPPED_YAML = REPO_ROOT / "config" / "segment.yaml"
LAUNCH_FILE = REPO_ROOT / "launch" / "segment.launch.py"


@pytest.fixture(scope="module")
def context() -> Iterator[Context]:
    ctx = Context()
    # A domain of this module's own (215-223; test_ros_node uses 100-199, test_ros_transforms 50-99, the
    # lifecycle test 224-232): a participant of an earlier test's killed process on the default domain 0 must
    # not be able to stall this one's DDS teardown (seen once: destroy_node spinning in the middleware).
    rclpy.init(context=ctx, args=[], domain_id=215 + os.getpid() % 9)
    yield ctx
    ctx.try_shutdown()


@pytest.fixture
def make_node(context: Context) -> Iterator:
    nodes: list[Node] = []

    def make(*ros_args: str) -> Node:
        node = Node(NODE_NAME, context=context, cli_args=["--ros-args", *ros_args], start_parameter_services=False)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()


def _write_yaml(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump({NODE_NAME: {"ros__parameters": params}}))
    return path


def _flatten(tree: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def test_read_parameters_defaults_without_cameras_is_cloud_only(make_node) -> None:
    params = read_parameters(make_node())
    assert params.cameras == ()
    assert params.cloud_only
    for spec in PARAMETERS:
        assert params[spec.name] == spec.default


def test_read_parameters_shipped_yaml_declares_every_key(make_node) -> None:
    node = make_node("--params-file", str(SHIPPED_YAML))
    params = read_parameters(node)
    shipped = _flatten(yaml.safe_load(SHIPPED_YAML.read_text())[f"/**/{NODE_NAME}"]["ros__parameters"])
    for name, value in shipped.items():
        assert node.has_parameter(name), f"config/segment.yaml: {name} is not a declared parameter"
        if name not in ("cameras",) and not name.endswith("extrinsics"):
            assert params.values.get(name, node.get_parameter(name).value) == value, name
    assert [c.name for c in params.cameras] == shipped["cameras"]
    kitti_tr_velo_to_cam = np.array([  # kitti_object 000000's calib file: X_cam = T X_velo
        [0.006927964, -0.9999722, -0.002757829, -0.02457729], [-0.001162982, 0.002749836, -0.9999955, -0.06127237],
        [0.9999753, 0.006931141, -0.001143899, -0.3321029], [0.0, 0.0, 0.0, 1.0]])
    np.testing.assert_allclose(params.cameras[0].cam_from_cloud, kitti_tr_velo_to_cam, atol=2e-7)
    assert params.cameras[0].parent_frame == "velo_link"
    assert shipped["adapt.time_budget_s"] == 1.0  # the node bounds a scan's adaptation; AdaptConfig keeps None
    assert not params.cloud_only


def test_read_parameters_shipped_yaml_applies_in_a_namespace(make_node) -> None:
    params = read_parameters(make_node("-r", "__ns:=/robot7", "--params-file", str(SHIPPED_YAML)))
    assert params["cloud_topic"] == "/kitti/velo/points"
    assert [c.name for c in params.cameras] == ["left"]


def test_read_parameters_every_parameter_has_description(make_node) -> None:
    node = make_node("--params-file", str(SHIPPED_YAML))
    read_parameters(node)
    names = [n for n in node.list_parameters([], 0).names if n != "use_sim_time"]  # rclpy's own has none
    for descriptor in node.describe_parameters(names):
        assert descriptor.description.strip(), f"parameter {descriptor.name} has no description"
        runtime = descriptor.name in RUNTIME_PARAMETERS
        assert descriptor.read_only != runtime, f"parameter {descriptor.name}: read_only must be {not runtime}"
    described = {d.name: d for d in node.describe_parameters(["adapt.steps", "adapt.lr", "adapt.strategy"])}
    assert described["adapt.steps"].integer_range[0].from_value == 0
    assert described["adapt.lr"].floating_point_range[0].to_value == 1.0
    assert "ttt_kd_online" in described["adapt.strategy"].additional_constraints


def test_read_parameters_p_override_beats_yaml(make_node, tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "p.yaml", {"cloud_topic": "/from_yaml", "adapt": {"steps": 2, "lr": 0.01}})
    params = read_parameters(make_node("--params-file", str(path), "-p", "adapt.steps:=7"))
    assert params["cloud_topic"] == "/from_yaml"
    assert params["adapt.steps"] == 7
    assert params["adapt.lr"] == 0.01


def test_given_parameters_override_the_checkpoints_validated_settings_one_by_one(make_node, tmp_path: Path) -> None:
    """builtin:lidar carries running BN statistics and a fusion rule; a user's adapt.lr changes only the lr."""
    from ttt_kd_ros.segmenter import checkpoint_settings, resolve_builtin

    path = _write_yaml(tmp_path / "p.yaml", {"checkpoint": "builtin:lidar", "teacher": "builtin",
                                             "adapt": {"lr": 0.002}})
    params = read_parameters(make_node("--params-file", str(path), "-p", "fusion.weight_2d:=0.2"))
    assert {"adapt.lr", "fusion.weight_2d", "checkpoint"} <= set(params.given)
    assert "adapt.bn_train" not in params.given and "adapt.steps" not in params.given
    config = segmenter_config(params)
    checkpoint = resolve_builtin(config.checkpoint)
    adapt, fusion = checkpoint_settings(checkpoint).apply(config.adapt, config.fusion, config.given)
    assert adapt.lr == 0.002 and fusion.weight_2d == 0.2  # what the user gave
    assert adapt.bn_train is False and adapt.guard_kd_ratio == 0.8 and adapt.params == "decoder_last"  # checkpoint's
    assert fusion.mode == "geometric"
    off = segmenter_config(read_parameters(make_node("--params-file", str(path), "-p", "use_validated:=false")))
    assert off.given is None  # the declared values as they are


def test_read_parameters_integers_for_double_parameters_are_doubles(make_node, tmp_path: Path) -> None:
    path = _write_yaml(tmp_path / "ints.yaml", {"camera_timeout_s": 2, "cameras": ["front"], "camera": {
        "front": {"parent_frame": "lidar", "extrinsics": [1, 0, 0, 0, 0, 0, 1]}}})
    params = read_parameters(make_node("--params-file", str(path), "-p", "adapt.time_budget_s:=0",
                                       "-p", "max_future_s:=3"))
    for name, value in (("camera_timeout_s", 2.0), ("adapt.time_budget_s", 0.0), ("max_future_s", 3.0)):
        assert params[name] == value and isinstance(params[name], float), name
    assert params.cameras[0].cam_from_cloud[0, 3] == -1.0  # the integer extrinsics, read as the doubles they are


def test_set_parameters_integer_for_a_double_is_accepted_as_a_double(make_node) -> None:
    node = make_node()
    accept_integers_for_doubles(node)
    read_parameters(node)
    results = node.set_parameters([Parameter("max_future_s", value=3), Parameter("adapt.time_budget_s", value=0)])
    assert all(r.successful for r in results), [r.reason for r in results]
    assert node.get_parameter("max_future_s").value == 3.0
    assert node.get_parameter("max_future_s").type_ == Parameter.Type.DOUBLE
    assert not node.set_parameters([Parameter("max_future_s", value="3")])[0].successful  # a string stays refused
    assert node.set_parameters([Parameter("adapt.steps", value=4)])[0].successful  # integers stay integers


@pytest.mark.parametrize(("override", "named"), [
    ("device:=tpu", "device"),
    ("adapt.steps:=-1", "adapt.steps"),
    ("adapt.steps:=abc", "adapt.steps"),
    ("mode:=sometimes", "mode"),
    ("sync_slop_s:=-0.5", "sync_slop_s"),
    ("cloud_topic:=''", "cloud_topic"),
    ("cameras:=[a,a]", "cameras"),
])
def test_read_parameters_bad_value_names_parameter(make_node, override: str, named: str) -> None:
    with pytest.raises(ParameterError, match=rf"parameter {named}\b"):
        read_parameters(make_node("-p", override))


def test_read_parameters_camera_without_extrinsics_follows_tf_with_header_frame(make_node) -> None:
    params = read_parameters(make_node("-p", "cameras:=[front]"))
    cam = params.cameras[0]
    assert (cam.image_topic, cam.info_topic, cam.frame_id) == ("front/image_raw", "front/camera_info", "")
    assert cam.cam_from_cloud is None  # tf, at each cloud's stamp, to the Image header's frame


def test_read_parameters_extrinsics_without_parent_frame_names_it(make_node) -> None:
    with pytest.raises(ParameterError, match=r"camera\.front\.parent_frame"):
        read_parameters(make_node("-p", "cameras:=[front]", "-p", "camera.front.extrinsics:=[0.,0.,0.,0.,0.,0.,1.]"))


@pytest.mark.parametrize("numbers", ["[1.0, 2.0, 3.0]", "[0.,0.,0.,0.,0.,0.,0.]"])
def test_read_parameters_bad_extrinsics_names_parameter(make_node, numbers: str) -> None:
    with pytest.raises(ParameterError, match=r"parameter camera\.front\.extrinsics"):
        read_parameters(make_node("-p", "cameras:=[front]", "-p", "camera.front.parent_frame:=lidar",
                                  "-p", f"camera.front.extrinsics:={numbers}"))


def test_read_parameters_old_cam_from_cloud_refused_with_its_conversion(make_node) -> None:
    old = [0.0, 0.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.5, 0.0, -1.0, 0.0, 0.25, 0.0, 0.0, 0.0, 1.0]  # cam_from_cloud
    with pytest.raises(ParameterError) as err:
        read_parameters(make_node("-p", "cameras:=[front]", "-p", f"camera.front.cam_from_cloud:={old}"))
    text = str(err.value)
    assert "camera.front.cam_from_cloud" in text and "static_transform_publisher" in text
    assert "camera.front.extrinsics: [" in text and "parent_frame" in text
    numbers = [float(v) for v in text.split("camera.front.extrinsics: [")[1].split("]")[0].split(",")]
    cloud_from_cam = np.linalg.inv(np.reshape(old, (4, 4)))  # what the converted numbers must say
    np.testing.assert_allclose(numbers[:3], cloud_from_cam[:3, 3], atol=1e-8)


def test_static_transform_publisher_extrinsics_project_where_computed_by_hand(make_node) -> None:
    """static_transform_publisher --x 1 --y 0 --z 0.5 --qx -0.5 --qy 0.5 --qz -0.5 --qw 0.5 --frame-id lidar
    --child-frame-id cam_optical: a camera 1 m ahead, 0.5 m up, optical axis along the LiDAR's x."""
    params = read_parameters(make_node(
        "-p", "cameras:=[front]", "-p", "camera.front.parent_frame:=lidar",
        "-p", "camera.front.extrinsics:=[1.0, 0.0, 0.5, -0.5, 0.5, -0.5, 0.5]"))
    cam_from_cloud = params.cameras[0].cam_from_cloud
    # By hand: the point (5, 1, 0.5) is 4 m ahead of the camera and 1 m to its left (lidar +y), at its height,
    # so in the optical frame (x right, y down, z forward) it is (-1, 0, 4): u = cx + f * -1 / 4, v = cy.
    np.testing.assert_allclose(cam_from_cloud @ [5.0, 1.0, 0.5, 1.0], [-1.0, 0.0, 4.0, 1.0], atol=1e-12)
    K = np.array([[100.0, 0.0, 320.0], [0.0, 100.0, 240.0], [0.0, 0.0, 1.0]])
    view = CameraView(np.zeros((480, 640, 3), np.uint8), CameraIntrinsics(K, 640, 480), cam_from_cloud,
                      name="front")
    projection = project_points(np.array([[5.0, 1.0, 0.5]], np.float32), view, occlusion=False)
    np.testing.assert_allclose(projection.uv_px[0], [295.0, 240.0], atol=1e-4)
    assert projection.visible[0]


def test_check_update_accepts_runtime_knobs_and_names_refusals() -> None:
    current = {spec.name: spec.default for spec in PARAMETERS}
    assert check_update(current, {"adapt.steps": 3, "output_min_confidence": 0.4}) == {
        "adapt.steps": 3, "output_min_confidence": 0.4}
    with pytest.raises(ParameterError, match=r"parameter adapt\.strategy: read-only"):
        check_update(current, {"adapt.strategy": "tent"})
    with pytest.raises(ParameterError, match=r"parameter adapt\.lr"):
        check_update(current, {"adapt.lr": 0.0})  # in the descriptor's range, refused by the engine
    with pytest.raises(ParameterError, match=r"parameter output_min_confidence: expected <= 1"):
        check_update(current, {"output_min_confidence": 2.0})


def test_ros_arguments_default_params_file_and_overrides() -> None:
    args = segment_command.build_parser().parse_args(
        ["--checkpoint", "m.safetensors", "--namespace", "robot1", "-p", "adapt.steps:=1", "--device", "cpu"])
    ros_args = segment_command.ros_arguments(args)
    params_file = Path(ros_args[ros_args.index("--params-file") + 1])
    assert params_file.name == "segment.yaml" and params_file.is_file()
    assert ros_args[0] == "--ros-args"
    pairs = list(itertools.pairwise(ros_args))
    for expected in (("-r", "__ns:=/robot1"), ("-p", "checkpoint:=m.safetensors"), ("-p", "device:=cpu"),
                     ("-p", "adapt.steps:=1"), ("-r", f"__node:={NODE_NAME}")):
        assert expected in pairs
    # The -p passthrough comes after the named options so it wins, as on the ros2 command line.
    assert ros_args.index("adapt.steps:=1") > ros_args.index("device:=cpu")


def test_ros_arguments_empty_overrides_keep_file_values() -> None:
    ros_args = segment_command.ros_arguments(segment_command.build_parser().parse_args([]))
    assert not any(a.startswith(("checkpoint:=", "device:=", "__ns:=")) for a in ros_args)


@pytest.mark.parametrize("argv", [["-p", "no_separator"], ["-p", ":=x"], ["--params-file", "/no/such/file.yaml"]])
def test_runner_main_bad_arguments_exit_2_naming_them(argv: list[str], capsys: pytest.CaptureFixture) -> None:
    assert segment_command.main(argv) == 2
    err = capsys.readouterr().err
    assert argv[1] in err


def test_set_fastdds_profile_keeps_users_choice() -> None:
    env = {segment_command.FASTDDS_PROFILE_ENV: "/mine.xml"}
    assert segment_command.set_fastdds_profile(env) == "/mine.xml"
    env = {}
    chosen = Path(segment_command.set_fastdds_profile(env))
    assert chosen.name == "fastdds_large_data.xml" and chosen.is_file()
    assert "<segment_size>33554432</segment_size>" in chosen.read_text()


def _launch_module() -> ast.Module:
    return ast.parse(LAUNCH_FILE.read_text(), filename=str(LAUNCH_FILE))


def _launch_constant(name: str) -> object:
    return next(ast.literal_eval(node.value) for node in _launch_module().body
                if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == name for t in node.targets))


def test_launch_file_compiles_and_arguments_match_runner_options() -> None:
    compile(LAUNCH_FILE.read_text(), str(LAUNCH_FILE), "exec")  # launch cannot run here: at least it compiles
    arguments = _launch_constant("LAUNCH_ARGUMENTS")
    assert set(arguments) == {"params_file", "checkpoint", "device", "namespace", "use_rviz", "use_sim_time",
                              "log_level", "autostart"}
    options = {a.dest for a in segment_command.build_parser()._actions}
    for name in ("params_file", "checkpoint", "device", "namespace", "use_sim_time", "log_level", "autostart"):
        assert name in options, f"ttt_kd_segment lacks the launch file's {name}"
    choices = _launch_constant("CHOICES")
    assert choices["log_level"] == list(segment_command.LOG_LEVELS)
    assert set(choices) <= set(arguments) and all(set(c) == {"true", "false"} for n, c in choices.items()
                                                  if n != "log_level")
    text = LAUNCH_FILE.read_text()
    assert "LifecycleNode(" in text and "choices=CHOICES.get(name)" in text
    assert "namespace=namespace" in text.split("rviz2")[-1]  # rviz2 follows the node's namespace
    assert "Value: ttt_kd_segmenter/labeled_points" in (REPO_ROOT / "config" / "segment.rviz").read_text()


def test_ros_arguments_sim_time_autostart_and_log_level_as_the_launch_file_passes_them() -> None:
    args = segment_command.build_parser().parse_args(["--use-sim-time", "--no-autostart", "--log-level", "debug"])
    ros_args = segment_command.ros_arguments(args)
    pairs = list(itertools.pairwise(ros_args))
    for expected in (("-p", "use_sim_time:=true"), ("-p", "autostart:=false"), ("--log-level", "debug")):
        assert expected in pairs
    with pytest.raises(SystemExit):
        segment_command.build_parser().parse_args(["--log-level", "loud"])


def test_launch_file_imports_launch_only_inside_generate() -> None:
    tree = _launch_module()
    top_level = {alias.name.split(".")[0] for node in tree.body if isinstance(node, ast.Import | ast.ImportFrom)
                 for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert not top_level & {"launch", "launch_ros", "ament_index_python"}
    generate = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "generate_launch_description")
    inner = {n.module for n in ast.walk(generate) if isinstance(n, ast.ImportFrom)}
    assert inner >= {"launch", "launch_ros.actions"}
    text = LAUNCH_FILE.read_text()
    assert "fastdds_large_data.xml" in text and segment_command.FASTDDS_PROFILE_ENV in text
    assert '"segment_node"' in text and "segment.rviz" in text


def test_shipped_yaml_leaves_the_validated_settings_to_the_checkpoint() -> None:
    """The node's adapt.* defaults are AdaptConfig's; the YAML sets none of the fields a checkpoint's validated
    settings carry (a value there would override the checkpoint's), and what it does set agrees with the engine."""
    from ttt_kd_ros.adapt import AdaptConfig
    from ttt_kd_ros.checkpoints import SENSORS, default_checkpoint
    from ttt_kd_ros.segmenter import checkpoint_settings

    engine = AdaptConfig()
    shipped = _flatten(yaml.safe_load(SHIPPED_YAML.read_text())[f"/**/{NODE_NAME}"]["ros__parameters"])
    adapt_specs = [s for s in PARAMETERS if s.name.startswith("adapt.") and s.name != "adapt.time_budget_s"]
    assert len(adapt_specs) >= 6
    for spec in adapt_specs:
        field = spec.name.split(".", 1)[1]
        want = getattr(engine, field)
        assert spec.default == (0.0 if want is None else want), f"node default {spec.name}"
        if spec.name in shipped:
            assert shipped[spec.name] == want, f"config/segment.yaml {spec.name}"
    assert shipped["use_validated"] is True
    for sensor in SENSORS:
        settings = checkpoint_settings(str(default_checkpoint(sensor)))
        assert settings.adapt and settings.fusion, f"shipped {sensor} checkpoint without validated settings"
        carried = {f"adapt.{k}" for k in settings.adapt if k != "strategy"} | {f"fusion.{k}" for k in settings.fusion}
        assert not carried & set(shipped), f"config/segment.yaml overrides {sorted(carried & set(shipped))}"


def test_node_md_documents_every_parameter() -> None:
    text = (REPO_ROOT / "docs" / "NODE.md").read_text()
    for spec in PARAMETERS:
        assert f"| `{spec.name}` |" in text, f"docs/NODE.md has no row for parameter {spec.name}"
