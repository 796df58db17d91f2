"""The shipped model: what `checkpoint: builtin` / `teacher: builtin` (the node's defaults) load."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ttt_kd_ros.adapt import AdaptConfig
from ttt_kd_ros.checkpoint_format import load_checkpoint
from ttt_kd_ros.checkpoints import default_checkpoint, default_teacher
from ttt_kd_ros.data.synthetic import generate_scan
from ttt_kd_ros.ros.params import PARAMETERS
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig, resolve_builtin
from ttt_kd_ros.teachers.dense import DENSE_CONFIG_NAME
from ttt_kd_ros.teachers.resolve import BUILTIN, builtin_folder, resolve


def test_resolve_builtin_names_the_shipped_files() -> None:
    checkpoint = resolve_builtin(BUILTIN)
    assert Path(checkpoint) == default_checkpoint() and Path(checkpoint).is_file()
    assert builtin_folder() == default_teacher() and (default_teacher() / DENSE_CONFIG_NAME).is_file()
    assert resolve_builtin("/some/model.safetensors") == "/some/model.safetensors"
    assert resolve(BUILTIN).teacher_id == resolve(str(default_teacher())).teacher_id  # both names, one teacher
    from ttt_kd_ros.checkpoint_format import read_checkpoint_metadata

    for sensor in ("rgbd", "lidar"):  # trained against these very weights: the node has nothing to warn about
        assert read_checkpoint_metadata(default_checkpoint(sensor))["teacher_id"] == resolve(BUILTIN).teacher_id


def test_resolve_builtin_teacher_missing_folder_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ttt_kd_ros.checkpoints as shipped

    monkeypatch.setattr(shipped, "default_teacher", lambda: tmp_path / "absent_teacher")
    with pytest.raises(ValueError, match="absent_teacher"):
        resolve(BUILTIN)


def test_resolve_builtin_missing_file_names_it(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import ttt_kd_ros.checkpoints as shipped

    monkeypatch.setattr(shipped, "default_checkpoint", lambda sensor="rgbd": tmp_path / f"absent_{sensor}.safetensors")
    with pytest.raises(ValueError, match=r"absent_rgbd\.safetensors"):
        resolve_builtin(BUILTIN)
    with pytest.raises(ValueError, match=r"absent_lidar\.safetensors"):
        resolve_builtin("builtin:lidar")


def test_resolve_builtin_unknown_sensor_lists_the_shipped_models() -> None:
    with pytest.raises(ValueError, match="builtin:rgbd, builtin:lidar"):
        resolve_builtin("builtin:sonar")


def test_every_checkpoint_reader_takes_the_nodes_builtin_spelling() -> None:
    """ttt_kd_replay and ttt_kd_evaluate once read ``--checkpoint builtin:lidar`` as a missing file."""
    from ttt_kd_ros.checkpoint_format import read_checkpoint_metadata

    lidar = read_checkpoint_metadata("builtin:lidar")
    assert lidar == read_checkpoint_metadata(default_checkpoint("lidar"))
    assert load_checkpoint("builtin:lidar").config == load_checkpoint(default_checkpoint("lidar")).config
    with pytest.raises(ValueError, match="builtin:rgbd, builtin:lidar"):
        load_checkpoint("builtin:sonar")


def test_node_defaults_are_the_builtin_model() -> None:
    defaults = {spec.name: spec.default for spec in PARAMETERS}
    assert defaults["checkpoint"] == BUILTIN and defaults["teacher"] == BUILTIN


@pytest.mark.slow
def test_builtin_model_segments_an_unseen_room_well_above_chance() -> None:
    segmenter = Segmenter.from_config(SegmenterConfig(
        checkpoint=BUILTIN, teacher=BUILTIN, device="cpu", adapt=AdaptConfig(strategy="ttt_kd", steps=1)))
    scan = generate_scan("source", seed=424242)
    keep = np.random.default_rng(0).choice(scan.num_points, size=min(8000, scan.num_points), replace=False)
    scan = scan.select(np.sort(keep))
    prediction = segmenter.segment(scan)
    assert len(prediction.labels) == scan.num_points
    assert prediction.adapted and prediction.steps_run == 1
    labelled = scan.labels >= 0
    accuracy = float((prediction.labels[labelled] == scan.labels[labelled]).mean())
    assert accuracy > 0.4, f"shipped model accuracy {accuracy:.2f} on a source-domain room (chance ~0.09)"


@pytest.mark.slow
def test_builtin_lidar_model_loaded_as_the_node_loads_it_labels_lidar_scans() -> None:
    """`checkpoint: builtin:lidar` through the node's parameter mapping: unseen LiDAR rooms, pooled mIoU > 30 %
    (measured 0.38 / 0.49 / 0.32 per scan when shipped; chance is about 9 % for 11 classes)."""
    from ttt_kd_ros.checkpoints import default_checkpoint
    from ttt_kd_ros.metrics import ConfusionMatrix
    from ttt_kd_ros.parameters import segmenter_config

    segmenter = segmenter_config.segmenter_from_parameters(BUILTIN + ":lidar", BUILTIN, "cpu",
                                                           {"adapt.strategy": "none"})
    assert default_checkpoint("lidar").is_file()
    matrix = ConfusionMatrix(segmenter.num_classes)
    for seed in (424242, 424243, 424244):
        scan = generate_scan("lidar", seed=seed)
        matrix.update(scan.labels, segmenter.segment(scan).labels)
    assert matrix.miou() > 0.30, f"shipped LiDAR model: pooled mIoU {matrix.miou():.3f} on unseen LiDAR rooms"


@pytest.mark.slow
@pytest.mark.parametrize("name", [BUILTIN, BUILTIN + ":lidar"])
def test_each_shipped_model_runs_its_label_shift_correction_as_the_node_loads_it(name: str) -> None:
    """Both models store a class prior and a validated strength (docs/EVALUATION.md, "Session 11"); the node's
    mapping runs it unless the user sets adapt.prior_strength, and the published labels are the corrected ones."""
    from ttt_kd_ros.parameters import segmenter_config

    model = load_checkpoint(name)
    assert len(model.config.class_prior) == model.config.num_classes
    corrected = segmenter_config.segmenter_from_parameters(name, BUILTIN, "cpu", {"adapt.steps": 0})
    plain = segmenter_config.segmenter_from_parameters(name, BUILTIN, "cpu", {"adapt.steps": 0,
                                                                               "adapt.prior_strength": 0.0})
    assert corrected.strategy.config.prior_strength > 0 and plain.strategy.config.prior_strength == 0
    scan = generate_scan("lidar" if name.endswith("lidar") else "source", seed=424245)
    with_prior, without = corrected.segment(scan), plain.segment(scan)
    assert with_prior.class_weights is not None and without.class_weights is None
    assert not np.array_equal(with_prior.labels, without.labels)
