"""Synthetic sensors: pinhole RGB(-D) cameras and a spinning multi-ring LiDAR.

Both sensors are the same ray caster with different ray bundles, so labels,
colours and depths of one scan always agree with each other by construction.
Camera frames follow OpenCV/ROS (x right, y down, z forward) and pixel
centres sit on integer coordinates: the ray of pixel (u, v) is
K^-1 [u, v, 1].
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ttt_kd_ros.data.synthetic.raycast import Hits, cast_rays
from ttt_kd_ros.data.synthetic.scene import NUM_ROOM_SURFACES, Scene
from ttt_kd_ros.data.synthetic.shading import shade
from ttt_kd_ros.scan import CameraIntrinsics, CameraView

SENSOR_KINDS = ("rgbd", "lidar")


@dataclass(frozen=True)
class SensorConfig:
    """How a scan is taken. ``kind`` picks the ray bundle; everything else is a knob.

    rgbd: ``num_views`` depth frames from a hand-held camera are back-projected
    and fused in the room frame (like a ScanNet reconstruction), thinned on a
    ``voxel_size_m`` grid and capped at ``max_points``; the first
    ``num_cameras`` frames are the scan's images.
    lidar: one sweep of ``rings`` x (360 / ``horizontal_res_deg``) rays from a
    robot; the cloud is in the sensor frame; ``num_cameras`` cameras on the
    robot look out at evenly spaced yaws.
    """

    kind: str = "rgbd"
    # cameras (both kinds)
    num_cameras: int = 3
    image_width_px: int = 160
    image_height_px: int = 120
    hfov_deg: float = 65.0
    camera_depth: bool = True  # attach depth_m to each CameraView
    image_noise: float = 0.01  # std of per-pixel colour noise, colour in [0, 1]
    image_blur_px: float = 0.0  # std (pixels) of a Gaussian blur: defocus, motion, a soft lens
    image_block_px: int = 0  # side of square blocks that keep only their mean colour: heavy compression
    camera_height_m: tuple[float, float] = (1.2, 1.7)
    camera_pitch_deg: tuple[float, float] = (-30.0, 5.0)
    # rgbd
    num_views: int = 6
    depth_noise_m: float = 0.002  # sigma = depth_noise_m + depth_noise_quad * z^2
    depth_noise_quad: float = 0.002
    voxel_size_m: float = 0.02
    max_points: int = 40000
    max_depth_m: float = 8.0
    # lidar
    rings: int = 32
    vertical_fov_deg: tuple[float, float] = (-25.0, 15.0)
    horizontal_res_deg: float = 0.4
    range_m: tuple[float, float] = (0.3, 30.0)
    range_noise_m: float = 0.01
    mount_height_m: tuple[float, float] = (0.5, 0.9)
    grazing_dropout: float = 0.3  # extra drop probability at grazing incidence
    min_intensity: float = 0.02  # weaker returns are lost (glass at an angle)
    # both
    dropout: float = 0.0  # probability that any point is lost

    def __post_init__(self) -> None:
        if self.kind not in SENSOR_KINDS:
            raise ValueError(f"SensorConfig.kind: expected one of {SENSOR_KINDS}, got {self.kind!r}")
        if self.num_cameras < 0 or (self.kind == "rgbd" and self.num_views < max(1, self.num_cameras)):
            raise ValueError(
                f"SensorConfig: need num_views >= num_cameras >= 0 (num_views >= 1 for rgbd), "
                f"got num_views={self.num_views} num_cameras={self.num_cameras}"
            )


@dataclass
class SensedCloud:
    """A sensor's output before it becomes a Scan, plus the ground truth tests need."""

    points_m: np.ndarray  # (N, 3) float32 in the cloud frame
    primitive: np.ndarray  # (N,) int64 Scene row each point was sampled on
    rgb: np.ndarray | None  # (N, 3) float32
    intensity: np.ndarray | None  # (N,) float32
    cameras: list[CameraView]
    world_from_cloud: np.ndarray  # (4, 4)
    frame_id: str


