"""Joint training: losses go down, checkpoints load and resume, augmentation keeps projections exact."""

from __future__ import annotations

import dataclasses
import itertools
import logging

import numpy as np
import pytest
import torch

from ttt_kd_ros.checkpoint_format import load_checkpoint, read_checkpoint_metadata
from ttt_kd_ros.data.synthetic import generate_scan
from ttt_kd_ros.geometry import project_points
from ttt_kd_ros.model import NetConfig, TTTKDNet
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.targets import distillation_targets
from ttt_kd_ros.teachers.resolve import resolve
from ttt_kd_ros.teachers.weights import tiny_teacher
from ttt_kd_ros.training.distributed import DistContext
from ttt_kd_ros.training.loop import (
    FINAL_CHECKPOINT,
    LAST_CHECKPOINT,
    STATE_FILE,
    Augmentation,
    TrainConfig,
    TrainExample,
    augmented,
    build_example,
    estimate_target_center,
    joint_loss,
    learning_rate,
    load_train_state,
    random_similarity,
    shard_indices,
    train,
    transform_scan,
)

TINY = dict(encoder_planes=(8, 16), encoder_blocks=(1, 1), decoder_planes=(8,), decoder_blocks=(1,), kd_hidden=16,
            teacher_dim=32, voxel_size_m=0.1)


def small_scans(count: int, points: int = 1500) -> list[Scan]:
    """Synthetic "source" scans thinned to ``points`` points; cameras kept."""
    out = []
    for seed in range(count):
        scan = generate_scan("source", seed)
        keep = np.sort(np.random.default_rng(seed).choice(scan.num_points, points, replace=False))
        out.append(scan.select(keep))
    return out


def tiny_model(seed: int = 0) -> TTTKDNet:
    torch.manual_seed(seed)
    return TTTKDNet(NetConfig(teacher_id=tiny_teacher().teacher_id, teacher_resolution=(56, 56), **TINY))



@pytest.fixture(scope="module")
def scans() -> list[Scan]:
    return small_scans(2)


def plain_config(epochs: int, **kw) -> TrainConfig:
    return TrainConfig(epochs=epochs, lr=5e-3, batch_scans=2, kd_points=512, augment=None, **kw)


def test_train_lowers_ce_and_kd_and_writes_loadable_checkpoint(scans, tmp_path) -> None:
    teacher = tiny_teacher()
    # Raw targets: the tiny random teacher's centred targets carry too little signal to learn in 6 tiny epochs.
    result = train(plain_config(6, center_targets=False), tiny_model(), scans, teacher, tmp_path, progress=False,
                   metadata={"command": "ttt_kd_train --test", "teacher_id": teacher.teacher_id})
    first, last = result.history[0], result.history[-1]
    assert last["ce"] < 0.9 * first["ce"]
    assert last["kd"] < 0.9 * first["kd"]
    assert first["kd_points"] > 0
    model = load_checkpoint(tmp_path / FINAL_CHECKPOINT, expect={"teacher_dim": 32})
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value.cpu()), key
    extra = read_checkpoint_metadata(tmp_path / FINAL_CHECKPOINT)["extra"]
    assert extra["command"] == "ttt_kd_train --test" and extra["mode"] == "joint"
    assert len(extra["history"]) == 6


def test_train_on_every_device_with_and_without_mixed_precision_lowers_both_losses(scans, tmp_path, device, amp
                                                                                    ) -> None:
    """The training path on each device, float32 and --amp (bfloat16 where supported, float16 + GradScaler on
    older GPUs): the losses fall and the weights stay float32."""
    ctx = DistContext(device=device)
    result = train(plain_config(6, center_targets=False, amp=amp), tiny_model().to(device), scans,
                   tiny_teacher(device=device), tmp_path, ctx, progress=False)
    first, last = result.history[0], result.history[-1]
    assert last["ce"] < 0.9 * first["ce"] and last["kd"] < 0.9 * first["kd"]
    assert all(v.dtype == torch.float32 for v in result.model.state_dict().values() if v.is_floating_point())


