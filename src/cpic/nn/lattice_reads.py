"""Patches on a jittered regular lattice: stratified coverage of the grid of patch cells.

The grid (or a box of it) is cut into ``m_1 x ... x m_D`` near-equal strata and one patch is
drawn uniformly inside each: every part of the volume larger than a stratum is read, unlike
with uniformly random patches, and no two patches fall in the same stratum.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.nn.latent import Patches
from cpic.nn.reads import PatchBudget, Reads, patch_reads
from cpic.util.indexing import c_strides


def strata_counts(shape: Sequence[int], count: int) -> tuple[int, ...]:
    """Strata per axis, about proportional to ``shape``, whose product is at most ``count``
    (and as large as that allows, each at most the axis length).

    Example:
        >>> strata_counts((64, 64, 64), 1000), strata_counts((64, 64, 8), 1000), strata_counts((4, 4), 100)
        ((10, 10, 10), (22, 22, 2), (4, 4))
    """
    shape = [int(n) for n in shape]
    count = max(1, min(int(count), math.prod(shape)))
    scale = (count / math.prod(shape)) ** (1 / len(shape))
    m = [max(1, min(n, math.floor(n * scale + 1e-9))) for n in shape]
    grown = True
    while grown:  # add a stratum along the axis whose strata are longest, while the product allows
        grown = False
        for d in sorted(range(len(shape)), key=lambda d: -shape[d] / m[d]):
            if m[d] < shape[d] and math.prod(m) // m[d] * (m[d] + 1) <= count:
                m[d] += 1
                grown = True
                break
    return tuple(m)


def strata_bounds(low: Tensor, high: Tensor, counts: Sequence[int]) -> tuple[Tensor, Tensor]:
    """The strata of the boxes ``[low, high)`` (``[..., D]`` integer corners) cut into
    ``counts[d]`` near-equal slabs per axis: their corners ``([..., S, D], [..., S, D])``, with
    ``S = prod(counts)`` in C order.

    Example:
        >>> lo, hi = strata_bounds(torch.tensor([0, 0]), torch.tensor([5, 4]), (2, 2))
        >>> lo.tolist(), hi.tolist()
        ([[0, 0], [0, 2], [2, 0], [2, 2]], [[2, 2], [2, 4], [5, 2], [5, 4]])
    """
    axes = []
    for d, m in enumerate(counts):
        k = torch.arange(m + 1, device=low.device)
        edges = low[..., d, None] + (high - low)[..., d, None] * k // m  # [..., m + 1]
        axes.append(edges)
    grids = torch.meshgrid(*[torch.arange(m, device=low.device) for m in counts], indexing="ij")
    slots = torch.stack([g.flatten() for g in grids], -1)  # [S, D]
    lo = torch.stack([axes[d][..., slots[:, d]] for d in range(len(counts))], -1)
    hi = torch.stack([axes[d][..., slots[:, d] + 1] for d in range(len(counts))], -1)
    return lo, hi


def jitter(low: Tensor, high: Tensor, generator: torch.Generator) -> Tensor:
    """One uniformly drawn integer point in each box ``[low, high)`` (a box empty along an
    axis gives its ``low`` there).

    Example:
        >>> low, high = torch.tensor([[0, 0], [4, 4]]), torch.tensor([[4, 4], [8, 8]])
        >>> p = jitter(low, high, torch.Generator().manual_seed(0))
        >>> bool(((p >= low) & (p < high)).all())
        True
    """
    u = torch.rand(low.shape, generator=generator)
    return low + (u * (high - low).cpu()).long().to(low.device)


def linear_ids(coords: Tensor, shape: Sequence[int]) -> Tensor:
    """C-order linear ids of the integer coordinates ``[..., D]`` in a grid of ``shape``.

    Example:
        >>> linear_ids(torch.tensor([[1, 2, 3]]), (4, 5, 6)).tolist()
        [45]
    """
    return (coords * c_strides(shape, coords.device)).sum(-1)


class LatticePatches(PatchBudget):
    """Patches on a jittered regular lattice of cells, as many as ``budget`` voxels allow.

    The grid of patch cells is cut into :func:`strata_counts` strata and one patch is read at
    a uniformly drawn cell of each; the patches the budget leaves over go, one each, to
    strata drawn at random. Each patch stands for its share of its stratum in the latent TT
    (weight: the stratum's cells over its patches), an unbiased stratified estimate of the
    whole latent tensor.
    Predictions draw from each volume's seed; training (``keys`` given) draws afresh each step.

    Example:
        >>> import torch, cpic
        >>> from cpic.nn import Classification
        >>> policy = LatticePatches(27 * 8)
        >>> model = cpic.CPIC((16, 16, 16), Classification(2), features=4, patch=3, reads=policy)
        >>> reads = model.read([cpic.open_volume(torch.rand(16, 16, 16))])
        >>> reads.voxels.tolist(), len(reads.patches.ids)
        ([216], 8)
    """

    kind = "lattice"

    def select(self, f, keys, seeds, generator, peaks=False) -> Reads:
        grid = tuple(f.layout.grid_shape)
        count = min(self.patches(f.patch ** len(grid)), math.prod(grid))
        lo, hi = strata_bounds(
            torch.zeros(len(grid), dtype=torch.long), torch.tensor(grid), strata_counts(grid, count)
        )
        size, extra = (hi - lo).prod(-1).to(torch.float64), count - len(lo)
        ids, weights = [], []
        for b, gen in enumerate(self.generators(keys, seeds, generator)):
            first = linear_ids(jitter(lo, hi, gen), grid)
            # the patches the strata leave over: a second one in as many strata, drawn at random
            pick = torch.randperm(len(lo), generator=gen)[:extra]
            second = linear_ids(jitter(lo[pick], hi[pick], gen), grid)
            pick, second = pick[second != first[pick]], second[second != first[pick]]
            weight = size.clone()
            weight[pick] /= 2  # a stratum's cells shared by its two patches
            ids.append(torch.cat([first, second]) + b * math.prod(grid))
            weights.append(torch.cat([weight, weight[pick]]))
        ids, weights = torch.cat(ids), torch.cat(weights)
        order = torch.argsort(ids)
        patches = Patches(ids[order], f.encode(ids[order]))
        return patch_reads(f, patches, weights[order], peaks)
