"""Pure-PyTorch sparse convolution in two formulations; a ConvPolicy picks one per conv.

Portable (CPU and CUDA, no compiled extension); the maps of ``sparse.maps``
are built once per scan and reused by every pass. Both formulations run in
one custom autograd Function (frozen weights or inputs skip their half of the
backward; ``index_select`` throughout, much faster than ``x[idx]`` on CPU)
and compute the same convolution:

- pairs: one gather of all (input, output) pairs, one matmul per kernel
  offset into slices of one buffer, one ``index_add_``. No wasted arithmetic,
  but about 70 small kernels per conv, ~1,480 per TTT step of ttt_kd_small:
  on a GPU their launches, not their arithmetic, would bound a step.
- table: a dense (num_out, K) NeighbourTable whose missing neighbours point at
  an appended zero row; a conv is one gather to (num_out, K * Cin) and one
  matmul with the (K * Cin, Cout) weight, its input gradient one gather and
  one matmul too (submanifold maps are symmetric, stride-2 maps hold each
  input once, so no scatter), its weight gradient one matmul: ~9 kernels per
  conv, ~195 per step. It multiplies the zeros of missing neighbours, the
  (1 - fill) share of its work: on the build CPU that made it 1.4-2.1x slower
  per step than pairs, so the CPU keeps pairs and accelerators run tables.

Weight gradients are summed in float32 even under autocast (bfloat16 keeps ~3
significant digits of a sum over every voxel); the caller casts them to the
weight's dtype.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from ttt_kd_ros.sparse.maps import KernelMap, NeighbourTable, ScanMaps, build_scan_maps, neighbour_table


@dataclass(frozen=True)
class ConvPolicy:
    """Which formulation a conv uses: the table when fill >= table_min_fill and max(Cin, Cout) <= table_max_width.

    chunk_bytes bounds the table path's gathered block (rows are processed in chunks that fit it), so memory
    stays flat on big scans; 0 gathers every row at once.
    """

    table_min_fill: float
    table_max_width: int
    chunk_bytes: int

    def use_table(self, fill: float, cin: int, cout: int) -> bool:
        return fill >= self.table_min_fill and max(cin, cout) <= self.table_max_width


PAIRS_ONLY = ConvPolicy(table_min_fill=2.0, table_max_width=0, chunk_bytes=0)
"""Every conv as pairs. The CPU's choice: on the 2-core AVX2 build machine the table lost on every layer of
ttt_kd_small at 16k and 120k points, by 20-50 % even where 43-67 % of its slots are filled (docs/BENCHMARKS.md)."""
TABLE_ONLY = ConvPolicy(table_min_fill=0.0, table_max_width=1 << 30, chunk_bytes=512 << 20)
"""Every conv as a table in gathered blocks of at most 512 MB: the accelerators' choice, where a step's ~1,800
small launches, not its arithmetic, are expected to bound it (issue 25; not yet timed on a GPU)."""


def policy_for(device: torch.device) -> ConvPolicy:
    """The policy for convs on ``device``: pairs on a CPU, the table on accelerators (see the two policies)."""
    return PAIRS_ONLY if device.type == "cpu" else TABLE_ONLY


class Workspace:
    """Scratch buffers reused by every conv of every pass: of one thread's scans, crops included (thread_workspace).

    The gathered rows and per-pair products are the largest temporaries of a
    pass (tens of MB); fresh allocations of that size come from mmap and pay
    page faults on every pass, which measured about as much as the arithmetic
    itself on CPU. Each slot is consumed before the conv call that filled it
    returns (nothing in it is saved for backward), so reuse is safe. Small
    read-only constants (the sentinel zero row, a reversed offset index) are
    kept here too, made once instead of once per conv; they depend on shapes,
    never on a scan.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, torch.dtype, torch.device], torch.Tensor] = {}
        self._constants: dict[tuple[Any, ...], torch.Tensor] = {}

    def constant(self, key: tuple[Any, ...], make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """The tensor ``make()`` returned the first time ``key`` was asked for; callers never write to it."""
        if key not in self._constants:
            self._constants[key] = make()
        return self._constants[key]

    def matrix(
        self, slot: str, rows: int, cols: int, like: torch.Tensor, dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        """A (rows, cols) view of slot ``slot``'s buffer (grown when too small), uninitialised; dtype: like's."""
        dtype = dtype or like.dtype
        key = (slot, dtype, like.device)
        buf = self._buffers.get(key)
        if buf is None or buf.numel() < rows * cols:
            buf = torch.empty(rows * cols, dtype=dtype, device=like.device)
            self._buffers[key] = buf
        return buf[: rows * cols].view(rows, cols)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would pick for a matmul on x's device (x.dtype when autocast is off)."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


def _sum_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype weight gradients are summed in: float32 at least (bfloat16 / float16 under autocast), else x's."""
    return torch.promote_types(x.dtype, torch.float32)


_THREAD_STATE = threading.local()


def thread_workspace() -> Workspace:
    """The calling thread's Workspace, shared by every geometry built in it.

    Why shared: a Workspace per scan started each scan's first pass with fresh buffers; on a 90k-voxel KITTI
    frame those page faults cost 0.08 s of a 0.96 s pass (the same pass again on the same buffers: 0.88 s). Why
    per thread: the passes of one thread never overlap, so a slot is always consumed before it is filled again;
    two threads (the node's worker and a test's main thread) must not share one. The buffers stay at the largest
    size a pass needed, which every scan of that size needs anyway.
    """
    workspace = getattr(_THREAD_STATE, "workspace", None)
    if workspace is None:
        workspace = _THREAD_STATE.workspace = Workspace()
    return workspace


# ----------------------------------------------------------------------------- pairs


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
    if products.device.type == "cpu" and products.dtype in _CSR_DTYPES:
        return torch.addmm(out, kmap.scatter_matrix(products.dtype), products)
    out.index_add_(0, kmap.out_idx, products)
    return out


_CSR_DTYPES = (torch.float32, torch.float64)
"""Products scattered as a sparse matmul on a CPU (KernelMap.scatter_matrix); others (bfloat16 under autocast,
an accelerator) keep ``index_add_``."""


def _weight_grad(
    x: torch.Tensor,
    grad_out: torch.Tensor,
    gathered_g: torch.Tensor,
    kmap: KernelMap,
    weight_shape: torch.Size,
    ws: Workspace,
) -> torch.Tensor:
    """d loss / d weight[k] = sum over pairs of offset k of outer(x[i], grad_out[o]); gathered_g = grad_out[out_idx].

    Summed in _sum_dtype (float32 under autocast); the caller casts to the weight's dtype.
    """
    dtype = _sum_dtype(x)
    x, grad_out, gathered_g = x.to(dtype), grad_out.to(dtype), gathered_g.to(dtype)
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


@dataclass
class _PairConv:
    """A conv as pair lists: a gather, one matmul per offset, a scatter-add (the pairs formulation)."""

    kmap: KernelMap
    ws: Workspace

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What forward reads and backward gets back: x itself."""
        return x

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return _apply_map(x, weight, self.kmap, self.ws)

    def backward(
        self, x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, need_x: bool, need_w: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        kmap, ws = self.kmap, self.ws
        # Gathered once, shared by both halves of the backward (its own slot: "gather" is reused below).
        gathered_g = torch.index_select(
            grad_out, 0, kmap.out_idx, out=ws.matrix("gather_grad", kmap.out_idx.numel(), grad_out.shape[1], grad_out)
        )
        grad_x = grad_w = None
        if need_x:
            # The input gradient is the transposed map applied with transposed weights.
            grad_x = _apply_map(grad_out, weight.transpose(1, 2), kmap.transposed(), ws, gathered_g)
        if need_w:
            grad_w = _weight_grad(x, grad_out, gathered_g, kmap, weight.shape, ws)
        return grad_x, grad_w


# ----------------------------------------------------------------------------- table


def _row_chunks(num_rows: int, row_bytes: int, chunk_bytes: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most chunk_bytes each (one range when chunk_bytes <= 0)."""
    step = num_rows if chunk_bytes <= 0 else max(1, chunk_bytes // max(1, row_bytes))
    return [(start, min(start + step, num_rows)) for start in range(0, num_rows, max(1, step))]


def _padded(x: torch.Tensor, ws: Workspace, dtype: torch.dtype | None = None) -> torch.Tensor:
    """(V + 1, C): x, then the zero sentinel row that missing neighbours point at; one kernel (a cat).

    ``dtype``, when given, must be at least x's (the cat promotes to it). A new tensor, so a forward can save it.
    """
    dtype = dtype or x.dtype
    cols, device = x.shape[1], x.device
    zero = ws.constant(("zero_row", cols, dtype, device), lambda: torch.zeros((1, cols), dtype=dtype, device=device))
    return torch.cat((x, zero))


def _gather_rows(padded: torch.Tensor, rows: torch.Tensor, ws: Workspace) -> torch.Tensor:
    """(n, K) table rows -> (n, K * C): the K input rows of each output side by side (a workspace buffer)."""
    n, k = rows.shape
    flat = ws.matrix("table_gather", n * k, padded.shape[1], padded)
    torch.index_select(padded, 0, rows.reshape(-1), out=flat)
    return flat.view(n, k * padded.shape[1])


def _gather_mm(
    padded: torch.Tensor, weight: torch.Tensor, table: NeighbourTable, ws: Workspace, chunk_bytes: int
) -> torch.Tensor:
    """out[o] = sum_k x[rows[o, k]] @ weight[k]: (num_in + 1, Cin) _padded x, (K, Cin, Cout) -> (num_out, Cout).

    One gather and one matmul per chunk of rows; one of each in all when the gathered block fits chunk_bytes.
    """
    volume, cin, cout = weight.shape
    w_flat = weight.reshape(volume * cin, cout)
    out = padded.new_empty((table.num_out, cout))
    for start, stop in _row_chunks(table.num_out, volume * cin * padded.element_size(), chunk_bytes):
        torch.mm(_gather_rows(padded, table.rows[start:stop], ws), w_flat, out=out[start:stop])
    return out


def _pick_mm(x: torch.Tensor, weight: torch.Tensor, table: NeighbourTable, ws: Workspace) -> torch.Tensor:
    """The transposed conv of a table that holds every input once: (num_out, Cin), (K, Cin, Cout) -> (num_in, Cout).

    Input i sits at one slot (o, k), so out[i] = x[o] @ weight[k]: one row of x @ [weight[0] | ... | weight[K-1]],
    picked by one gather. No scatter; the matmul's extra rows are the (1 - fill) share of missing slots.
    """
    volume, cin, cout = weight.shape
    expanded = ws.matrix("table_expand", x.shape[0], volume * cout, x)
    torch.mm(x, weight.permute(1, 0, 2).reshape(cin, volume * cout), out=expanded)
    return expanded.view(-1, cout).index_select(0, table.slots)


def _table_weight_grad(
    x_in: torch.Tensor, grad_out: torch.Tensor, table: NeighbourTable, transposed: bool, ws: Workspace,
    chunk_bytes: int,
) -> torch.Tensor:
    """d loss / d weight as (K, Cin, Cout), one matmul per chunk of table rows, summed in _sum_dtype.

    Forward out = G(x) @ W_flat gives dW_flat = G(x)^T @ grad_out; transposed, out = pick(x @ W_cat) gives
    dW_cat = x^T @ G(grad_out), where G gathers along the table's rows. x_in is what the forward read: x
    _padded, or x itself when transposed.
    """
    dtype = _sum_dtype(x_in)
    volume = table.kernel_volume
    if transposed:
        dense, padded = x_in.to(dtype), _padded(grad_out, ws, dtype)
    else:
        dense, padded = grad_out.to(dtype), x_in.to(dtype)
    grad: torch.Tensor | None = None
    for start, stop in _row_chunks(table.num_out, volume * padded.shape[1] * padded.element_size(), chunk_bytes):
        gathered = _gather_rows(padded, table.rows[start:stop], ws)
        left, right = (dense[start:stop], gathered) if transposed else (gathered, dense[start:stop])
        grad = left.t() @ right if grad is None else grad.addmm_(left.t(), right)
    cin, cout = x_in.shape[1], grad_out.shape[1]
    if transposed:
        return grad.view(cin, volume, cout).permute(1, 0, 2).contiguous()
    return grad.view(volume, cin, cout)


@dataclass
class _TableConv:
    """A conv as a NeighbourTable: a gather and a matmul (or, transposed, a matmul and a row pick)."""

    table: NeighbourTable
    transposed: bool
    ws: Workspace
    chunk_bytes: int

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        """What forward reads and backward gets back: x _padded for a gather, x itself for a pick."""
        return x if self.transposed else _padded(x, self.ws)

    def forward(self, x_in: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if self.transposed:
            return _pick_mm(x_in, weight, self.table, self.ws)
        return _gather_mm(x_in, weight, self.table, self.ws, self.chunk_bytes)

    def input_grad_conv(self, weight: torch.Tensor) -> tuple[_TableConv, torch.Tensor]:
        """The conv whose forward is this conv's input gradient, and its weight.

        Weights transposed; a symmetric (submanifold) table with its offsets reversed runs in the same direction
        (one index_select makes that weight contiguous), a stride-2 table in the other.
        """
        weight_t = weight.transpose(1, 2)
        if self.table.symmetric:
            volume, device = weight.shape[0], weight.device
            reverse = self.ws.constant(("reversed", volume, device), lambda: torch.arange(volume).flip(0).to(device))
            return self, torch.index_select(weight_t, 0, reverse)
        return _TableConv(self.table, not self.transposed, self.ws, self.chunk_bytes), weight_t

    def backward(
        self, x_in: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor, need_x: bool, need_w: bool
    ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        grad_x = grad_w = None
        if need_x:
            conv, weight_t = self.input_grad_conv(weight)
            grad_x = conv.forward(conv.prepare_input(grad_out), weight_t)
        if need_w:
            grad_w = _table_weight_grad(x_in, grad_out, self.table, self.transposed, self.ws, self.chunk_bytes)
        return grad_x, grad_w


# ----------------------------------------------------------------------------- autograd


class _SparseConvFunction(torch.autograd.Function):
    """One autograd node per conv, whichever formulation ``plan`` (_PairConv or _TableConv) is.

    Runs the plan with autocast off, in the dtype autocast would have picked, and skips the half of the backward
    whose input needs no gradient (frozen weights).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, weight: torch.Tensor, plan: _PairConv | _TableConv) -> torch.Tensor:
        dtype = _compute_dtype(x)
        with torch.autocast(x.device.type, enabled=False):
            x_in, wc = plan.prepare_input(x.to(dtype)), weight.to(dtype)
            out = plan.forward(x_in, wc)
        ctx.plan = plan
        ctx.input_dtype = x.dtype
        ctx.weight_dtype = weight.dtype
        ctx.save_for_backward(x_in, wc)
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x_in, wc = ctx.saved_tensors
        with torch.autocast(grad_out.device.type, enabled=False):
            g = grad_out.to(wc.dtype).contiguous()
            grad_x, grad_w = ctx.plan.backward(x_in, wc, g, ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        grad_x = None if grad_x is None else grad_x.to(ctx.input_dtype)
        grad_w = None if grad_w is None else grad_w.to(ctx.weight_dtype)
        return grad_x, grad_w, None


def _check_shapes(name: str, x: torch.Tensor, weight: torch.Tensor, num_in: int, volume: int) -> None:
    """ValueError naming the conv, the expected and the actual shape, before any kernel runs."""
    if x.shape[0] != num_in:
        raise ValueError(f"{name}: x has {x.shape[0]} rows, the map expects {num_in}")
    if weight.ndim != 3 or weight.shape[0] != volume or weight.shape[1] != x.shape[1]:
        raise ValueError(f"{name}: weight expected ({volume}, {x.shape[1]}, Cout), got {tuple(weight.shape)}")


def sparse_conv(
    x: torch.Tensor, weight: torch.Tensor, kmap: KernelMap, workspace: Workspace | None = None
) -> torch.Tensor:
    """Differentiable sparse conv as pairs: (num_in, Cin), (K, Cin, Cout) -> (num_out, Cout).

    Pass the scan's ``workspace`` to reuse scratch memory across passes.
    """
    _check_shapes("sparse_conv", x, weight, kmap.num_in, kmap.kernel_volume)
    return _SparseConvFunction.apply(x.contiguous(), weight, _PairConv(kmap, workspace or Workspace()))


def table_conv(
    x: torch.Tensor,
    weight: torch.Tensor,
    table: NeighbourTable,
    transposed: bool = False,
    workspace: Workspace | None = None,
    chunk_bytes: int = 0,
) -> torch.Tensor:
    """Differentiable sparse conv as a table: (num_in, Cin) -> (num_out, Cout); transposed, (num_out, Cin) -> (num_in,
    Cout) (the up conv of a stride-2 table). Same result as sparse_conv on the table's map (its transpose).

    chunk_bytes > 0 bounds the gathered block (rows in chunks); 0 gathers all rows at once.
    """
    if transposed and table.slots is None:
        raise ValueError("table_conv: transposed needs a table that holds every input once (slots), got none")
    num_in = table.num_out if transposed else table.num_in
    _check_shapes("table_conv", x, weight, num_in, table.kernel_volume)
    plan = _TableConv(table, transposed, workspace or Workspace(), chunk_bytes)
    return _SparseConvFunction.apply(x.contiguous(), weight, plan)


# ----------------------------------------------------------------------------- geometry


class TorchGeometry:
    """ScanMaps with their index tensors on the scan's device; see SparseGeometry.

    Each conv picks its formulation from ``policy`` (settable: benchmarks and tests force one); neighbour tables
    are built on first use and kept with the maps, so every later pass of the scan reuses them.
    """

    def __init__(self, maps: ScanMaps, policy: ConvPolicy | None = None) -> None:
        self.maps = maps
        self.policy = policy or policy_for(maps.coords[0].device)
        self._up = [kmap.transposed() for kmap in maps.down]
        self._tables: dict[tuple[str, int], NeighbourTable] = {}

    @property
    def workspace(self) -> Workspace:
        """The scratch buffers of the thread running the pass (thread_workspace), whichever thread built this."""
        return thread_workspace()

    @property
    def num_levels(self) -> int:
        return self.maps.num_levels

    def num_voxels(self, level: int) -> int:
        return int(self.maps.coords[level].shape[0])

    def neighbour_pairs(self, level: int) -> int:
        """The submanifold map's (input, output) pairs at ``level``, the centre excluded: what a conv there
        gathers, multiplies and scatters besides its voxels' own rows."""
        return int(self.maps.subm[level].in_idx.numel())

    def coords(self, level: int) -> torch.Tensor:
        return self.maps.coords[level]

    def table(self, kind: str, level: int) -> NeighbourTable:
        """The NeighbourTable of the "subm" or "down" map at ``level`` (built once, then cached)."""
        key = (kind, level)
        if key not in self._tables:
            kmap = self.maps.subm[level] if kind == "subm" else self.maps.down[level]
            self._tables[key] = neighbour_table(kmap, symmetric=kind == "subm")
        return self._tables[key]

    def _conv(self, x: torch.Tensor, weight: torch.Tensor, kind: str, level: int, transposed: bool) -> torch.Tensor:
        """The conv of map (kind, level), transposed for "up", as pairs or as a table, whichever the policy picks."""
        kmap = self.maps.subm[level] if kind == "subm" else self.maps.down[level]
        if self.policy.use_table(kmap.fill, weight.shape[1], weight.shape[2]):
            return table_conv(x, weight, self.table(kind, level), transposed, self.workspace, self.policy.chunk_bytes)
        return sparse_conv(x, weight, self._up[level] if transposed else kmap, self.workspace)

    def subm_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return self._conv(x, weight, "subm", level, transposed=False)

    def down_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return self._conv(x, weight, "down", level, transposed=False)

    def up_conv(self, x: torch.Tensor, weight: torch.Tensor, level: int) -> torch.Tensor:
        return self._conv(x, weight, "down", level, transposed=True)


class Backend:
    """The default backend: nothing to install, works wherever torch does."""

    name = "torch"
    coords_before_a_pass = True

    def build_geometry(self, coords: torch.Tensor, num_levels: int) -> TorchGeometry:
        return TorchGeometry(build_scan_maps(coords, num_levels))
