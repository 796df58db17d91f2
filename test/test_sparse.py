"""Voxelisation and sparse convolutions checked against dense torch convolutions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ttt_kd_ros.sparse import available_backends, build_scan_maps, get_backend, known_backends, voxelize
from ttt_kd_ros.sparse.maps import SUBM_CENTER, SUBM_OFFSETS, neighbour_table, submanifold_map
from ttt_kd_ros.sparse.torch_backend import (
    PAIRS_ONLY,
    TABLE_ONLY,
    ConvPolicy,
    TorchGeometry,
    policy_for,
)


def _random_sites(num: int, box: int, seed: int) -> torch.Tensor:
    """(<=num, 3) unique int64 coordinates in [-box/2, box/2)^3, sorted like voxelize() sorts them."""
    gen = torch.Generator().manual_seed(seed)
    pts = torch.randint(-box // 2, box // 2, (num, 3), generator=gen).double() + 0.5
    return voxelize(pts, 1.0).coords


def _densify(coords: torch.Tensor, feats: torch.Tensor, origin: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """(V, 3) coords, (V, C) feats -> (1, C, X, Y, Z) dense grid, zeros where no voxel."""
    dense = feats.new_zeros((feats.shape[1], *shape))
    rel = coords - origin
    dense[:, rel[:, 0], rel[:, 1], rel[:, 2]] = feats.t()
    return dense.unsqueeze(0)


def _sample(dense: torch.Tensor, coords: torch.Tensor, origin: torch.Tensor) -> torch.Tensor:
    rel = coords - origin
    return dense[0][:, rel[:, 0], rel[:, 1], rel[:, 2]].t()


def _dense_frame(coords: torch.Tensor, levels: int) -> tuple[torch.Tensor, list[int]]:
    """An origin aligned to 2^(levels-1) (so strided grids agree with floor division) and a grid shape."""
    top = 2 ** (levels - 1)
    origin = torch.div(coords.min(dim=0).values, top, rounding_mode="floor") * top
    extent = coords.max(dim=0).values - origin + 1
    shape = [int((e + top - 1) // top * top) for e in extent]
    return origin, shape


def test_voxelize_each_point_maps_to_the_voxel_containing_it() -> None:
    gen = torch.Generator().manual_seed(0)
    pts = (torch.rand(2000, 3, generator=gen) - 0.5) * 4.0
    pts = torch.cat([pts, pts[:300]])  # exact duplicates share a voxel
    vox = voxelize(pts, 0.25)
    lower = vox.coords[vox.point_to_voxel].double() * 0.25
    assert bool(((pts.double() >= lower - 1e-9) & (pts.double() < lower + 0.25 + 1e-9)).all())
    assert len(torch.unique(vox.coords, dim=0)) == vox.num_voxels
    assert int(vox.points_per_voxel.sum()) == len(pts)
    assert torch.equal(vox.point_to_voxel[2000:], vox.point_to_voxel[:300])


def test_voxelize_order_is_sorted_and_deterministic() -> None:
    pts = (torch.rand(500, 3) - 0.5) * 3.0
    a = voxelize(pts, 0.1)
    b = voxelize(pts[torch.randperm(len(pts))], 0.1)
    assert torch.equal(a.coords, b.coords)
    keys = (a.coords[:, 0] * 10000 + a.coords[:, 1]) * 10000 + a.coords[:, 2]
    assert bool((keys[1:] > keys[:-1]).all())


def test_voxelize_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="points_xyz_m"):
        voxelize(torch.zeros(4, 2), 0.1)
    with pytest.raises(ValueError, match="voxel_size_m"):
        voxelize(torch.zeros(4, 3), 0.0)
    with pytest.raises(ValueError, match="NaN"):
        voxelize(torch.tensor([[0.0, float("nan"), 0.0]]), 0.1)


def test_voxel_mean_averages_points_of_a_voxel() -> None:
    pts = torch.tensor([[0.01, 0.01, 0.01], [0.02, 0.02, 0.02], [0.5, 0.5, 0.5]])
    vox = voxelize(pts, 0.1)
    mean = vox.voxel_mean(torch.tensor([[1.0], [3.0], [5.0]]))
    assert torch.allclose(mean[vox.point_to_voxel], torch.tensor([[2.0], [2.0], [5.0]]))


def _brute_force_pairs(coords: torch.Tensor) -> dict[int, list[tuple[int, int]]]:
    """Offset index -> [(input row, output row)] by a dictionary lookup of every site's 27 neighbours."""
    row_of = {tuple(c): i for i, c in enumerate(coords.tolist())}
    pairs: dict[int, list[tuple[int, int]]] = {}
    for k, offset in enumerate(SUBM_OFFSETS.tolist()):
        if k == SUBM_CENTER:
            continue
        for out_row, site in enumerate(coords.tolist()):
            in_row = row_of.get(tuple(s + o for s, o in zip(site, offset, strict=True)))
            if in_row is not None:
                pairs.setdefault(k, []).append((in_row, out_row))
    return pairs


