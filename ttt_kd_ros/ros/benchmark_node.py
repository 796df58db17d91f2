"""ttt_kd_benchmark_node: what the node itself costs per scan, without the model.

Times the node's own hot path on a synthetic cloud (default 120k points,
x/y/z/intensity like a LiDAR driver) with one 1242x375 rgb8 camera: decode
the PointCloud2, pair cloud + image + CameraInfo in the synchroniser, build
the Scan (``msgs.scan_messages.scan_from_messages``: decode, input cap,
image and CameraInfo conversion), encode the labeled output
(``prediction_to_pointcloud2``) and publish it through rclpy (a subscriber in
the same process makes DDS deliver it). The functions are the ones the node
calls, so a regression there shows here. Prints medians over ``--reps`` in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np


def _median_ms(fn: Callable[[], object], reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    samples = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return 1000.0 * statistics.median(samples)


def run(points: int, reps: int, publish: bool = True) -> dict[str, float]:
    """Median milliseconds per stage for one cloud of ``points`` points and one camera."""
    from builtin_interfaces.msg import Time
    from sensor_msgs.msg import CameraInfo, Image, PointCloud2, PointField

    from ttt_kd_ros.labels import SEMANTIC_KITTI19
    from ttt_kd_ros.msgs.cloud import decode_cloud
    from ttt_kd_ros.msgs.scan_messages import (
        CameraMessages,
        DecodedScan,
        ScanPolicy,
        camera_view,
        prediction_to_pointcloud2,
        scan_from_messages,
    )
    from ttt_kd_ros.ros.compat import make_synchronizer
    from ttt_kd_ros.scan import Prediction

    rng = np.random.default_rng(0)
    stamp = Time(sec=1000, nanosec=0)
    data = np.zeros((points, 4), dtype=np.float32)
    data[:, :3] = rng.normal(0.0, 10.0, (points, 3))
    data[:, 3] = rng.uniform(0.0, 1.0, points)
    cloud_msg = PointCloud2(height=1, width=points, point_step=16, row_step=16 * points, is_dense=True)
    cloud_msg.header.stamp, cloud_msg.header.frame_id = stamp, "velo_link"
    cloud_msg.fields = [PointField(name=n, offset=4 * i, datatype=PointField.FLOAT32, count=1)
                        for i, n in enumerate(("x", "y", "z", "intensity"))]
    cloud_msg.data = data.tobytes()
    width, height = 1242, 375
    image = Image(height=height, width=width, encoding="rgb8", step=3 * width)
    image.header.stamp = stamp
    image.data = rng.integers(0, 256, (height, width, 3), dtype=np.uint8).tobytes()
    info = CameraInfo(width=width, height=height, distortion_model="plumb_bob")
    info.header.stamp = stamp
    info.d = [0.0] * 5
    info.k = [721.5, 0.0, 609.6, 0.0, 721.5, 172.9, 0.0, 0.0, 1.0]
    info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    info.p = [721.5, 0.0, 609.6, 44.9, 0.0, 721.5, 172.9, 0.2, 0.0, 0.0, 1.0, 0.003]
    cam_from_cloud = np.eye(4)
    label_set = SEMANTIC_KITTI19
    rng_cap = np.random.default_rng(1)

    matched: list[tuple] = []
    sync = make_synchronizer(["cloud", "image", "info"], 10, 0.05, lambda *msgs: matched.append(msgs))

    def pair() -> None:
        sync.add(1, image)
        sync.add(2, info)
        sync.add(0, cloud_msg)

    camera = CameraMessages("left", image, info, cam_from_cloud)
    policy = ScanPolicy(max_points=1_000_000, label_set=label_set.name)  # the node's default input cap

    def assemble() -> DecodedScan:
        return scan_from_messages(cloud_msg, [camera], policy=policy, rng=rng_cap)

    decoded = assemble()
    n = decoded.scan.num_points
    prediction = Prediction(labels=rng.integers(0, label_set.num_classes, n),
                            confidence=rng.uniform(0.0, 1.0, n).astype(np.float32))
    out = prediction_to_pointcloud2(decoded, prediction, label_set)

    results = {
        "decode": _median_ms(lambda: decode_cloud(cloud_msg), reps),
        "sync": _median_ms(pair, reps),
        "scan_assembly": _median_ms(lambda: camera_view(camera, cam_from_cloud), reps),
        "encode": _median_ms(lambda: prediction_to_pointcloud2(decoded, prediction, label_set), reps),
    }
    results["decode_and_assembly"] = _median_ms(assemble, reps)
    if publish:
        results["publish"] = _publish_ms(out, reps)
    results["total"] = results["decode_and_assembly"] + results["sync"] + results["encode"] + results.get(
        "publish", 0.0)
    if len(matched) < reps:
        raise RuntimeError(f"synchroniser matched {len(matched)} sets for {reps} reps: the benchmark is broken")
    return results


def _publish_ms(out: object, reps: int) -> float:
    """publish() of the labeled cloud on a RELIABLE publisher with a subscriber in this process."""
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.node import Node
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import PointCloud2

    from ttt_kd_ros.ros.segment_command import set_fastdds_profile

    set_fastdds_profile()
    context = Context()
    rclpy.init(context=context)
    try:
        node = Node("ttt_kd_benchmark_node", context=context)
        qos = QoSProfile(depth=5, reliability=ReliabilityPolicy.RELIABLE)
        received: list[int] = []
        node.create_subscription(PointCloud2, "benchmark/labeled", lambda m: received.append(m.width), qos)
        pub = node.create_publisher(PointCloud2, "benchmark/labeled", qos)
        deadline = time.monotonic() + 5.0
        while pub.get_subscription_count() == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        samples = []
        for _ in range(reps + 2):
            t = time.perf_counter()
            pub.publish(out)
            samples.append(time.perf_counter() - t)
            executor.spin_once(timeout_sec=0.05)  # drain, as the subscriber side would
        executor.shutdown()
        node.destroy_node()
        if not received:
            raise RuntimeError("the labeled cloud never reached the subscriber: the publish timing is meaningless")
        return 1000.0 * statistics.median(samples[2:])
    finally:
        context.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ttt_kd_benchmark_node", description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=120_000)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--no-publish", action="store_true", help="skip the rclpy publish stage")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    args = parser.parse_args(argv)
    if args.points <= 0 or args.reps <= 0:
        print("ttt_kd_benchmark_node: --points and --reps must be positive", file=sys.stderr)
        return 2
    results = run(args.points, args.reps, publish=not args.no_publish)
    if args.json:
        print(json.dumps({"points": args.points, "reps": args.reps, "median_ms": results}))
    else:
        print(f"node overhead, {args.points} points, 1 camera 1242x375, median of {args.reps} reps")
        for stage, ms in results.items():
            print(f"  {stage:<20} {ms:8.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