def intrinsics_for(sensor: SensorConfig) -> CameraIntrinsics:
    w, h = sensor.image_width_px, sensor.image_height_px
    f = (w / 2) / np.tan(np.deg2rad(sensor.hfov_deg) / 2)
    K = np.array([[f, 0, (w - 1) / 2], [0, f, (h - 1) / 2], [0, 0, 1]])
    return CameraIntrinsics(K=K, width_px=w, height_px=h)


def look_pose(position: np.ndarray, yaw: float, pitch: float) -> np.ndarray:
    """world_from_cam (4, 4) of an OpenCV camera at ``position`` looking along (yaw, pitch)."""
    forward = np.array([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw), np.sin(pitch)])
    right = np.array([np.sin(yaw), -np.cos(yaw), 0.0])
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, position
    return pose


@dataclass
class RenderedView:
    image_rgb: np.ndarray  # (H, W, 3) uint8
    depth_m: np.ndarray  # (H, W) float32, z in the camera frame (noisy when asked)
    hits: Hits  # per pixel, row-major
    ray_world: np.ndarray  # (H*W, 3) unit directions in the room frame
    world_from_cam: np.ndarray  # (4, 4)


def gaussian_blur(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """(H, W, C) float image blurred by a separable Gaussian of std ``sigma_px`` (edges replicated)."""
    radius = max(1, int(np.ceil(3.0 * sigma_px)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma_px) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    out = image.astype(np.float32)
    for axis in (0, 1):
        padded = np.pad(out, [(radius, radius) if a == axis else (0, 0) for a in range(3)], mode="edge")
        length = out.shape[axis]
        out = sum(t * np.take(padded, np.arange(k, k + length), axis=axis) for k, t in enumerate(taps))
    return out.astype(np.float32)


def block_average(image: np.ndarray, block_px: int) -> np.ndarray:
    """(H, W, C) image whose ``block_px`` square blocks keep only their mean (the last partial blocks too)."""
    h, w, c = image.shape
    out = np.empty_like(image, dtype=np.float32)
    for top in range(0, h, block_px):
        for left in range(0, w, block_px):
            block = image[top:top + block_px, left:left + block_px]
            out[top:top + block_px, left:left + block_px] = block.reshape(-1, c).mean(axis=0)
    return out


def render_view(scene: Scene, intr: CameraIntrinsics, world_from_cam: np.ndarray, sensor: SensorConfig,
                rng: np.random.Generator) -> RenderedView:
    """Colour image and z-depth of one camera; depth noise follows the RGB-D model of ``sensor``."""
    w, h = intr.width_px, intr.height_px
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.stack([u.ravel(), v.ravel(), np.ones(w * h)], axis=1)
    ray_cam = pix @ np.linalg.inv(intr.K).T
    z_per_t = 1.0 / np.linalg.norm(ray_cam, axis=1)  # z-depth per metre along the unit ray
    ray_world = (ray_cam * z_per_t[:, None]) @ world_from_cam[:3, :3].T
    origin = world_from_cam[:3, 3]
    hits = cast_rays(scene, origin, ray_world)
    points = origin.astype(np.float32) + ray_world.astype(np.float32) * hits.t_m[:, None]
    colour = shade(scene, hits, points).reshape(h, w, 3)
    if sensor.image_blur_px > 0:
        colour = gaussian_blur(colour, sensor.image_blur_px)
    if sensor.image_noise > 0:
        colour = colour + rng.normal(0.0, sensor.image_noise, colour.shape).astype(np.float32)
    if sensor.image_block_px > 1:
        colour = block_average(colour, sensor.image_block_px)
    image = (np.clip(colour, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
    z = hits.t_m * z_per_t.astype(np.float32)
    sigma = sensor.depth_noise_m + sensor.depth_noise_quad * z**2
    if sensor.kind == "rgbd" and np.any(sigma > 0):
        z = z + rng.normal(0.0, 1.0, z.shape).astype(np.float32) * sigma
    return RenderedView(image, z.reshape(h, w).astype(np.float32), hits, ray_world.astype(np.float32),
                        world_from_cam)


def inside_furniture(scene: Scene, xy: np.ndarray, margin: float) -> bool:
    """Whether (x, y) lies within ``margin`` of a furniture footprint (rotated boxes)."""
    rows = slice(NUM_ROOM_SURFACES, None)
    rel = xy - scene.center_m[rows, :2]
    c, s = np.cos(scene.yaw_rad[rows]), np.sin(scene.yaw_rad[rows])
    lx, ly = c * rel[:, 0] + s * rel[:, 1], -s * rel[:, 0] + c * rel[:, 1]
    half = scene.half_size_m[rows]
    return bool(np.any((np.abs(lx) < half[:, 0] + margin) & (np.abs(ly) < half[:, 1] + margin)))


def free_position(scene: Scene, rng: np.random.Generator, margin: float, tries: int = 50) -> np.ndarray:
    """An (x, y) at least ``margin`` inside the walls and not on furniture (falls back to the last try)."""
    half_room = scene.room_size_m[:2] / 2 - margin
    xy = np.zeros(2)
    for _ in range(tries):
        xy = rng.uniform(-half_room, half_room)
        if not inside_furniture(scene, xy, 0.15):
            break
    return xy


def _camera_view(view: RenderedView, intr: CameraIntrinsics, cloud_from_world: np.ndarray, name: str,
                 with_depth: bool, scene: Scene) -> CameraView:
    cam_from_cloud = np.linalg.inv(cloud_from_world @ view.world_from_cam)
    pixel_labels = scene.class_id[view.hits.primitive].reshape(intr.height_px, intr.width_px)
    return CameraView(image_rgb=view.image_rgb, intrinsics=intr, cam_from_cloud=cam_from_cloud, name=name,
                      depth_m=view.depth_m if with_depth else None, pixel_labels=pixel_labels)


def sense_rgbd(scene: Scene, sensor: SensorConfig, rng: np.random.Generator) -> SensedCloud:
    """Fused depth frames in the room frame, coloured by the RGB frames."""
    intr = intrinsics_for(sensor)
    points, prims, colours, views = [], [], [], []
    for _ in range(sensor.num_views):
        xy = free_position(scene, rng, 0.4)
        height = min(rng.uniform(*sensor.camera_height_m), scene.room_size_m[2] - 0.2)
        to_centre = np.arctan2(-xy[1], -xy[0])
        yaw = to_centre + rng.uniform(-1.2, 1.2)
        pitch = np.deg2rad(rng.uniform(*sensor.camera_pitch_deg))
        pose = look_pose(np.array([xy[0], xy[1], height]), yaw, pitch)
        view = render_view(scene, intr, pose, sensor, rng)
        z = view.depth_m.ravel()
        z_true = view.hits.t_m * (view.ray_world @ pose[:3, 2])
        keep = (z > 0.1) & (z < sensor.max_depth_m)
        scale = z[keep] / z_true[keep]  # move the hit along its ray to the noisy depth
        points.append(pose[:3, 3].astype(np.float32) + view.ray_world[keep] * (view.hits.t_m[keep] * scale)[:, None])
        prims.append(view.hits.primitive[keep])
        colours.append(view.image_rgb.reshape(-1, 3)[keep].astype(np.float32) / 255.0)
        views.append(view)
    xyz, prim, rgb = np.concatenate(points), np.concatenate(prims), np.concatenate(colours)
    keep = _thin(xyz, sensor, rng)
    cameras = [_camera_view(views[i], intr, np.eye(4), f"rgbd_{i}", sensor.camera_depth, scene)
               for i in range(sensor.num_cameras)]
    return SensedCloud(xyz[keep].astype(np.float32), prim[keep], rgb[keep], None, cameras, np.eye(4), "room")


def _thin(xyz: np.ndarray, sensor: SensorConfig, rng: np.random.Generator) -> np.ndarray:
    """Indices kept after voxel thinning (one random point per voxel), dropout and the point cap."""
    order = rng.permutation(len(xyz))
    if sensor.voxel_size_m > 0:
        cells = np.floor(xyz[order] / sensor.voxel_size_m).astype(np.int64)
        cells -= cells.min(axis=0)
        dims = cells.max(axis=0) + 1
        key = (cells[:, 0] * dims[1] + cells[:, 1]) * dims[2] + cells[:, 2]
        _, first = np.unique(key, return_index=True)
        order = order[first]
    if sensor.dropout > 0:
        order = order[rng.random(len(order)) >= sensor.dropout]
    if len(order) > sensor.max_points:
        order = rng.choice(order, sensor.max_points, replace=False)
    return np.sort(order)


def sense_lidar(scene: Scene, sensor: SensorConfig, rng: np.random.Generator) -> SensedCloud:
    """One LiDAR sweep in the sensor frame (x forward, z up) and the robot's cameras."""
    xy = free_position(scene, rng, 0.6)
    height = rng.uniform(*sensor.mount_height_m)
    yaw = rng.uniform(-np.pi, np.pi)
    world_from_lidar = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    world_from_lidar[:2, :2] = [[c, -s], [s, c]]
    world_from_lidar[:3, 3] = [xy[0], xy[1], height]

    elevation = np.deg2rad(np.linspace(*sensor.vertical_fov_deg, sensor.rings))
    columns = max(1, round(360.0 / sensor.horizontal_res_deg))
    azimuth = np.arange(columns) * (2 * np.pi / columns)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")  # ring-major like a Velodyne packet order
    ray_lidar = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], axis=-1).reshape(-1, 3)
    ray_world = ray_lidar @ world_from_lidar[:3, :3].T
    hits = cast_rays(scene, world_from_lidar[:3, 3], ray_world)

    cos_inc = np.abs(np.sum(hits.normal * ray_world.astype(np.float32), axis=1))
    intensity = scene.reflectance[hits.primitive] * (0.3 + 0.7 * cos_inc)
    intensity = np.clip(intensity + rng.normal(0.0, 0.02, len(intensity)), 0.0, 1.0).astype(np.float32)
    rng_noisy = hits.t_m + rng.normal(0.0, sensor.range_noise_m, len(hits.t_m)).astype(np.float32)
    p_drop = sensor.dropout + sensor.grazing_dropout * (1.0 - cos_inc) ** 4
    keep = ((rng_noisy > sensor.range_m[0]) & (rng_noisy < sensor.range_m[1])
            & (intensity >= sensor.min_intensity) & (rng.random(len(p_drop)) >= p_drop))
    points = (ray_lidar[keep] * rng_noisy[keep, None]).astype(np.float32)

    intr = intrinsics_for(sensor)
    cameras = []
    for i in range(sensor.num_cameras):
        cam_yaw = yaw + 2 * np.pi * i / max(1, sensor.num_cameras)
        # Cameras sit 10 cm above the LiDAR and 10 cm out along their optical axis.
        position = world_from_lidar[:3, 3] + np.array([0.1 * np.cos(cam_yaw), 0.1 * np.sin(cam_yaw), 0.1])
        pose = look_pose(position, cam_yaw, np.deg2rad(-10.0))
        view = render_view(scene, intr, pose, sensor, rng)
        cameras.append(_camera_view(view, intr, np.linalg.inv(world_from_lidar), f"cam_{i}", sensor.camera_depth,
                                    scene))
    return SensedCloud(points, hits.primitive[keep], None, intensity[keep], cameras, world_from_lidar, "lidar")


def sense(scene: Scene, sensor: SensorConfig, rng: np.random.Generator) -> SensedCloud:
    """The sensor's cloud and camera views of ``scene``."""
    if sensor.kind == "rgbd":
        return sense_rgbd(scene, sensor, rng)
    return sense_lidar(scene, sensor, rng)