def test_mixed_precision_is_bfloat16_where_the_device_has_it_else_float16_with_scaling(monkeypatch) -> None:
    from ttt_kd_ros.training.loop import amp_dtype

    assert amp_dtype(torch.device("cpu")) == torch.bfloat16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)  # a Volta / Turing GPU
    assert amp_dtype(torch.device("cuda")) == torch.float16
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # Ampere and later
    assert amp_dtype(torch.device("cuda")) == torch.bfloat16


def test_every_epoch_ends_with_the_ranks_waiting_for_rank_zero(scans, tmp_path, monkeypatch) -> None:
    """Rank 0 validates and saves after each epoch; every rank then meets at a barrier (called once per epoch)."""
    import ttt_kd_ros.training.loop as loop

    calls = []
    history = tmp_path / loop.HISTORY_FILE

    def barrier(ctx) -> None:  # what rank 0 has finished by the time the ranks meet
        lines = history.read_text().splitlines() if history.is_file() else []
        calls.append((ctx.rank, len(lines), (tmp_path / LAST_CHECKPOINT).is_file()))

    monkeypatch.setattr(loop, "wait_for_all_ranks", barrier)
    train(plain_config(2), tiny_model(), scans, tiny_teacher(), tmp_path, progress=False)
    assert [rank for rank, _, _ in calls] == [0, 0]
    assert calls == [(0, 1, True), (0, 2, True)]  # each epoch validated, logged and saved before the barrier


def test_train_with_the_oracle_teacher_learns_its_class_vectors(scans, tmp_path) -> None:
    teacher = resolve("oracle:dim=32", (56, 56), torch.device("cpu"), offline=True)
    result = train(plain_config(6, center_targets=False), tiny_model(), scans, teacher, tmp_path, progress=False,
                   metadata={"teacher_id": teacher.teacher_id})
    first, last = result.history[0], result.history[-1]
    assert first["kd_points"] > 0 and last["kd"] < 0.9 * first["kd"]
    assert read_checkpoint_metadata(tmp_path / FINAL_CHECKPOINT)["extra"]["teacher_id"].startswith("oracle:dim=32")


def test_train_checkpoint_runs_in_segmenter(scans, tmp_path) -> None:
    segmenter_module = pytest.importorskip("ttt_kd_ros.segmenter")
    train(plain_config(1), tiny_model(), scans, tiny_teacher(), tmp_path, progress=False)
    config = segmenter_module.SegmenterConfig(checkpoint=str(tmp_path / FINAL_CHECKPOINT), teacher="tiny",
                                              device="cpu")
    prediction = segmenter_module.Segmenter.from_config(config).segment(scans[0])
    assert prediction.labels.shape == (scans[0].num_points,)
    assert prediction.steps_run > 0


def test_train_source_only_leaves_kd_head_untouched(scans, tmp_path) -> None:
    model = tiny_model()
    kd_before = {k: v.clone() for k, v in model.kd_head.state_dict().items()}
    result = train(plain_config(2, source_only=True), model, scans, None, tmp_path, progress=False)
    assert result.history[-1]["ce"] < result.history[0]["ce"]
    assert all(h["kd"] == 0.0 for h in result.history)
    for key, value in result.model.kd_head.state_dict().items():
        assert torch.equal(value, kd_before[key])


def test_train_joint_without_teacher_raises(scans, tmp_path) -> None:
    with pytest.raises(ValueError, match="teacher"):
        train(plain_config(1), tiny_model(), scans, None, tmp_path, progress=False)


def test_train_resume_matches_uninterrupted_run(scans, tmp_path) -> None:
    teacher = tiny_teacher()
    config = TrainConfig(epochs=3, lr=5e-3, batch_scans=1, kd_points=512,
                         augment=Augmentation(crop_points=1000))
    full = train(config, tiny_model(), scans, teacher, tmp_path / "full", progress=False)
    part = train(config, tiny_model(), scans, teacher, tmp_path / "part", progress=False, stop_after_epoch=1)
    assert part.final_checkpoint is None and len(part.history) == 2
    assert load_train_state(tmp_path / "part" / STATE_FILE)["epoch"] == 1
    assert (tmp_path / "part" / LAST_CHECKPOINT).is_file()
    resumed = train(config, tiny_model(seed=5), scans, teacher, tmp_path / "part", resume=tmp_path / "part",
                    progress=False)
    assert [h["epoch"] for h in resumed.history] == [0, 1, 2]
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=1e-4, atol=1e-5)


