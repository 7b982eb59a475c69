"""Choosing, from a pilot of the reads, between adaptive refinement and the plain lattice.

Refinement pays where the interpolation error is concentrated (edges, a head in air); on a
field of uniform smoothness it loses to the regular lattice, whose cubic spline converges at
fourth order everywhere. The pilot is every ``k``-th node of the regular lattice the budget
allows, so when it says "smooth" the rest of that lattice is read and nothing is wasted; when it
says "edges", :func:`~cpic.implicit.refine.refine` spends what the pilot left (the pilot's
voxels off refinement's lattices are kept, exact where they lie). The test is the kurtosis of the
differences between neighbouring pilot nodes: about 3 for a Gaussian-like smooth field, far
above on a piecewise-smooth volume (mostly flat, some jumps). The pilot also sets how finely
refinement samples: its share of active cells (:func:`active_share`) is the share of the fine
lattice that refinement can afford to read (:func:`refinement_oversampling`). It uses only
voxels read.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cpic.implicit.lattice import axis_strides, lattice_nodes, lattice_size, lattice_strides
from cpic.implicit.refine import LatticeReads, _grid_coords, _read, read_lattice, refine, refine_strides
from cpic.sources import VolumeSource
from cpic.util.checks import check_int
from cpic.util.indexing import c_strides

#: pilot kurtosis above which refinement is chosen: a Gaussian field gives 3 (measured 2.6-3.2
#: on band-limited fields); the real MRI and CT of benchmarks/reconstruct.py gave 7.5-16.6
EDGE_KURTOSIS = 5.0
#: the pilot takes every k-th node of the regular lattice, k the largest of these that leaves
#: every axis :data:`PILOT_NODES` nodes (else the last), so that it reads 1/64 to 1/8 of it
PILOT_SPACINGS = (4, 3, 2)
PILOT_NODES = 5
#: a pilot cell is active when its corner values spread over this share of the pilot's
#: 0.5-99.5 percentile range (0.02, 0.05 and 0.1 gave the same shares on the real volumes)
ACTIVE_SPREAD = 0.02
#: the bounds of :func:`refinement_oversampling` (at 1 refinement is the plain lattice; the
#: coarse lattice of 3 and more left MNI152 and the CT no better, measured)
OVERSAMPLING_RANGE = (1.25, 2.0)


@dataclass
class Choice:
    """What :func:`choose_reads` read and why: the ``method`` it chose (``"refine"`` or
    ``"lattice"``), its ``reads``, the pilot's difference ``kurtosis`` and voxel count."""

    method: str
    reads: LatticeReads
    kurtosis: float
    pilot_voxels: int

    def to_dict(self) -> dict:
        return {"chosen": self.method, "pilot_kurtosis": self.kurtosis, "pilot_voxels": self.pilot_voxels,
                "edge_kurtosis": EDGE_KURTOSIS, "strides": self.reads.strides}  # fmt: skip


def difference_kurtosis(lattice: Tensor) -> float:
    """The kurtosis (4th moment over squared variance, 3 for a Gaussian) of the differences
    between neighbouring values of ``lattice`` along every axis; 0 when they are all equal.

    Example:
        >>> step = torch.zeros(8, 8, 8)
        >>> step[4:] = 1.0
        >>> round(difference_kurtosis(step), 1), difference_kurtosis(torch.ones(4, 4))
        (19.0, 0.0)
    """
    values = lattice.double()
    d = torch.cat([values.diff(dim=a).reshape(-1) for a in range(values.ndim) if values.shape[a] > 1])
    d = d - d.mean()
    variance = float(d.square().mean()) if len(d) else 0.0
    return float(d.pow(4).mean()) / variance**2 if variance > 0 else 0.0


def active_share(lattice: Tensor) -> float:
    """The share of the cells of a 3-D ``lattice`` whose 8 corner values spread over
    :data:`ACTIVE_SPREAD` of its 0.5-99.5 percentile range (edges and texture; not air).

    Example:
        >>> ball = (torch.stack(torch.meshgrid(*[torch.arange(9.0)] * 3, indexing="ij")) - 4).norm(dim=0) < 3
        >>> round(active_share(ball.float()), 2), active_share(torch.ones(4, 4, 4))
        (0.3, 0.0)
    """
    x = lattice.double()[None, None]
    spread = F.max_pool3d(x, 2, 1) + F.max_pool3d(-x, 2, 1)
    low, high = torch.quantile(x.reshape(-1), torch.tensor([0.005, 0.995], dtype=x.dtype)).tolist()
    return float((spread > ACTIVE_SPREAD * (high - low)).double().mean()) if high > low else 0.0


