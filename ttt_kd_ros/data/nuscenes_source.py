"""nuScenes as a DataSource: the real on-disk layout (JSON tables + samples/ + lidarseg/), or an mmdet3d info JSON.

``nuscenes:ROOT?version=v1.0-trainval&split=train`` reads the tables of
``ROOT/<version>/`` once at open and gives one Scan per key-frame sample,
ordered by scene name, then sample timestamp:

- the key-frame ``LIDAR_TOP`` sweep (``samples/LIDAR_TOP/*.pcd.bin``) in its
  own frame, intensity 0-255 scaled to [0, 1], stamp from its timestamp (us);
- every key-frame camera of the sample (``CAM_*``, six in the real data set)
  with K = ``calibrated_sensor.camera_intrinsic`` and
  cam_from_cloud = inv(cam calib) @ inv(ego pose at the camera's time)
  @ ego pose at the lidar's time @ lidar calib. The ego moves between the
  lidar and each camera exposure, so the two ego poses differ;
- nuScenes-lidarseg labels (``lidarseg/<version>/<token>_lidarseg.bin``, one
  uint8 class index per point) when ``lidarseg.json`` is in the version
  folder, mapped to SEMANTIC_KITTI19 by labels.lidarseg_to_semantic_kitti.

A ROOT ending in ``.json`` is an mmdet3d info file instead, read by
data.nuscenes (one Scan per ``data_list`` entry).
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.data.calib import info_lidar_path, load_image_rgb
from ttt_kd_ros.data.nuscenes import load_nuscenes_sample
from ttt_kd_ros.data.pointfiles import read_nuscenes_bin
from ttt_kd_ros.data.source_spec import SourceSpec
from ttt_kd_ros.data.sources import DataSource
from ttt_kd_ros.labels import LIDARSEG_RAW_IDS, SEMANTIC_KITTI19, check_raw_ids, lidarseg_to_semantic_kitti
from ttt_kd_ros.scan import CameraIntrinsics, CameraView, Scan

DEFAULT_VERSION = "v1.0-trainval"
LIDAR_CHANNEL = "LIDAR_TOP"

# The official v1.0-mini splits (nuscenes-devkit, nuscenes/utils/splits.py), usable without a splits/ file.
MINI_SPLITS: dict[str, tuple[str, ...]] = {
    "mini_train": ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796", "scene-1077",
                   "scene-1094", "scene-1100"),
    "mini_val": ("scene-0103", "scene-0916"),
}

# nuScenes-lidarseg class index -> category name (category.json "index"); labels.py maps the indices, so a
# category.json that numbers the classes otherwise would silently relabel every point.
LIDARSEG_CLASS_NAMES = (
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


# ------------------------------------------------------------------------------------------------- geometry


def rotation_from_quaternion(q: Any, where: str) -> np.ndarray:
    """nuScenes quaternion [w, x, y, z] -> (3, 3) rotation (normalised; ValueError naming ``where`` if invalid)."""
    q = np.asarray(q, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(q)) if q.size == 4 else 0.0
    if q.size != 4 or not np.isfinite(q).all() or norm < 1e-9:
        raise ValueError(f"{where}: rotation: expected a unit quaternion [w, x, y, z], got {q.tolist()}")
    w, x, y, z = q / norm
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def pose_matrix(record: dict[str, Any], where: str) -> np.ndarray:
    """A record's ``translation`` + ``rotation`` -> (4, 4) parent_from_child (sensor -> ego, ego -> global)."""
    t = np.asarray(record["translation"], dtype=np.float64).reshape(-1)
    if t.size != 3 or not np.isfinite(t).all():
        raise ValueError(f"{where}: translation: expected 3 finite numbers, got {t.tolist()}")
    T = np.eye(4)
    T[:3, :3] = rotation_from_quaternion(record["rotation"], where)
    T[:3, 3] = t
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid (4, 4) transform."""
    inv = np.eye(4)
    inv[:3, :3] = T[:3, :3].T
    inv[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return inv


# --------------------------------------------------------------------------------------------------- tables


def read_table(folder: Path, name: str) -> list[dict[str, Any]]:
    """``folder/<name>.json`` -> its records; FileNotFoundError / ValueError naming the file."""
    path = folder / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: nuScenes table {name}.json not found (expected in ROOT/<version>/)")
    try:
        records = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    return records


@contextmanager
def _fields_of(path: Path) -> Iterator[None]:
    """Turn a KeyError while reading ``path``'s records into a ValueError naming the file and the field."""
    try:
        yield
    except KeyError as exc:
        raise ValueError(f"{path}: a record has no field {exc.args[0]!r} (not a nuScenes table?)") from None


