"""Neighbour ("kernel") maps of one scan, built once and reused by every pass.

Test-time training runs k forward/backward passes over the same geometry, so
everything that depends only on the voxel coordinates (the voxel pyramid, who
neighbours whom, which fine voxel belongs to which coarse one) is computed
here once per scan and the convolutions only gather, multiply and scatter.

Canonical kernel layout (shared by every backend; others convert to theirs):
- submanifold 3x3x3: weight (27, Cin, Cout); offset k = SUBM_OFFSETS[k] in
  itertools.product((-1, 0, 1), repeat=3) order (x slowest), i.e. weight[k]
  is conv3d's weight[:, :, dx+1, dy+1, dz+1].T and out[p] += x[p + o] @ W[k];
- stride-2 2x2x2: weight (8, Cin, Cout); offset k = DOWN_OFFSETS[k] in
  product((0, 1), repeat=3) order; out[q] += x[2q + o] @ W[k];
- its transpose: out[2q + o] += x[q] @ W[k] (same offsets).
Coordinates at level l are the level-0 integer coordinates floor-divided by 2^l.
"""

from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass, field

import torch

from ttt_kd_ros.sparse.voxelize import coords_to_keys

SUBM_OFFSETS = torch.tensor(list(itertools.product((-1, 0, 1), repeat=3)), dtype=torch.int64)  # (27, 3)
DOWN_OFFSETS = torch.tensor(list(itertools.product((0, 1), repeat=3)), dtype=torch.int64)  # (8, 3)
SUBM_CENTER = 13  # index of (0, 0, 0) in SUBM_OFFSETS


@dataclass
class KernelMap:
    """Input/output row pairs of one sparse convolution, grouped by kernel offset.

    in_idx, out_idx: (M,) int64; the pairs of offset k are rows
    offset_ptr[k]:offset_ptr[k + 1] (Python ints, so slicing never syncs a GPU).
    identity_offset: the offset whose pairs are (i, i) for every row, kept out
    of the pair lists because it needs neither gather nor scatter (None if none).
    """

    in_idx: torch.Tensor
    out_idx: torch.Tensor
    offset_ptr: tuple[int, ...]
    num_in: int
    num_out: int
    identity_offset: int | None = None
    _scatter: dict[torch.dtype, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)
    _transposed: KernelMap | None = field(default=None, repr=False, compare=False)

    @property
    def kernel_volume(self) -> int:
        return len(self.offset_ptr) - 1

    def scatter_matrix(self, dtype: torch.dtype) -> torch.Tensor:
        """(num_out, M) sparse CSR matrix of ``dtype`` with a one at (out_idx[p], p), made once per map and dtype.

        Why: ``out += scatter_matrix @ products`` is the pairs' scatter-add as a sparse matmul, which runs on
        every CPU core, where ``index_add_`` runs on one (on a 90k-voxel KITTI frame the scatters were 11 % of
        a pass). Rows hold each output's pairs in pair order, so the sum is deterministic.
        """
        if dtype not in self._scatter:
            device = self.out_idx.device
            order = torch.argsort(self.out_idx, stable=True)
            crow = torch.zeros(self.num_out + 1, dtype=torch.int64, device=device)
            crow[1:] = torch.cumsum(torch.bincount(self.out_idx, minlength=self.num_out), 0)
            ones = torch.ones(self.out_idx.numel(), dtype=dtype, device=device)
            with warnings.catch_warnings():  # "sparse CSR support is in beta": the matmul used here is stable
                warnings.simplefilter("ignore", UserWarning)
                self._scatter[dtype] = torch.sparse_csr_tensor(crow, order, ones, (self.num_out, self.out_idx.numel()))
        return self._scatter[dtype]

    @property
    def fill(self) -> float:
        """Share of the (num_out, K) neighbour slots that hold a pair: the useful share of a NeighbourTable's work."""
        pairs = self.in_idx.numel() + (self.num_out if self.identity_offset is not None else 0)
        return pairs / max(1, self.num_out * self.kernel_volume)

    def transposed(self) -> KernelMap:
        """The map of the transposed convolution: same pairs, roles swapped (made once, so its scatter matrix is
        too)."""
        if self._transposed is None:
            self._transposed = KernelMap(self.out_idx, self.in_idx, self.offset_ptr, self.num_out, self.num_in,
                                         self.identity_offset, _transposed=self)
        return self._transposed

    def to(self, device: torch.device | str) -> KernelMap:
        return KernelMap(
            self.in_idx.to(device), self.out_idx.to(device), self.offset_ptr,
            self.num_in, self.num_out, self.identity_offset,
        )


def _ptr_from_counts(counts: torch.Tensor) -> tuple[int, ...]:
    return (0, *itertools.accumulate(int(c) for c in counts.tolist()))


