"""The core's vocabulary: a Scan goes in, a Prediction comes out.

Every edge (ROS messages, rosbags, data sets, the synthetic world) produces
Scans and every consumer (node, replay, evaluator) reads Predictions, so these
types are the only thing the edges and the engine have to agree on. Units are
in the field names; arrays are numpy so the core stays free of ROS and torch
at its boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

IGNORE_LABEL = -1
"""Label of a point with no ground truth (never scored, never trained on)."""

DISTORTION_MODELS = ("none", "plumb_bob", "rational_polynomial", "equidistant")


@dataclass
class CameraIntrinsics:
    """A camera model as CameraInfo carries it.

    K maps camera-frame rays to raw (distorted) pixels. When ``projection`` (P,
    3x4) is given, pixels are computed as P @ R @ X on the *rectified* image
    instead, which is how KITTI and rectified ROS image topics work; the
    distortion is then ignored, as image_geometry does for rectified images.
    """

    K: np.ndarray  # (3, 3) float64
    width_px: int
    height_px: int
    distortion_model: str = "none"
    D: np.ndarray = field(default_factory=lambda: np.zeros(0))  # (k1, k2, p1, p2[, k3, k4, k5, k6])
    rectification: np.ndarray | None = None  # R (3, 3)
    projection: np.ndarray | None = None  # P (3, 4), rectified image

    def __post_init__(self) -> None:
        self.K = np.asarray(self.K, dtype=np.float64).reshape(3, 3)
        self.D = np.asarray(self.D, dtype=np.float64).reshape(-1)
        if self.distortion_model not in DISTORTION_MODELS:
            raise ValueError(
                f"distortion_model: expected one of {DISTORTION_MODELS}, got {self.distortion_model!r}"
            )
        if self.width_px <= 0 or self.height_px <= 0:
            raise ValueError(f"image size: expected positive, got {self.width_px}x{self.height_px}")
        if self.K[0, 0] == 0 or self.K[1, 1] == 0:
            raise ValueError(f"K: focal lengths must be non-zero, got fx={self.K[0, 0]} fy={self.K[1, 1]}")
        if self.rectification is not None:
            self.rectification = np.asarray(self.rectification, dtype=np.float64).reshape(3, 3)
        if self.projection is not None:
            self.projection = np.asarray(self.projection, dtype=np.float64).reshape(3, 4)


@dataclass
class CameraView:
    """One image paired with a scan, and where its camera sits."""

    image_rgb: np.ndarray  # (H, W, 3) uint8
    intrinsics: CameraIntrinsics
    cam_from_cloud: np.ndarray  # (4, 4) float64: X_cam = T @ X_cloud
    stamp_ns: int = 0
    name: str = "camera"
    depth_m: np.ndarray | None = None  # (H, W) float32, when the sensor gives it
    pixel_labels: np.ndarray | None = None  # (H, W) int64 class per pixel: rendered (synthetic) scans only

    def __post_init__(self) -> None:
        self.cam_from_cloud = np.asarray(self.cam_from_cloud, dtype=np.float64).reshape(4, 4)
        if self.image_rgb.ndim != 3 or self.image_rgb.shape[2] != 3:
            raise ValueError(f"camera {self.name}: image must be (H, W, 3), got {self.image_rgb.shape}")
        h, w = self.image_rgb.shape[:2]
        if (w, h) != (self.intrinsics.width_px, self.intrinsics.height_px):
            raise ValueError(
                f"camera {self.name}: image is {w}x{h} but intrinsics say "
                f"{self.intrinsics.width_px}x{self.intrinsics.height_px}"
            )


@dataclass
class Scan:
    """One sweep of a LiDAR or one depth cloud, with the images taken with it."""

    points_xyz_m: np.ndarray  # (N, 3) float32, in frame_id
    intensity: np.ndarray | None = None  # (N,) float32, sensor units scaled to ~[0, 1]
    rgb: np.ndarray | None = None  # (N, 3) float32 in [0, 1]
    cameras: list[CameraView] = field(default_factory=list)
    labels: np.ndarray | None = None  # (N,) int64, IGNORE_LABEL where unknown
    stamp_ns: int = 0
    frame_id: str = "cloud"
    label_set: str = ""  # a key of ttt_kd_ros.labels.LABEL_SETS, "" if unknown

    def __post_init__(self) -> None:
        pts = np.asarray(self.points_xyz_m, dtype=np.float32)
        if pts.ndim != 2 or pts.shape[1] != 3:
            raise ValueError(f"points_xyz_m: expected (N, 3), got {pts.shape}")
        self.points_xyz_m = pts
        n = len(pts)
        for name in ("intensity", "rgb", "labels"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise ValueError(f"{name}: expected {n} rows to match the points, got {len(value)}")

    @property
    def num_points(self) -> int:
        return len(self.points_xyz_m)

    def select(self, keep: np.ndarray) -> Scan:
        """The same scan restricted to ``keep`` (bool mask or indices); cameras are shared."""
        return Scan(
            points_xyz_m=self.points_xyz_m[keep],
            intensity=None if self.intensity is None else self.intensity[keep],
            rgb=None if self.rgb is None else self.rgb[keep],
            cameras=self.cameras,
            labels=None if self.labels is None else self.labels[keep],
            stamp_ns=self.stamp_ns,
            frame_id=self.frame_id,
            label_set=self.label_set,
        )


@dataclass
class Prediction:
    """What the Segmenter says about one Scan, and what it cost."""

    labels: np.ndarray  # (N,) int64, one per input point
    confidence: np.ndarray  # (N,) float32, softmax probability of the label
    timings_s: dict[str, float] = field(default_factory=dict)  # stage -> seconds
    adapted: bool = False
    steps_run: int = 0
    kd_loss_before: float | None = None
    kd_loss_after: float | None = None
    skip_reason: str = ""  # why adaptation did not run ("" when it did or was not asked)
    strategy: str = "none"
    visible_points: int = 0  # points some camera sees (the distillation targets; coverage = this / N)
    fused: np.ndarray | None = None  # (N,) bool: the label fuses the teacher's prediction (None: fusion off)
    fusion_withheld: bool = False  # the teacher was not fused on this scan: its class mix too unlike the 3D one
    fusion_weight: float | None = None  # the teacher's share fused on this scan (fusion.scan_weight_2d; None: none)
    class_weights: np.ndarray | None = None  # (K,) the label-shift correction's class weights (adapt/class_prior.py;
    # None: not applied)

    @property
    def total_s(self) -> float:
        return float(sum(self.timings_s.values()))