def test_transform_scan_keeps_every_pixel(scans) -> None:
    scan = scans[0]
    rng = np.random.default_rng(3)
    A, s = random_similarity(rng, Augmentation(scale=(1.2, 1.3), flip_prob=1.0))
    assert np.linalg.det(A[:3, :3]) < 0  # the mirror is in
    moved = transform_scan(scan, A, s)
    assert not np.allclose(moved.points_xyz_m, scan.points_xyz_m)
    for before_view, after_view in zip(scan.cameras, moved.cameras, strict=True):
        before = project_points(scan.points_xyz_m, before_view)
        after = project_points(moved.points_xyz_m, after_view)
        np.testing.assert_array_equal(before.visible, after.visible)
        vis = before.visible
        assert vis.sum() > 100
        np.testing.assert_allclose(after.uv_px[vis], before.uv_px[vis], atol=2e-3)
        np.testing.assert_allclose(after.depth_m[vis], s * before.depth_m[vis], rtol=1e-4)


def test_augmented_crop_keeps_targets_on_their_points(scans) -> None:
    scan = scans[0]
    index = np.arange(0, scan.num_points, 3)
    features = torch.from_numpy(scan.points_xyz_m[index]).to(torch.float16)  # a target that names its point
    example = TrainExample(scan, index, features)
    aug = Augmentation(rotate_z=False, scale=(1.0, 1.0), flip_prob=0.0, jitter_m=0.0, crop_points=600)
    out_scan, out_index, out_features = augmented(example, np.random.default_rng(0), aug)
    assert out_scan.num_points == 600
    assert 0 < len(out_index) < len(index)
    np.testing.assert_allclose(out_features.float().numpy(), out_scan.points_xyz_m[out_index], atol=1e-2)


def _front_camera_sweep(points: int = 6000) -> TrainExample:
    """A 360-degree ring of points of which one front camera sees a 40-degree wedge (a KITTI-like rig)."""
    rng = np.random.default_rng(3)
    angle = rng.uniform(-np.pi, np.pi, points)
    radius = rng.uniform(3.0, 30.0, points)
    xyz = np.stack([radius * np.cos(angle), radius * np.sin(angle), rng.uniform(-1, 1, points)], 1).astype(np.float32)
    seen = np.flatnonzero(np.abs(angle) < np.radians(20))
    scan = Scan(points_xyz_m=xyz, labels=np.zeros(points, np.int64))
    return TrainExample(scan, seen, torch.from_numpy(xyz[seen]))


@pytest.mark.parametrize(("share", "low", "high"), [(0.5, 0.5, 1.0), (0.0, 0.0, 0.4)])
def test_crops_reach_the_cameras_view_part_of_the_time(share: float, low: float, high: float) -> None:
    """Uniform crop centres over a 360-degree sweep mostly miss one front camera's view; crop_on_targets centres
    that share of crops on seen points, so the KD term has targets in at least that share of steps."""
    example = _front_camera_sweep()
    aug = Augmentation(rotate_z=False, scale=(1.0, 1.0), flip_prob=0.0, jitter_m=0.0, crop_points=600,
                       crop_on_targets=share)
    rng = np.random.default_rng(0)
    with_targets = np.mean([len(augmented(example, rng, aug)[1]) > 0 for _ in range(200)])
    assert low <= with_targets <= high


def test_an_epoch_without_any_target_is_a_warning_and_recorded_in_the_checkpoint(scans, tmp_path, caplog) -> None:
    """Cameras that see nothing (here: every point 10 km behind them) leave the KD term empty: the run says so."""
    behind = np.eye(4)
    behind[2, 3] = -1e4
    blind = []
    for scan in scans:
        cameras = [dataclasses.replace(view, cam_from_cloud=behind @ view.cam_from_cloud) for view in scan.cameras]
        blind.append(dataclasses.replace(scan, cameras=cameras))
    with caplog.at_level(logging.WARNING, logger="ttt_kd_train"):
        train(plain_config(1, center_targets=False), tiny_model(), blind, tiny_teacher(), tmp_path, progress=False)
    assert "NO distillation target" in caplog.text
    assert read_checkpoint_metadata(tmp_path / FINAL_CHECKPOINT)["extra"]["epochs_without_kd"] == [0]


