"""TTTKDNet: shapes, per-scan preparation, checkpoints, and that it can learn."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from ttt_kd_ros.checkpoint_format import load_checkpoint, save_checkpoint
from ttt_kd_ros.model import NetConfig, PreparedScan, TTTKDNet, floor_z, net_config, point_inputs
from ttt_kd_ros.scan import Scan

TINY = {"encoder_planes": (8, 16, 16), "encoder_blocks": (1, 1, 1), "decoder_planes": (16, 8),
        "decoder_blocks": (1, 1), "kd_hidden": 16, "teacher_dim": 12, "voxel_size_m": 0.1}


def _room_scan(num_points: int = 1500, seed: int = 0, rgb: bool = True) -> Scan:
    """Points on a floor, a wall and a box; labels 0 / 1 / 3 (synthetic_indoor floor, wall, table)."""
    rng = np.random.default_rng(seed)
    n = num_points // 3
    floor = np.c_[rng.uniform(0, 2, (n, 2)), np.zeros(n)]
    wall = np.c_[rng.uniform(0, 2, n), np.full(n, 2.0), rng.uniform(0, 1.5, n)]
    box = np.c_[rng.uniform(0.5, 1.0, (n, 2)), np.full(n, 0.6)]
    pts = np.concatenate([floor, wall, box]).astype(np.float32)
    labels = np.repeat(np.array([0, 1, 3]), n)
    colours = rng.uniform(0, 1, (len(pts), 3)).astype(np.float32) if rgb else None
    return Scan(pts, rgb=colours, labels=labels, label_set="synthetic_indoor")


def _tiny_net(seed: int = 0, **overrides: object) -> TTTKDNet:
    torch.manual_seed(seed)
    return TTTKDNet(net_config("ttt_kd_small", **{**TINY, **overrides}))


def test_forward_shapes_per_input_point(device: torch.device) -> None:
    net = _tiny_net().to(device)
    scan = _room_scan()
    prepared = net.prepare(scan, device)
    out = net(prepared)
    assert out.logits.shape == (scan.num_points, 11)
    assert out.kd is not None and out.kd.shape == (scan.num_points, 12)
    assert out.point_features.shape == (scan.num_points, 8)
    assert net(prepared, with_kd=False).kd is None


def test_point_inputs_fill_missing_inputs_with_zeros() -> None:
    config = net_config(**TINY)
    scan = _room_scan(rgb=False)
    inputs = point_inputs(scan, config)
    assert inputs.shape == (scan.num_points, config.in_channels)
    assert np.all(inputs[:, -4:] == 0)  # intensity and rgb absent
    assert np.all(inputs[:, 0] == 1) and np.all(np.abs(inputs[:, 1:4]) <= 0.5)
    assert TTTKDNet(config).prepare(scan).features.shape[1] == config.in_channels


def test_duplicate_points_get_identical_features() -> None:
    net = _tiny_net().eval()
    base = _room_scan(600)
    pts = np.concatenate([base.points_xyz_m, base.points_xyz_m[:50]])
    scan = Scan(pts, rgb=np.concatenate([base.rgb, base.rgb[:50]]))
    with torch.no_grad():
        feats = net.backbone_features(net.prepare(scan))
    assert torch.equal(feats[-50:], feats[:50])


def test_prepare_once_then_two_forwards_are_identical() -> None:
    net = _tiny_net().eval()
    prepared = net.prepare(_room_scan())
    with torch.no_grad():
        a, b = net(prepared), net(prepared)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.kd, b.kd)


def test_kd_features_on_a_subset_match_the_full_forward() -> None:
    net = _tiny_net().eval()
    prepared = net.prepare(_room_scan())
    idx = torch.tensor([0, 5, 700, 1499])
    with torch.no_grad():
        full = net(prepared).kd
        part = net.kd_features(prepared, idx)
    assert torch.allclose(part, full[idx], atol=1e-6)


def test_backward_reaches_only_trainable_parameters(device: torch.device) -> None:
    net = _tiny_net().to(device).train()
    for name, p in net.named_parameters():
        p.requires_grad_("bn" in name)
    prepared = net.prepare(_room_scan(600), device)
    net.kd_features(prepared, torch.arange(100, device=device)).pow(2).mean().backward()
    grads = {name: p.grad for name, p in net.named_parameters()}
    assert all(g is None for name, g in grads.items() if "bn" not in name)
    assert any(g is not None and bool(g.abs().sum() > 0) for name, g in grads.items() if "bn" in name)


def test_tiny_scan_with_one_coarse_voxel_trains() -> None:
    net = _tiny_net().train()
    scan = Scan(np.array([[0.0, 0.0, 0.0], [0.05, 0.0, 0.0], [0.12, 0.0, 0.0]], np.float32))
    out = net(net.prepare(scan))
    out.logits.sum().backward()
    assert torch.isfinite(out.logits).all()


@pytest.mark.slow  # ~1.3 s CPU alone, many times that with 2 threads on a loaded machine
def test_sgd_on_cross_entropy_lowers_the_loss() -> None:
    net = _tiny_net(seed=1).train()
    scan = _room_scan(450)
    prepared = net.prepare(scan)
    labels = torch.from_numpy(scan.labels)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(net(prepared, with_kd=False).logits, labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]


def test_forward_and_backward_under_bfloat16_autocast(device: torch.device) -> None:
    """Mixed precision on every device (bfloat16 autocast runs on a CPU too): finite outputs and float32 grads."""
    net = _tiny_net().to(device).train()
    prepared = net.prepare(_room_scan(), device)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = net(prepared)
        loss = out.kd.float().pow(2).mean() + out.logits.float().logsumexp(1).mean()
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert torch.isfinite(loss) and grads and all(torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)


def test_net_config_rejects_bad_fields() -> None:
    with pytest.raises(ValueError, match="input_features"):
        NetConfig(input_features=("ones", "normals"))
    with pytest.raises(ValueError, match="num_classes"):
        NetConfig(num_classes=5, label_set="scannet20")
    with pytest.raises(ValueError, match="decoder_planes"):
        NetConfig(decoder_planes=(32,))
    with pytest.raises(ValueError, match="preset"):
        net_config("resnet9000")
    with pytest.raises(ValueError, match="unknown fields"):
        net_config(planes=(1, 2))


# ----------------------------------------------------------------------------- checkpoints


def _saved(tmp_path: Path) -> tuple[TTTKDNet, Path, PreparedScan]:
    net = _tiny_net(seed=2).train()
    prepared = net.prepare(_room_scan())
    net(prepared)  # move BN running statistics away from their initial values
    net.eval()
    path = save_checkpoint(net, tmp_path / "net.safetensors", extra={"command": "train --epochs 1"})
    return net, path, prepared


def test_checkpoint_round_trip_is_bit_identical(tmp_path: Path) -> None:
    net, path, prepared = _saved(tmp_path)
    loaded = load_checkpoint(path, expect={"teacher_dim": 12, "label_set": "synthetic_indoor"})
    assert loaded.config == net.config
    with torch.no_grad():
        a, b = net(prepared), loaded(prepared)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.kd, b.kd)
    meta = json.loads(path.read_bytes()[8 : 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]])["__metadata__"]
    assert json.loads(meta["ttt_kd_ros"])["extra"] == {"command": "train --epochs 1"}


def test_load_checkpoint_missing_file_names_it(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"nope\.safetensors.*not found"):
        load_checkpoint(tmp_path / "nope.safetensors")


def test_load_checkpoint_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "garbage.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00this is not json at all" * 3)
    with pytest.raises(ValueError, match=r"garbage\.safetensors.*safetensors"):
        load_checkpoint(path)


def test_load_checkpoint_truncated_file(tmp_path: Path) -> None:
    _, path, _ = _saved(tmp_path)
    data = path.read_bytes()
    short = tmp_path / "short.safetensors"
    short.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"short\.safetensors"):
        load_checkpoint(short)


def test_load_checkpoint_wrong_expectation_names_the_field(tmp_path: Path) -> None:
    _, path, _ = _saved(tmp_path)
    with pytest.raises(ValueError, match="'teacher_dim' is 12 in the checkpoint, but this run needs 384"):
        load_checkpoint(path, expect={"teacher_dim": 384})
    with pytest.raises(ValueError, match="'label_set'"):
        load_checkpoint(path, expect={"label_set": "scannet20"})
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        load_checkpoint(path, expect={"colour": "red"})


def test_load_checkpoint_without_metadata_or_with_missing_field(tmp_path: Path) -> None:
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(ValueError, match=r"plain\.safetensors.*'ttt_kd_ros' missing"):
        load_checkpoint(plain)
    partial = tmp_path / "partial.safetensors"
    save_file({"w": torch.zeros(2)}, str(partial), metadata={"ttt_kd_ros": json.dumps({"format_version": 1})})
    with pytest.raises(ValueError, match=r"partial\.safetensors.*'config' missing"):
        load_checkpoint(partial)


def test_load_checkpoint_tensor_mismatches(tmp_path: Path) -> None:
    net, path, _ = _saved(tmp_path)
    meta = {"ttt_kd_ros": json.dumps(json.loads(_metadata(path)))}
    tensors = {k: v.contiguous() for k, v in net.state_dict().items()}
    dropped = dict(tensors)
    dropped.pop("seg_head.bias")
    save_file(dropped, str(tmp_path / "missing.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"missing \['seg_head\.bias'\]"):
        load_checkpoint(tmp_path / "missing.safetensors")
    resized = {**tensors, "seg_head.bias": torch.zeros(3)}
    save_file(resized, str(tmp_path / "resized.safetensors"), metadata=meta)
    with pytest.raises(ValueError, match=r"'seg_head\.bias' expected \(11,\)"):
        load_checkpoint(tmp_path / "resized.safetensors")


def _metadata(path: Path) -> str:
    data = path.read_bytes()
    header = json.loads(data[8 : 8 + struct.unpack("<Q", data[:8])[0]])
    return header["__metadata__"]["ttt_kd_ros"]


# ----------------------------------------------------------------------------- frame-independent height


def test_point_inputs_floor_height_is_the_same_in_a_z_shifted_frame() -> None:
    config = net_config(**{**TINY, "input_features": ("height", "floor_height")})
    room = _room_scan()
    sensor = Scan(room.points_xyz_m - np.array([0.0, 0.0, 0.7], np.float32), rgb=room.rgb, labels=room.labels,
                  label_set=room.label_set)  # a LiDAR mounted 0.7 m up sees the floor at z = -0.7
    a, b = point_inputs(room, config), point_inputs(sensor, config)
    np.testing.assert_allclose(a[:, 0] - b[:, 0], 0.7, atol=1e-6)  # "height" moves with the frame
    np.testing.assert_allclose(a[:, 1], b[:, 1], atol=1e-5)  # "floor_height" does not
    assert abs(floor_z(sensor.points_xyz_m) + 0.7) < 1e-5
    np.testing.assert_allclose(np.median(a[:len(a) // 3, 1]), 0.0, atol=1e-6)  # floor points sit at 0


def test_floor_z_ignores_a_few_stray_low_points_and_empty_scans() -> None:
    pts = _room_scan().points_xyz_m.copy()
    pts[:5, 2] = -3.0  # reflections below the floor
    assert abs(floor_z(pts)) < 1e-6
    assert floor_z(np.zeros((0, 3), np.float32)) == 0.0


def test_net_config_defaults_to_floor_height_and_checks_center_width() -> None:
    assert "floor_height" in NetConfig().input_features and "height" not in NetConfig().input_features
    assert net_config(**{**TINY, "kd_target_center": [0.1] * 12}).kd_target_center == (0.1,) * 12
    with pytest.raises(ValueError, match="kd_target_center: expected 12"):
        net_config(**{**TINY, "kd_target_center": [0.1] * 5})


def test_old_checkpoint_without_center_field_loads_and_behaves_as_before(tmp_path: Path) -> None:
    net = _tiny_net(seed=3, input_features=("ones", "xyz", "height", "intensity", "rgb"))
    path = save_checkpoint(net, tmp_path / "new.safetensors")
    meta = json.loads(_metadata(path))
    del meta["config"]["kd_target_center"]  # what checkpoints written before the field hold
    old = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(old),
              metadata={"ttt_kd_ros": json.dumps(meta)})
    loaded = load_checkpoint(old)
    assert loaded.config.kd_target_center == () and loaded.config.input_features[2] == "height"
    scan = _room_scan()
    with torch.no_grad():
        assert torch.equal(net.eval()(net.prepare(scan)).logits, loaded(loaded.prepare(scan)).logits)


def test_an_older_torch_is_refused_at_network_construction_naming_the_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    from ttt_kd_ros import model as model_module

    model_module.require_torch_floor("2.4.0+cu121")  # the floor itself runs
    monkeypatch.setattr(torch, "__version__", "2.1.0a0+41361538.nv23.06")  # JetPack 5's torch
    with pytest.raises(RuntimeError, match=r"torch 2\.1\.0a0.* older than 2\.4.*JetPack 6\.1"):
        _tiny_net()
