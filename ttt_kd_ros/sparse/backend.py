"""The one interface every sparse-convolution backend implements, and where one is chosen.

A network holds its weights in the canonical layout of ``sparse.maps`` and
calls three operations on a per-scan geometry object; a backend decides how
the geometry is stored (index tensors, a MinkowskiEngine coordinate manager,
spconv indice pairs) and converts the weights on the fly. So checkpoints are
backend-independent and backend types never reach a model's forward().
"""

from __future__ import annotations

import importlib.util
from typing import Protocol

import torch


class SparseGeometry(Protocol):
    """One scan's voxel pyramid with its neighbour maps (built once, used for every pass).

    Features at level l are (V_l, C) rows in the order of ``coords(l)``.
    """

    @property
    def num_levels(self) -> int: ...

    def num_voxels(self, level: int) -> int: ...

    def coords(self, level: int) -> torch.Tensor:
        """(V_l, 3) int64 integer coordinates at level l (level-0 units // 2^l)."""
        ...

    def subm_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        """3x3x3 submanifold conv at ``level``: (V_l, Cin), (27, Cin, Cout) -> (V_l, Cout)."""
        ...

    def down_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        """2x2x2 stride-2 conv: (V_level, Cin), (8, Cin, Cout) -> (V_{level+1}, Cout)."""
        ...

    def up_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        """Transposed 2x2x2 stride-2 conv onto ``level``: (V_{level+1}, Cin), (8, Cin, Cout) -> (V_level, Cout)."""
        ...


class SparseBackend(Protocol):
    name: str
    coords_before_a_pass: bool
    """Whether a new geometry's ``coords(level)`` answer for every level before any conv ran on it (a crop of a
    frozen encoder's output needs them: ``TTTKDNet.crop``)."""

    def build_geometry(self, coords: torch.Tensor, num_levels: int) -> SparseGeometry:
        """(V, 3) int64 unique level-0 coords in Voxelization order -> geometry on coords' device."""
        ...


# name -> (module that must be importable, module holding the backend class); "" = always available.
_BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("", "ttt_kd_ros.sparse.torch_backend"),
    "minkowski": ("MinkowskiEngine", "ttt_kd_ros.sparse.minkowski_backend"),
    "spconv": ("spconv", "ttt_kd_ros.sparse.spconv_backend"),
}


def known_backends() -> list[str]:
    return list(_BACKENDS)


def available_backends() -> list[str]:
    """Backends whose library can be imported here (looked up without importing it)."""
    return [name for name, (dep, _) in _BACKENDS.items() if not dep or importlib.util.find_spec(dep) is not None]


def get_backend(name: str = "torch") -> SparseBackend:
    """The backend called ``name``; ValueError lists the known and the importable ones."""
    if name not in _BACKENDS:
        raise ValueError(f"sparse backend: expected one of {known_backends()}, got {name!r}")
    if name not in available_backends():
        dep = _BACKENDS[name][0]
        raise ValueError(
            f"sparse backend {name!r}: needs the {dep!r} package, which is not importable here; "
            f"available: {available_backends()}"
        )
    module = importlib.import_module(_BACKENDS[name][1])
    return module.Backend()
