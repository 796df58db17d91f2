"""The ``bag:`` data source: a recorded bag read once into an on-disk scan cache, then indexed like a data set.

    bag:/data/robot_2026_11_27?label_set=scannet20&cloud=/camera/points&cameras=/camera/color/image_raw

Training wants random access and epochs; a bag is a stream and a user's
recording can be far larger than memory. So opening the source streams the
bag once through data.rosbag.RosbagScans (the replay's own pairing of clouds,
images, CameraInfo and tf) and writes each Scan to ``<i>.npz`` (np.savez, no
object arrays) in a cache folder; ``load(i)`` reads one file back.

The cache folder, under ``scan_cache`` (default ~/.cache/ttt_kd_ros/bag_scans),
is named by the bag's resolved path, the size and mtime of its files and the
options that change the scans (cloud, cameras, slop_s, max_range_m,
label_set). Building it shows a tqdm bar (when stderr is a terminal, as the
replay and make-bag tools do; its total is the cloud count of the bag's
index, so it has an ETA) and logs how long it took. A folder is built under a
temporary name and renamed into place after its manifest.json (written
last, atomically) is complete, so a folder with a valid manifest is whole and
is reused without reading the bag; one without a manifest is removed and
rebuilt. Processes opening the same bag at
once (DDP ranks) each build their own and the first rename wins.

Labels: with ``label_set`` the cloud's ``label`` field holds training ids of
that set; 65535 (and -1 of a signed field) mean no ground truth
(IGNORE_LABEL); any other id outside 0..C-1 is a ValueError naming the bag,
the scan and the ids. Without ``label_set`` the source is unlabeled and a
label field is dropped. A cloud that cannot be decoded is logged and skipped;
``source.skipped`` counts them (kept in the manifest, so a reused cache says so too).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ttt_kd_ros.data.rosbag import RosbagScans, read_bag_messages
from ttt_kd_ros.data.source_spec import SourceSpec
from ttt_kd_ros.data.sources import DataSource
from ttt_kd_ros.labels import get_label_set
from ttt_kd_ros.scan import IGNORE_LABEL, CameraIntrinsics, CameraView, Scan

LOG = logging.getLogger(__name__)

DEFAULT_SCAN_CACHE = "~/.cache/ttt_kd_ros/bag_scans"
CACHE_FORMAT = 1  # bump when the npz layout changes: older folders then no longer match
MANIFEST = "manifest.json"
UNLABELED_U16 = 65535
"""``label`` value of a point without ground truth (replay.bag_writer writes IGNORE_LABEL as this)."""


# ------------------------------------------------------------------------------------------------ one scan <-> npz


def scan_to_arrays(scan: Scan) -> dict[str, np.ndarray]:
    """A Scan as named plain arrays (numbers and unicode strings only, so np.load never needs pickle)."""
    out: dict[str, np.ndarray] = {
        "points": scan.points_xyz_m,
        "stamp_ns": np.int64(scan.stamp_ns),
        "frame_id": np.str_(scan.frame_id),
        "num_cameras": np.int64(len(scan.cameras)),
    }
    for name, value in (("intensity", scan.intensity), ("rgb", scan.rgb), ("labels", scan.labels)):
        if value is not None:
            out[name] = value
    for k, view in enumerate(scan.cameras):
        intr = view.intrinsics
        prefix = f"cam{k}_"
        out[prefix + "image"] = view.image_rgb
        out[prefix + "K"] = intr.K
        out[prefix + "D"] = intr.D
        out[prefix + "distortion_model"] = np.str_(intr.distortion_model)
        out[prefix + "size"] = np.array([intr.width_px, intr.height_px], dtype=np.int64)
        out[prefix + "cam_from_cloud"] = view.cam_from_cloud
        out[prefix + "name"] = np.str_(view.name)
        out[prefix + "stamp_ns"] = np.int64(view.stamp_ns)
        if intr.rectification is not None:
            out[prefix + "R"] = intr.rectification
        if intr.projection is not None:
            out[prefix + "P"] = intr.projection
    return out


def arrays_to_scan(arrays: Any, label_set: str) -> Scan:
    """The Scan ``scan_to_arrays`` wrote (``arrays``: an NpzFile or a dict)."""
    cameras = []
    for k in range(int(arrays["num_cameras"])):
        prefix = f"cam{k}_"
        width, height = (int(v) for v in arrays[prefix + "size"])
        intr = CameraIntrinsics(
            K=arrays[prefix + "K"], width_px=width, height_px=height,
            distortion_model=str(arrays[prefix + "distortion_model"]), D=arrays[prefix + "D"],
            rectification=arrays.get(prefix + "R"),
            projection=arrays.get(prefix + "P"),
        )
        cameras.append(CameraView(image_rgb=arrays[prefix + "image"], intrinsics=intr,
                                  cam_from_cloud=arrays[prefix + "cam_from_cloud"],
                                  stamp_ns=int(arrays[prefix + "stamp_ns"]), name=str(arrays[prefix + "name"])))
    labels = arrays.get("labels")
    return Scan(
        points_xyz_m=arrays["points"],
        intensity=arrays.get("intensity"),
        rgb=arrays.get("rgb"),
        labels=labels,
        cameras=cameras,
        stamp_ns=int(arrays["stamp_ns"]),
        frame_id=str(arrays["frame_id"]),
        label_set=label_set if labels is not None else "",
    )


# ------------------------------------------------------------------------------------------------------ labels


def bag_labels_to_train(raw: np.ndarray, num_classes: int, where: str) -> np.ndarray:
    """A cloud's ``label`` values -> training ids: 65535 and -1 -> IGNORE_LABEL; ValueError naming ``where`` and
    up to 10 ids outside 0..num_classes-1."""
    raw = np.asarray(raw, dtype=np.int64)
    ignore = (raw == UNLABELED_U16) | (raw == IGNORE_LABEL)
    bad = ~ignore & ((raw < 0) | (raw >= num_classes))
    if bad.any():
        ids = np.unique(raw[bad])
        raise ValueError(f"{where}: label id(s) {ids[:10].tolist()} outside the label set's 0..{num_classes - 1} "
                         f"({int(bad.sum())} point(s); 65535 marks a point without ground truth)")
    return np.where(ignore, IGNORE_LABEL, raw)


def cloud_field_names(path: Path, cloud_topic: str) -> list[str]:
    """Field names of the first cloud on ``cloud_topic`` (for error messages)."""
    for item in read_bag_messages(path, [cloud_topic]):
        return sorted(str(f.name) for f in item.msg.fields)
    return []


# ------------------------------------------------------------------------------------------------- the cache


def bag_fingerprint(path: Path) -> list[list[Any]]:
    """[name, size, mtime_ns] of the bag file, or of every file in a rosbag2 folder (a folder's own mtime does
    not change when a file in it is rewritten)."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    out = []
    for file in files:
        stat = file.stat()
        out.append([file.relative_to(path).as_posix() if path.is_dir() else file.name, stat.st_size,
                    stat.st_mtime_ns])
    return out


