"""ttt_kd_make_bag: the bag it writes reads back (AnyReader, data.rosbag) with the scans it was given."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ttt_kd_ros.data.rosbag import RosbagScans, bag_topics
from ttt_kd_ros.data.synthetic import SyntheticDataset
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.replay.bag_writer import CUSTOM_LABEL_SET, UNLABELLED, ScanBagWriter, cloud_point_array
from ttt_kd_ros.scan import IGNORE_LABEL, Scan
from ttt_kd_ros.tools import make_bag

rosbags_highlevel = pytest.importorskip("rosbags.highlevel")

RATE_HZ = 5.0
COUNT = 3
MAX_POINTS = 3000


@pytest.fixture(scope="module", params=["mcap", "sqlite3"])
def lidar_bag(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp(f"bag_{request.param}") / "lidar"
    code = make_bag.main([str(out), "--storage", request.param, "--domain", "lidar", "--count", str(COUNT),
                          "--seed", "3", "--rate-hz", str(RATE_HZ), "--max-points", str(MAX_POINTS)])
    assert code == 0
    return out, request.param


def _original_scans() -> list[Scan]:
    rng = np.random.default_rng(0)  # write_bag subsamples with this generator, scan after scan
    return [make_bag.subsample(scan, MAX_POINTS, rng) for scan in SyntheticDataset("lidar", COUNT, seed=3)]


def test_main_counts_and_stamps(lidar_bag: tuple[Path, str]) -> None:
    path, storage = lidar_bag
    assert any(p.suffix == (".mcap" if storage == "mcap" else ".db3") for p in path.iterdir())
    with rosbags_highlevel.AnyReader([path]) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        cloud_stamps = []
        for connection, log_time, raw in reader.messages():
            if connection.topic == "/sensor/points":
                msg = reader.deserialize(raw, connection.msgtype)
                stamp = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
                assert stamp == log_time
                cloud_stamps.append(stamp)
    assert counts["/sensor/points"] == COUNT
    for cam in ("cam_0", "cam_1", "cam_2"):
        assert counts[f"/sensor/{cam}/image_raw"] == COUNT
        assert counts[f"/sensor/{cam}/camera_info"] == COUNT
    assert counts["/tf_static"] == 1  # the robot's cameras do not move: one latched message
    assert np.diff(cloud_stamps).tolist() == [round(1e9 / RATE_HZ)] * (COUNT - 1)
    assert bag_topics(path)["/sensor/points"] == "sensor_msgs/msg/PointCloud2"


def test_main_labels_points_and_images_round_trip(lidar_bag: tuple[Path, str]) -> None:
    path, _ = lidar_bag
    scans = list(RosbagScans(path))
    assert len(scans) == COUNT
    for original, back in zip(_original_scans(), scans, strict=True):
        np.testing.assert_array_equal(back.points_xyz_m, original.points_xyz_m)
        np.testing.assert_array_equal(back.labels, original.labels)
        np.testing.assert_allclose(back.intensity, original.intensity, atol=1e-7)
        assert back.frame_id == "lidar"
        assert [c.name for c in back.cameras] == [f"sensor/{c.name}" for c in original.cameras]
        for cam_back, cam_orig in zip(back.cameras, original.cameras, strict=True):
            np.testing.assert_array_equal(cam_back.image_rgb, cam_orig.image_rgb)
            np.testing.assert_allclose(cam_back.cam_from_cloud, cam_orig.cam_from_cloud, atol=1e-9)
            # The bag's CameraInfo + tf put every point on the pixel the source camera put it on.
            got = project_points(back.points_xyz_m, cam_back, occlusion=False)
            want = project_points(original.points_xyz_m, cam_orig, occlusion=False)
            np.testing.assert_array_equal(got.visible, want.visible)
            np.testing.assert_allclose(got.uv_px[got.visible], want.uv_px[want.visible], atol=1e-6)
        assert sum(project_points(back.points_xyz_m, c).visible.sum() for c in back.cameras) > 0.1 * back.num_points


def test_write_bag_projected_colours_match_images(tmp_path: Path) -> None:
    """RGB-D points carry the colour of the pixel they came from: projecting them back must find it again."""
    scan = make_bag.subsample(SyntheticDataset("source", 1, seed=1)[0], 4000, np.random.default_rng(1))
    make_bag.write_bag(tmp_path / "rgbd", [scan], storage="sqlite3")
    back = next(iter(RosbagScans(tmp_path / "rgbd")))
    view = back.cameras[0]
    proj = project_points(back.points_xyz_m, view)
    assert proj.visible.sum() > 200
    uv = np.rint(proj.uv_px[proj.visible]).astype(int)
    pixel = view.image_rgb[uv[:, 1], uv[:, 0]].astype(np.float32) / 255.0
    # colours quantised to 8 bits in the packed field; a few points sit on object edges
    assert np.median(np.abs(pixel - back.rgb[proj.visible])) < 0.03


def test_write_scan_ignore_label_is_65535_and_custom_data(tmp_path: Path) -> None:
    scan = Scan(points_xyz_m=np.arange(12, dtype=np.float32).reshape(4, 3), labels=np.array([0, IGNORE_LABEL, 7, 3]),
                frame_id="base", label_set="synthetic_indoor")
    assert cloud_point_array(scan)["label"].tolist() == [0, UNLABELLED, 7, 3]
    with ScanBagWriter(tmp_path / "b", storage="mcap") as writer:
        writer.write_scan(scan, 5)
    with rosbags_highlevel.AnyReader([tmp_path / "b"]) as reader:
        connection = reader.connections[0]
        raw = next(reader.messages())[2]
        msg = reader.deserialize(raw, connection.msgtype)
    labels = np.frombuffer(msg.data.tobytes(), dtype=np.uint8).reshape(4, msg.point_step)
    label_offset = next(f.offset for f in msg.fields if f.name == "label")
    assert labels[:, label_offset:label_offset + 2].copy().view("<u2").ravel().tolist() == [0, 65535, 7, 3]
    assert "metadata.yaml" in {p.name for p in (tmp_path / "b").iterdir()}
    assert CUSTOM_LABEL_SET in (tmp_path / "b" / "metadata.yaml").read_text()


def test_write_scan_label_too_large_raises(tmp_path: Path) -> None:
    scan = Scan(points_xyz_m=np.zeros((2, 3), dtype=np.float32), labels=np.array([1, 70000]))
    with pytest.raises(ValueError, match=r"scan\.labels"):
        cloud_point_array(scan)


def test_main_refuses_existing_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "not_a_bag").mkdir()
    assert make_bag.main([str(tmp_path / "not_a_bag"), "--count", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_main_takes_a_data_spec_like_every_other_tool(tmp_path: Path) -> None:
    out = tmp_path / "spec"
    assert make_bag.main([str(out), "--data", "synthetic:lidar?scans=2&seed=3", "--count", "5",
                          "--max-points", str(MAX_POINTS)]) == 0
    back = list(RosbagScans(out))
    assert len(back) == 2  # the spec's scans=2, fewer than --count
    rng = np.random.default_rng(0)
    for original, scan in zip(SyntheticDataset("lidar", 2, seed=3), back, strict=True):
        np.testing.assert_array_equal(scan.points_xyz_m, make_bag.subsample(original, MAX_POINTS, rng).points_xyz_m)


@pytest.mark.parametrize(("args", "message"), [
    (["--data", "semantickitti:/nonexistent/sk"], "/nonexistent/sk"),
    (["--data", "synthetic:office", "--domain", "lidar"], "give one"),
    (["--data", "synthetic:lidar?sacns=2"], "sacns"),
])
def test_main_bad_data_spec_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str],
                                             message: str) -> None:
    assert make_bag.main([str(tmp_path / "b"), *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b").exists()


def test_main_semantic_kitti_folder(real_data: Path, tmp_path: Path) -> None:
    code = make_bag.main([str(tmp_path / "sk"), "--data", f"semantickitti:{real_data / 'semantickitti'}",
                          "--count", "1", "--max-points", "5000"])
    assert code == 0
    from ttt_kd_ros.data.semantic_kitti import SemanticKittiScans

    original = make_bag.subsample(SemanticKittiScans(real_data / "semantickitti")[0], 5000, np.random.default_rng(0))
    back = next(iter(RosbagScans(tmp_path / "sk")))
    np.testing.assert_array_equal(back.points_xyz_m, original.points_xyz_m)
    # data.rosbag reads the uint16 field as is: unlabelled points come back as 65535
    np.testing.assert_array_equal(back.labels, np.where(original.labels < 0, UNLABELLED, original.labels))
    assert (original.labels == IGNORE_LABEL).any() and (original.labels >= 0).any()
