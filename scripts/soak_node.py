"""Soak the segmenter node: N scans over DDS from this process, the node's RSS sampled, its books checked.

The node runs as its own process (``python -m ttt_kd_ros.ros.segment_command``, tiny
teacher, untrained net, one camera with extrinsics parameters), fed small
clouds with their Image + CameraInfo at a fixed rate. Every 50th cloud's
images carry stamps no cloud matches (answered alone: sync_unmatched) and
every 100th cloud is malformed (skipped: bad_cloud), so every outcome of the
node's books is exercised. Prints the RSS samples, the RSS slope (least
squares, MB per 1000 scans, after the first 10 % of the scans, whose model and
DDS allocations are a one-off, and over the second half) and the books from
the node's last /diagnostics: received = processed + dropped + skipped.

    nice -n 10 .venv/bin/python scripts/soak_node.py --scans 10000 --rate-hz 30 --points 400
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

PREFIX = "/soak"
FRAME = "soak_lidar"
IMAGE_W, IMAGE_H, FOCAL_PX = 64, 48, 40.0


def node_params(points: int) -> dict:
    """The node's params file: cheap model, one camera, explicit budget so step counts are the configured ones."""
    params = {
        "cloud_topic": f"{PREFIX}/points", "output_topic": f"{PREFIX}/labeled", "teacher": "tiny", "checkpoint": "",
        "device": "cpu", "threads": 1, "max_points": points, "diagnostics_period_s": 1.0, "camera_timeout_s": 2.0,
        "cameras": ["front"],
        "camera": {"front": {"image_topic": f"{PREFIX}/front/image", "info_topic": f"{PREFIX}/front/camera_info",
                             "parent_frame": FRAME, "extrinsics": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 1.0]}},
        "adapt": {"strategy": "ttt_kd", "steps": 1, "optimizer": "sgd", "lr": 0.001, "kd_points_per_step": 128,
                  "time_budget_s": 0.0},
    }
    return {"/**/ttt_kd_segmenter": {"ros__parameters": params}}


