"""The frozen-encoder path (params "decoder", running statistics): a scan's encoder output is computed once and
every pass runs the decoder alone on it, on the whole scan and on the rows of a crop, with the same labels as the
whole backbone gives."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from crop_scans import wall_and_floor_scan

from ttt_kd_ros.adapt import AdaptConfig, build_strategy
from ttt_kd_ros.adapt.verbs import collect_params
from ttt_kd_ros.model import TTTKDNet, net_config
from ttt_kd_ros.scan import Scan
from ttt_kd_ros.segmenter import Segmenter
from ttt_kd_ros.sparse import available_backends, rows_of
from ttt_kd_ros.teachers.weights import tiny_teacher

NET = {"encoder_planes": (8, 16, 16), "encoder_blocks": (1, 1, 1), "decoder_planes": (16, 8), "decoder_blocks": (1, 1),
       "kd_hidden": 16, "teacher_dim": 32, "voxel_size_m": 0.1}


def _scan(points: int = 6000) -> Scan:
    return wall_and_floor_scan(points, seed=1)


def _model(backend: str = "torch") -> TTTKDNet:
    torch.manual_seed(0)
    model = TTTKDNet(net_config("ttt_kd_small", backend=backend, **NET))
    with torch.no_grad():  # running statistics unlike a fresh layer's, so "running" vs "batch" would show
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
    return model


def _segmenter(params: str = "decoder", crop_voxels: int = 0, bn_train: bool = False,
               backend: str = "torch") -> Segmenter:
    model = _model(backend)
    config = AdaptConfig(strategy="ttt_kd", steps=4, lr=1e-2, kd_points_per_step=64, params=params,
                         bn_train=bn_train, crop_voxels=crop_voxels, crops_per_scan=2)
    return Segmenter(model, tiny_teacher(resolution=56), build_strategy(model, config))


def _runs(module: torch.nn.Module) -> list[int]:
    """One entry per run of ``module``, recorded as a scan is segmented."""
    runs: list[int] = []
    module.register_forward_hook(lambda *_: runs.append(1))
    return runs


def _encoder_runs(seg: Segmenter) -> list[int]:
    """One entry per run of the encoder's first stage (the stem)."""
    return _runs(seg.model.backbone.encoder[0].entry)


def test_rows_of_finds_each_query_voxel_and_refuses_a_missing_one() -> None:
    coords = torch.tensor([[5, 0, 1], [0, 0, 0], [2, 3, 4], [0, 0, 1]])
    assert rows_of(coords, torch.tensor([[0, 0, 1], [5, 0, 1], [2, 3, 4]])).tolist() == [3, 0, 2]
    assert rows_of(coords, torch.zeros((0, 3), dtype=torch.long)).numel() == 0
    with pytest.raises(ValueError, match="1 of 2 query voxels"):
        rows_of(coords, torch.tensor([[0, 0, 0], [9, 9, 9]]))


def _need(backend: str) -> None:
    if backend not in available_backends():
        pytest.skip(f"{backend} is not importable here; the torch backend runs these checks")


@pytest.mark.parametrize("backend", ["torch", "minkowski"])
def test_a_crop_reads_the_scans_encoder_output_at_its_own_voxels_on_every_level(backend: str) -> None:
    _need(backend)
    model = _model(backend).eval()
    prepared = model.with_frozen_encoder(model.prepare(_scan()))
    rows = torch.arange(0, prepared.num_voxels, 3)  # every third voxel: a crop scattered over the whole scan
    crop = model.crop(prepared, rows)
    assert crop.encoder_skips is not None and len(crop.encoder_skips) == model.config.num_levels
    for level in range(model.config.num_levels):
        scan_coords = {tuple(c): i for i, c in enumerate(prepared.geometry.coords(level).tolist())}
        crop_coords = crop.geometry.coords(level).tolist()
        expected = prepared.encoder_skips[level][[scan_coords[tuple(c)] for c in crop_coords]]
        assert torch.equal(crop.encoder_skips[level], expected)


