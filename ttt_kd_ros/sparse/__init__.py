"""Voxelisation and sparse 3D convolution behind one small backend interface.

``voxelize`` quantises a cloud; ``get_backend(name).build_geometry(coords,
levels)`` builds the per-scan voxel pyramid and neighbour maps once; networks
call ``subm_conv`` / ``down_conv`` / ``up_conv`` on that geometry with weights
in the canonical layout documented in ``sparse.maps``.
"""

from ttt_kd_ros.sparse.backend import (
    SparseBackend,
    SparseGeometry,
    available_backends,
    get_backend,
    known_backends,
)
from ttt_kd_ros.sparse.maps import DOWN_OFFSETS, SUBM_OFFSETS, KernelMap, ScanMaps, build_scan_maps, rows_of
from ttt_kd_ros.sparse.voxelize import Voxelization, voxelize

__all__ = [
    "DOWN_OFFSETS",
    "SUBM_OFFSETS",
    "KernelMap",
    "ScanMaps",
    "SparseBackend",
    "SparseGeometry",
    "Voxelization",
    "available_backends",
    "build_scan_maps",
    "get_backend",
    "known_backends",
    "rows_of",
    "voxelize",
]
