"""The dense (CNN) stand-in teacher: patch pooling, the folder format, teachers.resolve, and its training tool."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from safetensors.torch import load_file

from ttt_kd_ros.data.synthetic.renders import render_labeled_images
from ttt_kd_ros.teachers.dense import (
    DENSE_CONFIG_NAME,
    DenseSegNet,
    DenseTeacher,
    DenseTeacherConfig,
    load_dense_teacher,
    patch_outputs,
    save_dense_teacher,
)
from ttt_kd_ros.teachers.resolve import resolve
from ttt_kd_ros.tools import pretrain_dense_teacher as tool
from ttt_kd_ros.tools.pretrain_teacher import render_set, save_render_set

SMALL = DenseTeacherConfig(widths=(4, 8), feature_width=6, num_classes=11)


class FixedLogits(nn.Module):
    """Stands in for the U-Net: returns the same logits and features whatever the pixels."""

    def __init__(self, logits: torch.Tensor, features: torch.Tensor) -> None:
        super().__init__()
        self.logits, self.dense = logits, features

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense.expand(len(x), -1, -1, -1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1, -1, -1)


def test_posterior_output_is_the_patch_mean_of_pixel_softmax_normalised() -> None:
    # 2 classes on a 4 x 8 image, patch 4: the left patch is half class 0 (certain), half class 1 (certain);
    # the right patch is all class 1.
    logits = torch.full((1, 2, 4, 8), -30.0)
    logits[0, 0, :2, :4] = 30.0
    logits[0, 1, 2:, :4] = 30.0
    logits[0, 1, :, 4:] = 30.0
    config = DenseTeacherConfig(widths=(4, 8), feature_width=3, num_classes=2, output="posterior", patch=4)
    out = patch_outputs(FixedLogits(logits, torch.zeros(1, 3, 4, 8)), config, torch.zeros(1, 3, 4, 8))
    assert out.shape == (1, 2, 1, 2)
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 0.5]) / np.sqrt(0.5))
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([0.0, 1.0]))


def test_features_output_averages_the_feature_channels_per_patch() -> None:
    features = torch.zeros(1, 2, 4, 8)
    features[0, 0, :, :4] = 3.0  # left patch: channel 0
    features[0, 1, :, 4:6] = 2.0  # right patch: channel 1 on half of its pixels -> mean 1, still unit after norm
    config = DenseTeacherConfig(widths=(4, 8), feature_width=2, num_classes=2, output="features", patch=4)
    out = patch_outputs(FixedLogits(torch.zeros(1, 2, 4, 8), features), config, torch.zeros(1, 3, 4, 8))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[0, :, 0, 1], torch.tensor([0.0, 1.0]))


def test_unet_keeps_the_image_size_and_the_config_width() -> None:
    net = DenseSegNet(DenseTeacherConfig())
    x = torch.randn(2, 3, 24, 32)
    assert net.features(x).shape == (2, 64, 24, 32) and net(x).shape == (2, 11, 24, 32)


def test_folder_round_trip_through_resolve(tmp_path) -> None:
    torch.manual_seed(0)
    net = DenseSegNet(SMALL)
    save_dense_teacher(net, SMALL, tmp_path / "t")
    image = render_labeled_images("source", 0, 1)[0].image_rgb
    teacher = resolve(tmp_path / "t", resolution=(120, 160))
    assert isinstance(teacher, DenseTeacher) and teacher.feature_dim == 6
    fmap = teacher.feature_map(image)
    assert fmap.features.shape == (6, 15, 20)
    torch.testing.assert_close(fmap.features.norm(dim=0), torch.ones(15, 20))
    direct = DenseTeacher(net.eval(), SMALL, "x", resolution=(120, 160)).feature_map(image)
    torch.testing.assert_close(fmap.features, direct.features)
    posterior = load_dense_teacher(tmp_path / "t", resolution=(120, 160), output="posterior")
    assert posterior.feature_dim == 11 and "posterior" in posterior.teacher_id
    assert posterior.teacher_id != teacher.teacher_id  # a checkpoint records which feature space it learnt
    assert (posterior.feature_map(image).features >= 0).all()


def test_folder_errors_are_clear(tmp_path) -> None:
    save_dense_teacher(DenseSegNet(SMALL), SMALL, tmp_path / "t")
    (tmp_path / "t" / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="unreadable weights"):
        resolve(tmp_path / "t")
    save_dense_teacher(DenseSegNet(SMALL), SMALL, tmp_path / "other")
    (tmp_path / "other" / DENSE_CONFIG_NAME).write_text(replace(SMALL, feature_width=9).to_json())
    with pytest.raises(ValueError, match="do not fit"):
        resolve(tmp_path / "other")
    data = json.loads(SMALL.to_json())
    data["depth"] = 3
    (tmp_path / "other" / DENSE_CONFIG_NAME).write_text(json.dumps(data))
    with pytest.raises(ValueError, match="unknown dense teacher config keys"):
        resolve(tmp_path / "other")
    with pytest.raises(ValueError, match="output"):
        DenseTeacherConfig(output="logits")


def test_augment_changes_colour_but_keeps_geometry() -> None:
    """A per-pixel colour map plus pixel noise: every pixel stays where it was, so inside each image and channel
    the input's white pixels share one value and its black pixels another (up to the noise), and the two differ."""
    blocks = torch.rand(4, 4, generator=torch.Generator().manual_seed(0)) < 0.5
    white = blocks.repeat_interleave(4, 0).repeat_interleave(4, 1)  # a 16 x 16 pattern of 4 x 4 blocks
    images = (white.to(torch.uint8) * 255).expand(8, 3, 16, 16).contiguous()
    out = tool.augment(images, torch.Generator().manual_seed(1), colour_mix=0.35)
    assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    assert not torch.allclose(out[0], out[1], atol=0.05)  # each image gets its own colours
    for image in out:
        white_values, black_values = image[:, white], image[:, ~white]  # (3, pixels) each
        assert white_values.std(dim=1).max() < 0.06 and black_values.std(dim=1).max() < 0.06  # noise std <= 0.05
        assert (white_values.mean(dim=1) - black_values.mean(dim=1)).abs().max() > 0.1  # the pattern is still there
    moved = tool.augment(images.roll(1, dims=3), torch.Generator().manual_seed(1), colour_mix=0.35)
    assert max(float(m[:, white].std(dim=1).max()) for m in moved) > 0.1  # the check sees a one-pixel shift


