"""Label maps and IoU maths, checked against hand-computed values."""

import numpy as np
import pytest

from ttt_kd_ros.labels import (
    LABEL_SETS,
    SEMANTIC_KITTI19,
    get_label_set,
    nyu40_to_scannet20,
    semantic_kitti_to_train,
)
from ttt_kd_ros.metrics import ConfusionMatrix, miou
from ttt_kd_ros.scan import IGNORE_LABEL


def test_label_sets_have_one_colour_per_class() -> None:
    for label_set in LABEL_SETS.values():
        assert len(label_set.colors_rgb) == label_set.num_classes
        assert label_set.palette().shape == (label_set.num_classes + 1, 3)


def test_colorize_out_of_range_is_black() -> None:
    colours = SEMANTIC_KITTI19.colorize(np.array([0, IGNORE_LABEL, 99]))
    assert tuple(colours[0]) == SEMANTIC_KITTI19.colors_rgb[0]
    assert (colours[1:] == 0).all()


def test_semantic_kitti_map_folds_moving_and_strips_instance() -> None:
    raw = np.array([10, 252 | (7 << 16), 0, 52, 81, 40 | (3 << 16)], dtype=np.uint32)
    train = semantic_kitti_to_train(raw)
    car = SEMANTIC_KITTI19.class_names.index("car")
    assert train.tolist() == [car, car, IGNORE_LABEL, IGNORE_LABEL, 18, 8]


def test_nyu40_to_scannet20_maps_benchmark_ids_only() -> None:
    assert nyu40_to_scannet20(np.array([1, 2, 13, 39, 0, 40])).tolist() == [0, 1, -1, 19, -1, -1]


def test_get_label_set_unknown_lists_known() -> None:
    with pytest.raises(ValueError, match="semantic_kitti19"):
        get_label_set("nope")


def test_confusion_matrix_iou_by_hand() -> None:
    truth = np.array([0, 0, 1, 1, 2, IGNORE_LABEL])
    pred = np.array([0, 1, 1, 1, 0, 2])
    cm = ConfusionMatrix(3)
    cm.update(truth, pred)
    # class 0: tp 1, fp 1 (from truth 2), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0 -> 0
    np.testing.assert_allclose(cm.iou(), [1 / 3, 2 / 3, 0.0])
    assert cm.miou() == pytest.approx(1 / 3)
    assert cm.accuracy() == pytest.approx(3 / 5)


def test_miou_ignores_classes_absent_everywhere() -> None:
    assert miou(np.array([0, 0]), np.array([0, 0]), num_classes=5) == 1.0


def test_confusion_matrix_rejects_length_mismatch() -> None:
    with pytest.raises(ValueError, match="3 labels"):
        ConfusionMatrix(2).update(np.zeros(3), np.zeros(2))
