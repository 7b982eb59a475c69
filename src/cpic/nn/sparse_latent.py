"""The latent tensor of a patch sampler: weighted patch features at a few cells, zero elsewhere.

As a TT this tensor has rank equal to the patches of a volume and cores of ``R x n x R``, so
building it and contracting it cost ``O(R^2)`` per core: at 256^3 and 0.5% read (1,500
patches) that is most of a training step. :class:`SparseLatent` keeps the patches instead;
the projections of :mod:`cpic.nn.projections` compute from it directly (the same values as
from its TT, in ``O(R)``), and :meth:`SparseLatent.to_tt` builds the TT for anything else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cpic.layout import Layout, QTTLayout
from cpic.tt import TT


@dataclass
class SparseLatent:
    """``batch`` tensors ``[*layout.tensor_shape]`` holding ``values [U, F]`` at the grid cells
    ``coords [U, D]`` of volumes ``volume [U]`` (distinct cells per volume), zero elsewhere.

    Example:
        >>> import torch
        >>> from cpic.layout import QTTLayout
        >>> layout = QTTLayout((4, 4), features=2)
        >>> s = SparseLatent(layout, 1, torch.tensor([[0, 1], [3, 2]]), torch.tensor([0, 0]),
        ...                  torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
        >>> s.mean().tolist(), torch.allclose(s.to_tt().full()[0].sum((0, 1, 2, 3)), s.values.sum(0))
        ([[0.25, 0.375]], True)
    """

    layout: Layout
    batch: int
    coords: Tensor
    volume: Tensor
    values: Tensor

    @property
    def cells(self) -> int:
        """Cells of one volume's grid."""
        return math.prod(self.layout.grid_shape)

    def mean(self) -> Tensor:
        """The mean feature vector over the grid's cells ``[B, F]``."""
        out = self.values.new_zeros(self.batch, self.values.shape[1])
        return out.index_add(0, self.volume.to(out.device), self.values) / self.cells

    def moments(self) -> Tensor:
        """The second moments ``E[x x^T]`` over the grid's cells ``[B, F, F]``."""
        outer = self.values[:, :, None] * self.values[:, None, :]
        out = outer.new_zeros(self.batch, *outer.shape[1:])
        return out.index_add(0, self.volume.to(out.device), outer) / self.cells

    def coarse_grid(self, level: int) -> Tensor:
        """The features averaged over the blocks of the ``level`` coarsest Morton levels of a
        :class:`QTTLayout` ``[B, F, *cells]``, as :func:`~cpic.nn.projections.coarse_feature_grid`."""
        layout = self.layout
        if not isinstance(layout, QTTLayout):
            raise ValueError(f"a coarse grid needs a QTTLayout, got {type(layout).__name__}.")
        layout.coarse_modes(level)  # validates level
        side = torch.tensor([2 ** min(b, layout.levels - level) for b in layout.bits])
        per_axis = [p // s for p, s in zip(layout.padded_shape, side.tolist())]
        cell = self.coords.cpu() // side
        linear = torch.zeros(len(cell), dtype=torch.long)
        for axis, n in enumerate(per_axis):
            linear = linear * n + cell[:, axis]
        linear = linear + self.volume.cpu() * math.prod(per_axis)
        features = self.values.shape[1]
        sums = self.values.new_zeros(self.batch * math.prod(per_axis), features)
        sums = sums.index_add(0, linear.to(sums.device), self.values)
        count = torch.ones(())  # valid cells per block: a product of per-axis overlaps
        for axis, n in enumerate(per_axis):
            start = torch.arange(n) * side[axis]
            inside = (torch.clamp(layout.grid_shape[axis] - start, min=0)).clamp(max=int(side[axis]))
            count = count[..., None] * inside
        means = sums.reshape(self.batch, -1, features) / count.flatten().clamp_min(1).to(sums)[:, None]
        return means.transpose(1, 2).reshape(self.batch, features, *per_axis)

    def to_tt(self) -> TT:
        """This tensor as a TT ``[B, *layout.tensor_shape]`` of rank = most cells of a volume."""
        counts = torch.bincount(self.volume.cpu(), minlength=self.batch)
        rank = max(1, int(counts.max()))
        volume = self.volume.cpu()
        order = torch.argsort(volume, stable=True)  # slot: the entry's place among its volume's
        slot = torch.empty_like(volume)
        slot[order] = torch.arange(len(volume)) - (torch.cumsum(counts, 0) - counts)[volume[order]]
        shape = self.layout.tensor_shape
        index = torch.zeros(self.batch, rank, len(shape) - 1, dtype=torch.long)
        index[volume, slot] = self.layout.to_index(self.coords.cpu(), feature=0)[:, :-1]
        values = self.values.new_zeros(self.batch, rank, self.values.shape[1])
        values = values.index_put((volume.to(values.device), slot.to(values.device)), self.values)
        cores = []
        for k, n in enumerate(shape[:-1]):
            hot = torch.nn.functional.one_hot(index[..., k], n).to(values)  # [B, R, n]
            cores.append(
                hot.transpose(1, 2)[:, None]
                if k == 0
                else torch.diag_embed(hot.transpose(1, 2)).permute(0, 2, 1, 3)
            )
        cores.append(values[..., None])
        return TT(cores)
