"""Adaptive dyadic lattice refinement: read a coarse lattice, then, level by level, the points of
the next finer lattice (half the stride) where the coarse lattice predicts them least surely (the
:func:`refinement_indicator`), until the read budget is spent exactly. Decoding upsamples level
by level by cubic splines, measured values overwriting interpolated ones; one level with no
refinement is the plain lattice.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cpic.implicit.lattice import axis_strides, lattice_nodes, lattice_size, lattice_strides, upsample
from cpic.sources import VolumeSource
from cpic.util.checks import check_int

#: the finer level's full lattice reads at least this many times the budget (measured in
#: benchmarks/reconstruct.py against 1.5 and 3)
OVERSAMPLING = 2.0
#: share of the remaining budget each refinement level spends (the last level spends the rest)
LEVEL_SHARE = 0.5
#: weight of the corner spread beside the cubic-minus-linear gap in the refinement indicator
#: (measured in benchmarks/reconstruct.py's volumes: 0.1 to 1 within 0.15 dB, 0.25 best)
SPREAD_WEIGHT = 0.25


@dataclass
class LatticeReads:
    """The voxels a lattice method read: ``coords [K, D]``, raw ``values [K]``, the grid, and the
    strides of its levels (coarsest first, each one int or one per axis; a plain lattice has one)."""

    grid: tuple[int, ...]
    strides: list[int | list[int]]
    coords: Tensor
    values: Tensor

    @property
    def count(self) -> int:
        return len(self.coords)


def _level_nodes(grid: Sequence[int], stride: int | Sequence[int]) -> list[Tensor]:
    return [lattice_nodes(n, s) for n, s in zip(grid, axis_strides(grid, stride))]


def _overwrite(lattice: Tensor, nodes: Sequence[Tensor], coords: Tensor, values: Tensor) -> Tensor:
    """``lattice`` (on ``nodes``) with the measured ``values`` at the ``coords`` on its nodes."""
    index, on = [], torch.ones(len(coords), dtype=torch.bool)
    for axis, x in enumerate(nodes):
        i = torch.searchsorted(x, coords[:, axis].contiguous()).clamp(max=len(x) - 1)
        on &= x[i] == coords[:, axis]
        index.append(i)
    lattice[tuple(i[on] for i in index)] = values[on].to(lattice.dtype)
    return lattice


def _read(source: VolumeSource, coords: Tensor) -> Tensor:
    return torch.cat([source.read(c, normalize=False).double() for c in coords.split(1 << 18)])


def _grid_coords(nodes: Sequence[Tensor]) -> Tensor:
    return torch.stack(torch.meshgrid(*nodes, indexing="ij"), -1).reshape(-1, len(nodes))


def _cell_spread(lattice: Tensor, nodes: Sequence[Tensor], finer: Sequence[Tensor]) -> Tensor:
    """The error indicator on the ``finer`` nodes: the spread (max - min) of the corner values of
    the coarse cell holding each node (large on edges, ~0 in air); 3-D lattices."""
    x = lattice[None, None]
    spread = (F.max_pool3d(x, 2, 1) + F.max_pool3d(-x, 2, 1))[0, 0]
    cell = [(torch.searchsorted(c, f, right=True) - 1).clamp(0, len(c) - 2) for c, f in zip(nodes, finer)]
    return spread[torch.meshgrid(*cell, indexing="ij")]


def refinement_indicator(
    lattice: Tensor, nodes: Sequence[Tensor], finer: Sequence[Tensor], cubic: Tensor | None = None
) -> Tensor:
    """Where the ``finer`` nodes of a 3-D ``lattice`` (on ``nodes``) are worth reading: the gap
    between its cubic and linear predictions there (large where the field curves or rings, ~0
    where it is flat or linear), plus :data:`SPREAD_WEIGHT` times the spread of the corner values
    of the coarse cell (large on edges, where both predictions may agree and both be wrong).
    ``cubic``: the cubic prediction, when already computed.

    Example:
        >>> nodes = [lattice_nodes(9, 4)] * 3
        >>> step = torch.zeros(3, 3, 3, dtype=torch.float64)
        >>> step[2] = 1.0                                     # an edge between x = 4 and x = 8
        >>> score = refinement_indicator(step, nodes, [lattice_nodes(9, 2)] * 3)
        >>> bool(score[3].min() > score[1].max())             # the cells at the edge come first
        True
    """
    cubic = upsample(lattice, nodes, finer, "cubic") if cubic is None else cubic
    gap = (cubic - upsample(lattice, nodes, finer, "linear")).abs()
    return gap + SPREAD_WEIGHT * _cell_spread(lattice, nodes, finer)


def refine_strides(grid: Sequence[int], budget: int, oversampling: float = OVERSAMPLING) -> list[int]:
    """The strides, coarsest first, of a refinement within ``budget`` reads: ``[2 f, f]`` with
    ``f`` the largest stride whose full lattice would read at least ``oversampling`` times the
    budget, so that the finer level is read where the indicator is largest, not everywhere; the
    plain lattice (:func:`~cpic.implicit.lattice.lattice_strides`) where ``2 f`` would not fit.

    Example:
        >>> refine_strides((64, 64, 64), 3000), refine_strides((16, 16, 16), 400)
        ([6, 3], [[2, 3, 3]])
    """
    check_int("budget", budget)
    fine = 1
    while fine < max(grid) and lattice_size(grid, fine + 1) >= oversampling * budget:
        fine += 1
    if lattice_size(grid, 2 * fine) > budget:  # no room to refine: the plain lattice
        return [lattice_strides(grid, budget)]
    return [2 * fine, fine]


def refine(
    source: VolumeSource,
    budget: int,
    *,
    level_share: float = LEVEL_SHARE,
    strides: list[int] | None = None,
) -> LatticeReads:
    """Read exactly ``budget`` voxels of ``source`` (raw values) by adaptive dyadic refinement
    (at most every voxel); decode them with :func:`decode_lattice`.

    Example:
        >>> import cpic
        >>> src = cpic.open_volume(torch.rand(16, 16, 16))
        >>> reads = refine(src, 300)
        >>> reads.count, src.stats.unique_voxels, reads.strides
        (300, 300, [4, 2])
    """
    check_int("budget", budget)
    grid = tuple(source.shape)
    budget = min(budget, math.prod(grid))
    strides = strides or refine_strides(grid, budget)
    nodes = _level_nodes(grid, strides[0])
    coords = _grid_coords(nodes)
    values = _read(source, coords)
    lattice = values.reshape([len(x) for x in nodes])
    for level, stride in enumerate(strides[1:], 1):
        finer = _level_nodes(grid, stride)
        cubic = upsample(lattice, nodes, finer, "cubic")
        score = refinement_indicator(lattice, nodes, finer, cubic)
        score = _overwrite(score, finer, coords, torch.full((len(coords),), -1.0, dtype=score.dtype))
        left = budget - len(coords)
        spend = left if level == len(strides) - 1 else math.ceil(left * level_share)
        spend = min(spend, int((score >= 0).sum()))
        if spend > 0:
            top = score.reshape(-1).topk(spend).indices
            new = torch.stack([x[i] for x, i in zip(finer, torch.unravel_index(top, score.shape))], -1)
            new_values = _read(source, new)
            coords, values = torch.cat([coords, new]), torch.cat([values, new_values])
        lattice = _overwrite(cubic, finer, coords, values)
        nodes = finer
    return LatticeReads(grid, strides, coords, values.float())


def read_lattice(source: VolumeSource, budget: int) -> LatticeReads:
    """Read the densest regular lattice within ``budget`` voxels (raw values; per-axis strides
    of :func:`~cpic.implicit.lattice.lattice_strides`).

    Example:
        >>> import cpic
        >>> reads = read_lattice(cpic.open_volume(torch.rand(16, 16, 16)), 300)
        >>> reads.strides, reads.count
        ([[3, 3, 3]], 216)
    """
    stride = lattice_strides(source.shape, budget)
    coords = _grid_coords(_level_nodes(source.shape, stride))
    return LatticeReads(tuple(source.shape), [stride], coords, _read(source, coords).float())


def finest_lattice(reads: LatticeReads, kind: str = "cubic") -> tuple[list[Tensor], Tensor]:
    """The nodes (per axis) and float64 values of the finest level of ``reads``: each level's
    lattice interpolated (``kind``) from the level above, its measured voxels overwriting.

    Example:
        >>> import cpic
        >>> nodes, values = finest_lattice(read_lattice(cpic.open_volume(torch.rand(9, 9, 9)), 30))
        >>> [x.tolist() for x in nodes][0], values.shape
        ([0, 4, 8], torch.Size([3, 3, 3]))
    """
    grid = reads.grid
    nodes = _level_nodes(grid, reads.strides[0])
    lattice = torch.zeros([len(x) for x in nodes], dtype=torch.float64)
    lattice = _overwrite(lattice, nodes, reads.coords, reads.values)
    for stride in reads.strides[1:]:
        finer = _level_nodes(grid, stride)
        lattice = _overwrite(upsample(lattice, nodes, finer, kind), finer, reads.coords, reads.values)
        nodes = finer
    return nodes, lattice


def decode_lattice(
    reads: LatticeReads,
    box: Sequence[tuple[int, int]] | None = None,
    kind: str = "cubic",
    finest: tuple[list[Tensor], Tensor] | None = None,
) -> Tensor:
    """The float32 voxels of ``box`` (default: all) reconstructed from ``reads``: the finest
    lattice (:func:`finest_lattice`, or ``finest`` computed once for many boxes) interpolated
    (``kind``) at the box's voxels, the measured voxels kept exactly.

    Example:
        >>> import cpic
        >>> volume = torch.rand(16, 16, 16)
        >>> reads = refine(cpic.open_volume(volume), 500)
        >>> out = decode_lattice(reads)
        >>> c = reads.coords
        >>> bool(torch.allclose(out[c[:, 0], c[:, 1], c[:, 2]], volume[c[:, 0], c[:, 1], c[:, 2]]))
        True
        >>> bool(torch.equal(decode_lattice(reads, [(2, 5), (0, 16), (7, 8)]), out[2:5, :, 7:8]))
        True
    """
    box = [(0, n) for n in reads.grid] if box is None else list(box)
    nodes, lattice = finest if finest is not None else finest_lattice(reads, kind)
    queries = [torch.arange(lo, hi) for lo, hi in box]
    inside = torch.ones(len(reads.coords), dtype=torch.bool)
    for axis, (lo, hi) in enumerate(box):
        inside &= (reads.coords[:, axis] >= lo) & (reads.coords[:, axis] < hi)
    out = upsample(lattice, nodes, queries, kind)
    out = _overwrite(out, queries, reads.coords[inside], reads.values[inside])
    return out.float()