def refinement_oversampling(share: float) -> float:
    """How many times the budget the fine lattice of a refinement holds, so that refinement reads
    ``share`` of it: the coarse lattice (1/8 of the fine one) plus ``share`` of the other 7/8
    make the budget, ``1 = o / 8 + share 7 o / 8``; within :data:`OVERSAMPLING_RANGE`.

    Example:
        >>> round(refinement_oversampling(0.7), 2), refinement_oversampling(0.3), refinement_oversampling(1.0)
        (1.36, 2.0, 1.25)
    """
    low, high = OVERSAMPLING_RANGE
    return min(high, max(low, 8 / (1 + 7 * share)))


def pilot_strides(grid, budget: int) -> list[int]:
    """Per-axis strides of the pilot: the regular lattice's (:func:`lattice_strides`) times the
    largest spacing of :data:`PILOT_SPACINGS` that keeps :data:`PILOT_NODES` nodes on every axis.

    Example:
        >>> pilot_strides((128, 128, 128), 2028), pilot_strides((24, 24, 24), 300)
        ([33, 33, 36], [8, 8, 10])
    """
    strides = lattice_strides(grid, budget)
    for k in PILOT_SPACINGS:
        if all(len(lattice_nodes(n, k * s)) >= PILOT_NODES for n, s in zip(grid, strides)):
            break
    return [k * s for s in strides]


def _on_nodes(coords: Tensor, grid, stride) -> Tensor:
    on = torch.ones(len(coords), dtype=torch.bool)
    for axis, (n, s) in enumerate(zip(grid, axis_strides(grid, stride))):
        on &= torch.isin(coords[:, axis], lattice_nodes(n, s))
    return on


def choose_reads(source: VolumeSource, budget: int) -> Choice:
    """Read at most ``budget`` voxels of the 3-D ``source`` by refinement or by the plain lattice,
    chosen by the kurtosis of a pilot lattice's differences (above :data:`EDGE_KURTOSIS`:
    refinement, its fine lattice sized by the pilot's :func:`active_share`); the plain lattice
    also where refinement has no room (one level, or no read left past its coarse lattice).

    Example:
        >>> import cpic
        >>> x = torch.linspace(0, 3, 32)
        >>> waves = torch.sin(x)[:, None, None] * torch.cos(2 * x)[None, :, None] + torch.sin(x - 1)
        >>> smooth = choose_reads(cpic.open_volume(waves), 600)
        >>> edges = torch.zeros(32, 32, 32)
        >>> edges[8:20, 6:25, 10:30] = 1.0
        >>> box = choose_reads(cpic.open_volume(edges), 600)
        >>> smooth.method, box.method, box.reads.count <= 600
        ('lattice', 'refine', True)
    """
    check_int("budget", budget)
    grid = tuple(source.shape)
    budget = min(budget, math.prod(grid))
    nodes = [lattice_nodes(n, s) for n, s in zip(grid, pilot_strides(grid, budget))]
    pilot = _grid_coords(nodes)
    values = _read(source, pilot)
    lattice = values.reshape([len(x) for x in nodes])
    kurtosis = difference_kurtosis(lattice)
    strides = refine_strides(grid, budget, refinement_oversampling(active_share(lattice)))
    # the pilot's voxels off the coarse lattice are spent budget: kept, unless refinement read them too
    extra = ~_on_nodes(pilot, grid, strides[0])
    room = budget - int(extra.sum()) - lattice_size(grid, strides[0])
    if kurtosis <= EDGE_KURTOSIS or len(strides) == 1 or room <= 0:
        return Choice("lattice", read_lattice(source, budget), kurtosis, len(pilot))
    reads = refine(source, budget - int(extra.sum()), strides=strides)
    ids = c_strides(grid)
    kept = extra.clone()
    kept[extra] = ~torch.isin((pilot[extra] * ids).sum(-1), (reads.coords * ids).sum(-1))
    coords = torch.cat([reads.coords, pilot[kept]])
    read_values = torch.cat([reads.values, values[kept].float()])
    return Choice("refine", LatticeReads(grid, reads.strides, coords, read_values), kurtosis, len(pilot))
