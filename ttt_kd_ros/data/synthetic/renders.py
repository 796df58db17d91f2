"""Per-pixel class images of the synthetic world, for pre-training the stand-in 2D teacher.

A foundation model has seen images of every kind of building and camera, so
the stand-in teacher is pre-trained on views of *all* domains, each rendered
with its class image (which primitive every pixel's ray hits). Only the
public synthetic API is used: ``generate_scene`` for the room and
``render_view`` for the colour image, so a view here looks exactly like the
camera images that come with the scans.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttt_kd_ros.data.synthetic.domains import Domain, get_domain
from ttt_kd_ros.data.synthetic.raycast import cast_rays
from ttt_kd_ros.data.synthetic.scene import Scene, generate_scene
from ttt_kd_ros.data.synthetic.sensors import free_position, intrinsics_for, look_pose, render_view
from ttt_kd_ros.data.synthetic.world import SyntheticSample
from ttt_kd_ros.scan import CameraIntrinsics

_SCENE_STREAM, _VIEW_STREAM = 0, 2  # the scene stream matches world.py, so a seed shows the same room


@dataclass
class LabeledImage:
    """One camera image with the class of every pixel.

    image_rgb: (H, W, 3) uint8; labels: (H, W) int64 SYNTHETIC_INDOOR ids.
    """

    image_rgb: np.ndarray
    labels: np.ndarray
    domain: str


def render_label_image(scene: Scene, intrinsics: CameraIntrinsics, world_from_cam: np.ndarray) -> np.ndarray:
    """(H, W) int64 class of the first surface each pixel's ray hits (pinhole K, no distortion)."""
    w, h = intrinsics.width_px, intrinsics.height_px
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(w * h)], axis=1)
    rays = pix @ np.linalg.inv(intrinsics.K).T
    rays /= np.linalg.norm(rays, axis=1, keepdims=True)
    hits = cast_rays(scene, world_from_cam[:3, 3], rays @ world_from_cam[:3, :3].T)
    return scene.class_id[hits.primitive].reshape(h, w)


def scan_label_images(sample: SyntheticSample) -> list[np.ndarray]:
    """(H, W) class image of every camera of a generated scan, in scan.cameras order."""
    out = []
    for view in sample.scan.cameras:
        world_from_cam = sample.world_from_cloud @ np.linalg.inv(view.cam_from_cloud)
        out.append(render_label_image(sample.scene, view.intrinsics, world_from_cam))
    return out


def _camera_pose(scene: Scene, domain: Domain, rng: np.random.Generator) -> np.ndarray:
    """world_from_cam where this domain's sensor would carry a camera: hand-held (rgbd) or robot-mounted (lidar)."""
    sensor = domain.sensor
    xy = free_position(scene, rng, margin=0.5, tries=31)
    if sensor.kind == "lidar":
        height = rng.uniform(*sensor.mount_height_m) + 0.1
        pitch = np.deg2rad(-10.0)
        yaw = rng.uniform(-np.pi, np.pi)
    else:
        height = min(rng.uniform(*sensor.camera_height_m), scene.room_size_m[2] - 0.2)
        pitch = np.deg2rad(rng.uniform(*sensor.camera_pitch_deg))
        yaw = np.arctan2(-xy[1], -xy[0]) + rng.uniform(-1.2, 1.2)
    return look_pose(np.array([xy[0], xy[1], height]), yaw, pitch)


def render_labeled_images(domain: str | Domain, seed: int, num_views: int = 4) -> list[LabeledImage]:
    """``num_views`` camera images of one room of ``domain`` with their class images; deterministic in seed."""
    if num_views < 1:
        raise ValueError(f"num_views: expected >= 1, got {num_views}")
    if seed < 0:
        raise ValueError(f"seed: expected a non-negative int, got {seed}")
    dom = get_domain(domain)
    scene = generate_scene(dom.style, np.random.default_rng([seed, _SCENE_STREAM]))
    rng = np.random.default_rng([seed, _VIEW_STREAM])
    intrinsics = intrinsics_for(dom.sensor)
    out = []
    for _ in range(num_views):
        pose = _camera_pose(scene, dom, rng)
        view = render_view(scene, intrinsics, pose, dom.sensor, rng)
        labels = scene.class_id[view.hits.primitive].reshape(intrinsics.height_px, intrinsics.width_px)
        out.append(LabeledImage(view.image_rgb, labels, dom.name))
    return out


__all__ = ["LabeledImage", "render_label_image", "render_labeled_images", "scan_label_images"]
