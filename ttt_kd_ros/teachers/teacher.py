"""The frozen 2D teacher phi_2D: DINOv2 patch features, cached per image, sampled at projected pixels.

The teacher never trains, and TTT-KD runs k gradient steps per scan against
the same images, so each image's feature map is computed once and cached; the
cost that remains is one ViT forward per image per scan.

Where the weights come from (a Hugging Face folder, the local hub cache,
Meta's official .pth converted on load, or a random tiny model) is
teachers/weights.py's job; this module is what runs on every scan.
"""

from __future__ import annotations

import operator
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ttt_kd_ros.scan import CameraView

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DEFAULT_RESOLUTION = 224  # short side; ~0.27 s for a KITTI image with ViT-S/14 on 2 CPU threads
DEFAULT_CACHE_SIZE = 8  # images: six nuScenes cameras plus slack


@dataclass
class FeatureMap:
    """Dense teacher features of one image.

    features: (C, Hp, Wp) float32, L2-normalised along C, one vector per patch;
        Hp = H_in / patch, Wp = W_in / patch.
    image_size_px: (W, H) of the original image, the frame pixel coordinates refer to.
    input_size_px: (W_in, H_in) of the resized image fed to the network.
    """

    features: torch.Tensor
    image_size_px: tuple[int, int]
    input_size_px: tuple[int, int]

    @property
    def grid_size(self) -> tuple[int, int]:
        """(Wp, Hp) patches."""
        return int(self.features.shape[2]), int(self.features.shape[1])


