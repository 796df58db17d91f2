"""A tiny ScanNet root in the real on-disk layout (SensReader export + label-filt), for the scannet: source tests.

    ROOT/scans/<scene>/color/<i>.jpg                 40x30 RGB
    ROOT/scans/<scene>/depth/<i>.png                 40x30 uint16, millimetres
    ROOT/scans/<scene>/pose/<i>.txt                  4x4 world_from_camera
    ROOT/scans/<scene>/intrinsic/intrinsic_color.txt, intrinsic_depth.txt   4x4
    ROOT/scans/<scene>/label-filt/<i>.png            40x30 uint16 NYU40 ids

Every frame sees a wall 2 m ahead. Its pixels are labelled by columns: NYU40 1 (wall), 5 (chair), 13 (pillow:
not a ScanNet-20 class) and 0 (unannotated); the top row has no depth. Colour and depth share one camera, so
each point takes the label of its own pixel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

WIDTH, HEIGHT = 40, 30
K = np.array([[40.0, 0.0, 20.0], [0.0, 40.0, 15.0], [0.0, 0.0, 1.0]])
SCENES = ("scene0000_00", "scene0001_00")
FRAMES = 3
DEPTH_MM = 2000
# NYU40 id per pixel column band (10 columns each), and the ScanNet-20 training id it must become.
NYU40_BANDS = (1, 5, 13, 0)
SCANNET20_OF_BAND = (0, 4, -1, -1)


def nyu40_image() -> np.ndarray:
    """(HEIGHT, WIDTH) uint16 NYU40 ids: four column bands."""
    return np.repeat(np.array(NYU40_BANDS, dtype=np.uint16), WIDTH // len(NYU40_BANDS))[None, :].repeat(HEIGHT, 0)


def depth_image() -> np.ndarray:
    """(HEIGHT, WIDTH) uint16 millimetres; the top row is 0 (no return)."""
    depth = np.full((HEIGHT, WIDTH), DEPTH_MM, dtype=np.uint16)
    depth[0] = 0
    return depth


VALID_PIXELS = WIDTH * (HEIGHT - 1)
"""Points one frame gives: every pixel with depth."""


def _matrix4(m3: np.ndarray) -> np.ndarray:
    out = np.eye(4)
    out[:3, :3] = m3
    return out


def write_scene(scene_dir: Path, frames: int = FRAMES, labels: bool = True) -> None:
    """One SensReader-exported scene folder; frame i's camera sits at x = 0.1 * i."""
    for sub in ("color", "depth", "pose", "intrinsic") + (("label-filt",) if labels else ()):
        (scene_dir / sub).mkdir(parents=True, exist_ok=True)
    np.savetxt(scene_dir / "intrinsic" / "intrinsic_color.txt", _matrix4(K))
    np.savetxt(scene_dir / "intrinsic" / "intrinsic_depth.txt", _matrix4(K))
    rgb = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    rgb[..., 0] = np.linspace(0, 255, WIDTH, dtype=np.uint8)[None, :]
    rgb[..., 2] = 128
    for i in range(frames):
        Image.fromarray(rgb).save(scene_dir / "color" / f"{i}.jpg", quality=95)
        Image.fromarray(depth_image()).save(scene_dir / "depth" / f"{i}.png")
        pose = np.eye(4)
        pose[0, 3] = 0.1 * i
        np.savetxt(scene_dir / "pose" / f"{i}.txt", pose)
        if labels:
            Image.fromarray(nyu40_image()).save(scene_dir / "label-filt" / f"{i}.png")


def write_scannet_root(root: Path, scenes: tuple[str, ...] = SCENES, frames: int = FRAMES,
                       labels: bool = True) -> Path:
    """ROOT/scans/<scene> for each scene; returns ROOT."""
    for scene in scenes:
        write_scene(root / "scans" / scene, frames=frames, labels=labels)
    return root