def _rows_at(keys: torch.Tensor, pos: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """Rows ``pos`` where ``keys[pos] == query``, -1 elsewhere (out-of-range positions included)."""
    num = keys.numel()
    found = (pos >= 0) & (pos < num) & (keys.index_select(0, pos.clamp(0, num - 1)) == query)
    return torch.where(found, pos, torch.full_like(pos, -1))


def _lower_half_rows(keys: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
    """(13, V) input row at each of the offsets SUBM_OFFSETS[0:13] of every voxel, -1 where there is none.

    Why not one search per offset: keys are sorted with z fastest, so the voxels at z - 1, z, z + 1 of one (x, y)
    column are adjacent in key order. One searchsorted per column (x + dx, y + dy) finds all three, and the
    column (x, y) itself needs none (z - 1 sits just before the voxel). The 13 offsets before the centre are
    4 searches; the 13 after it are their mirrors (submanifold_map). 27 lookups per voxel become 4.
    """
    rows: list[torch.Tensor] = []
    for dx, dy in ((-1, -1), (-1, 0), (-1, 1), (0, -1)):
        query = keys + (dx * extent[1] + dy) * extent[2]  # the key of (x + dx, y + dy, z)
        pos = torch.searchsorted(keys, query)  # first key >= query
        middle = _rows_at(keys, pos, query)
        rows.append(_rows_at(keys, pos - 1, query - 1))  # z - 1: the largest key below the query, if adjacent
        rows.append(middle)
        rows.append(_rows_at(keys, pos + (middle >= 0).long(), query + 1))  # z + 1: the next key after the query
    own = torch.arange(keys.numel(), device=keys.device)
    rows.append(_rows_at(keys, own - 1, keys - 1))  # (0, 0, -1): the previous voxel, if adjacent
    return torch.stack(rows)


def submanifold_map(coords: torch.Tensor) -> KernelMap:
    """(V, 3) int64 sorted unique coords -> 3x3x3 submanifold map (outputs at the input sites).

    The box is padded by one voxel so key(c + o) = key(c) + key(o) never wraps. The lower 13 offsets come from
    _lower_half_rows; offset 26 - k is the opposite of offset k, so its pairs are offset k's with input and output
    swapped. Within an offset, inputs ascend with outputs (a constant key shift keeps the order), so the swapped
    pairs are already grouped with outputs ascending, the order every consumer of a KernelMap relies on.
    """
    num = int(coords.shape[0])
    origin = coords.min(dim=0).values - 1
    extent = coords.max(dim=0).values - origin + 2
    keys = coords_to_keys(coords, origin, extent)  # sorted, since coords are
    rows = _lower_half_rows(keys, extent)
    hit = rows >= 0
    k_idx, out_low = hit.nonzero(as_tuple=True)  # row-major: grouped by offset, outputs ascending
    in_low = rows[k_idx, out_low]
    low_counts = hit.sum(dim=1).cpu()
    low_ptr = _ptr_from_counts(low_counts)
    # offsets 14..26 mirror 12..0: their blocks are the lower blocks in reverse order, roles swapped
    blocks = [slice(low_ptr[k], low_ptr[k + 1]) for k in range(SUBM_CENTER - 1, -1, -1)]
    in_idx = torch.cat([in_low, *(out_low[b] for b in blocks)])
    out_idx = torch.cat([out_low, *(in_low[b] for b in blocks)])
    counts = torch.cat([low_counts, torch.zeros(1, dtype=low_counts.dtype), low_counts.flip(0)])
    return KernelMap(in_idx, out_idx, _ptr_from_counts(counts), num, num, identity_offset=SUBM_CENTER)


def downsample(coords: torch.Tensor) -> tuple[torch.Tensor, KernelMap]:
    """(V, 3) coords at level l -> ((V', 3) coords at level l + 1, stride-2 2x2x2 map l -> l + 1).

    Every fine voxel has exactly one parent, so the map has V pairs and its
    transpose (the upsampling map) gives every fine voxel exactly one input.
    """
    parent_coords = torch.div(coords, 2, rounding_mode="floor")
    origin = parent_coords.min(dim=0).values
    extent = parent_coords.max(dim=0).values - origin + 1
    keys = coords_to_keys(parent_coords, origin, extent)
    unique_keys, parent = torch.unique(keys, sorted=True, return_inverse=True)
    z = unique_keys % extent[2]
    xy = unique_keys // extent[2]
    coarse = torch.stack((xy // extent[1], xy % extent[1], z), dim=1) + origin
    child = coords - 2 * parent_coords  # (V, 3) in {0, 1}
    code = child[:, 0] * 4 + child[:, 1] * 2 + child[:, 2]  # index into DOWN_OFFSETS
    order = torch.argsort(code, stable=True)
    counts = torch.bincount(code, minlength=8).cpu()
    kmap = KernelMap(order, parent[order], _ptr_from_counts(counts), int(coords.shape[0]), int(coarse.shape[0]))
    return coarse, kmap


@dataclass
class NeighbourTable:
    """A KernelMap as one dense row of K input rows per output, so a conv is one gather and one matmul.

    rows: (num_out, K) int64; rows[o, k] is the input row at offset k of output o, or ``num_in`` where there is
    none: the sentinel row, a zero row the conv appends to its input, so missing neighbours add nothing.
    slots: (num_in,) int64 flat positions in ``rows`` of every input, when each input appears exactly once
    (stride-2 maps), else None: the transposed conv then picks rows instead of scatter-adding them.
    symmetric: rows[o, k] = i exactly when rows[i, K-1-k] = o (submanifold maps, whose offsets come in
    opposite pairs around the centre): the transposed conv is this table with the offsets reversed.
    """

    rows: torch.Tensor
    num_in: int
    slots: torch.Tensor | None
    symmetric: bool

    @property
    def num_out(self) -> int:
        return int(self.rows.shape[0])

    @property
    def kernel_volume(self) -> int:
        return int(self.rows.shape[1])


def neighbour_table(kmap: KernelMap, symmetric: bool) -> NeighbourTable:
    """The dense table of ``kmap`` (built once per scan, on kmap's device); ``symmetric`` for submanifold maps.

    Slots are filled when the pairs cover every input once, as in a stride-2 map, where every fine voxel has
    exactly one parent.
    """
    device = kmap.in_idx.device
    counts = torch.tensor(kmap.offset_ptr[1:]) - torch.tensor(kmap.offset_ptr[:-1])
    offset_of_pair = torch.repeat_interleave(torch.arange(kmap.kernel_volume), counts).to(device)
    rows = torch.full((kmap.num_out, kmap.kernel_volume), kmap.num_in, dtype=torch.int64, device=device)
    rows[kmap.out_idx, offset_of_pair] = kmap.in_idx
    if kmap.identity_offset is not None:
        rows[:, kmap.identity_offset] = torch.arange(kmap.num_out, device=device)
    slots = None
    covers_once = kmap.identity_offset is None and kmap.in_idx.numel() == kmap.num_in
    if covers_once and bool((torch.bincount(kmap.in_idx, minlength=kmap.num_in) == 1).all()):
        slots = torch.empty(kmap.num_in, dtype=torch.int64, device=device)
        slots[kmap.in_idx] = kmap.out_idx * kmap.kernel_volume + offset_of_pair
    return NeighbourTable(rows, kmap.num_in, slots, symmetric)


@dataclass
class ScanMaps:
    """Everything a sparse U-Net needs about one scan's geometry, for levels 0..L-1.

    coords[l]: (V_l, 3) int64 at level l (level-0 units // 2^l).
    subm[l]: submanifold map at level l. down[l]: stride-2 map level l -> l + 1 (L - 1 of them).
    """

    coords: list[torch.Tensor]
    subm: list[KernelMap]
    down: list[KernelMap]

    @property
    def num_levels(self) -> int:
        return len(self.coords)


def rows_of(coords: torch.Tensor, query: torch.Tensor) -> torch.Tensor:
    """(Q,) rows of ``coords`` (V, 3) that hold each of ``query`` (Q, 3); ValueError when one is missing.

    Why: a crop's voxel pyramid is a sub-pyramid of its scan's, so each crop voxel at each level is one voxel of
    the scan at that level; its row there is where the scan's per-level features (a frozen encoder's) are read.
    """
    if query.shape[0] == 0:
        return torch.zeros(0, dtype=torch.long, device=coords.device)
    both = torch.cat((coords, query))
    origin = both.min(dim=0).values
    extent = both.max(dim=0).values - origin + 1
    keys = coords_to_keys(coords, origin, extent)
    wanted = coords_to_keys(query, origin, extent)
    # a scan's level coordinates are sorted already (the torch backend's are): then their keys are too, and the
    # sort, the costliest part of a crop's rows on a 90k-voxel scan, is skipped
    ascending = keys.numel() < 2 or bool((keys[1:] > keys[:-1]).all())
    ordered, order = (keys, None) if ascending else torch.sort(keys)
    pos = torch.searchsorted(ordered, wanted)
    found = _rows_at(ordered, pos, wanted)
    if bool((found < 0).any()):
        raise ValueError(f"rows_of: {int((found < 0).sum())} of {query.shape[0]} query voxels are not in coords")
    return found if order is None else order.index_select(0, found)


def build_scan_maps(coords: torch.Tensor, num_levels: int) -> ScanMaps:
    """(V, 3) int64 sorted unique level-0 coords -> ScanMaps with ``num_levels`` levels."""
    if num_levels < 1:
        raise ValueError(f"num_levels: expected >= 1, got {num_levels}")
    if coords.ndim != 2 or coords.shape[1] != 3 or coords.shape[0] == 0:
        raise ValueError(f"coords: expected (V>0, 3), got {tuple(coords.shape)}")
    level_coords = [coords.to(torch.int64)]
    down: list[KernelMap] = []
    for _ in range(num_levels - 1):
        coarse, kmap = downsample(level_coords[-1])
        level_coords.append(coarse)
        down.append(kmap)
    subm = [submanifold_map(c) for c in level_coords]
    return ScanMaps(level_coords, subm, down)