def test_build_example_caps_targets(scans) -> None:
    example = build_example(scans[0], tiny_teacher(), kd_points=100, rng=np.random.default_rng(0))
    assert example.kd_features.shape == (100, 32) and example.kd_features.dtype == torch.float32
    assert np.all(np.diff(example.kd_index) > 0)


def test_joint_loss_without_targets_is_zero_but_connected() -> None:
    logits = torch.randn(5, 3, requires_grad=True)
    kd_pred = torch.randn(5, 4, requires_grad=True)
    terms = joint_loss(logits, torch.tensor([0, 1, 2, -1, 0]), kd_pred[:0], torch.zeros(0, 4), lambda_kd=1.0)
    assert float(terms.kd.detach()) == 0.0 and terms.kd_points == 0
    terms.total.backward()
    assert kd_pred.grad is not None and logits.grad is not None


def test_joint_loss_all_ignored_labels_gives_zero_ce() -> None:
    logits = torch.randn(4, 3, requires_grad=True)
    terms = joint_loss(logits, torch.full((4,), -1), None, None, lambda_kd=1.0)
    assert float(terms.ce.detach()) == 0.0 and torch.isfinite(terms.total)


def test_shard_indices_pads_to_equal_length() -> None:
    shards = [shard_indices(5, r, 2) for r in range(2)]
    assert shards == [[0, 2, 4], [1, 3, 0]]
    assert set(shards[0]) | set(shards[1]) == set(range(5))


def test_learning_rate_warms_up_then_decays() -> None:
    config = TrainConfig(lr=1.0)
    rates = [learning_rate(config, s, 100) for s in range(100)]
    assert rates[0] < rates[4] == pytest.approx(1.0)
    assert rates[-1] < 0.05 and all(a >= b for a, b in itertools.pairwise(rates[5:]))


def test_train_config_rejects_unknown_kd_loss() -> None:
    with pytest.raises(ValueError, match="kd_loss"):
        TrainConfig(kd_loss="l3")


def test_train_centres_targets_like_test_time_and_records_the_center(scans, tmp_path) -> None:
    teacher = tiny_teacher()
    raw = [build_example(s, teacher, 0, np.random.default_rng(0)) for s in scans]
    center = estimate_target_center(raw, teacher.feature_dim)
    stacked = torch.cat([e.kd_features.double() for e in raw])
    np.testing.assert_allclose(center, stacked.mean(dim=0).numpy(), atol=1e-6)
    # Training's targets are what the Segmenter computes at test time with the stored center, bit for bit.
    trained = build_example(scans[0], teacher, 0, np.random.default_rng(0), center)
    at_test = distillation_targets(scans[0], teacher, center=center)
    np.testing.assert_array_equal(trained.kd_index, at_test.point_index.numpy())
    assert trained.kd_features.dtype == torch.float32
    torch.testing.assert_close(trained.kd_features, at_test.features, atol=0, rtol=0)
    config = TrainConfig(epochs=1, lr=5e-3, batch_scans=2, kd_points=0, augment=None)
    result = train(config, tiny_model(), scans, teacher, tmp_path, progress=False)
    stored = read_checkpoint_metadata(result.final_checkpoint)["config"]["kd_target_center"]
    np.testing.assert_allclose(stored, center, atol=1e-3)  # examples are float16 before the estimate in train()
    assert load_checkpoint(result.final_checkpoint).config.kd_target_center == tuple(stored)
    plain = train(plain_config(1, center_targets=False), tiny_model(), scans, teacher, tmp_path / "raw",
                  progress=False)
    assert read_checkpoint_metadata(plain.final_checkpoint)["config"]["kd_target_center"] == []