def _by_token(records: list[dict[str, Any]], path: Path) -> dict[str, dict[str, Any]]:
    with _fields_of(path):
        return {r["token"]: r for r in records}


def _lookup(table: dict[str, dict[str, Any]], token: str, path: Path, referrer: str) -> dict[str, Any]:
    record = table.get(token)
    if record is None:
        raise ValueError(f"{path}: no record with token {token!r} (referenced by {referrer})")
    return record


def read_scene_list(path: Path) -> list[str]:
    """One scene name per line (blank lines and ``#`` comments skipped), duplicates dropped, order kept."""
    names = [line.strip() for line in path.read_text().splitlines()]
    names = list(dict.fromkeys(n for n in names if n and not n.startswith("#")))
    if not names:
        raise ValueError(f"{path}: no scene names (expected one per line, e.g. scene-0061)")
    return names


@dataclass(frozen=True, eq=False)
class CameraRecord:
    """One key-frame camera image of a sample, with its geometry resolved at open."""

    channel: str
    image_path: Path
    K: np.ndarray  # (3, 3)
    cam_from_cloud: np.ndarray  # (4, 4): X_cam = T @ X_lidar
    stamp_ns: int
    size_px: tuple[int, int]  # (width, height) sample_data states; (0, 0) when it does not


@dataclass(frozen=True, eq=False)
class SampleRecord:
    """One key-frame sample: where its files are and how its cameras see the lidar."""

    scene: str
    sample_token: str
    lidar_path: Path
    stamp_ns: int
    cameras: tuple[CameraRecord, ...]
    lidarseg_path: Path | None


def index_samples(root: Path, version: str, scene_names: list[str] | None, cameras: bool
                  ) -> tuple[list[SampleRecord], bool]:
    """The key-frame samples of the named scenes (all when None) and whether lidarseg labels exist.

    Every table is read once and indexed by token; sample_data and ego_pose keep only the records the chosen
    samples use, so a trainval open holds the key frames of its scenes, not every sweep.
    """
    folder = root / version
    if not folder.is_dir():
        found = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name.startswith("v1.0"))
        raise FileNotFoundError(f"{folder}: nuScenes version folder not found (version={version!r}; "
                                f"version folders in {root}: {found})")
    samples, scene_of = _chosen_samples(folder, scene_names)
    key_frames, calibs = _key_frames(folder, {s["token"] for s in samples}, cameras)
    used_poses = {sd["ego_pose_token"] for by_channel in key_frames.values() for sd in by_channel.values()}
    with _fields_of(folder / "ego_pose.json"):
        poses = {r["token"]: r for r in read_table(folder, "ego_pose") if r["token"] in used_poses}
    seg_files = _lidarseg_files(folder)
    geometry = _Geometry(folder, calibs, poses)

    records, missing_seg = [], []
    for sample in samples:
        scene = scene_of[sample["scene_token"]]
        by_channel = key_frames.get(sample["token"], {})
        lidar = by_channel.get(LIDAR_CHANNEL)
        if lidar is None:
            raise ValueError(f"{folder / 'sample_data.json'}: sample {sample['token']} (scene {scene}) has no "
                             f"key-frame {LIDAR_CHANNEL} record")
        global_from_lidar = geometry.global_from_sensor(lidar)
        views = tuple(geometry.camera(root, by_channel[c], global_from_lidar, c)
                      for c in sorted(by_channel) if c != LIDAR_CHANNEL)
        seg = None
        if seg_files is not None:
            name = seg_files.get(lidar["token"])
            if name is None:
                missing_seg.append(lidar["token"])
            else:
                seg = root / name
        records.append(SampleRecord(scene=scene, sample_token=sample["token"], lidar_path=root / lidar["filename"],
                                    stamp_ns=int(lidar["timestamp"]) * 1000, cameras=views, lidarseg_path=seg))
    if missing_seg:
        raise ValueError(f"{folder / 'lidarseg.json'}: no entry for {len(missing_seg)} key-frame {LIDAR_CHANNEL} "
                         f"sample_data token(s), e.g. {missing_seg[:5]}")
    return records, seg_files is not None