@pytest.mark.parametrize("backend", ["torch", "minkowski"])
def test_every_frozen_prefix_gives_the_whole_backbones_features(backend: str) -> None:
    """The encoder alone, or with any number of decoder stages, computed once: the rest gives the whole backbone's
    features; a crop of the encoder's output reads features with the whole scan around it."""
    _need(backend)
    model = _model(backend).eval()
    prepared = model.prepare(_scan())
    with torch.no_grad():
        whole = model.voxel_features(prepared)
        frozen = model.voxel_features(model.with_frozen_encoder(prepared))
        rows = torch.arange(0, prepared.num_voxels, 2)
        crop = model.crop(prepared, rows)  # the same crop with the whole backbone and with the frozen encoder's rows
        crop_frozen = model.crop(model.with_frozen_encoder(prepared), rows)
        crop_whole = model.voxel_features(crop)
        crop_decoder = model.voxel_features(crop_frozen)
        for stages in range(len(model.backbone.decoder)):
            prefix = model.with_frozen_encoder(prepared, stages)
            assert prefix.decoder_start == stages and (prefix.decoded is None) == (stages == 0)
            assert torch.equal(model.voxel_features(prefix), whole)
    assert torch.equal(whole, frozen)
    # a crop's decoder reads encoder features computed with the whole scan around it: unlike the crop's own
    # encoder at its borders, yet the same network on the same rows
    assert crop_decoder.shape == crop_whole.shape and not torch.equal(crop_decoder, crop_whole)


def test_the_encoder_runs_once_per_scan_and_the_labels_match_the_whole_backbone(monkeypatch) -> None:
    frozen_seg, whole_seg = _segmenter(), _segmenter()
    monkeypatch.setattr(whole_seg, "_frozen_encoder", lambda: False)  # the same strategy, every pass whole
    runs = _encoder_runs(frozen_seg)
    scan = _scan()
    frozen, whole = frozen_seg.segment(scan), whole_seg.segment(scan)
    assert frozen.steps_run == whole.steps_run == 4
    assert len(runs) == 1 and "encoder" in frozen.timings_s  # 4 steps and the final forward: one encoder pass
    np.testing.assert_allclose(frozen.kd_loss_after, whole.kd_loss_after, rtol=1e-5)
    np.testing.assert_allclose(frozen.confidence, whole.confidence, atol=1e-5)
    assert (frozen.labels == whole.labels).mean() > 0.999


def test_steps_on_crops_of_a_frozen_encoder_move_the_decoder_alone(monkeypatch) -> None:
    seg = _segmenter(crop_voxels=150)
    encoder = [p.detach().clone() for p in seg.model.backbone.encoder.parameters()]
    decoder = [p.detach().clone() for p in seg.model.backbone.decoder.parameters()]
    seen: list[int] = []
    real = seg.model.kd_features
    monkeypatch.setattr(seg.model, "kd_features", lambda prepared, index: seen.append(prepared.num_voxels)
                        or real(prepared, index))
    runs = _encoder_runs(seg)
    strategy = seg.strategy
    moved: list[bool] = []
    real_step = strategy.optimizer.step

    def step() -> None:  # after each update: did the decoder move, is the encoder as it was?
        real_step()
        assert all(torch.equal(a, b) for a, b in zip(encoder, seg.model.backbone.encoder.parameters(), strict=True))
        moved.append(any(not torch.equal(a, b)
                         for a, b in zip(decoder, seg.model.backbone.decoder.parameters(), strict=True)))

    monkeypatch.setattr(strategy.optimizer, "step", step)
    pred = seg.segment(_scan())
    assert pred.steps_run == 4 and moved == [True] * 4
    assert max(seen) <= 150 and len(runs) == 1


@pytest.mark.parametrize(("params", "bn_train"), [("all", False), ("norm_decoder", False), ("decoder", True)])
def test_an_encoder_that_can_change_is_not_frozen(params: str, bn_train: bool) -> None:
    seg = _segmenter(params=params, bn_train=bn_train)
    runs = _encoder_runs(seg)
    pred = seg.segment(_scan())
    assert not seg.strategy.frozen_encoder() and "encoder" not in pred.timings_s
    assert len(runs) == pred.steps_run + 1  # every step and the final forward run the whole backbone


