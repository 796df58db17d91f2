"""Class sets, their colours, and the maps from data-set ids to training ids.

A label set is named once here and referred to by name everywhere else
(checkpoints, scans, the rviz colour field), so a checkpoint trained on one
set can refuse a scan labelled in another.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttt_kd_ros.scan import IGNORE_LABEL


@dataclass(frozen=True)
class LabelSet:
    """Training ids are 0..C-1 in the order of ``class_names``."""

    name: str
    class_names: tuple[str, ...]
    colors_rgb: tuple[tuple[int, int, int], ...]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def palette(self) -> np.ndarray:
        """(C + 1, 3) uint8; the last row colours IGNORE_LABEL / unknown ids."""
        return np.array([*self.colors_rgb, (0, 0, 0)], dtype=np.uint8)

    def colorize(self, labels: np.ndarray) -> np.ndarray:
        """(N,) training ids -> (N, 3) uint8; out-of-range ids are black."""
        labels = np.asarray(labels)
        idx = np.where((labels >= 0) & (labels < self.num_classes), labels, self.num_classes)
        return self.palette()[idx]


SYNTHETIC_INDOOR = LabelSet(
    "synthetic_indoor",
    ("floor", "wall", "ceiling", "table", "chair", "sofa", "bed", "cabinet", "door", "window", "clutter"),
    (
        (152, 223, 138), (174, 199, 232), (220, 220, 200), (255, 152, 150), (188, 189, 34),
        (140, 86, 75), (255, 187, 120), (31, 119, 180), (214, 39, 40), (197, 176, 213),
        (82, 84, 163),
    ),
)

SCANNET20 = LabelSet(
    "scannet20",
    (
        "wall", "floor", "cabinet", "bed", "chair", "sofa", "table", "door", "window", "bookshelf",
        "picture", "counter", "desk", "curtain", "refrigerator", "shower curtain", "toilet", "sink",
        "bathtub", "otherfurniture",
    ),
    (
        (174, 199, 232), (152, 223, 138), (31, 119, 180), (255, 187, 120), (188, 189, 34),
        (140, 86, 75), (255, 152, 150), (214, 39, 40), (197, 176, 213), (148, 103, 189),
        (196, 156, 148), (23, 190, 207), (247, 182, 210), (219, 219, 141), (255, 127, 14),
        (158, 218, 229), (44, 160, 44), (112, 128, 144), (227, 119, 194), (82, 84, 163),
    ),
)

SEMANTIC_KITTI19 = LabelSet(
    "semantic_kitti19",
    (
        "car", "bicycle", "motorcycle", "truck", "other-vehicle", "person", "bicyclist",
        "motorcyclist", "road", "parking", "sidewalk", "other-ground", "building", "fence",
        "vegetation", "trunk", "terrain", "pole", "traffic-sign",
    ),
    (
        (100, 150, 245), (100, 230, 245), (30, 60, 150), (80, 30, 180), (100, 80, 250),
        (255, 30, 30), (255, 40, 200), (150, 30, 90), (255, 0, 255), (255, 150, 255),
        (75, 0, 75), (175, 0, 75), (255, 200, 0), (255, 120, 50), (0, 175, 0),
        (135, 60, 0), (150, 240, 80), (255, 240, 150), (255, 0, 0),
    ),
)

LABEL_SETS: dict[str, LabelSet] = {s.name: s for s in (SYNTHETIC_INDOOR, SCANNET20, SEMANTIC_KITTI19)}

# SemanticKITTI raw class id -> training id (the benchmark's 19-class learning
# map; moving classes fold into their static class, everything else ignored).
_SEMANTIC_KITTI_RAW_TO_NAME = {
    10: "car", 252: "car", 11: "bicycle", 15: "motorcycle", 18: "truck", 258: "truck",
    13: "other-vehicle", 16: "other-vehicle", 20: "other-vehicle", 256: "other-vehicle",
    257: "other-vehicle", 259: "other-vehicle", 30: "person", 254: "person",
    31: "bicyclist", 253: "bicyclist", 32: "motorcyclist", 255: "motorcyclist",
    40: "road", 60: "road", 44: "parking", 48: "sidewalk", 49: "other-ground",
    50: "building", 51: "fence", 70: "vegetation", 71: "trunk", 72: "terrain",
    80: "pole", 81: "traffic-sign",
}

# nuScenes-lidarseg class index -> SEMANTIC_KITTI19 name (approximate: man-made structure, poles and signs of
# nuScenes have no one-to-one class there; unlisted indices are ignored).
_LIDARSEG_RAW_TO_NAME = {
    2: "person", 3: "person", 4: "person", 6: "person", 9: "fence", 14: "bicycle", 15: "other-vehicle",
    16: "other-vehicle", 17: "car", 18: "other-vehicle", 19: "car", 20: "car", 21: "motorcycle",
    22: "other-vehicle", 23: "truck", 24: "road", 25: "other-ground", 26: "sidewalk", 27: "terrain",
    28: "building", 30: "vegetation",
}

# ScanNet's NYU40 ids of the 20 benchmark classes, in SCANNET20 order.
_SCANNET20_NYU40_IDS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 14, 16, 24, 28, 33, 34, 36, 39)


def _lookup_table(pairs: dict[int, int], size: int) -> np.ndarray:
    table = np.full(size, IGNORE_LABEL, dtype=np.int64)
    for raw, train in pairs.items():
        table[raw] = train
    return table


SEMANTIC_KITTI_LEARNING_MAP = _lookup_table(
    {raw: SEMANTIC_KITTI19.class_names.index(name) for raw, name in _SEMANTIC_KITTI_RAW_TO_NAME.items()},
    260,
)
NYU40_TO_SCANNET20 = _lookup_table({nyu: i for i, nyu in enumerate(_SCANNET20_NYU40_IDS)}, 41)
LIDARSEG_TO_SEMANTIC_KITTI = _lookup_table(
    {raw: SEMANTIC_KITTI19.class_names.index(name) for raw, name in _LIDARSEG_RAW_TO_NAME.items()}, 32
)


def map_ids(table: np.ndarray, raw: np.ndarray) -> np.ndarray:
    """Raw ids through a lookup table; ids outside it become IGNORE_LABEL."""
    ids = np.asarray(raw).astype(np.int64)
    out = np.full(ids.shape, IGNORE_LABEL, dtype=np.int64)
    known = (ids >= 0) & (ids < len(table))
    out[known] = table[ids[known]]
    return out


def semantic_kitti_to_train(raw_label: np.ndarray) -> np.ndarray:
    """uint32 .label words (low 16 bits class, high 16 instance) -> training ids."""
    return map_ids(SEMANTIC_KITTI_LEARNING_MAP, np.asarray(raw_label).astype(np.uint32) & 0xFFFF)


def nyu40_to_scannet20(nyu40: np.ndarray) -> np.ndarray:
    """NYU40 ids (0 = unannotated) -> SCANNET20 training ids."""
    return map_ids(NYU40_TO_SCANNET20, nyu40)


def lidarseg_to_semantic_kitti(raw: np.ndarray) -> np.ndarray:
    """nuScenes-lidarseg class indices (0..31) -> SEMANTIC_KITTI19 training ids."""
    return map_ids(LIDARSEG_TO_SEMANTIC_KITTI, raw)


# Every id a SemanticKITTI .label file may hold (semantic-kitti.yaml's "labels"): ids outside it mean a file from
# another data set or a corrupt one, which must not silently train as "ignore".
SEMANTIC_KITTI_RAW_IDS = frozenset(
    (0, 1, 10, 11, 13, 15, 16, 18, 20, 30, 31, 32, 40, 44, 48, 49, 50, 51, 52, 60, 70, 71, 72, 80, 81, 99,
     252, 253, 254, 255, 256, 257, 258, 259)
)
NYU40_RAW_IDS = frozenset(range(41))  # 0 = unannotated
LIDARSEG_RAW_IDS = frozenset(range(32))


def check_raw_ids(raw: np.ndarray, known: frozenset[int], where: str) -> None:
    """ValueError naming ``where`` and up to 10 offending ids when ``raw`` holds ids outside ``known``."""
    present = np.unique(np.asarray(raw).astype(np.int64))
    unknown = [int(v) for v in present if int(v) not in known]
    if unknown:
        raise ValueError(f"{where}: label id(s) {unknown[:10]} are not in the data set's label map "
                         f"({len(unknown)} unknown id(s); wrong data set or a corrupt file?)")


# Cross-data-set classes: for a pair of label sets, the classes both can express, each with the names it folds on
# either side. This is data, not code: a new pair is one more entry. Classes of either set left out of a pair
# (synthetic ceiling and clutter; ScanNet's bookshelf, picture, counter, ...) are ignored when the pair is used,
# as the paper's ScanNet / S3DIS / Matterport tables score only the classes both data sets share.
LABEL_BRIDGES: dict[tuple[str, str], tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...]] = {
    ("synthetic_indoor", "scannet20"): (
        ("floor", ("floor",), ("floor",)),
        ("wall", ("wall",), ("wall",)),
        ("table", ("table",), ("table", "desk")),
        ("chair", ("chair",), ("chair",)),
        ("sofa", ("sofa",), ("sofa",)),
        ("bed", ("bed",), ("bed",)),
        ("cabinet", ("cabinet",), ("cabinet",)),
        ("door", ("door",), ("door",)),
        ("window", ("window",), ("window",)),
    ),
}


@dataclass(frozen=True)
class CommonClasses:
    """Two label sets scored on the classes they share: ``a_to_common`` / ``b_to_common`` map training ids
    of either set to common ids (IGNORE_LABEL where a class has no counterpart)."""

    names: tuple[str, ...]
    a_to_common: np.ndarray
    b_to_common: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.names)


def common_classes(set_a: str, set_b: str) -> CommonClasses:
    """The shared classes of two label sets (every class when they are the same set); ValueError when the
    package holds no bridge between them."""
    a, b = get_label_set(set_a), get_label_set(set_b)
    if set_a == set_b:
        identity = np.arange(a.num_classes, dtype=np.int64)
        return CommonClasses(a.class_names, identity, identity.copy())
    if (set_a, set_b) in LABEL_BRIDGES:
        groups = [(name, in_a, in_b) for name, in_a, in_b in LABEL_BRIDGES[(set_a, set_b)]]
    elif (set_b, set_a) in LABEL_BRIDGES:
        groups = [(name, in_a, in_b) for name, in_b, in_a in LABEL_BRIDGES[(set_b, set_a)]]
    else:
        raise ValueError(f"label sets {set_a!r} and {set_b!r} share no classes this package knows of; bridges: "
                         f"{sorted(LABEL_BRIDGES)} (add one to labels.LABEL_BRIDGES)")
    a_table = np.full(a.num_classes, IGNORE_LABEL, dtype=np.int64)
    b_table = np.full(b.num_classes, IGNORE_LABEL, dtype=np.int64)
    for common_id, (_, in_a, in_b) in enumerate(groups):
        for table, label_set, names in ((a_table, a, in_a), (b_table, b, in_b)):
            for name in names:
                table[label_set.class_names.index(name)] = common_id
    return CommonClasses(tuple(name for name, _, _ in groups), a_table, b_table)


def map_to_label_set(labels: np.ndarray, from_set: str, to_set: str) -> np.ndarray:
    """Training ids of ``from_set`` as training ids of ``to_set`` (each shared class onto the first ``to_set``
    class of its group; the rest IGNORE_LABEL): how a data set trains a checkpoint with another label set."""
    if from_set == to_set:
        return np.asarray(labels).astype(np.int64)
    common = common_classes(from_set, to_set)
    first_of_group = np.full(common.num_classes, IGNORE_LABEL, dtype=np.int64)
    for to_id in range(len(common.b_to_common) - 1, -1, -1):
        if common.b_to_common[to_id] != IGNORE_LABEL:
            first_of_group[common.b_to_common[to_id]] = to_id
    in_common = map_ids(common.a_to_common, labels)
    out = np.full(in_common.shape, IGNORE_LABEL, dtype=np.int64)
    known = in_common != IGNORE_LABEL
    out[known] = first_of_group[in_common[known]]
    return out


def get_label_set(name: str) -> LabelSet:
    """The label set called ``name``; a ValueError lists the known ones."""
    try:
        return LABEL_SETS[name]
    except KeyError:
        raise ValueError(f"label set: expected one of {sorted(LABEL_SETS)}, got {name!r}") from None
