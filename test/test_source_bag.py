"""The bag: data source on a tiny labeled rosbag2 mcap (test/layout_bag.py): labels, the scan cache, errors."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
from layout_bag import CAM_FROM_CLOUD, LABELS, PERIOD_NS, START_NS, image_of, points_of, write_bag

from ttt_kd_ros.data import bag_source
from ttt_kd_ros.data.sources import open_source
from ttt_kd_ros.scan import IGNORE_LABEL

pytest.importorskip("rosbags.rosbag2")


@pytest.fixture
def bag(tmp_path: Path) -> Path:
    return write_bag(tmp_path / "robot")


def _spec(bag: Path, cache: Path, options: str = "") -> str:
    return f"bag:{bag}?scan_cache={cache}" + (f"&{options}" if options else "")


class CountingReader:
    """Stands in for RosbagScans and counts how often the bag is opened."""

    opened = 0

    def __init__(self, *args: object, **kwargs: object) -> None:
        type(self).opened += 1
        self._reader = bag_source_reader(*args, **kwargs)

    def __getattr__(self, name: str) -> object:
        return getattr(self._reader, name)

    def __iter__(self):
        return iter(self._reader)


bag_source_reader = bag_source.RosbagScans


@pytest.fixture
def counting(monkeypatch: pytest.MonkeyPatch) -> type[CountingReader]:
    CountingReader.opened = 0
    monkeypatch.setattr(bag_source, "RosbagScans", CountingReader)
    return CountingReader


def test_open_bag_labels_65535_ignored_and_cameras(bag: Path, tmp_path: Path) -> None:
    source = open_source(_spec(bag, tmp_path / "cache", "label_set=scannet20"))
    assert source.kind == "bag" and source.label_set == "scannet20" and len(source) == len(LABELS)
    assert source.skipped == 0
    for i, raw in enumerate(LABELS):
        scan = source[i]
        want = [IGNORE_LABEL if v == 65535 else v for v in raw]
        assert scan.labels.dtype == np.int64 and scan.labels.tolist() == want
        assert scan.label_set == "scannet20" and scan.stamp_ns == START_NS + i * PERIOD_NS
        np.testing.assert_array_equal(scan.points_xyz_m, points_of(i, len(raw)))
        assert scan.intensity is not None and scan.frame_id == "lidar"
        [view] = scan.cameras
        np.testing.assert_array_equal(view.image_rgb, image_of(i))
        np.testing.assert_allclose(view.cam_from_cloud, CAM_FROM_CLOUD, atol=1e-9)
        assert view.intrinsics.K[0, 0] == 4.0 and view.name == "cam"
    assert source.item_name(1) == f"{bag.resolve()} scan 1 (stamp {START_NS + PERIOD_NS} ns)"


def test_open_bag_uint32_label_field(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "u32", labels=[(0, 65535, 5)], label_type="u4")
    scan = open_source(_spec(bag, tmp_path / "cache", "label_set=semantic_kitti19"))[0]
    assert scan.labels.tolist() == [0, IGNORE_LABEL, 5]


def test_open_bag_without_label_set_is_unlabeled(bag: Path, tmp_path: Path) -> None:
    source = open_source(_spec(bag, tmp_path / "cache", "cameras=none"))
    assert source.label_set == "" and not source.labeled
    scan = source[0]
    assert scan.labels is None and scan.label_set == "" and scan.cameras == []


def test_open_bag_reuses_complete_cache_without_reading_bag(bag: Path, tmp_path: Path,
                                                            counting: type[CountingReader]) -> None:
    spec = _spec(bag, tmp_path / "cache", "label_set=scannet20")
    first = open_source(spec)
    manifest = first.cache_dir / "manifest.json"
    written = manifest.stat().st_mtime_ns
    assert counting.opened == 1 and json.loads(manifest.read_text())["scans"] == len(LABELS)
    second = open_source(spec)
    assert counting.opened == 1  # the bag was not read again
    assert second.cache_dir == first.cache_dir and manifest.stat().st_mtime_ns == written
    np.testing.assert_array_equal(second[2].labels, first[2].labels)
    # Other options or a rewritten bag are other scans: another folder, read from the bag.
    assert open_source(_spec(bag, tmp_path / "cache", "cameras=none")).cache_dir != first.cache_dir
    mcap = next(bag.glob("*.mcap"))
    os.utime(mcap, ns=(written + 10**9, written + 10**9))
    assert open_source(spec).cache_dir != first.cache_dir
    assert counting.opened == 3


def test_open_bag_rebuilds_partial_cache(bag: Path, tmp_path: Path, counting: type[CountingReader]) -> None:
    spec = _spec(bag, tmp_path / "cache", "label_set=scannet20")
    folder = open_source(spec).cache_dir
    (folder / "manifest.json").unlink()
    (folder / "000002.npz").unlink()
    again = open_source(spec)
    assert counting.opened == 2 and again.cache_dir == folder
    assert (folder / "manifest.json").is_file() and again[2].labels.tolist() == list(LABELS[2])


def test_open_bag_label_out_of_range_names_bag_scan_and_ids(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "bad", labels=[(0, 1), (0, 20, 65535, 300)])
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match=rf"bag {bag.resolve()} scan 1 .*label id\(s\) \[20, 300\]"):
        open_source(_spec(bag, cache, "label_set=scannet20"))
    assert list(cache.iterdir()) == []  # nothing half-built is left behind


def test_open_bag_label_set_without_label_field_raises(tmp_path: Path) -> None:
    bag = write_bag(tmp_path / "plain", labels=None)
    with pytest.raises(ValueError, match=r"label_set=scannet20 given but .* no 'label' field .*'intensity'"):
        open_source(_spec(bag, tmp_path / "cache", "label_set=scannet20"))
    assert len(open_source(_spec(bag, tmp_path / "cache"))) == 3


def test_open_bag_undecodable_cloud_is_counted_skip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bag = write_bag(tmp_path / "broken", labels=[(0,), (1,), (2,), (3,)], broken=[1])
    spec = _spec(bag, tmp_path / "cache", "label_set=scannet20")
    with caplog.at_level(logging.WARNING):
        source = open_source(spec)
    assert source.skipped == 1 and len(source) == 3
    assert [source[i].labels.tolist() for i in range(3)] == [[0], [2], [3]]
    assert "skipping cloud" in caplog.text
    assert open_source(spec).skipped == 1  # kept in the manifest of the reused cache


def test_open_bag_bad_options(bag: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="label set: expected one of"):
        open_source(_spec(bag, tmp_path / "cache", "label_set=kitti"))
    with pytest.raises(FileNotFoundError, match="bag not found"):
        open_source(_spec(tmp_path / "nope", tmp_path / "cache"))
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['topic'\]"):
        open_source(_spec(bag, tmp_path / "cache", "topic=/x"))


def test_cached_npz_loads_without_pickle(bag: Path, tmp_path: Path) -> None:
    source = open_source(_spec(bag, tmp_path / "cache", "label_set=scannet20"))
    with np.load(source.cache_dir / "000000.npz", allow_pickle=False) as arrays:
        assert all(arrays[name].dtype != object for name in arrays.files)
        assert str(arrays["cam0_name"]) == "cam" and arrays["cam0_size"].tolist() == [8, 6]


def test_build_scan_cache_second_builder_keeps_the_first(bag: Path, tmp_path: Path) -> None:
    """Two processes (DDP ranks) building one cache at once: the later rename finds a whole folder and uses it."""
    first = open_source(_spec(bag, tmp_path / "cache", "label_set=scannet20"))
    manifest = json.loads((first.cache_dir / "manifest.json").read_text())
    reader = bag_source.RosbagScans(bag.resolve(), label_set="scannet20")
    again = bag_source.build_scan_cache(bag.resolve(), first.cache_dir, manifest["key"], reader, "scannet20")
    assert again == manifest
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [first.cache_dir.name]


def test_building_the_scan_cache_shows_a_bar_with_the_bags_cloud_count(bag: Path, tmp_path: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    options = {"label_set": "", "cloud": None, "cameras": None, "slop_s": 0.05, "max_range_m": None}
    assert bag_source.cloud_count(bag, "/lidar/points") == len(LABELS)
    bag_source.open_bag_cache(bag, options, tmp_path / "cache", progress=True)
    err = capsys.readouterr().err
    assert f"scan cache of {bag.name}" in err and f"{len(LABELS)}/{len(LABELS)}" in err
    bag_source.open_bag_cache(bag, options, tmp_path / "quiet", progress=False)
    assert "scan cache of" not in capsys.readouterr().err
