"""spconv 2.x backend, used only when importable (not installed on the development machines).

Weight layout (../shared/ENVIRONMENT.md): spconv kernels are (Cout, kx, ky,
kz, Cin); ours (kx*9 + ky*3 + kz, Cin, Cout), converted on every call. The
spconv indice pairs are computed on the first pass of a scan and cached in the
geometry's indice_dict, so later passes reuse them like our own maps.
Known CPU problems of spconv 2.3.8 (ENVIRONMENT.md): its scatter-add races
with more than one torch thread, so CPU calls run with one thread here; and
its backward calls torch.cuda.current_stream(), so on CPU it is forward-only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import spconv.pytorch as spconv
import torch
from torch.func import functional_call

from ttt_kd_ros.sparse.maps import build_scan_maps


def _weight_to_spconv(weight: torch.Tensor, k: int) -> torch.Tensor:
    cin, cout = weight.shape[1:]
    return weight.reshape(k, k, k, cin, cout).permute(4, 0, 1, 2, 3).contiguous()


@contextmanager
def _one_thread_on_cpu(device: torch.device) -> Iterator[None]:
    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


class SpconvGeometry:
    """Per-level spconv indices plus the shared indice_dict; see SparseGeometry."""

    def __init__(self, coords: torch.Tensor, num_levels: int) -> None:
        top = 2 ** (num_levels - 1)
        self._shift = torch.div(coords.min(dim=0).values, top, rounding_mode="floor") * top
        local = coords - self._shift
        # Pad the grid to a multiple of 2^levels, or spconv drops border voxels when striding.
        extent = torch.div(local.max(dim=0).values + top, top, rounding_mode="floor") * top
        self._num_levels = num_levels
        self._shapes = [[int(s) // 2**level for s in extent.tolist()] for level in range(num_levels)]
        self._indices: dict[int, torch.Tensor] = {
            0: torch.cat((torch.zeros_like(local[:, :1]), local), dim=1).int()
        }
        self._sizes = [int(c.shape[0]) for c in build_scan_maps(coords, num_levels).coords]
        self._indice_dict: dict = {}
        self._modules: dict[tuple, torch.nn.Module] = {}

    @property
    def num_levels(self) -> int:
        return self._num_levels

    def num_voxels(self, level: int) -> int:
        return self._sizes[level]

    def coords(self, level: int) -> torch.Tensor:
        if level not in self._indices:
            raise ValueError(f"spconv geometry: level {level} coordinates exist only after a forward pass")
        local = self._indices[level][:, 1:].long()
        return torch.div(local + self._shift.to(local.device), 2**level, rounding_mode="floor")

    def _run(self, key: tuple, make: Callable[[], torch.nn.Module], weight: torch.Tensor, x: torch.Tensor,
             in_level: int, out_level: int) -> torch.Tensor:
        if key not in self._modules:
            self._modules[key] = make().to(x.device)
        tensor = spconv.SparseConvTensor(
            x, self._indices[in_level], self._shapes[in_level], batch_size=1, indice_dict=self._indice_dict
        )
        with _one_thread_on_cpu(x.device):
            out = functional_call(self._modules[key], {"weight": weight}, (tensor,))
        self._indice_dict = out.indice_dict
        self._indices.setdefault(out_level, out.indices)
        return out.features

    def subm_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        cin, cout = weight.shape[1:]
        make = lambda: spconv.SubMConv3d(cin, cout, 3, bias=False, indice_key=f"subm{level}")  # noqa: E731
        return self._run(("subm", level, cin, cout), make, _weight_to_spconv(weight, 3), x, level, level)

    def down_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        cin, cout = weight.shape[1:]
        make = lambda: spconv.SparseConv3d(cin, cout, 2, stride=2, bias=False, indice_key=f"down{level}")  # noqa: E731
        return self._run(("down", level, cin, cout), make, _weight_to_spconv(weight, 2), x, level, level + 1)

    def up_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        cin, cout = weight.shape[1:]
        make = lambda: spconv.SparseInverseConv3d(cin, cout, 2, bias=False, indice_key=f"down{level}")  # noqa: E731
        return self._run(("up", level, cin, cout), make, _weight_to_spconv(weight, 2), x, level + 1, level)


class Backend:
    name = "spconv"
    coords_before_a_pass = False  # its strided indices exist only after a pass over them

    def build_geometry(self, coords: torch.Tensor, num_levels: int) -> SpconvGeometry:
        return SpconvGeometry(coords.to(torch.int64), num_levels)