def cache_key(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """What a cache folder stands for: the format, the bag (resolved path, its files' sizes and mtimes) and the
    options that change the scans."""
    return {"format": CACHE_FORMAT, "bag": str(path), "files": bag_fingerprint(path), "options": options}


def cache_folder(cache_root: Path, key: dict[str, Any]) -> Path:
    """``<cache_root>/<bag name>-<hash of key>``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]
    name = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(key["bag"]).name)[:48]
    return cache_root / f"{name}-{digest}"


def read_manifest(folder: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The folder's manifest when it is complete and made for ``key``; None otherwise."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("key") != key:
        return None
    if len(manifest.get("stamps_ns", ())) != manifest.get("scans"):
        return None
    return manifest


def _write_json_atomic(path: Path, value: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(value, indent=1, sort_keys=True))
    os.replace(tmp, path)


def _partial_prefix(folder: Path) -> str:
    return f".{folder.name}.partial-"


def _remove_stale_partials(folder: Path) -> None:
    """Remove temporary folders of ``folder`` left by builds on this host whose process has ended."""
    host = socket.gethostname()
    for partial in folder.parent.glob(_partial_prefix(folder) + "*"):
        other_host, _, pid = partial.name[len(_partial_prefix(folder)):].rpartition("-")
        if other_host != host or not pid.isdigit():
            continue
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except PermissionError:
            pass  # alive, another user's


class BagSource(DataSource):
    """The scans of one bag, read from its scan cache (see the module docstring)."""

    kind = "bag"

    def __init__(self, path: Path, folder: Path, manifest: dict[str, Any], spec: str) -> None:
        super().__init__(spec)
        self.path = path
        self.cache_dir = folder
        self.label_set = manifest["label_set"]
        self.stamps_ns: list[int] = [int(s) for s in manifest["stamps_ns"]]
        self.skipped = int(manifest["skipped"])
        self.camera_misses: dict[str, int] = dict(manifest["camera_misses"])
        self.cloud_topic = str(manifest["cloud_topic"])
        self.cameras: list[str] = list(manifest["cameras"])

    def __len__(self) -> int:
        return len(self.stamps_ns)

    def scan_path(self, index: int) -> Path:
        return self.cache_dir / f"{index:06d}.npz"

    def load(self, index: int) -> Scan:
        path = self.scan_path(index)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: cached scan {index} of {self.path} missing; remove {self.cache_dir} "
                                    "to rebuild the cache")
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return arrays_to_scan(arrays, self.label_set)
        except (OSError, KeyError, ValueError) as err:
            raise ValueError(f"{path}: cached scan {index} of {self.path} cannot be read ({err}); remove "
                             f"{self.cache_dir} to rebuild the cache") from err

    def item_name(self, index: int) -> str:
        return f"{self.path} scan {index} (stamp {self.stamps_ns[index]} ns)"


def cloud_count(path: Path, topic: str) -> int | None:
    """Messages on ``topic`` by the bag's own index (an MCAP summary, rosbag2 metadata, a ROS 1 index): no
    message is read. None when the bag does not say; it is only the total of a progress bar."""
    try:
        if path.is_file() and path.suffix == ".mcap":
            from mcap.reader import make_reader

            with path.open("rb") as stream:
                summary = make_reader(stream).get_summary()
            counts = summary.statistics.channel_message_counts
            return sum(counts.get(cid, 0) for cid, channel in summary.channels.items() if channel.topic == topic)
        from rosbags.highlevel import AnyReader

        with AnyReader([path]) as reader:
            return sum(c.msgcount for c in reader.connections if c.topic == topic)
    except Exception as err:  # any reader's failure only costs the bar its total
        LOG.debug("%s: no message count for %s (%s)", path, topic, err)
        return None


def build_scan_cache(path: Path, folder: Path, key: dict[str, Any], reader: RosbagScans,
                     label_set: str, progress: bool = False) -> dict[str, Any]:
    """Stream ``reader`` into ``folder`` (built under a temporary name, manifest last, then renamed into place);
    returns the manifest of the folder that ends up there. ``progress``: a tqdm bar over the bag's clouds."""
    from tqdm import tqdm

    num_classes = get_label_set(label_set).num_classes if label_set else 0
    start = time.perf_counter()
    folder.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(folder)
    tmp = folder.parent / f"{_partial_prefix(folder)}{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stamps: list[int] = []
        total = cloud_count(path, reader.cloud_topic) if progress else None
        for scan in tqdm(reader, desc=f"scan cache of {path.name}", unit="scan", total=total, disable=not progress):
            index = len(stamps)
            where = f"bag {path} scan {index} (stamp {scan.stamp_ns} ns)"
            if not label_set:
                scan.labels, scan.label_set = None, ""
            elif scan.labels is None:
                raise ValueError(f"bag {path}: label_set={label_set} given but the clouds on {reader.cloud_topic} "
                                 f"have no 'label' field (fields: {cloud_field_names(path, reader.cloud_topic)}); "
                                 "leave label_set out to read the bag unlabeled")
            else:
                scan.labels = bag_labels_to_train(scan.labels, num_classes, where)
            np.savez(tmp / f"{index:06d}.npz", **scan_to_arrays(scan))
            stamps.append(scan.stamp_ns)
        manifest = {
            "key": key,
            "label_set": label_set,
            "scans": len(stamps),
            "stamps_ns": stamps,
            "skipped": reader.stats.bad_clouds,
            "camera_misses": reader.stats.camera_misses,
            "cloud_topic": reader.cloud_topic,
            "cameras": [cam.image for cam in reader.cameras],
        }
        _write_json_atomic(tmp / MANIFEST, manifest)
        LOG.info("%s: %d scans cached in %.1f s", path, len(stamps), time.perf_counter() - start)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    try:
        os.rename(tmp, folder)
    except OSError:
        finished = read_manifest(folder, key)  # another process renamed its copy first
        shutil.rmtree(tmp, ignore_errors=True)
        if finished is None:
            raise
        return finished
    return manifest


def open_bag_cache(path: Path, options: dict[str, Any], cache_root: Path,
                   progress: bool | None = None) -> tuple[Path, dict[str, Any]]:
    """(cache folder, manifest) of a bag: reused when complete, (re)built from the bag otherwise; ``progress``
    (a bar while building) defaults to whether stderr is a terminal."""
    key = cache_key(path, options)
    folder = cache_folder(cache_root, key)
    manifest = read_manifest(folder, key)
    if manifest is not None:
        LOG.info("%s: reusing the scan cache %s (%d scans)", path, folder, manifest["scans"])
        return folder, manifest
    if folder.exists():
        LOG.warning("%s: scan cache %s is incomplete; rebuilding it", path, folder)
        shutil.rmtree(folder)
    LOG.info("%s: reading the bag once into the scan cache %s", path, folder)
    reader = RosbagScans(path, cloud_topic=options["cloud"], cameras=options["cameras"], slop_s=options["slop_s"],
                         label_set=options["label_set"], max_range_m=options["max_range_m"])
    progress = sys.stderr.isatty() if progress is None else progress
    return folder, build_scan_cache(path, folder, key, reader, options["label_set"], progress)


def _cameras_option(text: str | None) -> list[str] | None:
    """``cameras=``: None (absent) detects them, "none" reads clouds only, else a comma list of image topics."""
    if text is None:
        return None
    if text.strip().lower() == "none":
        return []
    return [t.strip() for t in text.split(",") if t.strip()]


def open_bag(spec: SourceSpec, defaults: dict[str, int]) -> DataSource:
    """``bag:PATH?label_set=NAME&cloud=/topic&cameras=/a/image_raw,/b/image_raw|none&slop_s=0.05&max_range_m=M
    &scan_cache=DIR``."""
    where = f"data spec {spec.text!r}"
    label_set = spec.take_str("label_set", "") or ""
    if label_set:
        get_label_set(label_set)
    slop_s = spec.take_float("slop_s", 0.05)
    if not slop_s >= 0:
        raise ValueError(f"{where}: option slop_s={slop_s}: expected >= 0")
    max_range_m = spec.take_float("max_range_m", None)
    if max_range_m is not None and not max_range_m > 0:
        raise ValueError(f"{where}: option max_range_m={max_range_m}: expected > 0")
    options = {
        "label_set": label_set,
        "cloud": spec.take_str("cloud"),
        "cameras": _cameras_option(spec.take_str("cameras")),
        "slop_s": slop_s,
        "max_range_m": max_range_m,
    }
    cache_root = Path(spec.take_str("scan_cache", DEFAULT_SCAN_CACHE) or DEFAULT_SCAN_CACHE).expanduser()
    spec.finish()  # a typo must not cost a pass over the bag first
    path = spec.path.resolve()
    if not path.exists():
        raise FileNotFoundError(f"{where}: bag not found: {path}")
    folder, manifest = open_bag_cache(path, options, cache_root)
    source = BagSource(path, folder, manifest, spec.text)
    if source.skipped:
        LOG.warning("%s: %d cloud(s) could not be decoded and are skipped (%d scans kept)", path, source.skipped,
                    len(source))
    return source
