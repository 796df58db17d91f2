"""A tiny nuScenes tree in the real on-disk layout, for reader tests.

``write_nuscenes_tree(root)`` writes ROOT/v1.0-mini/*.json (scene, sample,
sample_data, sensor, calibrated_sensor, ego_pose, lidarseg, category),
ROOT/samples/LIDAR_TOP/*.pcd.bin, ROOT/samples/CAM_{FRONT,BACK}/*.jpg and
ROOT/lidarseg/v1.0-mini/<token>_lidarseg.bin: two scenes (named after
mini_train's scene-0061 and mini_val's scene-0103) of two key-frame samples;
the other eight v1.0-mini scene names are listed without samples.

The geometry is built from plain rotations about z and axis permutations, and
the quaternions the tables hold are derived from those matrices, so a test
can compute where a point lands by hand without any quaternion code. The ego
pose at each camera's exposure differs from the one at the lidar sweep (0.6 m
and 0.08 rad apart), so a reader that used the lidar's ego pose for a camera
would miss by several pixels. Point 0 of every sweep sits on a world point in
front of CAM_FRONT, point 1 on one behind the car in CAM_BACK's view.

Tables also hold records a reader must skip: a non-key-frame LIDAR_TOP sweep
and a key-frame RADAR_FRONT record per sample (their files are not written).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

VERSION = "v1.0-mini"
SCENES = ("scene-0103", "scene-0061")  # written in this order; readers order by name
# The other v1.0-mini scenes, listed in scene.json without samples so the built-in mini splits name known scenes.
EMPTY_SCENES = ("scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-0916", "scene-1077", "scene-1094",
                "scene-1100")
IMAGE_SIZE = (64, 48)  # width, height
FX = FY = 40.0
CX, CY = 32.0, 24.0
LIDAR_TRANSLATION = (0.94, 0.0, 1.84)
LIDAR_YAW = -math.pi / 2  # nuScenes LIDAR_TOP: x to the right of the car, y forward
CAMERA_TRANSLATIONS = {"CAM_FRONT": (1.70, 0.02, 1.51), "CAM_BACK": (-1.00, -0.01, 1.56)}
# Camera axes (x right, y down, z forward) as columns in the ego frame (x forward, y left, z up).
CAMERA_AXES = {
    "CAM_FRONT": np.array([[0.0, 0.0, 1.0], [-1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
    "CAM_BACK": np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]]),
}
CAMERA_DELAY_US = {"CAM_FRONT": -30_000, "CAM_BACK": 20_000}  # exposure time relative to the lidar sweep
CAMERA_EGO_OFFSET = (0.6, 0.2, 0.08)  # (dx, dy, dyaw) of the ego at camera time vs lidar time
TARGETS_IN_CAMERA_EGO = {"CAM_FRONT": (12.0, 1.5, 1.0), "CAM_BACK": (-9.0, -1.0, 0.5)}  # ego frame at exposure
TARGET_INDEX = {"CAM_FRONT": 0, "CAM_BACK": 1}
LIDARSEG_PATTERN = (17, 24, 30, 0, 28)  # vehicle.car, flat.driveable_surface, static.vegetation, noise, manmade
LIDARSEG_NAMES = (
    "noise", "animal", "human.pedestrian.adult", "human.pedestrian.child",
    "human.pedestrian.construction_worker", "human.pedestrian.personal_mobility",
    "human.pedestrian.police_officer", "human.pedestrian.stroller", "human.pedestrian.wheelchair",
    "movable_object.barrier", "movable_object.debris", "movable_object.pushable_pullable",
    "movable_object.trafficcone", "static_object.bicycle_rack", "vehicle.bicycle", "vehicle.bus.bendy",
    "vehicle.bus.rigid", "vehicle.car", "vehicle.construction", "vehicle.emergency.ambulance",
    "vehicle.emergency.police", "vehicle.motorcycle", "vehicle.trailer", "vehicle.truck",
    "flat.driveable_surface", "flat.other", "flat.sidewalk", "flat.terrain", "static.manmade", "static.other",
    "static.vegetation", "vehicle.ego",
)


@dataclass(frozen=True)
class EgoPose:
    """The car in the world: a translation and a yaw about z (radians)."""

    x: float
    y: float
    z: float
    yaw: float


@dataclass
class LayoutSample:
    """What was written for one key-frame sample."""

    scene: str
    token: str
    lidar_path: Path
    lidar_token: str
    lidar_stamp_us: int
    lidarseg_path: Path
    raw_labels: np.ndarray  # (N,) uint8 lidarseg ids
    intensity_raw: np.ndarray  # (N,) float32, 0-255
    ego: dict[str, EgoPose]  # channel -> ego pose at that sensor's timestamp
    camera_stamp_us: dict[str, int]
    images: dict[str, Path]
    targets_world: dict[str, np.ndarray]  # camera channel -> (3,) world point that point TARGET_INDEX lands on


@dataclass
class NuScenesLayout:
    root: Path
    version: str
    samples: list[LayoutSample] = field(default_factory=list)  # in reader order: scene name, then time

    def by_scene(self, scene: str) -> list[LayoutSample]:
        return [s for s in self.samples if s.scene == scene]


def rot_z(yaw: float) -> np.ndarray:
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def quaternion_of(R: np.ndarray) -> list[float]:
    """Rotation matrix -> [w, x, y, z] (trace > -1, true of every rotation used here)."""
    w = math.sqrt(max(0.0, 1.0 + R[0, 0] + R[1, 1] + R[2, 2])) / 2.0
    assert w > 0.1, "rotation too close to 180 degrees for this formula"
    return [w, (R[2, 1] - R[1, 2]) / (4 * w), (R[0, 2] - R[2, 0]) / (4 * w), (R[1, 0] - R[0, 1]) / (4 * w)]


def _transform(R: np.ndarray, t: tuple[float, ...] | np.ndarray) -> np.ndarray:
    T = np.eye(4)
    T[:3, :3] = R
    T[:3, 3] = t
    return T


def _world_from_ego(pose: EgoPose) -> np.ndarray:
    return _transform(rot_z(pose.yaw), (pose.x, pose.y, pose.z))


def _file_stem(channel: str, stamp_us: int) -> str:
    """nuScenes file names: <log>__<channel>__<timestamp in microseconds>."""
    return f"n008-2018-08-01-15-16-36-0400__{channel}__{stamp_us}"


def _write_json(path: Path, records: list[dict]) -> None:
    path.write_text(json.dumps(records, indent=1))


@dataclass
class _SensorRecords:
    """The sample_data and ego_pose tables, filled one sensor reading at a time."""

    sample_data: list[dict] = field(default_factory=list)
    ego_pose: list[dict] = field(default_factory=list)

    def add(self, sample_token: str, channel: str, stamp_us: int, pose: EgoPose, filename: str, key: bool = True,
            size: tuple[int, int] = (0, 0)) -> str:
        """One reading and the ego pose at its timestamp; returns its sample_data token."""
        token = f"sd_{channel}_{sample_token}" + ("" if key else "_sweep")
        self.ego_pose.append({"token": f"ego_{token}", "timestamp": stamp_us, "translation": [pose.x, pose.y, pose.z],
                              "rotation": quaternion_of(rot_z(pose.yaw))})
        self.sample_data.append({"token": token, "sample_token": sample_token, "ego_pose_token": f"ego_{token}",
                                 "calibrated_sensor_token": f"cs_{channel}", "timestamp": stamp_us,
                                 "fileformat": filename.rsplit(".", 1)[-1], "is_key_frame": key,
                                 "height": size[1], "width": size[0], "filename": filename, "prev": "", "next": ""})
        return token


def write_nuscenes_tree(root: Path, num_points: int = 200, labels: bool = True) -> NuScenesLayout:
    """Write the tree under ``root``; ``labels=False`` leaves lidarseg.json, category.json and lidarseg/ out."""
    rng = np.random.default_rng(7)
    table_dir = root / VERSION
    table_dir.mkdir(parents=True, exist_ok=True)
    layout = NuScenesLayout(root=root, version=VERSION)

    channels = {"LIDAR_TOP": "lidar", "CAM_FRONT": "camera", "CAM_BACK": "camera", "RADAR_FRONT": "radar"}
    sensors = [{"token": f"sensor_{c}", "channel": c, "modality": m} for c, m in channels.items()]
    calibs = [
        {"token": "cs_LIDAR_TOP", "sensor_token": "sensor_LIDAR_TOP", "translation": list(LIDAR_TRANSLATION),
         "rotation": quaternion_of(rot_z(LIDAR_YAW)), "camera_intrinsic": []},
        {"token": "cs_RADAR_FRONT", "sensor_token": "sensor_RADAR_FRONT", "translation": [3.4, 0.0, 0.5],
         "rotation": [1.0, 0.0, 0.0, 0.0], "camera_intrinsic": []},
    ]
    for cam, t in CAMERA_TRANSLATIONS.items():
        calibs.append({"token": f"cs_{cam}", "sensor_token": f"sensor_{cam}", "translation": list(t),
                       "rotation": quaternion_of(CAMERA_AXES[cam]),
                       "camera_intrinsic": [[FX, 0.0, CX], [0.0, FY, CY], [0.0, 0.0, 1.0]]})
    ego_from_lidar = _transform(rot_z(LIDAR_YAW), LIDAR_TRANSLATION)

    scenes, samples, lidarseg = [], [], []
    readings = _SensorRecords()
    for scene_number, scene in enumerate(SCENES):
        scene_token = f"scene_{scene}"
        sample_tokens = [f"sample_{scene}_{k}" for k in range(2)]
        scenes.append({"token": scene_token, "log_token": "log_0", "nbr_samples": 2, "name": scene,
                       "description": "test scene", "first_sample_token": sample_tokens[0],
                       "last_sample_token": sample_tokens[-1]})
        for k, token in enumerate(sample_tokens):
            step = 2 * scene_number + k
            stamp = 1_532_402_927_000_000 + 10_000_000 * scene_number + 500_000 * k
            samples.append({"token": token, "timestamp": stamp, "scene_token": scene_token,
                            "prev": sample_tokens[k - 1] if k else "",
                            "next": sample_tokens[k + 1] if k + 1 < len(sample_tokens) else ""})
            lidar_ego = EgoPose(100.0 + 5 * step, 50.0 - 2 * step, 0.3, 0.3 + 0.1 * step)
            dx, dy, dyaw = CAMERA_EGO_OFFSET
            cam_ego = EgoPose(lidar_ego.x + dx, lidar_ego.y + dy, lidar_ego.z, lidar_ego.yaw + dyaw)
            ego = {"LIDAR_TOP": lidar_ego, **{cam: cam_ego for cam in CAMERA_TRANSLATIONS}}

            lidar_name = f"samples/LIDAR_TOP/{_file_stem('LIDAR_TOP', stamp)}.pcd.bin"
            lidar_token = readings.add(token, "LIDAR_TOP", stamp, lidar_ego, lidar_name)
            readings.add(token, "LIDAR_TOP", stamp + 50_000, lidar_ego,
                         f"sweeps/LIDAR_TOP/{_file_stem('LIDAR_TOP', stamp + 50_000)}.pcd.bin", key=False)
            readings.add(token, "RADAR_FRONT", stamp + 5_000, lidar_ego,
                         f"samples/RADAR_FRONT/{_file_stem('RADAR_FRONT', stamp + 5_000)}.pcd")

            points = np.empty((num_points, 5), dtype=np.float32)
            points[:, :2] = rng.uniform(-20, 20, size=(num_points, 2))
            points[:, 2] = rng.uniform(-2, 2, size=num_points)
            points[:, 3] = rng.integers(0, 256, size=num_points)
            points[:, 4] = rng.integers(0, 32, size=num_points)
            points[2, 3], points[3, 3] = 255.0, 0.0
            world_from_lidar = _world_from_ego(lidar_ego) @ ego_from_lidar
            targets, images, cam_stamps = {}, {}, {}
            for cam in CAMERA_TRANSLATIONS:
                cam_stamps[cam] = stamp + CAMERA_DELAY_US[cam]
                image_name = f"samples/{cam}/{_file_stem(cam, cam_stamps[cam])}.jpg"
                readings.add(token, cam, cam_stamps[cam], cam_ego, image_name, size=IMAGE_SIZE)
                images[cam] = root / image_name
                images[cam].parent.mkdir(parents=True, exist_ok=True)
                pixels = rng.integers(0, 256, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
                Image.fromarray(pixels).save(images[cam], quality=90)
                world = _world_from_ego(cam_ego) @ np.array([*TARGETS_IN_CAMERA_EGO[cam], 1.0])
                targets[cam] = world[:3]
                points[TARGET_INDEX[cam], :3] = (np.linalg.inv(world_from_lidar) @ world)[:3]
            lidar_path = root / lidar_name
            lidar_path.parent.mkdir(parents=True, exist_ok=True)
            points.tofile(lidar_path)

            raw = np.array([LIDARSEG_PATTERN[i % len(LIDARSEG_PATTERN)] for i in range(num_points)], dtype=np.uint8)
            seg_name = f"lidarseg/{VERSION}/{lidar_token}_lidarseg.bin"
            if labels:
                (root / seg_name).parent.mkdir(parents=True, exist_ok=True)
                raw.tofile(root / seg_name)
                lidarseg.append({"token": lidar_token, "sample_data_token": lidar_token, "filename": seg_name})
            layout.samples.append(LayoutSample(
                scene=scene, token=token, lidar_path=lidar_path, lidar_token=lidar_token, lidar_stamp_us=stamp,
                lidarseg_path=root / seg_name, raw_labels=raw, intensity_raw=points[:, 3].copy(), ego=ego,
                camera_stamp_us=cam_stamps, images=images, targets_world=targets))

    scenes += [{"token": f"scene_{name}", "log_token": "log_0", "nbr_samples": 0, "name": name,
                "description": "no samples in this tree", "first_sample_token": "", "last_sample_token": ""}
               for name in EMPTY_SCENES]
    samples.reverse()  # the table's order is not the reader's order
    tables = {"scene": scenes, "sample": samples, "sample_data": readings.sample_data, "sensor": sensors,
              "calibrated_sensor": calibs, "ego_pose": readings.ego_pose}
    if labels:
        tables["lidarseg"] = lidarseg
        tables["category"] = [{"token": f"cat_{i}", "name": name, "description": "", "index": i}
                              for i, name in enumerate(LIDARSEG_NAMES)]
    for name, records in tables.items():
        _write_json(table_dir / f"{name}.json", records)
    layout.samples.sort(key=lambda s: (s.scene, s.lidar_stamp_us))
    return layout