@pytest.fixture(scope="module")
def renders(tmp_path_factory):
    folder = tmp_path_factory.mktemp("renders")
    domains = ("source", "office")
    save_render_set(folder / "train.npz", render_set(domains, range(2), 2, data_seed=5))
    save_render_set(folder / "held_out.npz", render_set(domains, range(2, 3), 1, data_seed=5))
    return folder


def test_training_lowers_the_loss_writes_a_loadable_folder_and_reports(renders, tmp_path) -> None:
    config = tool.DenseTrainConfig(steps=30, batch_size=4, lr=5e-3, checkpoint_every=10)
    report = tool.train_dense_teacher(config, SMALL, tmp_path / "t", renders=renders, log=lambda m: None)
    assert report["loss_last"] < report["loss_first"]
    assert set(report["held_out"]) == {"source", "office"}
    assert {"pixel_miou", "features_probe_miou", "posterior_probe_miou",
            "posterior_centroid_agreement"} <= set(report["held_out"]["office"])
    assert not (tmp_path / "t" / "train_state.pt").exists()
    assert json.loads((tmp_path / "t" / "pretrain_report.json").read_text())["train"]["steps"] == 30
    assert resolve(tmp_path / "t", resolution=(120, 160)).feature_dim == SMALL.feature_width


def test_stopped_run_resumes_to_the_same_weights(renders, tmp_path) -> None:
    config = tool.DenseTrainConfig(steps=4, batch_size=2, checkpoint_every=2)
    tool.train_dense_teacher(config, SMALL, tmp_path / "whole", renders=renders, log=lambda m: None)
    stopped = tool.train_dense_teacher(config, SMALL, tmp_path / "split", renders=renders, max_minutes=0.0,
                                       log=lambda m: None)
    assert stopped is None and (tmp_path / "split" / "train_state.pt").is_file()
    with pytest.raises(ValueError, match="another configuration"):
        tool.train_dense_teacher(replace(config, lr=1.0), SMALL, tmp_path / "split", renders=renders,
                                 log=lambda m: None)
    tool.train_dense_teacher(config, SMALL, tmp_path / "split", renders=renders, log=lambda m: None)
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    split = load_file(str(tmp_path / "split" / "model.safetensors"))
    for key in whole:
        torch.testing.assert_close(split[key], whole[key], rtol=0, atol=0)


def test_missing_render_cache_is_a_clear_error(tmp_path) -> None:
    (tmp_path / "r").mkdir()
    with pytest.raises(FileNotFoundError, match=r"held_out\.npz"):
        tool.train_dense_teacher(tool.DenseTrainConfig(steps=1), SMALL, tmp_path / "t", renders=tmp_path / "r")


def test_init_continues_from_a_teacher_folder(renders, tmp_path) -> None:
    torch.manual_seed(3)
    save_dense_teacher(DenseSegNet(SMALL), SMALL, tmp_path / "init")
    config = tool.DenseTrainConfig(steps=1, batch_size=2, lr=1e-12)
    tool.train_dense_teacher(config, SMALL, tmp_path / "t", renders=renders, init=tmp_path / "init",
                             log=lambda m: None)
    before = load_file(str(tmp_path / "init" / "model.safetensors"))
    after = load_file(str(tmp_path / "t" / "model.safetensors"))
    conv = "encoder.0.0.weight"
    torch.testing.assert_close(after[conv], before[conv], rtol=0, atol=1e-9)


def test_reports_name_the_dense_stand_in_and_say_it_is_not_dinov2(tmp_path) -> None:
    from ttt_kd_ros.tools.evaluate import teacher_kind

    save_dense_teacher(DenseSegNet(SMALL), SMALL, tmp_path / "t")
    words = teacher_kind(str(tmp_path / "t"), resolve(tmp_path / "t"))
    assert "dense stand-in" in words and "NOT real DINOv2" in words and "features" in words
