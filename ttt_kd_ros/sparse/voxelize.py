"""Points -> occupied voxels, the one quantisation every sparse backend shares.

Voxel order is the sorted order of the integer coordinates (x slowest, z
fastest), so the same cloud always gives the same voxel rows whatever the
device or backend; the neighbour maps and the per-point gather depend on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Voxelization:
    """Which voxel every point fell into.

    coords: (V, 3) int64 integer grid coordinates, floor(xyz / voxel_size_m), unique, sorted.
    point_to_voxel: (N,) int64 row of ``coords`` holding each point.
    points_per_voxel: (V,) int64 how many points share each voxel.
    """

    coords: torch.Tensor
    point_to_voxel: torch.Tensor
    points_per_voxel: torch.Tensor
    voxel_size_m: float

    @property
    def num_voxels(self) -> int:
        return int(self.coords.shape[0])

    def voxel_mean(self, point_values: torch.Tensor) -> torch.Tensor:
        """(N, C) per-point values -> (V, C) mean over the points of each voxel."""
        out = point_values.new_zeros((self.num_voxels, point_values.shape[1]))
        out.index_add_(0, self.point_to_voxel, point_values)
        return out / self.points_per_voxel.to(out.dtype).unsqueeze(1)


def coords_to_keys(coords: torch.Tensor, origin: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """(M, 3) int64 -> (M,) int64 keys, order-preserving (lexicographic x, y, z) inside the box.

    ``origin`` is the smallest coordinate, ``extent`` the box size per axis;
    callers pad the box so that neighbours of active sites stay inside it and
    keys of neighbours are a constant shift away (key(c + o) = key(c) + key(o)).
    """
    rel = coords - origin
    return (rel[:, 0] * extent[1] + rel[:, 1]) * extent[2] + rel[:, 2]


def voxelize(points_xyz_m: torch.Tensor, voxel_size_m: float) -> Voxelization:
    """(N, 3) float points -> Voxelization on the points' device.

    Uniqueness is found by sorting 64-bit keys of the integer coordinates
    (one torch.unique), not with a Python dict, so it runs on CUDA as well.
    """
    if points_xyz_m.ndim != 2 or points_xyz_m.shape[1] != 3:
        raise ValueError(f"points_xyz_m: expected (N, 3), got {tuple(points_xyz_m.shape)}")
    if not voxel_size_m > 0:
        raise ValueError(f"voxel_size_m: expected > 0, got {voxel_size_m}")
    if points_xyz_m.shape[0] == 0:
        raise ValueError("points_xyz_m: expected at least one point, got 0")
    if not bool(torch.isfinite(points_xyz_m).all()):
        raise ValueError("points_xyz_m: contains NaN or infinite values; drop them before voxelising")
    grid = torch.floor(points_xyz_m.double() / voxel_size_m).to(torch.int64)
    origin = grid.min(dim=0).values
    extent = grid.max(dim=0).values - origin + 1
    if float(extent.double().prod()) >= 2.0**62:
        raise ValueError(f"points_xyz_m: grid of {extent.tolist()} voxels is too large for 64-bit keys")
    keys = coords_to_keys(grid, origin, extent)
    unique_keys, point_to_voxel, counts = torch.unique(keys, sorted=True, return_inverse=True, return_counts=True)
    # Decode the sorted keys back to coordinates instead of a second scatter over the points.
    z = unique_keys % extent[2]
    xy = unique_keys // extent[2]
    coords = torch.stack((xy // extent[1], xy % extent[1], z), dim=1) + origin
    return Voxelization(coords, point_to_voxel, counts, float(voxel_size_m))
