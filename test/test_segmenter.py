"""Segmenter: one label per input point whatever the scan, adaptation when possible, clear errors otherwise."""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.checkpoint_format import save_checkpoint
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import IGNORE_LABEL, CameraIntrinsics, CameraView, Scan
from ttt_kd_ros.segmenter import Segmenter, SegmenterConfig, nearest_voxel_rows, resolve_device
from ttt_kd_ros.teachers.teacher import Teacher
from ttt_kd_ros.teachers.weights import tiny_teacher

TEACHER_DIM = 32  # tiny_teacher's default hidden size
TINY_NET = {"encoder_planes": (8, 16), "encoder_blocks": (1, 1), "decoder_planes": (8,), "decoder_blocks": (1,),
            "kd_hidden": 16, "teacher_dim": TEACHER_DIM, "voxel_size_m": 0.1}


@functools.cache
def _teacher() -> Teacher:
    """One tiny teacher for the module (frozen, so sharing it between tests changes nothing)."""
    return tiny_teacher(resolution=56)


def _camera(yaw_away: bool = False) -> CameraView:
    """64 x 48 random image; identity extrinsic (camera looks along +z), or turned 180 degrees."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    intrinsics = CameraIntrinsics(K=np.array([[40.0, 0, 32], [0, 40.0, 24], [0, 0, 1]]), width_px=64, height_px=48)
    pose = np.eye(4)
    if yaw_away:
        pose[0, 0] = pose[2, 2] = -1.0
    return CameraView(image, intrinsics, pose, name="front")


def _scan(n: int = 300, cameras: bool = True, seed: int = 0) -> Scan:
    """A wall at z = 3 m and a box in front of it, in the camera's view."""
    rng = np.random.default_rng(seed)
    wall = np.c_[rng.uniform(-1, 1, (n // 2, 2)), np.full(n // 2, 3.0)]
    box = np.c_[rng.uniform(-0.3, 0.3, (n - n // 2, 2)), rng.uniform(2.0, 2.3, n - n // 2)]
    return Scan(np.concatenate([wall, box]).astype(np.float32), cameras=[_camera()] if cameras else [])


def _segmenter(strategy: str = "ttt_kd", steps: int = 2, max_points: int = 0, **adapt: object) -> Segmenter:
    torch.manual_seed(0)
    model = TTTKDNet(net_config("ttt_kd_small", **TINY_NET))
    config = AdaptConfig(**{"strategy": strategy, "steps": steps, "lr": 1e-2, "kd_points_per_step": 128, **adapt})
    return Segmenter(model, _teacher(), build_strategy(model, config), max_points=max_points)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_segment_adapts_labels_every_point_and_restores() -> None:
    seg = _segmenter()
    source = _state(seg.model)
    scan = _scan()
    pred = seg.segment(scan)
    assert pred.labels.shape == (scan.num_points,) and pred.confidence.shape == (scan.num_points,)
    assert pred.labels.dtype == np.int64 and pred.confidence.dtype == np.float32
    assert ((pred.labels >= 0) & (pred.labels < seg.num_classes)).all()
    assert ((pred.confidence > 0) & (pred.confidence <= 1)).all()
    assert pred.adapted and pred.steps_run == 2 and pred.skip_reason == "" and pred.strategy == "ttt_kd"
    assert pred.kd_loss_before is not None and pred.kd_loss_after is not None
    for stage in ("validate", "prepare", "teacher", "targets", "ttt_step", "forward", "restore", "upsample"):
        assert stage in pred.timings_s and pred.timings_s[stage] >= 0
    assert _same(_state(seg.model), source)


def test_segment_on_every_device_and_precision_adapts_and_restores(device: torch.device, amp: bool) -> None:
    """The whole scan path (targets, steps, guard's reference, final forward, KD loss, restore) on the device, with
    mixed precision off and on: a bfloat16 final forward once crashed the float32 KD head on every adapted scan."""
    torch.manual_seed(0)
    model = TTTKDNet(net_config("ttt_kd_small", **TINY_NET)).to(device)
    config = AdaptConfig(strategy="ttt_kd", steps=2, lr=1e-2, kd_points_per_step=128, unadapted_weight=0.2)
    seg = Segmenter(model, tiny_teacher(resolution=56, device=device), build_strategy(model, config), device=device,
                    amp=amp)
    assert seg.amp == amp
    source = _state(seg.model)
    scan = _scan()
    pred = seg.segment(scan)
    assert pred.steps_run == 2 and pred.adapted and pred.skip_reason == ""
    assert np.isfinite(pred.kd_loss_before) and np.isfinite(pred.kd_loss_after)
    assert ((pred.labels >= 0) & (pred.labels < seg.num_classes)).all() and np.isfinite(pred.confidence).all()
    assert _same(_state(seg.model), source)


def test_segment_without_camera_predicts_unadapted() -> None:
    seg = _segmenter()
    scan = _scan(cameras=False)
    unadapted = _segmenter(strategy="none").segment(scan)
    pred = seg.segment(scan)
    assert not pred.adapted and pred.skip_reason == "no camera" and pred.steps_run == 0
    np.testing.assert_array_equal(pred.labels, unadapted.labels)


def test_segment_zero_steps_reports_no_kd_loss_after_but_the_unadapted_loss_as_before() -> None:
    scan = _scan()
    pred = _segmenter(steps=0).segment(scan)  # targets exist, but no step ran: there is no "after"
    assert pred.steps_run == 0 and not pred.adapted
    assert pred.kd_loss_after is None and pred.kd_loss_before is not None
    curve = _segmenter(steps=2).segment_steps(scan, [0, 2])
    # the evaluator's curve starts at the source network's loss, reported as the scan's loss before adaptation
    assert curve[0].kd_loss_after is None and curve[0].kd_loss_before == pytest.approx(pred.kd_loss_before)
    assert curve[1].kd_loss_after is not None


def test_segment_camera_seeing_nothing_skips_with_reason() -> None:
    seg = _segmenter()
    scan = _scan()
    scan.cameras = [_camera(yaw_away=True)]
    pred = seg.segment(scan)
    assert not pred.adapted and pred.skip_reason == "no visible point"
    assert len(pred.labels) == scan.num_points and (pred.labels >= 0).all()


def test_segment_nan_points_get_ignore_label_and_zero_confidence() -> None:
    scan = _scan()
    scan.points_xyz_m[[3, 10, 200]] = [np.nan, 0.0, np.inf]
    pred = _segmenter().segment(scan)
    assert len(pred.labels) == scan.num_points
    assert (pred.labels[[3, 10, 200]] == IGNORE_LABEL).all() and (pred.confidence[[3, 10, 200]] == 0).all()
    others = np.setdiff1d(np.arange(scan.num_points), [3, 10, 200])
    assert (pred.labels[others] >= 0).all() and pred.adapted


def test_segment_empty_and_all_nan_scans_return_empty_or_ignored() -> None:
    seg = _segmenter()
    empty = seg.segment(Scan(np.zeros((0, 3), np.float32)))
    assert empty.labels.shape == (0,) and empty.skip_reason == "empty scan"
    all_nan = seg.segment(Scan(np.full((5, 3), np.nan, np.float32)))
    assert (all_nan.labels == IGNORE_LABEL).all() and all_nan.skip_reason == "no finite points"


def test_segment_rejects_wrong_point_shape_naming_field() -> None:
    scan = _scan()
    scan.points_xyz_m = np.zeros((10, 2), np.float32)
    with pytest.raises(ValueError, match=r"scan.points_xyz_m: expected \(N, 3\)"):
        _segmenter().segment(scan)


def test_segment_max_points_subsamples_but_labels_every_point(monkeypatch: pytest.MonkeyPatch) -> None:
    seg = _segmenter(max_points=150)
    networked = []  # the points each scan the network prepares holds
    prepare = seg.model.prepare
    monkeypatch.setattr(seg.model, "prepare", lambda work, device: networked.append(work.num_points) or prepare(
        work, device))
    scan = _scan(n=600)
    pred = seg.segment(scan)
    assert networked == [150]
    assert len(pred.labels) == 600 and (pred.labels >= 0).all() and (pred.confidence > 0).all()
    assert pred.adapted


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_segment_adapts_inside_no_grad_caller(context: type) -> None:
    seg = _segmenter()
    with context():
        pred = seg.segment(_scan())
    assert pred.adapted and pred.steps_run == 2


def test_segment_nan_loss_falls_back_to_unadapted_prediction() -> None:
    seg = _segmenter()
    with torch.no_grad():
        seg.model.kd_head[-1].weight.fill_(float("nan"))
    source = _state(seg.model)
    pred = seg.segment(_scan())
    assert not pred.adapted and "non-finite" in pred.skip_reason
    assert len(pred.labels) == 300 and (pred.labels >= 0).all()
    assert all(torch.equal(source[k], v) or torch.isnan(source[k]).any() for k, v in _state(seg.model).items())


def test_segment_out_of_memory_falls_back_and_restores(monkeypatch: pytest.MonkeyPatch) -> None:
    seg = _segmenter()
    source = _state(seg.model)
    strategy = seg.strategy
    real_adapt = strategy.adapt

    def adapt_then_oom(prepared: object, targets: object = None, time_budget_s: object = None,
                       **options: object) -> None:
        real_adapt(prepared, targets)  # weights move ...
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")  # ... then memory runs out

    monkeypatch.setattr(strategy, "adapt", adapt_then_oom)
    pred = seg.segment(_scan())
    assert not pred.adapted and pred.skip_reason.startswith("out of memory")
    assert _same(_state(seg.model), source)


@pytest.mark.parametrize("strategy", ["tent", "bn_stats", "ttt_kd_online"])
def test_segment_runs_every_strategy(strategy: str) -> None:
    pred = _segmenter(strategy=strategy, steps=1).segment(_scan())
    assert pred.adapted and pred.strategy == strategy and len(pred.labels) == 300


def test_from_config_without_checkpoint_builds_untrained_net_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    config = SegmenterConfig(checkpoint=None, teacher="tiny", teacher_resolution=56, device="cpu",
                             adapt=AdaptConfig(strategy="ttt_kd", steps=1))
    with caplog.at_level(logging.WARNING, logger="ttt_kd_ros.segmenter"):
        seg = Segmenter.from_config(config)
    assert "UNTRAINED" in caplog.text
    assert seg.model.config.teacher_dim == seg.teacher.feature_dim
    assert seg.strategy.name == "ttt_kd"


def test_from_config_rejects_teacher_dim_mismatch_naming_both(tmp_path: Path) -> None:
    model = TTTKDNet(net_config("ttt_kd_small", **{**TINY_NET, "teacher_dim": 12}))
    path = save_checkpoint(model, tmp_path / "net.safetensors")
    config = SegmenterConfig(checkpoint=str(path), teacher="tiny", teacher_resolution=56, device="cpu")
    with pytest.raises(ValueError, match=r"teacher_dim = 12.*32-dim") as err:
        Segmenter.from_config(config)
    assert "net.safetensors" in str(err.value)


def test_resolve_device_auto_and_bad_names() -> None:
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match=r"SegmenterConfig\.device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda:0")


def test_nearest_voxel_rows_own_voxel_then_coarser_cell() -> None:
    coords = np.array([[0, 0, 0], [10, 10, 10], [-5, -5, -5]], dtype=np.int64)
    points = np.array([[0.05, 0.05, 0.05],  # inside voxel 0 (size 0.1)
                       [1.02, 1.07, 1.01],  # inside voxel 1
                       [-0.45, -0.48, -0.41],  # inside voxel 2 (negative coordinates)
                       [1.15, 1.15, 1.15],  # empty voxel (11, 11, 11): shares the 2x cell of voxel 1? no: 4x cell
                       [-0.62, -0.62, -0.62]])  # empty voxel (-7, -7, -7): 4x cell (-2) holds voxel 2
    rows = nearest_voxel_rows(points, coords, 0.1)
    np.testing.assert_array_equal(rows, [0, 1, 2, 1, 2])


def test_segment_ttt_steps_lower_kd_loss_of_real_net() -> None:
    seg = _segmenter(steps=4, kd_points_per_step=0)  # all visible points: before and after measure the same set
    pred = seg.segment(_scan())
    assert pred.steps_run == 4
    assert pred.kd_loss_after < pred.kd_loss_before


def test_segmenter_rejects_model_on_another_device() -> None:
    model = TTTKDNet(net_config("ttt_kd_small", **TINY_NET)).to("meta")
    with pytest.raises(ValueError, match="model is on meta but device is cpu"):
        Segmenter(model, _teacher(), build_strategy(model, AdaptConfig(strategy="none")), device="cpu")


def test_retune_changes_the_next_scans_steps_and_the_optimizer_lr() -> None:
    seg = _segmenter(steps=2)
    assert seg.segment(_scan()).steps_run == 2
    config = seg.retune(steps=3, lr=0.005)
    assert config.steps == 3 and seg.strategy.config is config
    assert all(group["lr"] == 0.005 for group in seg.strategy.optimizer.param_groups)
    assert seg.segment(_scan()).steps_run == 3


def test_retune_refuses_bad_values_and_a_new_parameter_set_keeping_the_running_config() -> None:
    seg = _segmenter(steps=2)
    before = seg.strategy.config
    with pytest.raises(ValueError, match="lr"):
        seg.retune(lr=-1.0)
    with pytest.raises(ValueError, match="cannot change"):
        seg.retune(params="norm")
    assert seg.strategy.config is before


def test_segment_budget_reserves_the_last_final_forward() -> None:
    roomy = _segmenter(steps=2, time_budget_s=30.0)
    assert roomy.segment(_scan()).steps_run == 2  # tiny steps, far inside 30 s
    tight = _segmenter(steps=2, time_budget_s=30.0)
    tight.segment(_scan())
    tight._note_forward(31.0, tight.model.prepare(_scan()))  # as if a forward took longer than the whole budget
    pred = tight.segment(_scan())
    assert pred.steps_run == 0 and "time budget" in pred.skip_reason and len(pred.labels) == 300


def test_segment_budget_scales_the_reserved_forward_by_voxels() -> None:
    """The forward the budget holds back is the last one's time scaled to this scan's voxels: a forward measured
    on a small scan (the node's warm-up) does not leave a big scan's steps without room for its own forward."""
    small, big = _scan(n=40), _scan(n=3000)
    seg = _segmenter(steps=2, time_budget_s=30.0)
    small_prepared, big_prepared = seg.model.prepare(small), seg.model.prepare(big)
    assert big_prepared.num_voxels > 3 * small_prepared.num_voxels
    seg._note_forward(10.0, small_prepared)  # as if a forward of the small scan took 10 s
    assert seg.segment(small).steps_run == 2  # 10 s reserved: room for tiny steps in 30 s
    seg._note_forward(10.0, small_prepared)
    pred = seg.segment(big)  # over 30 s reserved for the big scan's forward
    assert pred.steps_run == 0 and "time budget" in pred.skip_reason


def _grid_scan(spacing_m: float, n_side: int = 12) -> Scan:
    """An n_side^3 grid of points ``spacing_m`` apart at 3 m: one voxel each whatever the spacing, with 26
    neighbours each when they touch (one voxel apart) and none when they do not."""
    axis = np.arange(n_side) * spacing_m
    grid = np.stack(np.meshgrid(axis, axis, axis + 3.0, indexing="ij"), axis=-1).reshape(-1, 3)
    return Scan(grid.astype(np.float32) + 0.01, cameras=[_camera()])


def test_a_pass_is_sized_by_its_voxels_and_neighbour_pairs_on_the_levels_it_runs() -> None:
    """The budget's forward estimate scales with pass_size: equal voxel counts with more neighbours cost more
    (real KITTI frames: the last stage's time follows their level-0 pairs), and a frozen prefix leaves the levels
    below its output to the pass."""
    seg = _segmenter()
    voxel = seg.model.config.voxel_size_m
    dense, sparse = seg.model.prepare(_grid_scan(voxel)), seg.model.prepare(_grid_scan(3 * voxel))
    assert dense.num_voxels == sparse.num_voxels == 12 ** 3
    assert seg.model.pass_size(dense) > 2 * seg.model.pass_size(sparse)
    levels = seg.model.config.num_levels
    geometry = dense.geometry
    every_level = sum(geometry.num_voxels(lv) + geometry.neighbour_pairs(lv) for lv in range(levels))
    assert seg.model.pass_size(dense) == every_level
    last_stage = seg.model.with_frozen_encoder(dense, len(seg.model.backbone.decoder) - 1)
    assert seg.model.pass_size(last_stage) == geometry.num_voxels(0) + geometry.neighbour_pairs(0)
    seg._note_forward(1.0, sparse)  # as if a forward of the sparse grid took 1 s: the dense one is expected longer
    assert seg._forward_estimate(seg._pass_size(dense)) > 2.0


def test_warm_up_measures_a_step_the_guards_would_refuse_and_restores_everything() -> None:
    """The node's warm-up scan is noise to the teacher, which the ceiling refuses; the warm-up still takes its step
    (so the first real scan's budget knows a step's cost), then the guards, the budget and the weights are back."""
    seg = _segmenter(steps=3, guard_kd_max=1e-6, guard_kd_ratio=0.5, time_budget_s=1.0)
    source = _state(seg.model)
    assert seg.segment(_scan()).steps_run == 0  # the ceiling refuses this scan ...
    config = seg.strategy.config
    warm = seg.warm_up(_scan(), steps=1)
    assert warm.steps_run == 1 and seg.strategy.expected_step_s is not None  # ... the warm-up steps anyway
    assert seg.strategy.config is config and _same(_state(seg.model), source)
    assert seg.segment(_scan()).steps_run == 0


def test_the_warm_ups_forward_cost_plans_only_the_first_real_scan() -> None:
    """The warm-up's forward cost per voxel (a small scan's, far above a big scan's) plans the first real scan,
    which is safe, and is then forgotten, so it does not hold back the steps of the scans after it."""
    seg = _segmenter(steps=2, time_budget_s=30.0)
    seg.warm_up(_scan(n=40))
    seg._forward_rates.rates.append(1.0)  # as if the warm-up forward cost 1 s per voxel: no room on the next scan
    assert seg.segment(_scan()).steps_run == 0
    assert seg.segment(_scan()).steps_run == 2  # its rate was replaced by the first real forward's


def test_first_step_estimate_scales_the_last_step_by_the_voxels_a_step_runs_on() -> None:
    """A step measured on 100 voxels plans a whole-scan step of a bigger scan in proportion, and a cropped one at
    the crop's size: the step cost the budget expects follows what the step will run on."""
    whole, cropped = _segmenter(crop_voxels=0).strategy, _segmenter(crop_voxels=50).strategy
    prepared = _segmenter().model.prepare(_scan(n=3000))
    for strategy in (whole, cropped):
        strategy.expected_step_s, strategy.expected_step_voxels = 0.01, 100
    assert whole.first_step_estimate(prepared, None) == pytest.approx(0.01 * prepared.num_voxels / 100)
    assert cropped.first_step_estimate(prepared, None) == pytest.approx(0.005)
