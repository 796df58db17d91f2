"""Projection, distortion and visibility on small hand-built cameras."""

import numpy as np
import pytest
import torch

from ttt_kd_ros.geometry import (
    default_occlusion_cell_px,
    distort_normalized,
    inside_image,
    project_points,
    project_tensor,
    zbuffer_occluded,
)
from ttt_kd_ros.scan import CameraIntrinsics, CameraView

W, H = 64, 48
FX, FY, CX, CY = 50.0, 55.0, 31.5, 23.5


def make_view(distortion_model: str = "none", D=(), projection=None, rectification=None, T=None) -> CameraView:
    intr = CameraIntrinsics(
        K=np.array([[FX, 0, CX], [0, FY, CY], [0, 0, 1]]),
        width_px=W,
        height_px=H,
        distortion_model=distortion_model,
        D=np.asarray(D, dtype=np.float64),
        projection=projection,
        rectification=rectification,
    )
    return CameraView(image_rgb=np.zeros((H, W, 3), np.uint8), intrinsics=intr,
                      cam_from_cloud=np.eye(4) if T is None else T)


def random_points_in_front(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.c_[rng.uniform(-1, 1, n), rng.uniform(-0.8, 0.8, n), rng.uniform(2, 10, n)]


def test_project_points_pinhole_matches_formula() -> None:
    pts = random_points_in_front(50)
    proj = project_points(pts, make_view(), occlusion=False)
    expected_u = FX * pts[:, 0] / pts[:, 2] + CX
    expected_v = FY * pts[:, 1] / pts[:, 2] + CY
    np.testing.assert_allclose(proj.uv_px[:, 0], expected_u, atol=1e-4)
    np.testing.assert_allclose(proj.uv_px[:, 1], expected_v, atol=1e-4)
    np.testing.assert_allclose(proj.depth_m, pts[:, 2], rtol=1e-6)
    assert proj.uv_px.dtype == np.float32 and proj.visible.dtype == bool


@pytest.mark.parametrize(("model", "D"), [("plumb_bob", [0, 0, 0, 0, 0]), ("rational_polynomial", [0.0] * 8)])
def test_project_points_zero_distortion_equals_pinhole(model: str, D: list) -> None:
    pts = random_points_in_front(100, seed=1)
    pinhole = project_points(pts, make_view(), occlusion=False)
    distorted = project_points(pts, make_view(model, D), occlusion=False)
    np.testing.assert_array_equal(distorted.uv_px, pinhole.uv_px)
    np.testing.assert_array_equal(distorted.visible, pinhole.visible)


def test_distort_normalized_plumb_bob_follows_opencv_terms() -> None:
    k1, k2, p1, p2, k3 = 0.1, -0.05, 0.01, -0.02, 0.003
    x, y = 0.2, -0.1
    r2 = x * x + y * y
    radial = 1 + k1 * r2 + k2 * r2**2 + k3 * r2**3
    expected = [
        x * radial + 2 * p1 * x * y + p2 * (r2 + 2 * x * x),
        y * radial + p1 * (r2 + 2 * y * y) + 2 * p2 * x * y,
    ]
    out, ok = distort_normalized(np.array([[x, y]]), "plumb_bob", np.array([k1, k2, p1, p2, k3]))
    np.testing.assert_allclose(out[0], expected, rtol=1e-12)
    assert ok[0]


def test_distort_normalized_rational_divides_by_denominator() -> None:
    D = np.array([0.1, 0.0, 0.0, 0.0, 0.0, 0.2, 0.0, 0.0])
    x = 0.3
    out, _ = distort_normalized(np.array([[x, 0.0]]), "rational_polynomial", D)
    assert out[0, 0] == pytest.approx(x * (1 + 0.1 * x * x) / (1 + 0.2 * x * x))


def test_distort_normalized_equidistant_uses_angle() -> None:
    # A ray 45 degrees off axis: r = 1, theta = pi/4; with zero k the fisheye maps r -> theta.
    out, ok = distort_normalized(np.array([[1.0, 0.0], [0.0, 0.0]]), "equidistant", np.zeros(4))
    assert out[0, 0] == pytest.approx(np.pi / 4, rel=1e-9)
    np.testing.assert_array_equal(out[1], [0.0, 0.0])
    assert ok.all()


def test_project_points_distortion_moves_off_axis_points_only() -> None:
    pts = np.array([[0.0, 0.0, 5.0], [1.2, 0.8, 3.0]])
    pinhole = project_points(pts, make_view(), occlusion=False)
    barrel = project_points(pts, make_view("plumb_bob", [-0.2, 0.05, 0, 0, 0]), occlusion=False)
    np.testing.assert_allclose(barrel.uv_px[0], pinhole.uv_px[0], atol=1e-5)
    assert np.linalg.norm(barrel.uv_px[1] - pinhole.uv_px[1]) > 0.5
    # barrel distortion pulls points towards the principal point
    assert np.linalg.norm(barrel.uv_px[1] - [CX, CY]) < np.linalg.norm(pinhole.uv_px[1] - [CX, CY])


def test_project_points_distortion_fold_over_is_invisible() -> None:
    # With k1 = -0.5, r_d = r (1 - 0.5 r^2) peaks at r = 0.816 and folds back: a ray at r = 1.5
    # lands at r_d = -0.19, i.e. inside the image, but on the wrong side. It must not be visible.
    pts = np.array([[1.5 * 4.0, 0.0, 4.0], [0.2, 0.0, 4.0]])
    proj = project_points(pts, make_view("plumb_bob", [-0.5, 0, 0, 0]), occlusion=False)
    folded_u = FX * 1.5 * (1 - 0.5 * 1.5**2) + CX
    assert inside_image(np.array([[folded_u, CY]]), W, H)[0]
    assert not proj.visible[0]
    assert proj.visible[1]


def test_project_points_behind_camera_is_invisible() -> None:
    pts = np.array([[0.0, 0.0, -3.0], [0.0, 0.0, 0.0], [0.1, 0.1, 3.0]])
    proj = project_points(pts, make_view())
    assert proj.visible.tolist() == [False, False, True]
    assert np.isnan(proj.uv_px[:2]).all()


def test_project_points_outside_image_is_invisible() -> None:
    pts = np.array([[10.0, 0.0, 1.0], [0.0, -10.0, 1.0]])
    assert not project_points(pts, make_view()).visible.any()


def test_inside_image_uses_pixel_centre_convention() -> None:
    uv = np.array([[-0.5, 0.0], [-0.51, 0.0], [W - 0.5, 0.0], [W - 0.51, H - 0.51], [np.nan, 0.0]])
    assert inside_image(uv, W, H).tolist() == [True, False, False, True, False]


def test_project_points_hidden_point_is_occluded() -> None:
    near = [0.0, 0.0, 2.0]
    hidden = [0.0, 0.0, 6.0]  # same ray, three times deeper
    elsewhere = [1.0, 0.0, 6.0]  # same depth, another part of the image
    pts = np.array([near, hidden, elsewhere])
    assert project_points(pts, make_view(), occlusion=True).visible.tolist() == [True, False, True]
    assert project_points(pts, make_view(), occlusion=False).visible.tolist() == [True, True, True]


def test_project_points_same_surface_is_not_occluded() -> None:
    # Two points of one wall at nearly the same depth must both stay visible.
    pts = np.array([[0.0, 0.0, 5.0], [0.01, 0.0, 5.05]])
    assert project_points(pts, make_view()).visible.all()


def test_zbuffer_occluded_ignores_non_candidates() -> None:
    uv = np.array([[10.0, 10.0], [10.0, 10.0]])
    depth = np.array([1.0, 5.0])
    occluded = zbuffer_occluded(uv, depth, np.array([False, True]), W, H, cell_px=4)
    assert not occluded.any()
    with pytest.raises(ValueError, match="cell_px"):
        zbuffer_occluded(uv, depth, np.array([True, True]), W, H, cell_px=0)


def test_default_occlusion_cell_px_scales_with_image() -> None:
    assert default_occlusion_cell_px(1242, 375) < default_occlusion_cell_px(1600, 900)
    assert default_occlusion_cell_px(10, 10) == 1.0


def test_project_points_rectified_chain_uses_p_and_r() -> None:
    angle = 0.05
    R = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    P = np.array([[FX, 0, CX, 4.0], [0, FY, CY, -1.0], [0, 0, 1, 0.01]])
    T = np.eye(4)
    T[:3, 3] = [0.1, -0.2, 0.3]
    pts = random_points_in_front(30, seed=3)
    proj = project_points(pts, make_view("plumb_bob", [-0.3, 0, 0, 0], projection=P, rectification=R, T=T),
                          occlusion=False)
    homog = (P @ np.c_[(pts + T[:3, 3]) @ R.T, np.ones(len(pts))].T).T
    np.testing.assert_allclose(proj.uv_px, homog[:, :2] / homog[:, 2:], atol=1e-4)
    np.testing.assert_allclose(proj.depth_m, homog[:, 2], rtol=1e-6)


def test_project_points_applies_cam_from_cloud() -> None:
    # Cloud frame x forward (LiDAR); camera z forward: a point 5 m ahead lands on the principal point.
    T = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
    proj = project_points(np.array([[5.0, 0.0, 0.0], [-5.0, 0.0, 0.0]]), make_view(T=T))
    np.testing.assert_allclose(proj.uv_px[0], [CX, CY], atol=1e-5)
    assert proj.visible.tolist() == [True, False]


def test_project_points_nan_points_are_invisible_not_fatal() -> None:
    pts = np.array([[np.nan, 0.0, 3.0], [0.0, np.inf, 3.0], [0.0, 0.0, 3.0]])
    proj = project_points(pts, make_view("plumb_bob", [-0.1, 0, 0, 0]))
    assert proj.visible.tolist() == [False, False, True]
    assert np.isnan(proj.uv_px[:2]).all()


@pytest.mark.parametrize("bad", [np.zeros((5, 2)), np.zeros(3), np.zeros((2, 3, 1)), np.array([["a", "b", "c"]])])
def test_project_points_rejects_bad_shapes(bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match="points_xyz_m"):
        project_points(bad, make_view())


def test_project_points_rejects_non_finite_pose() -> None:
    T = np.eye(4)
    T[0, 3] = np.nan
    with pytest.raises(ValueError, match="cam_from_cloud"):
        project_points(np.zeros((1, 3)), make_view(T=T))


def test_project_points_empty_cloud() -> None:
    proj = project_points(np.zeros((0, 3), np.float32), make_view())
    assert proj.uv_px.shape == (0, 2) and proj.depth_m.shape == (0,) and proj.num_visible == 0


def test_distort_normalized_rejects_wrong_coefficient_count() -> None:
    with pytest.raises(ValueError, match="equidistant"):
        distort_normalized(np.zeros((1, 2)), "equidistant", np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match="plumb_bob"):
        distort_normalized(np.zeros((1, 2)), "plumb_bob", np.ones(9))


@pytest.mark.parametrize(("model", "D"), [("plumb_bob", [-0.3, 0.1, 0.001, -0.002, 0.0]),
                                          ("equidistant", [0.05, -0.01, 0.002, 0.0])])
def test_project_tensor_on_the_device_in_float32_agrees_with_the_float64_cpu_projection(
        device: torch.device, model: str, D: list) -> None:
    """The teacher's device projects the cloud (distillation_targets): same pixels, depths and visibility as the
    float64 numpy face, with NaN rows and points behind the camera still never visible."""
    rng = np.random.default_rng(3)
    pts = np.r_[random_points_in_front(3000, seed=3) * [3, 3, 1], rng.uniform(-5, 5, (200, 3)),
                np.full((5, 3), np.nan)]
    view = make_view(model, D)
    reference = project_points(pts, view)
    on_device = project_tensor(torch.tensor(pts, dtype=torch.float32, device=device), view)
    assert on_device.visible.device.type == device.type and on_device.uv_px.dtype == torch.float32
    visible = on_device.visible.cpu().numpy()
    assert (visible == reference.visible).mean() > 0.995 and reference.visible.sum() > 300
    both = visible & reference.visible
    np.testing.assert_allclose(on_device.uv_px.cpu().numpy()[both], reference.uv_px[both], atol=2e-3)
    np.testing.assert_allclose(on_device.depth_m.cpu().numpy()[both], reference.depth_m[both], rtol=1e-5)
    assert not visible[-5:].any() and np.isnan(on_device.uv_px.cpu().numpy()[-5:]).all()
