"""MinkowskiEngine backend (the paper's library, common on GPU robots), used only when importable.

Built for the CPU by scripts/install_minkowski.sh (.ci/run always runs it), so
test_sparse.py's parity tests (outputs, gradients, a whole TTT-KD scan) run in CI. Weight
layout (../shared/ENVIRONMENT.md): ME kernels are (kernel_volume, Cin, Cout)
like ours, but list offsets with x fastest (ours: x slowest), for the 3x3x3
and the 2x2x2 kernels alike (measured: the 2x2x2 taps whose x and z offsets
differ disagree without it), so every weight is re-ordered on each call (a
27- or 8-row permutation, cheap). Coordinates are shifted to be non-negative so
ME's stride rounding equals our floor division (same voxel pyramid).
"""

from __future__ import annotations

import MinkowskiEngine as ME  # noqa: N817  (the library's own spelling; imported only through get_backend)
import torch
from MinkowskiEngineBackend._C import ConvolutionMode  # 0.5.4 does not re-export it at the top level


def _weight_to_me(weight: torch.Tensor, size: int) -> torch.Tensor:
    """(size^3, Cin, Cout) with x slowest (ours) -> the same kernel with x fastest (ME's offset order)."""
    cin, cout = weight.shape[1:]
    return weight.reshape(size, size, size, cin, cout).permute(2, 1, 0, 3, 4).reshape(size**3, cin, cout)


def require_cuda_build(on_cuda: bool) -> None:
    """ValueError when CUDA tensors meet a MinkowskiEngine built for the CPU (``--cpu_only``, as CI builds it).

    Why: such a build accepts the CUDA coordinate map type and fails later inside the extension with an error
    that names neither the build nor the fix; a robot moved from a CPU test box to its GPU would meet exactly that.
    """
    cuda_built = bool(getattr(ME, "is_cuda_available", lambda: False)())
    if on_cuda and not cuda_built:
        raise ValueError("backend 'minkowski': this MinkowskiEngine was built for the CPU only, but the scan is on "
                         "CUDA; rebuild it with CUDA (pip install MinkowskiEngine without --cpu_only, against this "
                         "torch), or use backend 'torch' / 'spconv', or device cpu")


class MinkowskiGeometry:
    """A CoordinateManager holding the voxel pyramid; see SparseGeometry."""

    def __init__(self, coords: torch.Tensor, num_levels: int) -> None:
        require_cuda_build(coords.is_cuda)
        top = 2 ** (num_levels - 1)
        shift = torch.div(coords.min(dim=0).values, top, rounding_mode="floor") * top
        self._shift = shift
        self._num_levels = num_levels
        map_type = ME.CoordinateMapType.CUDA if coords.is_cuda else ME.CoordinateMapType.CPU
        self._manager = ME.CoordinateManager(D=3, coordinate_map_type=map_type)
        batched = torch.cat((torch.zeros_like(coords[:, :1]), coords - shift), dim=1).int()
        key, (unique_map, _) = self._manager.insert_and_map(batched, tensor_stride=1)
        if unique_map.numel() != coords.shape[0]:
            raise ValueError(
                f"coords: expected unique rows, MinkowskiEngine kept {unique_map.numel()} of {len(coords)}"
            )
        # Rows of level 0 must stay in Voxelization order: keep ME's order and permute at the edges.
        self._to_me = unique_map.long().to(coords.device)
        self._from_me = torch.argsort(self._to_me)
        self._keys = [key]
        for _ in range(1, num_levels):
            self._keys.append(self._manager.stride(self._keys[-1], [2, 2, 2]))
        self._subm_kernel = ME.KernelGenerator(kernel_size=3, stride=1, dimension=3)
        self._down_kernel = ME.KernelGenerator(kernel_size=2, stride=2, dimension=3)

    @property
    def num_levels(self) -> int:
        return self._num_levels

    def num_voxels(self, level: int) -> int:
        return int(self._manager.size(self._keys[level]))

    def coords(self, level: int) -> torch.Tensor:
        raw = self._manager.get_coordinates(self._keys[level])[:, 1:].long()
        level0 = raw + self._shift.to(raw.device)
        out = torch.div(level0, 2**level, rounding_mode="floor")
        return out.index_select(0, self._from_me.to(out.device)) if level == 0 else out

    def _conv(self, fn: type, x: torch.Tensor, weight: torch.Tensor, kernel, in_level: int, out_level: int):
        if in_level == 0:
            x = x.index_select(0, self._to_me)
        out = fn.apply(
            x, weight, kernel, ConvolutionMode.DEFAULT, self._keys[in_level], self._keys[out_level], self._manager
        )
        return out.index_select(0, self._from_me) if out_level == 0 else out

    def subm_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return self._conv(ME.MinkowskiConvolutionFunction, x, _weight_to_me(weight, 3), self._subm_kernel, level,
                          level)

    def down_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return self._conv(ME.MinkowskiConvolutionFunction, x, _weight_to_me(weight, 2), self._down_kernel, level,
                          level + 1)

    def up_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        fn = ME.MinkowskiConvolutionTransposeFunction
        return self._conv(fn, x, _weight_to_me(weight, 2), self._down_kernel, level + 1, level)


class Backend:
    name = "minkowski"
    coords_before_a_pass = True

    def build_geometry(self, coords: torch.Tensor, num_levels: int) -> MinkowskiGeometry:
        return MinkowskiGeometry(coords.to(torch.int64), num_levels)