class Teacher:
    """A frozen ViT (DINOv2 family) producing per-patch features.

    ``resolution`` is either the short side in pixels (the aspect ratio is
    kept) or an explicit (H, W); both are rounded to multiples of the patch
    size. ``teacher_id`` names the weights so checkpoints can record which
    feature space their distillation head was trained for.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        teacher_id: str,
        resolution: int | tuple[int, int] = DEFAULT_RESOLUTION,
        device: str | torch.device = "cpu",
        cache_size: int = DEFAULT_CACHE_SIZE,
    ) -> None:
        config = model.config
        patch = config.patch_size
        self._init_runtime(teacher_id, feature_dim=int(config.hidden_size),
                           patch_size=int(patch[0] if isinstance(patch, (tuple, list)) else patch),
                           resolution=resolution, device=device, cache_size=cache_size)
        self.num_prefix_tokens = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
        self.model = self._frozen(model)

    def _init_runtime(self, teacher_id: str, feature_dim: int, patch_size: int,
                      resolution: int | tuple[int, int], device: str | torch.device, cache_size: int) -> None:
        """What every teacher needs whatever computes its features: identity, shape, device and the feature cache."""
        self.teacher_id = teacher_id
        self.feature_dim = int(feature_dim)
        self.patch_size = int(patch_size)
        self.device = torch.device(device)
        self.resolution = resolution_value(resolution)
        self.cache_size = int(cache_size)
        self._cache: OrderedDict[tuple, tuple[np.ndarray, FeatureMap]] = OrderedDict()
        self._lock = threading.Lock()
        self.forward_count = 0  # feature maps computed so far (cache misses)

    def _frozen(self, model: torch.nn.Module) -> torch.nn.Module:
        """The network on this teacher's device, in eval mode, with no parameter that could take a gradient."""
        model = model.to(self.device).eval()
        for param in model.parameters():
            param.requires_grad_(False)
        return model

    def __repr__(self) -> str:
        return (f"Teacher({self.teacher_id!r}, dim={self.feature_dim}, patch={self.patch_size}, "
                f"resolution={self.resolution}, device={self.device})")

    def input_size(self, width_px: int, height_px: int) -> tuple[int, int]:
        """(W_in, H_in) the network sees for a W x H image: multiples of the patch size, at least one patch."""
        p = self.patch_size
        if isinstance(self.resolution, tuple):
            h, w = self.resolution
        else:
            scale = self.resolution / min(width_px, height_px)
            h, w = height_px * scale, width_px * scale
        return max(p, round(w / p) * p), max(p, round(h / p) * p)

    def feature_map(self, image_rgb: np.ndarray) -> FeatureMap:
        """(H, W, 3) uint8 image -> FeatureMap (C, H_in/p, W_in/p), from the cache when seen before."""
        return self._cached(_check_image(image_rgb), self._compute)

    def _cached(self, array: np.ndarray, compute) -> FeatureMap:
        """compute(array), or the FeatureMap an earlier call made for the same array.

        The cache key is the buffer's identity (address, shape, strides) plus a
        sparse content checksum, and each entry holds a reference to its array
        so the address cannot be reused by another array while the entry
        lives; the checksum catches a buffer overwritten in place.
        """
        hit = self._lookup(array)
        if hit is not None:
            return hit
        fmap = compute(array)
        self._store(array, fmap)
        return fmap

    def _lookup(self, array: np.ndarray) -> FeatureMap | None:
        key = _image_key(array)
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            self._cache.move_to_end(key)
            return hit[1]

    def _store(self, array: np.ndarray, fmap: FeatureMap) -> None:
        with self._lock:
            key = _image_key(array)
            self._cache[key] = (array, fmap)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)

    def view_feature_maps(self, views: list[CameraView]) -> list[FeatureMap]:
        """The FeatureMap of each camera, the images not cached yet in one batched forward per input size.

        Why: a rig's cameras share an image size, and one forward over a batch of six images costs a GPU far less
        than six forwards of one (each a full launch sequence). Same maps as ``view_feature_map`` per camera.
        """
        images = [_check_image(view.image_rgb) for view in views]
        maps = {i: fmap for i, image in enumerate(images) if (fmap := self._lookup(image)) is not None}
        groups: dict[tuple[int, int], list[int]] = {}
        for i, image in enumerate(images):
            if i not in maps:
                groups.setdefault(self.input_size(image.shape[1], image.shape[0]), []).append(i)
        for rows in groups.values():
            for i, fmap in zip(rows, self._compute_batch([images[i] for i in rows]), strict=True):
                self._store(images[i], fmap)
                maps[i] = fmap
        return [maps[i] for i in range(len(images))]

    def view_feature_map(self, view: CameraView) -> FeatureMap:
        """The FeatureMap of one camera of a scan: what targets and caches call.

        A ViT needs only the image; a control teacher (teachers/oracle.py) reads the camera's rendered class
        image instead, so every caller goes through this one method and never picks a code path per teacher.
        """
        return self.feature_map(view.image_rgb)

    def view_inputs(self, view: CameraView) -> tuple[np.ndarray, ...]:
        """The arrays ``view_feature_map(view)`` depends on: what an on-disk cache keys its entry by."""
        return (view.image_rgb,)

    def clear_cache(self) -> None:
        with self._lock:
            self._cache.clear()

    def _input_pixels(self, image: np.ndarray) -> tuple[torch.Tensor, tuple[int, int], tuple[int, int]]:
        """(H, W, 3) uint8 -> ((1, 3, H_in, W_in) ImageNet-normalised float on the device, (W, H), (W_in, H_in)):
        what every image-model teacher feeds its network, whatever the network."""
        h, w = image.shape[:2]
        w_in, h_in = self.input_size(w, h)
        # torch refuses to wrap read-only buffers (PIL's arrays are read-only) without a warning: copy those.
        buffer = np.ascontiguousarray(image) if image.flags.writeable else np.array(image, order="C")
        pixels = torch.from_numpy(buffer).to(self.device)
        pixels = pixels.permute(2, 0, 1).unsqueeze(0).float().div_(255.0)
        if (h_in, w_in) != (h, w):
            pixels = F.interpolate(pixels, size=(h_in, w_in), mode="bilinear", align_corners=False, antialias=True)
        return normalise_pixels(pixels), (w, h), (w_in, h_in)

    def _compute(self, image: np.ndarray) -> FeatureMap:
        return self._compute_batch([image])[0]

    @torch.no_grad()
    def _compute_batch(self, images: list[np.ndarray]) -> list[FeatureMap]:
        """FeatureMaps of images of one input size, through one forward of the network over the batch."""
        # no_grad, not inference_mode: the features become loss targets next to tensors that need grad.
        inputs = [self._input_pixels(image) for image in images]
        (w_in, h_in) = inputs[0][2]
        pixels = torch.cat([pixels for pixels, _, _ in inputs])
        features = self._patch_features(pixels, h_in // self.patch_size, w_in // self.patch_size)
        self.forward_count += len(images)
        return [FeatureMap(features[b].contiguous(), image_size_px=size, input_size_px=(w_in, h_in))
                for b, (_, size, _) in enumerate(inputs)]

    def _patch_features(self, pixels: torch.Tensor, hp: int, wp: int) -> torch.Tensor:
        """(B, 3, H_in, W_in) normalised pixels -> (B, C, Hp, Wp) L2-normalised patch features (the ViT's tokens)."""
        dtype = next(self.model.parameters()).dtype
        tokens = self.model(pixel_values=pixels.to(dtype)).last_hidden_state[:, self.num_prefix_tokens:]
        if tokens.shape[1] != hp * wp:
            raise RuntimeError(f"teacher {self.teacher_id}: expected {hp * wp} patch tokens, got {tokens.shape[1]}")
        features = tokens.float().reshape(len(pixels), hp, wp, -1).permute(0, 3, 1, 2)
        return F.normalize(features, dim=1)

    @torch.no_grad()
    def sample(self, fmap: FeatureMap, uv_px: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Bilinear features at (M, 2) pixel positions of the original image -> (M, C), L2-normalised.

        Pixels follow geometry.py's convention (pixel centres at integers), so
        u maps to the normalised coordinate (u + 0.5) / W * 2 - 1. Because the
        whole image was resized onto the patch grid, that same coordinate with
        align_corners=False lands on patch j's centre exactly at
        u = (j + 0.5) * W / Wp - 0.5. Between the outermost patch centres and
        the image border the edge patch is repeated (padding_mode="border").
        """
        uv = torch.as_tensor(uv_px, dtype=torch.float32, device=fmap.features.device)
        if uv.ndim != 2 or uv.shape[1] != 2:
            raise ValueError(f"uv_px: expected shape (M, 2), got {tuple(uv.shape)}")
        channels = fmap.features.shape[0]
        if uv.shape[0] == 0:
            return fmap.features.new_zeros((0, channels))
        if not torch.isfinite(uv).all():
            raise ValueError("uv_px: non-finite pixel coordinates (sample only visible points)")
        w, h = fmap.image_size_px
        grid = torch.stack([(uv[:, 0] + 0.5) / w * 2 - 1, (uv[:, 1] + 0.5) / h * 2 - 1], dim=1)
        sampled = F.grid_sample(fmap.features.unsqueeze(0), grid.view(1, 1, -1, 2), mode="bilinear",
                                padding_mode="border", align_corners=False)
        return F.normalize(sampled[0, :, 0].T, dim=1)


# ------------------------------------------------------------------------------------------------------ helpers


def normalise_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) float in [0, 1] -> ImageNet-normalised: the input every image teacher here is trained on."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=pixels.dtype, device=pixels.device).view(1, 3, 1, 1)
    return (pixels - mean) / std


def resolution_value(value: object, name: str = "teacher resolution") -> int | tuple[int, int]:
    """A teacher resolution as the Teacher takes it (a short side, or (H, W)), from an int, a one- or two-item list
    (a tool's flag, a checkpoint's JSON) or a tuple; ValueError in ``name``'s words otherwise.

    The one reader of resolutions: the Teacher, NetConfig, checkpoints and the tools' --teacher-resolution agree.
    """
    items = list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        sides = [operator.index(v) for v in items if not isinstance(v, bool)]
    except TypeError:
        sides = []
    if len(sides) != len(items) or len(sides) not in (1, 2) or min(sides) <= 0:
        raise ValueError(f"{name}: expected a short side or (H, W) of positive integers, got {value!r}")
    return sides[0] if len(sides) == 1 else (sides[0], sides[1])


def _check_image(image_rgb: np.ndarray) -> np.ndarray:
    image = np.asarray(image_rgb)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image_rgb: expected (H, W, 3) uint8, got {image.shape} {image.dtype}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"image_rgb: empty image {image.shape}")
    return image


def _image_key(image: np.ndarray) -> tuple:
    h, w = image.shape[:2]
    sample = np.ascontiguousarray(image[:: max(1, h // 48), :: max(1, w // 48)])
    return (image.__array_interface__["data"][0], image.shape, image.strides, hash(sample.tobytes()))