@pytest.mark.parametrize(("num", "box", "seed"), [(1, 4, 0), (40, 4, 1), (600, 12, 2), (3000, 60, 3)])
def test_submanifold_map_holds_exactly_the_neighbour_pairs_grouped_by_offset(num: int, box: int, seed: int) -> None:
    """The 4-search map (columns + mirrored offsets) against a dictionary of every site's neighbours: the same
    pairs per offset, outputs ascending inside each (dense clusters, where z-columns touch, and sparse ones)."""
    coords = _random_sites(num, box, seed)
    kmap = submanifold_map(coords)
    expected = _brute_force_pairs(coords)
    assert kmap.identity_offset == SUBM_CENTER and kmap.num_in == kmap.num_out == len(coords)
    for k in range(27):
        start, stop = kmap.offset_ptr[k], kmap.offset_ptr[k + 1]
        got = list(zip(kmap.in_idx[start:stop].tolist(), kmap.out_idx[start:stop].tolist(), strict=True))
        assert got == expected.get(k, []), f"offset {k}"


def test_subm_conv_equals_dense_conv3d_at_active_sites() -> None:
    coords = _random_sites(300, 10, seed=1)
    geom = get_backend("torch").build_geometry(coords, 1)
    x = torch.randn(len(coords), 5, dtype=torch.float64)
    dense_w = torch.randn(7, 5, 3, 3, 3, dtype=torch.float64)
    weight = dense_w.permute(2, 3, 4, 1, 0).reshape(27, 5, 7)  # canonical (27, Cin, Cout)
    out = geom.subm_conv(x, weight, 0)
    origin, shape = _dense_frame(coords, 1)
    ref = _sample(F.conv3d(_densify(coords, x, origin, shape), dense_w, padding=1), coords, origin)
    assert torch.allclose(out, ref, atol=1e-10)


