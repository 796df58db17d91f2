"""The node's lifecycle in one process (no DDS traffic): what configure and activate create, cleanup destroys."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import tf_stand_in

rclpy = pytest.importorskip("rclpy")

from rclpy.context import Context  # noqa: E402
from rclpy.lifecycle import TransitionCallbackReturn  # noqa: E402

from ttt_kd_ros.ros import compat  # noqa: E402
from ttt_kd_ros.ros.node import SegmenterNode  # noqa: E402

TF_TOPICS = {compat.TF_TOPIC, compat.TF_STATIC_TOPIC}


@pytest.fixture
def node() -> Iterator[SegmenterNode]:
    if not tf_stand_in.install():
        pytest.skip("neither tf2_msgs nor the test stand-in's type support is usable here")
    context = Context()
    rclpy.init(context=context, args=[], domain_id=224 + os.getpid() % 9)  # this module's own (test_ros_params)
    made = SegmenterNode(context=context, cli_args=[
        "--ros-args", "-p", "autostart:=false", "-p", "checkpoint:=''", "-p", "teacher:=tiny", "-p", "device:=cpu",
        "-p", "cloud_topic:=/lifecycle_test/points", "-p", "cameras:=[side]", "-p", "adapt.time_budget_s:=0.0",
        "-p", "threads:=1"])
    try:
        yield made
    finally:
        made.destroy_node()
        context.try_shutdown()
        compat.use_tf_message_stand_in(None)


def _subscribed(node: SegmenterNode) -> set[str]:
    return {sub.topic_name for sub in node.subscriptions}


def test_node_lifecycle_cleanup_destroys_the_tf_listener_and_what_configure_made(node: SegmenterNode) -> None:
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    import torch

    assert torch.get_num_threads() == 1  # the threads parameter
    assert _subscribed(node) >= TF_TOPICS  # camera side has no extrinsics: it follows tf
    assert node.get_parameter("labels.names").value[0] == "floor"  # the checkpoint's classes, read-only
    assert node.describe_parameter("labels.colors").read_only
    services = {srv.srv_name for srv in node.services}
    assert any(name.endswith("/reset") for name in services)
    assert node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert "/lifecycle_test/points" in _subscribed(node)
    qos_param = "qos_overrides./lifecycle_test/points.subscription.reliability"
    assert node.has_parameter(qos_param) and node.get_parameter(qos_param).value == "best_effort"
    assert node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert node.trigger_cleanup() == TransitionCallbackReturn.SUCCESS
    assert not TF_TOPICS & _subscribed(node), _subscribed(node)
    assert not any(name.endswith("/reset") for name in {srv.srv_name for srv in node.services})
    # configure again after cleanup: a second listener, parameters already declared are reused
    assert node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    assert _subscribed(node) >= TF_TOPICS


@pytest.fixture
def online_node() -> Iterator[SegmenterNode]:
    """A cloud_only-free node with the online strategy: the one whose weights a warm-up could leave moved."""
    context = Context()
    rclpy.init(context=context, args=[], domain_id=224 + os.getpid() % 9)
    made = SegmenterNode(context=context, cli_args=[
        "--ros-args", "-p", "autostart:=false", "-p", "checkpoint:=''", "-p", "teacher:=tiny", "-p", "device:=cpu",
        "-p", "cloud_topic:=/lifecycle_test/points", "-p", "cameras:=[front]",
        "-p", "camera.front.parent_frame:=lidar", "-p", "camera.front.extrinsics:=[0, 0, 0, 0, 0, 0, 1]",
        "-p", "adapt.strategy:=ttt_kd_online", "-p", "adapt.steps:=3", "-p", "adapt.lr:=0.1",
        "-p", "adapt.optimizer:=sgd", "-p", "adapt.time_budget_s:=0", "-p", "threads:=1"])
    try:
        yield made
    finally:
        made.destroy_node()
        context.try_shutdown()


def test_node_activation_warms_up_once_and_leaves_an_online_strategy_at_the_checkpoint(
        online_node: SegmenterNode) -> None:
    assert online_node.trigger_configure() == TransitionCallbackReturn.SUCCESS
    import torch

    model = online_node.segmenter.model
    source = {name: value.detach().clone() for name, value in model.state_dict().items()}
    assert online_node.warm_up_s is None
    assert online_node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert online_node.warm_up_s is not None and online_node.warm_up_s > 0  # it ran (and did not fail: 0.0)
    strategy = online_node.segmenter.strategy
    assert strategy.scans_seen == 0 and strategy.running_loss is None  # the drift guard starts afresh
    assert all(torch.equal(value, source[name]) for name, value in model.state_dict().items())
    first = online_node.warm_up_s
    assert online_node.trigger_deactivate() == TransitionCallbackReturn.SUCCESS
    assert online_node.trigger_activate() == TransitionCallbackReturn.SUCCESS
    assert online_node.warm_up_s == first  # once per configure: a re-activation keeps the online state