def test_the_decoder_set_holds_no_encoder_parameter() -> None:
    model = _model()
    params, names = collect_params(model, "decoder")
    encoder = {id(p) for p in model.backbone.encoder.parameters()}
    assert names and all(n.startswith("backbone.decoder.") for n in names)
    assert not encoder & {id(p) for p in params}
    assert {id(p) for p in params} == {id(p) for p in model.backbone.decoder.parameters()}


def test_spconv_whose_crops_know_no_pyramid_before_a_pass_runs_the_whole_backbone() -> None:
    _need("spconv")
    seg = _segmenter(crop_voxels=150, backend="spconv")
    assert seg.strategy.frozen_encoder() and not seg._frozen_encoder()
    seg.retune(steps=0)  # spconv's CPU wheel has no backward (ENVIRONMENT.md): the forward path is what runs here
    pred = seg.segment(_scan())
    assert pred.labels.shape == (_scan().num_points,) and "encoder" not in pred.timings_s


# ----------------------------------------------------------------------------- a prefix into the decoder


def test_the_decoder_last_set_is_the_full_resolution_stage_alone() -> None:
    model = _model()
    params, names = collect_params(model, "decoder_last")
    last = model.backbone.decoder[-1]
    assert names and all(n.startswith(f"backbone.decoder.{len(model.backbone.decoder) - 1}.") for n in names)
    assert {id(p) for p in params} == {id(p) for p in last.parameters()}


def test_a_crop_reads_the_scans_decoded_output_at_its_own_voxels() -> None:
    model = _model().eval()
    frozen = model.with_frozen_encoder(model.prepare(_scan()), 1)
    crop = model.crop(frozen, torch.arange(0, frozen.num_voxels, 4))
    level = model.backbone.decoded_level(1)
    scan_rows = {tuple(c): i for i, c in enumerate(frozen.geometry.coords(level).tolist())}
    expected = frozen.decoded[[scan_rows[tuple(c)] for c in crop.geometry.coords(level).tolist()]]
    assert crop.decoder_start == 1 and torch.equal(crop.decoded, expected)
    # the crop's pyramid stops at the decoded level: the stages it runs need no coarser map nor skip
    assert crop.geometry.num_levels == level + 1 and len(crop.encoder_skips) == level


def test_a_prefix_must_leave_a_stage_to_run_and_a_late_start_needs_its_input() -> None:
    model = _model().eval()
    prepared = model.prepare(_scan(800))
    with pytest.raises(ValueError, match="decoder_stages"):
        model.with_frozen_encoder(prepared, len(model.backbone.decoder))
    skips = model.backbone.encode(prepared.features, prepared.geometry)
    with pytest.raises(ValueError, match="needs decoder stage 0's output"):
        model.backbone.decode(skips, prepared.geometry, start=1)


def test_with_the_last_stage_alone_moving_earlier_stages_run_once_per_scan(monkeypatch) -> None:
    frozen_seg, whole_seg = _segmenter(params="decoder_last"), _segmenter(params="decoder_last")
    monkeypatch.setattr(whole_seg, "_frozen_encoder", lambda: False)  # the same strategy, every pass whole
    assert frozen_seg.strategy.frozen_decoder_stages() == len(frozen_seg.model.backbone.decoder) - 1
    first, last = _runs(frozen_seg.model.backbone.decoder[0].entry), _runs(frozen_seg.model.backbone.decoder[-1].entry)
    before = [p.detach().clone() for p in frozen_seg.model.backbone.decoder[:-1].parameters()]
    scan = _scan()
    frozen, whole = frozen_seg.segment(scan), whole_seg.segment(scan)
    assert frozen.steps_run == whole.steps_run == 4
    assert len(first) == 1 and len(last) == 5  # the first stage with the encoder; the last in 4 steps + forward
    assert all(torch.equal(a, b) for a, b in
               zip(before, frozen_seg.model.backbone.decoder[:-1].parameters(), strict=True))
    np.testing.assert_allclose(frozen.kd_loss_after, whole.kd_loss_after, rtol=1e-5)
    np.testing.assert_allclose(frozen.confidence, whole.confidence, atol=1e-5)
    assert (frozen.labels == whole.labels).mean() > 0.999