def test_down_and_up_conv_equal_dense_strided_and_transposed_conv() -> None:
    coords = _random_sites(250, 12, seed=2)
    geom = get_backend("torch").build_geometry(coords, 2)
    coarse = geom.coords(1)
    assert torch.equal(coarse, torch.unique(torch.div(coords, 2, rounding_mode="floor"), dim=0))
    origin, shape = _dense_frame(coords, 2)
    x = torch.randn(len(coords), 4, dtype=torch.float64)
    dense_down = torch.randn(6, 4, 2, 2, 2, dtype=torch.float64)
    down = geom.down_conv(x, dense_down.permute(2, 3, 4, 1, 0).reshape(8, 4, 6), 0)
    assert down.shape == (geom.num_voxels(1), 6)
    ref = F.conv3d(_densify(coords, x, origin, shape), dense_down, stride=2)
    assert torch.allclose(down, _sample(ref, coarse, origin // 2), atol=1e-10)

    y = torch.randn(len(coarse), 6, dtype=torch.float64)
    dense_up = torch.randn(6, 3, 2, 2, 2, dtype=torch.float64)  # conv_transpose3d: (Cin, Cout, k, k, k)
    up = geom.up_conv(y, dense_up.permute(2, 3, 4, 0, 1).reshape(8, 6, 3), 0)
    assert up.shape == (len(coords), 3)
    ref_up = F.conv_transpose3d(_densify(coarse, y, origin // 2, [s // 2 for s in shape]), dense_up, stride=2)
    assert torch.allclose(up, _sample(ref_up, coords, origin), atol=1e-10)


def test_subm_conv_gradients_equal_dense_gradients() -> None:
    coords = _random_sites(200, 8, seed=3)
    geom = get_backend("torch").build_geometry(coords, 1)
    x = torch.randn(len(coords), 3, dtype=torch.float64, requires_grad=True)
    dense_w = torch.randn(4, 3, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    weight = dense_w.detach().permute(2, 3, 4, 1, 0).reshape(27, 3, 4).clone().requires_grad_(True)
    target = torch.randn(len(coords), 4, dtype=torch.float64)
    (geom.subm_conv(x, weight, 0) * target).sum().backward()
    origin, shape = _dense_frame(coords, 1)
    x_ref = x.detach().clone().requires_grad_(True)
    dense_out = F.conv3d(_densify(coords, x_ref, origin, shape), dense_w, padding=1)
    (_sample(dense_out, coords, origin) * target).sum().backward()
    assert torch.allclose(x.grad, x_ref.grad, atol=1e-10)
    assert torch.allclose(weight.grad, dense_w.grad.permute(2, 3, 4, 1, 0).reshape(27, 3, 4), atol=1e-10)


def test_down_up_gradients_pass_gradcheck() -> None:
    coords = _random_sites(60, 6, seed=4)
    geom = get_backend("torch").build_geometry(coords, 2)
    x = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    w_down = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)
    w_up = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: geom.up_conv(geom.down_conv(a, b, 0), c, 0), (x, w_down, w_up))


def test_frozen_weight_gets_no_gradient_but_input_does() -> None:
    coords = _random_sites(100, 6, seed=5)
    geom = get_backend("torch").build_geometry(coords, 1)
    x = torch.randn(len(coords), 3, requires_grad=True)
    weight = torch.randn(27, 3, 3)
    geom.subm_conv(x, weight, 0).sum().backward()
    assert weight.grad is None
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


def test_maps_reused_give_identical_outputs() -> None:
    coords = _random_sites(150, 8, seed=6)
    geom = TorchGeometry(build_scan_maps(coords, 3))
    x = torch.randn(len(coords), 4)
    w = torch.randn(27, 4, 4)
    assert torch.equal(geom.subm_conv(x, w, 0), geom.subm_conv(x, w, 0))
    assert geom.num_levels == 3 and geom.num_voxels(2) <= geom.num_voxels(1) <= geom.num_voxels(0)


def test_get_backend_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="torch"):
        get_backend("cuda_magic")
    assert "torch" in available_backends()
    assert set(available_backends()) <= set(known_backends())


def test_get_backend_missing_library_says_which_package() -> None:
    missing = [name for name in known_backends() if name not in available_backends()]
    if not missing:
        pytest.skip("every known sparse backend is importable here")
    with pytest.raises(ValueError, match="not importable"):
        get_backend(missing[0])


@pytest.mark.parametrize("other", ["minkowski", "spconv"])
def test_backend_parity_same_weights_same_outputs(other: str) -> None:
    if other not in available_backends():
        pytest.skip(f"{other} is not importable here; parity with the torch backend is checked where it is")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    coords = _random_sites(400, 16, seed=7).to(device)
    geoms = [get_backend(name).build_geometry(coords, 3) for name in ("torch", other)]
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(len(coords), 4, generator=gen).to(device)
    w_subm, w_down, w_up = (torch.randn(*s, generator=gen).to(device) for s in ((27, 4, 4), (8, 4, 6), (8, 6, 4)))
    outs = []
    for geom in geoms:
        y = geom.subm_conv(x, w_subm, 0)
        z = geom.subm_conv(geom.down_conv(y, w_down, 0), w_subm.new_ones(27, 6, 6) * 0.1, 1)
        outs.append(geom.up_conv(z, w_up, 0) + y)
    assert torch.allclose(outs[0], outs[1], atol=1e-4)


@pytest.mark.parametrize("other", ["minkowski", "spconv"])
def test_checkpoint_on_other_backend_gives_the_same_labels(other: str, tmp_path) -> None:
    """A whole network saved once runs on any backend: same weights, same logits (forward, eval mode)."""
    if other not in available_backends():
        pytest.skip(f"{other} is not importable here; network parity is checked where it is")
    import numpy as np

    from ttt_kd_ros.checkpoint_format import load_checkpoint, save_checkpoint
    from ttt_kd_ros.model import TTTKDNet, net_config
    from ttt_kd_ros.scan import Scan

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    points = np.concatenate([
        np.c_[rng.uniform(-2, 2, (800, 2)), np.zeros(800)],  # floor
        np.c_[rng.uniform(-2, 2, 400), np.full(400, 2.0), rng.uniform(0, 2.5, 400)],  # wall
        rng.uniform([-0.5, -0.5, 0.0], [0.5, 0.5, 0.8], (300, 3)),  # box
    ]).astype(np.float32)
    scan = Scan(points_xyz_m=points, rgb=rng.uniform(0, 1, (len(points), 3)).astype(np.float32))
    net = TTTKDNet(net_config("ttt_kd_small", num_classes=11, teacher_dim=8, encoder_planes=(8, 16, 16, 32),
                              decoder_planes=(16, 16, 8))).eval()
    path = save_checkpoint(net, tmp_path / "net.safetensors")
    outputs = []
    for backend in ("torch", other):
        model = load_checkpoint(path, backend=backend)
        with torch.no_grad():
            outputs.append(model(model.prepare(scan), with_kd=True))
    assert torch.allclose(outputs[0].logits, outputs[1].logits, atol=1e-4)
    assert torch.allclose(outputs[0].kd, outputs[1].kd, atol=1e-4)
    assert torch.equal(outputs[0].logits.argmax(1), outputs[1].logits.argmax(1))


@pytest.mark.parametrize("other", ["minkowski", "spconv"])
def test_backend_parity_gradients(other: str) -> None:
    """Same weights, same upstream gradient: the same gradients for the input and every weight, on both backends."""
    if other not in available_backends():
        pytest.skip(f"{other} is not importable here; gradient parity is checked where it is")
    if other == "spconv" and not torch.cuda.is_available():
        pytest.skip("spconv 2.3.8's backward calls torch.cuda (forward-only on CPU, ENVIRONMENT.md)")
    coords = _random_sites(300, 14, seed=11)
    gen = torch.Generator().manual_seed(12)
    x0 = torch.randn(len(coords), 4, generator=gen)
    w0 = [torch.randn(*s, generator=gen) for s in ((27, 4, 4), (8, 4, 6), (8, 6, 4))]
    upstream = torch.randn(len(coords), 4, generator=gen)
    grads = []
    for name in ("torch", other):
        geom = get_backend(name).build_geometry(coords, 3)
        x = x0.clone().requires_grad_(True)
        w_subm, w_down, w_up = (w.clone().requires_grad_(True) for w in w0)
        y = geom.subm_conv(x, w_subm, 0)
        out = geom.up_conv(geom.down_conv(y, w_down, 0), w_up, 0) + y
        (out * upstream).sum().backward()
        grads.append([t.grad for t in (x, w_subm, w_down, w_up)])
    for mine, theirs in zip(*grads, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-3, rtol=1e-4)


@pytest.mark.parametrize("other", ["minkowski"])
def test_ttt_kd_scan_on_other_backend_adapts_like_torch(other: str) -> None:
    """A whole TTT-KD scan (targets, steps, restore) on the other backend: same losses and labels as torch."""
    if other not in available_backends():
        pytest.skip(f"{other} is not importable here; the TTT-KD scan is checked where it is")
    from ttt_kd_ros.adapt import AdaptConfig, build_strategy
    from ttt_kd_ros.data.synthetic import generate_scan
    from ttt_kd_ros.model import TTTKDNet, net_config
    from ttt_kd_ros.segmenter import Segmenter
    from ttt_kd_ros.teachers.weights import tiny_teacher

    scan = generate_scan("source", 4)
    scan = scan.select(torch.randperm(scan.num_points, generator=torch.Generator().manual_seed(0))[:3000].numpy())
    predictions = []
    for backend in ("torch", other):
        torch.manual_seed(0)
        net = TTTKDNet(net_config("ttt_kd_small", teacher_dim=32, encoder_planes=(8, 16), encoder_blocks=(1, 1),
                                  decoder_planes=(8,), decoder_blocks=(1,), kd_hidden=16, backend=backend))
        config = AdaptConfig(strategy="ttt_kd", steps=3, lr=1e-3, kd_points_per_step=0)
        predictions.append(Segmenter(net, tiny_teacher(resolution=(56, 56)), build_strategy(net, config)).segment(scan))
    ours, theirs = predictions
    assert ours.steps_run == theirs.steps_run == 3 and theirs.adapted
    assert theirs.kd_loss_before == pytest.approx(ours.kd_loss_before, abs=1e-4)
    assert theirs.kd_loss_after == pytest.approx(ours.kd_loss_after, abs=1e-3)
    assert (ours.labels == theirs.labels).mean() > 0.99


def test_a_cpu_built_minkowski_engine_refuses_cuda_tensors_naming_the_build() -> None:
    """CI builds MinkowskiEngine with --cpu_only: handing it CUDA coordinates is an error that names the fix."""
    me = pytest.importorskip("MinkowskiEngine", reason="MinkowskiEngine is not built here (CI builds it)")
    from ttt_kd_ros.sparse import minkowski_backend

    minkowski_backend.require_cuda_build(False)  # CPU tensors: always fine
    if me.is_cuda_available():
        pytest.skip("this MinkowskiEngine was built with CUDA")
    with pytest.raises(ValueError, match=r"built for the CPU only.*rebuild it with CUDA"):
        minkowski_backend.require_cuda_build(True)


# ----------------------------------------------------------------------------- table formulation vs pairs


def _conv_chain(geom: TorchGeometry, x: torch.Tensor, weights: list[torch.Tensor]) -> torch.Tensor:
    """subm at level 0, stride-2 down, subm at level 1, transposed up: every kind of conv the U-Net runs."""
    y = geom.subm_conv(x, weights[0], 0)
    z = geom.subm_conv(geom.down_conv(y, weights[1], 0), weights[2], 1)
    return geom.up_conv(z, weights[3], 0) + y


def _chain_grads(policy: ConvPolicy, coords: torch.Tensor, seed: int) -> list[torch.Tensor]:
    """Output, then the gradients of the input and of the four weights, of _conv_chain under ``policy``."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(len(coords), 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    shapes = ((27, 3, 5), (8, 5, 4), (27, 4, 4), (8, 4, 5))
    weights = [torch.randn(*s, generator=gen, dtype=torch.float64).requires_grad_(True) for s in shapes]
    out = _conv_chain(TorchGeometry(build_scan_maps(coords, 2), policy), x, weights)
    (out * torch.randn(out.shape, generator=gen, dtype=torch.float64)).sum().backward()
    return [out.detach(), x.grad, *(w.grad for w in weights)]


@pytest.mark.parametrize("chunk_bytes", [0, 200])
def test_table_conv_equals_pairs_forward_and_gradients(chunk_bytes: int) -> None:
    """Random sparse sites (most neighbours missing): the table gives the pairs' outputs and every gradient."""
    coords = _random_sites(300, 12, seed=21)
    maps = build_scan_maps(coords, 2)
    assert maps.subm[0].fill < 0.5 and maps.down[0].fill < 1.0  # missing neighbours and missing children
    table = ConvPolicy(table_min_fill=0.0, table_max_width=1 << 30, chunk_bytes=chunk_bytes)
    for mine, theirs in zip(_chain_grads(table, coords, 22), _chain_grads(PAIRS_ONLY, coords, 22), strict=True):
        assert torch.allclose(mine, theirs, atol=1e-10, rtol=1e-10)


def test_table_down_up_gradients_pass_gradcheck() -> None:
    coords = _random_sites(60, 6, seed=23)
    geom = TorchGeometry(build_scan_maps(coords, 2), TABLE_ONLY)
    x = torch.randn(len(coords), 2, dtype=torch.float64, requires_grad=True)
    w_subm = torch.randn(27, 2, 2, dtype=torch.float64, requires_grad=True)
    w_down = torch.randn(8, 2, 3, dtype=torch.float64, requires_grad=True)
    w_up = torch.randn(8, 3, 2, dtype=torch.float64, requires_grad=True)

    def chain(a: torch.Tensor, s: torch.Tensor, d: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return geom.up_conv(geom.down_conv(geom.subm_conv(a, s, 0), d, 0), u, 0)

    assert torch.autograd.gradcheck(chain, (x, w_subm, w_down, w_up))


def test_neighbour_table_points_missing_neighbours_at_the_sentinel_and_inverts_stride_maps() -> None:
    coords = _random_sites(200, 10, seed=24)
    maps = build_scan_maps(coords, 2)
    subm = neighbour_table(maps.subm[0], symmetric=True)
    num = len(coords)
    assert subm.rows.shape == (num, 27) and torch.equal(subm.rows[:, 13], torch.arange(num))
    valid = subm.rows < num
    assert int(valid.sum()) == maps.subm[0].in_idx.numel() + num  # every pair once, the rest the sentinel
    rows, cols = valid.nonzero(as_tuple=True)
    assert torch.equal(subm.rows[subm.rows[rows, cols], 26 - cols], rows)  # symmetric: offsets reversed
    down = neighbour_table(maps.down[0], symmetric=False)
    assert down.slots is not None and subm.slots is None
    assert torch.equal(down.rows.reshape(-1)[down.slots], torch.arange(num))  # every fine voxel once


@pytest.mark.parametrize("policy", [PAIRS_ONLY, TABLE_ONLY], ids=["pairs", "table"])
def test_frozen_weight_gets_no_gradient_on_either_path(policy: ConvPolicy) -> None:
    coords = _random_sites(100, 6, seed=25)
    geom = TorchGeometry(build_scan_maps(coords, 2), policy)
    x = torch.randn(len(coords), 3, requires_grad=True)
    weights = [torch.randn(27, 3, 3), torch.randn(8, 3, 3), torch.randn(27, 3, 3), torch.randn(8, 3, 3)]
    _conv_chain(geom, x, weights).sum().backward()
    assert all(w.grad is None for w in weights)
    assert x.grad is not None and bool(x.grad.abs().sum() > 0)


@pytest.mark.parametrize("policy", [PAIRS_ONLY, TABLE_ONLY], ids=["pairs", "table"])
def test_weight_grads_are_float32_sums_under_bfloat16_autocast(policy: ConvPolicy) -> None:
    """Summed in bfloat16 over 4000 voxels a weight gradient is off by ~2e-3 of its largest entry; in float32 ~1e-6."""
    coords = _random_sites(4000, 24, seed=26)
    gen = torch.Generator().manual_seed(27)
    x = torch.randn(len(coords), 8, generator=gen)
    weights = [torch.randn(27, 8, 8, generator=gen).requires_grad_(True), torch.randn(8, 8, 8, generator=gen)
               .requires_grad_(True), torch.randn(27, 8, 8, generator=gen).requires_grad_(True),
               torch.randn(8, 8, 8, generator=gen).requires_grad_(True)]
    geom = TorchGeometry(build_scan_maps(coords, 2), policy)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = geom.subm_conv(x, weights[0], 0)
        up = geom.up_conv(geom.down_conv(y, weights[1], 0), weights[3], 0)
    assert y.dtype == torch.bfloat16
    upstream = torch.randn(up.shape, generator=gen).bfloat16()
    up.backward(upstream)
    assert all(w.grad.dtype == torch.float32 for w in (weights[0], weights[1], weights[3]))
    # The float64 reference of the up conv's weight gradient from the very bfloat16 values the conv saw.
    ref_geom = TorchGeometry(build_scan_maps(coords, 2), PAIRS_ONLY)
    w_up = weights[3].detach().bfloat16().double().requires_grad_(True)
    down = geom.down_conv(y.detach(), weights[1].detach(), 0).bfloat16()  # what the up conv got under autocast
    ref_geom.up_conv(down.double(), w_up, 0).backward(upstream.double())
    rel = (weights[3].grad.double() - w_up.grad).abs().max() / w_up.grad.abs().max()
    assert float(rel) < 1e-5


def test_policy_for_runs_tables_on_accelerators_and_pairs_on_cpu() -> None:
    assert policy_for(torch.device("cpu")) == PAIRS_ONLY
    assert policy_for(torch.device("cuda")) == TABLE_ONLY
    assert TABLE_ONLY.use_table(0.01, 512, 512) and not PAIRS_ONLY.use_table(1.0, 1, 1)


def test_network_outputs_and_gradients_equal_on_both_paths() -> None:
    """A whole TTTKDNet (the weights a checkpoint holds, unchanged): same logits and parameter gradients."""
    import numpy as np

    from ttt_kd_ros.model import TTTKDNet, net_config
    from ttt_kd_ros.scan import Scan

    rng = np.random.default_rng(1)
    points = rng.uniform([-2, -2, 0], [2, 2, 1.5], (1500, 3)).astype(np.float32)
    scan = Scan(points_xyz_m=points, rgb=rng.uniform(0, 1, (len(points), 3)).astype(np.float32))
    torch.manual_seed(0)
    net = TTTKDNet(net_config("ttt_kd_small", teacher_dim=8, encoder_planes=(8, 16, 16), encoder_blocks=(1, 1, 1),
                              decoder_planes=(16, 8), decoder_blocks=(1, 1), kd_hidden=8)).double().train()
    results = []
    for policy in (PAIRS_ONLY, TABLE_ONLY):
        prepared = net.prepare(scan)
        prepared.geometry.policy = policy
        prepared.features = prepared.features.double()
        net.zero_grad()
        out = net(prepared, with_kd=False)
        out.logits.square().mean().backward()
        results.append([out.logits.detach()] + [p.grad.clone() for p in net.backbone.parameters()])
    for mine, theirs in zip(*results, strict=True):
        assert torch.allclose(mine, theirs, atol=1e-9, rtol=1e-9)


def test_geometries_of_one_thread_share_its_workspace_and_another_thread_gets_its_own() -> None:
    """Scans of one thread reuse one set of scratch buffers (no fresh pages per scan); a pass in another thread
    uses that thread's, so two threads never fill each other's slots. The results do not depend on either."""
    import threading

    backend = get_backend("torch")
    coords_a = torch.unique(torch.randint(0, 12, (400, 3)), dim=0)
    coords_b = torch.unique(torch.randint(0, 12, (300, 3)), dim=0)
    geo_a, geo_b = backend.build_geometry(coords_a, 2), backend.build_geometry(coords_b, 2)
    assert geo_a.workspace is geo_b.workspace
    x, weight = torch.randn(coords_a.shape[0], 4), torch.randn(27, 4, 5)
    here = geo_a.subm_conv(x, weight, 0)
    seen: dict[str, object] = {}

    def other() -> None:
        seen["workspace"] = geo_a.workspace
        seen["out"] = geo_a.subm_conv(x, weight, 0)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert seen["workspace"] is not geo_a.workspace
    geo_b.subm_conv(torch.randn(coords_b.shape[0], 4), weight, 0)  # another scan's pass in between
    assert torch.equal(seen["out"], here) and torch.equal(geo_a.subm_conv(x, weight, 0), here)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_scatter_matrix_adds_each_pairs_product_into_its_output_row(dtype: torch.dtype) -> None:
    """The CPU scatter (a sparse matmul) gives index_add_'s sums, for the map and its transpose (made once)."""
    coords = torch.unique(torch.randint(0, 10, (300, 3)), dim=0)
    kmap = submanifold_map(coords)
    for m in (kmap, kmap.transposed()):
        products = torch.randn(m.in_idx.numel(), 6, dtype=dtype)
        expected = torch.zeros(m.num_out, 6, dtype=dtype).index_add_(0, m.out_idx, products)
        got = torch.sparse.mm(m.scatter_matrix(dtype), products)
        torch.testing.assert_close(got, expected)
    assert kmap.transposed() is kmap.transposed() and kmap.transposed().transposed() is kmap
    assert kmap.scatter_matrix(torch.float32) is kmap.scatter_matrix(torch.float32)
