"""Pure-PyTorch sparse convolution: gather, one matmul per kernel offset, scatter-add.

Portable (CPU and CUDA, no compiled extension) and, with the maps of
``sparse.maps`` built once per scan, as fast as spconv on the target CPUs
(../shared/ENVIRONMENT.md). The hot path is a custom autograd Function so that
a pass does one gather of all pairs, matmuls into slices of one buffer and one
index_add_; frozen weights or inputs skip their half of the backward; and
``index_select`` is used throughout (much faster than ``x[idx]`` on CPU).
"""

from __future__ import annotations

from typing import Any

import torch

from ttt_kd_ros.sparse.maps import KernelMap, ScanMaps, build_scan_maps


class Workspace:
    """Scratch buffers kept for the life of one scan's geometry and reused by every conv of every pass.

    The gathered rows and per-pair products are the largest temporaries of a
    pass (tens of MB); fresh allocations of that size come from mmap and pay
    page faults on every pass, which measured about as much as the arithmetic
    itself on CPU. Each slot is consumed before the conv call that filled it
    returns (nothing in it is saved for backward), so reuse is safe.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}

    def matrix(self, slot: str, rows: int, cols: int, like: torch.Tensor) -> torch.Tensor:
        """A (rows, cols) view of slot ``slot``'s buffer (grown when too small), uninitialised."""
        key = (slot, like.dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < rows * cols:
            buf = torch.empty(rows * cols, dtype=like.dtype, device=like.device)
            self._buffers[key] = buf
        return buf[: rows * cols].view(rows, cols)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would pick for a matmul on x's device (x.dtype when autocast is off)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _apply_map(
    x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, ws: Workspace, gathered: torch.Tensor | None = None
) -> torch.Tensor:
    """out[o] = sum over pairs (i, o) of offset k of x[i] @ weight[k]: (num_in, Cin) -> (num_out, Cout).

    ``gathered`` (M, Cin) = x.index_select(0, kmap.in_idx) when the caller already has it.
    """
    cout = weight.shape[2]
    if kmap.identity_offset is not None:
        out = torch.mm(x, weight[kmap.identity_offset])
    else:
        out = x.new_zeros((kmap.num_out, cout))
    num_pairs = kmap.in_idx.numel()
    if num_pairs == 0:
        return out
    if gathered is None:
        gathered = torch.index_select(x, 0, kmap.in_idx, out=ws.matrix("gather", num_pairs, x.shape[1], x))
    products = ws.matrix("products", num_pairs, cout, x)
    ptr = kmap.offset_ptr
    for k in range(kmap.kernel_volume):
        if ptr[k + 1] > ptr[k]:
            torch.mm(gathered[ptr[k] : ptr[k + 1]], weight[k], out=products[ptr[k] : ptr[k + 1]])
    out.index_add_(0, kmap.out_idx, products)
    return out


def _weight_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    gathered_g: torch.Tensor,
    kmap: KernelMap,
    weight_shape: torch.Size,
    ws: Workspace,
) -> torch.Tensor:
    """d loss / d weight[k] = sum over pairs of offset k of outer(x[i], grad_out[o]); gathered_g = grad_out[out_idx]."""
    grad_w = x.new_zeros(weight_shape)
    if kmap.identity_offset is not None:
        torch.mm(x.t(), grad_out, out=grad_w[kmap.identity_offset])
    if kmap.in_idx.numel() == 0:
        return grad_w
    gathered_x = torch.index_select(x, 0, kmap.in_idx, out=ws.matrix("gather", kmap.in_idx.numel(), x.shape[1], x))
    ptr = kmap.offset_ptr
    for k in range(kmap.kernel_volume):
        if ptr[k + 1] > ptr[k]:
            torch.mm(gathered_x[ptr[k] : ptr[k + 1]].t(), gathered_g[ptr[k] : ptr[k + 1]], out=grad_w[k])
    return grad_w


class _SparseConvFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, ws: Workspace) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            xc, wc = x.to(dtype), weight.to(dtype)
            out = _apply_map(xc, wc, kmap, ws)
        ctx.kmap = kmap
        ctx.ws = ws
        ctx.input_dtype = x.dtype
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(xc, wc)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None]:
        xc, wc = ctx.saved_tensors
        kmap: KernelMap = ctx.kmap
        ws: Workspace = ctx.ws
        grad_x = grad_w = None
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.to(wc.dtype).contiguous()
            # Gathered once, shared by both halves of the backward (its own slot: "gather" is reused below).
            gathered_g = torch.index_select(
                g, 0, kmap.out_idx, out=ws.matrix("gather_grad", kmap.out_idx.numel(), g.shape[1], g)
            )
            if ctx.needs_input_grad[0]:
                # The input gradient is the transposed map applied with transposed weights.
                grad_x = _apply_map(g, wc.transpose(1, 2), kmap.transposed(), ws, gathered_g).to(ctx.input_dtype)
            if ctx.needs_input_grad[1]:
                grad_w = _weight_grad(xc, g, gathered_g, kmap, wc.shape, ws).to(ctx.weight_dtype)
        return grad_x, grad_w, None, None


def sparse_conv(
    x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, workspace: Workspace | None = None
) -> torch.Tensor:
    """Differentiable sparse conv: (num_in, Cin), (K, Cin, Cout) -> (num_out, Cout).

    Pass the scan's ``workspace`` to reuse scratch memory across passes.
    """
    if x.shape[0] != kmap.num_in:
        raise ValueError(f"sparse_conv: x has {x.shape[0]} rows, the map expects {kmap.num_in}")
    if weight.ndim != 3 or weight.shape[0] != kmap.kernel_volume or weight.shape[1] != x.shape[1]:
        raise ValueError(
            f"sparse_conv: weight expected ({kmap.kernel_volume}, {x.shape[1]}, Cout), got {tuple(weight.shape)}"
        )
    return _SparseConvFunction.apply(x.contiguous(), weight, kmap, workspace or Workspace())


class TorchGeometry:
    """ScanMaps with their index tensors on the scan's device; see SparseGeometry."""

    def __init__(self, maps: ScanMaps) -> None:
        self.maps = maps
        self._up = [kmap.transposed() for kmap in maps.down]
        self.workspace = Workspace()

    @property
    def num_levels(self) -> int:
        return self.maps.num_levels

    def num_voxels(self, level: int) -> int:
        return int(self.maps.coords[level].shape[0])

    def coords(self, level: int) -> torch.Tensor:
        return self.maps.coords[level]

    def subm_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return sparse_conv(x, weight, self.maps.subm[level], self.workspace)

    def down_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return sparse_conv(x, weight, self.maps.down[level], self.workspace)

    def up_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return sparse_conv(x, weight, self._up[level], self.workspace)


class Backend:
    """The default backend: nothing to install, works wherever torch does."""

    name = "torch"

    def build_geometry(self, coords: torch.Tensor, num_levels: int) -> TorchGeometry:
        return TorchGeometry(build_scan_maps(coords, num_levels))