def rss_mb(pid: int) -> float:
    """Resident set size of ``pid`` in MB (VmRSS of /proc/<pid>/status)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def slope_mb_per_1000(samples: list[tuple[int, float]]) -> float:
    """Least-squares slope of RSS (MB) against scans sent, per 1000 scans."""
    if len(samples) < 2:
        return float("nan")
    x = np.array([s for s, _ in samples], dtype=np.float64)
    y = np.array([m for _, m in samples], dtype=np.float64)
    return float(np.polyfit(x, y, 1)[0] * 1000.0)


class Feed:
    """This process's side: publishers for the sensors, output and /diagnostics subscriptions."""

    def __init__(self) -> None:
        import rclpy
        from diagnostic_msgs.msg import DiagnosticArray
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import CameraInfo, Image, PointCloud2

        from ttt_kd_ros.msgs.camera_info import intrinsics_to_camera_info
        from ttt_kd_ros.msgs.image import rgb_to_image
        from ttt_kd_ros.msgs.pointcloud2 import cloud_to_pointcloud2
        from ttt_kd_ros.scan import CameraIntrinsics

        rclpy.init()
        self.rclpy = rclpy
        self.node = rclpy.create_node("ttt_kd_soak_feed")
        self.cloud_pub = self.node.create_publisher(PointCloud2, f"{PREFIX}/points", qos_profile_sensor_data)
        self.image_pub = self.node.create_publisher(Image, f"{PREFIX}/front/image", qos_profile_sensor_data)
        self.info_pub = self.node.create_publisher(CameraInfo, f"{PREFIX}/front/camera_info", qos_profile_sensor_data)
        self.outputs = 0
        self.diagnostics: dict[str, str] = {}
        self.lock = threading.Lock()
        self.node.create_subscription(PointCloud2, f"{PREFIX}/labeled", self._on_output,
                                      QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE), raw=True)
        self.node.create_subscription(DiagnosticArray, "/diagnostics", self._on_diagnostics, 10)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self._spin, daemon=True)
        self.thread.start()
        self._encode = (cloud_to_pointcloud2, rgb_to_image, intrinsics_to_camera_info)
        K = np.array([[FOCAL_PX, 0.0, IMAGE_W / 2], [0.0, FOCAL_PX, IMAGE_H / 2], [0.0, 0.0, 1.0]])
        self.intrinsics = CameraIntrinsics(K, IMAGE_W, IMAGE_H)
        self.rng = np.random.default_rng(0)

    def _spin(self) -> None:
        while self.rclpy.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # shut down under us
                return

    def _on_output(self, raw: bytes) -> None:
        with self.lock:
            self.outputs += 1

    def _on_diagnostics(self, msg: object) -> None:
        for status in msg.status:
            if status.name.endswith("segmenter"):
                with self.lock:
                    self.diagnostics = {kv.key: kv.value for kv in status.values}

    def ready(self) -> bool:
        return (self.cloud_pub.get_subscription_count() > 0 and self.image_pub.get_subscription_count() > 0
                and self.info_pub.get_subscription_count() > 0 and self.node.count_publishers(f"{PREFIX}/labeled") > 0)

    def send(self, index: int, points: int) -> None:
        from builtin_interfaces.msg import Time
        from std_msgs.msg import Header

        cloud_to_pointcloud2, rgb_to_image, intrinsics_to_camera_info = self._encode
        stamp_ns = time.time_ns()
        image_ns = stamp_ns - 30 * 10**9 if index % 50 == 49 else stamp_ns  # never matched: answered alone
        for pub, make in ((self.image_pub, lambda h: rgb_to_image(
                self.rng.integers(0, 256, (IMAGE_H, IMAGE_W, 3), dtype=np.uint8), header=h)),
                          (self.info_pub, lambda h: intrinsics_to_camera_info(self.intrinsics, h))):
            header = Header(stamp=Time(sec=image_ns // 10**9, nanosec=image_ns % 10**9), frame_id="soak_camera")
            pub.publish(make(header))
        z = self.rng.uniform(2.0, 5.0, points)
        xyz = np.stack([self.rng.uniform(-0.6, 0.6, points) * z, self.rng.uniform(-0.45, 0.45, points) * z, z], 1)
        cloud = cloud_to_pointcloud2(Header(stamp=Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9),
                                            frame_id=FRAME), xyz.astype(np.float32))
        if index % 100 == 99:  # malformed: data shorter than width x point_step
            cloud.data = bytes(cloud.data)[: len(cloud.data) // 2]
        self.cloud_pub.publish(cloud)

    def books(self) -> dict[str, str]:
        with self.lock:
            return dict(self.diagnostics)

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self.node.destroy_node()
        self.rclpy.try_shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=10000)
    parser.add_argument("--rate-hz", type=float, default=30.0)
    parser.add_argument("--points", type=int, default=400)
    parser.add_argument("--samples", type=int, default=40, help="RSS samples over the run")
    args = parser.parse_args(argv)
    os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
    os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    os.environ.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", str(REPO_ROOT / "config" / "fastdds_large_data.xml"))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    with tempfile.TemporaryDirectory() as tmp:
        params_file = Path(tmp) / "soak.yaml"
        params_file.write_text(yaml.safe_dump(node_params(args.points)))
        log = (Path(tmp) / "node.log").open("w")
        command = [sys.executable, "-m", "ttt_kd_ros.ros.segment_command", "--params-file", str(params_file)]
        node = subprocess.Popen(command,
                                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        feed = Feed()
        try:
            deadline = time.monotonic() + 120.0
            while not feed.ready() and time.monotonic() < deadline and node.poll() is None:
                time.sleep(0.1)
            if not feed.ready():
                print("the node never subscribed", file=sys.stderr)
                return 1
            time.sleep(1.0)
            samples: list[tuple[int, float]] = [(0, rss_mb(node.pid))]
            every = max(1, args.scans // args.samples)
            period = 1.0 / args.rate_hz
            start = time.monotonic()
            for i in range(args.scans):
                due = start + i * period
                if (delay := due - time.monotonic()) > 0:
                    time.sleep(delay)
                feed.send(i, args.points)
                if (i + 1) % every == 0:
                    samples.append((i + 1, rss_mb(node.pid)))
            wall = time.monotonic() - start
            settle = time.monotonic() + 60.0
            while time.monotonic() < settle:
                books = feed.books()
                if books and int(books["received"]) >= args.scans and books["in_flight"] == "0":
                    break
                time.sleep(0.2)
            time.sleep(1.5)  # one more /diagnostics after the last outcome
            books = feed.books()
            warm = [s for s in samples if s[0] >= args.scans // 10]
            half = [s for s in samples if s[0] >= args.scans // 2]
            report = {
                "scans_sent": args.scans, "wall_s": round(wall, 1), "rate_hz": round(args.scans / wall, 2),
                "outputs_received_here": feed.outputs,
                "rss_mb_first_last": [round(samples[0][1], 1), round(samples[-1][1], 1)],
                "rss_mb_max": round(max(m for _, m in samples), 1),
                "rss_slope_after_warmup_mb_per_1000_scans": round(slope_mb_per_1000(warm), 3),
                "rss_slope_second_half_mb_per_1000_scans": round(slope_mb_per_1000(half), 3),
                "books": {k: v for k, v in books.items()
                          if k in ("received", "processed", "dropped", "skipped", "in_flight")
                          or k.startswith(("dropped.", "skipped.", "unadapted.", "errors."))},
            }
            received = int(books.get("received", -1))
            accounted = int(books.get("processed", 0)) + int(books.get("dropped", 0)) + int(books.get("skipped", 0))
            report["books_balance"] = received == accounted
            print("rss_samples (scans sent, MB):", " ".join(f"{s}:{m:.1f}" for s, m in samples))
            print(json.dumps(report, indent=2))
            return 0 if report["books_balance"] else 1
        finally:
            node.send_signal(signal.SIGINT)
            try:
                node.wait(timeout=15.0)
            except subprocess.TimeoutExpired:
                node.kill()
            feed.close()
            log.close()


if __name__ == "__main__":
    sys.exit(main())