def _chosen_samples(folder: Path, scene_names: list[str] | None
                    ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """(the samples of the named scenes ordered by scene name then timestamp, scene token -> name)."""
    scene_path = folder / "scene.json"
    with _fields_of(scene_path):
        scenes = {r["name"]: r["token"] for r in read_table(folder, "scene")}
    if scene_names is None:
        scene_names = list(scenes)
    unknown = [n for n in scene_names if n not in scenes]
    if unknown:
        raise ValueError(f"{scene_path}: {len(unknown)} scene name(s) not in this version: {unknown[:20]}")
    scene_of = {scenes[n]: n for n in scene_names}
    with _fields_of(folder / "sample.json"):
        samples = [s for s in read_table(folder, "sample") if s["scene_token"] in scene_of]
        samples.sort(key=lambda s: (scene_of[s["scene_token"]], s["timestamp"]))
    return samples, scene_of


def _key_frames(folder: Path, wanted: set[str], cameras: bool
                ) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """(sample token -> channel -> key-frame sample_data of LIDAR_TOP and, with ``cameras``, every camera;
    calibrated_sensor token -> record)."""
    sensor_path, calib_path, data_path = folder / "sensor.json", folder / "calibrated_sensor.json", \
        folder / "sample_data.json"
    sensors = _by_token(read_table(folder, "sensor"), sensor_path)
    calibs = _by_token(read_table(folder, "calibrated_sensor"), calib_path)
    channel_of: dict[str, tuple[str, str]] = {}  # calibrated_sensor token -> (channel, modality)
    for token, cs in calibs.items():
        with _fields_of(calib_path):
            sensor = _lookup(sensors, cs["sensor_token"], sensor_path, f"calibrated_sensor {token}")
        with _fields_of(sensor_path):
            channel_of[token] = (sensor["channel"], sensor["modality"])

    key_frames: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    with _fields_of(data_path):
        for sd in read_table(folder, "sample_data"):
            if not sd["is_key_frame"] or sd["sample_token"] not in wanted:
                continue
            if sd["calibrated_sensor_token"] not in channel_of:
                raise ValueError(f"{calib_path}: no record with token {sd['calibrated_sensor_token']!r} "
                                 f"(referenced by sample_data {sd['token']})")
            channel, modality = channel_of[sd["calibrated_sensor_token"]]
            if channel == LIDAR_CHANNEL or (cameras and modality == "camera"):
                if channel in key_frames[sd["sample_token"]]:
                    raise ValueError(f"{data_path}: sample {sd['sample_token']} has two key-frame {channel} "
                                     "records")
                key_frames[sd["sample_token"]][channel] = sd
    return key_frames, calibs


def _lidarseg_files(folder: Path) -> dict[str, str] | None:
    """lidar sample_data token -> lidarseg file (relative to ROOT); None when the version has no lidarseg.json."""
    path = folder / "lidarseg.json"
    if not path.is_file():
        return None
    with _fields_of(path):
        files = {r["sample_data_token"]: r["filename"] for r in read_table(folder, "lidarseg")}
    if (folder / "category.json").is_file():
        check_lidarseg_categories(read_table(folder, "category"), folder / "category.json")
    return files


class _Geometry:
    """Sensor poses of sample_data records from the calibrated_sensor and (pre-filtered) ego_pose tables."""

    def __init__(self, folder: Path, calibs: dict[str, dict[str, Any]], poses: dict[str, dict[str, Any]]) -> None:
        self.calib_path = folder / "calibrated_sensor.json"
        self.pose_path = folder / "ego_pose.json"
        self.calibs = calibs
        self.poses = poses

    def global_from_sensor(self, sd: dict[str, Any]) -> np.ndarray:
        """(4, 4) global_from_ego (the ego pose at the record's own timestamp) @ ego_from_sensor."""
        where = f"sample_data {sd['token']}"
        cs = _lookup(self.calibs, sd["calibrated_sensor_token"], self.calib_path, where)
        pose = _lookup(self.poses, sd["ego_pose_token"], self.pose_path, where)
        with _fields_of(self.calib_path):
            ego_from_sensor = pose_matrix(cs, f"{self.calib_path}: record {cs['token']}")
        with _fields_of(self.pose_path):
            global_from_ego = pose_matrix(pose, f"{self.pose_path}: record {pose['token']}")
        return global_from_ego @ ego_from_sensor

    def camera(self, root: Path, sd: dict[str, Any], global_from_lidar: np.ndarray, channel: str) -> CameraRecord:
        """A camera record seeing the lidar frame: inv(global_from_cam) @ global_from_lidar."""
        cs = self.calibs[sd["calibrated_sensor_token"]]
        with _fields_of(self.calib_path):
            K = np.asarray(cs["camera_intrinsic"], dtype=np.float64)
        if K.shape != (3, 3) or not np.isfinite(K).all():
            raise ValueError(f"{self.calib_path}: record {cs['token']}: camera_intrinsic: expected a finite 3x3 "
                             f"matrix, got shape {K.shape}")
        return CameraRecord(channel=channel, image_path=root / sd["filename"], K=K,
                            cam_from_cloud=invert_pose(self.global_from_sensor(sd)) @ global_from_lidar,
                            stamp_ns=int(sd["timestamp"]) * 1000,
                            size_px=(int(sd.get("width") or 0), int(sd.get("height") or 0)))


def check_lidarseg_categories(categories: list[dict[str, Any]], path: Path) -> None:
    """ValueError when category.json numbers a lidarseg class differently from the 32 standard indices."""
    for record in categories:
        index = record.get("index")
        if index is None:
            continue
        known = isinstance(index, int) and 0 <= index < len(LIDARSEG_CLASS_NAMES)
        expected = LIDARSEG_CLASS_NAMES[index] if known else None
        if record.get("name") != expected:
            raise ValueError(f"{path}: category index {index} is {record.get('name')!r}, expected {expected!r} "
                             "(labels.py maps the standard nuScenes-lidarseg indices)")


def read_lidarseg_labels(path: Path, num_points: int) -> np.ndarray:
    """A ``_lidarseg.bin`` (uint8 class index per point) -> (N,) SEMANTIC_KITTI19 ids; errors name the file."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: lidarseg label file not found")
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) != num_points:
        raise ValueError(f"{path}: expected {num_points} labels (one per point), got {len(raw)}")
    check_raw_ids(raw, LIDARSEG_RAW_IDS, str(path))
    return lidarseg_to_semantic_kitti(raw)


# ---------------------------------------------------------------------------------------------- the sources


class NuScenesSource(DataSource):
    """Key-frame samples of a nuScenes tree (ROOT/<version>/ tables, ROOT/samples, ROOT/lidarseg)."""

    kind = "nuscenes"
    label_set = SEMANTIC_KITTI19.name

    def __init__(self, root: Path, spec: str, version: str = DEFAULT_VERSION,
                 scene_names: list[str] | None = None, cameras: bool = True) -> None:
        super().__init__(spec)
        if not root.is_dir():
            raise FileNotFoundError(f"data spec {spec!r}: nuScenes folder {root} not found")
        self.root = root
        self.version = version
        self.samples, labeled = index_samples(root, version, scene_names, cameras)
        if not labeled:
            self.label_set = ""

    def __len__(self) -> int:
        return len(self.samples)

    def item_name(self, index: int) -> str:
        return str(self.samples[index].lidar_path)

    def load(self, index: int) -> Scan:
        rec = self.samples[index]
        if not rec.lidar_path.is_file():
            raise FileNotFoundError(f"{rec.lidar_path}: {LIDAR_CHANNEL} file of sample {rec.sample_token} "
                                    f"(scene {rec.scene}) not found")
        points = read_nuscenes_bin(rec.lidar_path)
        labels = None if rec.lidarseg_path is None else read_lidarseg_labels(rec.lidarseg_path, len(points))
        return Scan(
            points_xyz_m=points[:, :3],
            intensity=np.clip(points[:, 3] / 255.0, 0.0, 1.0),  # nuScenes stores 0-255
            cameras=[self._camera(rec, cam) for cam in rec.cameras],
            labels=labels,
            stamp_ns=rec.stamp_ns,
            frame_id=LIDAR_CHANNEL,
            label_set=self.label_set,
        )

    @staticmethod
    def _camera(rec: SampleRecord, cam: CameraRecord) -> CameraView:
        if not cam.image_path.is_file():
            raise FileNotFoundError(f"{cam.image_path}: {cam.channel} image of sample {rec.sample_token} "
                                    f"(scene {rec.scene}) not found")
        image = load_image_rgb(cam.image_path)
        h, w = image.shape[:2]
        if cam.size_px != (0, 0) and cam.size_px != (w, h):
            raise ValueError(f"{cam.image_path}: image is {w}x{h}, sample_data says "
                             f"{cam.size_px[0]}x{cam.size_px[1]} (camera_intrinsic is for that size)")
        return CameraView(image_rgb=image, intrinsics=CameraIntrinsics(K=cam.K, width_px=w, height_px=h),
                          cam_from_cloud=cam.cam_from_cloud, stamp_ns=cam.stamp_ns, name=cam.channel)


class NuScenesInfoSource(DataSource):
    """The samples of an mmdet3d nuScenes info JSON, read by data.nuscenes; labels from ``lidarseg_dir`` when
    given (``<lidar file name without .pcd.bin>_lidarseg.bin``)."""

    kind = "nuscenes"
    label_set = SEMANTIC_KITTI19.name

    def __init__(self, info_path: Path, spec: str, lidarseg_dir: Path | None = None) -> None:
        super().__init__(spec)
        if not info_path.is_file():
            raise FileNotFoundError(f"data spec {spec!r}: info file {info_path} not found")
        if lidarseg_dir is not None and not lidarseg_dir.is_dir():
            raise FileNotFoundError(f"data spec {spec!r}: lidarseg folder {lidarseg_dir} not found")
        doc = json.loads(info_path.read_text())
        meta = doc.get("metainfo", {}) if isinstance(doc, dict) else {}
        dataset = str(meta.get("dataset", meta.get("DATASET", ""))).lower()
        if dataset and dataset != "nuscenes":
            raise ValueError(f"{info_path}: metainfo dataset is {dataset!r}, expected 'nuscenes'")
        frames = doc.get("data_list") if isinstance(doc, dict) else None
        if not isinstance(frames, list):
            raise ValueError(f"{info_path}: expected an mmdet3d info JSON with a 'data_list' list")
        self.info_path = info_path
        self.lidarseg_dir = lidarseg_dir
        self.num_samples = len(frames)
        if lidarseg_dir is None:
            self.label_set = ""

    def __len__(self) -> int:
        return self.num_samples

    def item_name(self, index: int) -> str:
        return str(info_lidar_path(self.info_path, index))

    def load(self, index: int) -> Scan:
        scan = load_nuscenes_sample(self.info_path, index)
        if self.lidarseg_dir is None:
            return scan
        stem = info_lidar_path(self.info_path, index).name.removesuffix(".bin").removesuffix(".pcd")
        labels = read_lidarseg_labels(self.lidarseg_dir / f"{stem}_lidarseg.bin", scan.num_points)
        return replace(scan, labels=labels, label_set=self.label_set)


def scene_selection(spec: SourceSpec, root: Path, version: str) -> list[str] | None:
    """The scene names ``split=`` or ``scenes=`` choose; None (every scene) when neither is given."""
    split = spec.take_str("split")
    scenes_file = spec.take_str("scenes")
    where = f"data spec {spec.text!r}"
    if split is not None and scenes_file is not None:
        raise ValueError(f"{where}: give split= or scenes=, not both")
    if split is not None:
        path = root / "splits" / f"{split}.txt"
        if path.is_file():
            return read_scene_list(path)
        if version == "v1.0-mini" and split in MINI_SPLITS:
            return list(MINI_SPLITS[split])
        built_in = f"; built in for v1.0-mini: {sorted(MINI_SPLITS)}" if version == "v1.0-mini" else ""
        raise ValueError(
            f"{where}: split {split!r}: {path} not found{built_in}. Write the split's scene names there, one per "
            "line; the official splits come from nuscenes-devkit: python -c \"from nuscenes.utils.splits import "
            f"create_splits_scenes; print('\\n'.join(create_splits_scenes()['{split}']))\" > {path}"
        )
    if scenes_file is not None:
        path = Path(scenes_file).expanduser()
        if not path.is_file() and not path.is_absolute():
            path = root / scenes_file
        if not path.is_file():
            raise FileNotFoundError(f"{where}: scenes file {scenes_file!r} not found (as given, nor in {root})")
        return read_scene_list(path)
    return None


def open_nuscenes(spec: SourceSpec, defaults: dict[str, int]) -> DataSource:
    """``nuscenes:ROOT?version=..&split=..|scenes=..&cameras=..`` or ``nuscenes:INFO.json?lidarseg=DIR``."""
    root = spec.path
    if root.suffix == ".json":
        lidarseg = spec.take_str("lidarseg")
        return NuScenesInfoSource(root, spec.text, None if lidarseg is None else Path(lidarseg).expanduser())
    version = spec.take_str("version", DEFAULT_VERSION)
    cameras = spec.take_bool("cameras", True)
    if not root.is_dir():
        raise FileNotFoundError(f"data spec {spec.text!r}: nuScenes folder {root} not found")
    return NuScenesSource(root, spec.text, version=version, scene_names=scene_selection(spec, root, version),
                          cameras=cameras)
