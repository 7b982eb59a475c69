"""Gauge-invariant projections of a latent TT (features in the last mode) to per-volume vectors.

All are contractions in TT format, weighted by the exact TT of the layout's validity mask so
that the padding of non-power-of-two grids never counts; none expands the tensor. Each also
takes the :class:`~cpic.nn.sparse_latent.SparseLatent` of a patch sampler and computes the
same values from its patches.
"""

from __future__ import annotations

import functools
import math

import torch
from torch import Tensor, nn

from cpic.layout import Layout, QTTLayout
from cpic.nn.sparse_latent import SparseLatent
from cpic.tt import TT


@functools.lru_cache(maxsize=64)
def _validity(layout: Layout) -> tuple[Tensor, ...]:
    return tuple(layout.validity_cores())


def validity_cores(layout: Layout, like: Tensor) -> list[Tensor]:
    """The layout's validity-mask cores ``[m, n, m']`` in ``like``'s dtype and device."""
    return [c.to(dtype=like.dtype, device=like.device) for c in _validity(layout)]


def _check(latent: TT, layout: Layout) -> None:
    if layout.features is None or latent.shape != layout.tensor_shape:
        raise ValueError(
            f"the latent TT has shape {latent.shape}; the layout expects {layout.tensor_shape} "
            "with the features in the last mode."
        )


def feature_mean(latent: TT | SparseLatent, layout: Layout) -> Tensor:
    """Mean feature vector over the grid's voxels -> ``[B, F]``.

    Example:
        >>> import torch
        >>> from cpic.layout import QTTLayout
        >>> from cpic.tt import TT
        >>> layout = QTTLayout((3, 5), features=2)            # padded to 4 x 8
        >>> grid = torch.meshgrid(torch.arange(3), torch.arange(5), indexing="ij")
        >>> idx = torch.stack(grid, -1).reshape(-1, 2)
        >>> latent = TT.from_dense(torch.rand(1, *layout.tensor_shape, dtype=torch.float64))
        >>> full = latent.full()[0]
        >>> voxels = layout.to_index(idx, feature=0)[:, :-1]
        >>> ref = full[tuple(voxels.T)].mean(0)
        >>> torch.allclose(feature_mean(latent, layout)[0], ref)
        True
    """
    if isinstance(latent, SparseLatent):
        return latent.mean()
    _check(latent, layout)
    carry = latent.cores[0].new_ones(latent.batch, 1, 1)  # [B, m, r]
    for mask, core in zip(validity_cores(layout, carry), latent.cores[:-1]):
        carry = torch.einsum("bmr,brnt,mns->bst", carry, core, mask)
    return torch.einsum("br,brf->bf", carry[:, 0], latent.cores[-1][..., 0]) / math.prod(layout.grid_shape)


def feature_moments(latent: TT | SparseLatent, layout: Layout) -> Tensor:
    """Second moments ``E[f f^T]`` of the feature vectors over the grid's voxels -> ``[B, F, F]``.

    Example:
        >>> import torch
        >>> from cpic.layout import QTTLayout
        >>> from cpic.tt import TT
        >>> layout = QTTLayout((3, 6), features=2)
        >>> latent = TT.from_dense(torch.rand(1, *layout.tensor_shape, dtype=torch.float64))
        >>> grid = torch.meshgrid(torch.arange(3), torch.arange(6), indexing="ij")
        >>> idx = torch.stack(grid, -1).reshape(-1, 2)
        >>> e = latent.full()[0][tuple(layout.to_index(idx, feature=0)[:, :-1].T)]   # [18, 2]
        >>> torch.allclose(feature_moments(latent, layout)[0], e.T @ e / 18)
        True
    """
    if isinstance(latent, SparseLatent):
        return latent.moments()
    _check(latent, layout)
    carry = latent.cores[0].new_ones(latent.batch, 1, 1, 1)  # [B, m, r, q]
    for mask, core in zip(validity_cores(layout, carry), latent.cores[:-1]):
        step = torch.einsum("bmrq,brnt->bmqnt", carry, core)
        step = torch.einsum("bmqnt,mns->bsqnt", step, mask)
        carry = torch.einsum("bsqnt,bqnu->bstu", step, core)
    last = latent.cores[-1][..., 0]  # [B, r, F]
    return last.mT @ carry[:, 0] @ last / math.prod(layout.grid_shape)


def coarse_feature_grid(latent: TT | SparseLatent, layout: QTTLayout, level: int) -> Tensor:
    """Features averaged over the blocks of the ``level`` coarsest Morton levels ->
    ``[B, F, *cells]``, about ``2**level`` cells per axis; cells wholly in the padding are 0.

    Example:
        >>> import torch
        >>> from cpic.layout import QTTLayout
        >>> from cpic.tt import TT
        >>> layout = QTTLayout((8, 8, 8), features=3, group=True)
        >>> latent = TT.from_dense(torch.rand(1, *layout.tensor_shape, dtype=torch.float64))
        >>> grid = coarse_feature_grid(latent, layout, level=1)
        >>> coords = torch.stack(torch.meshgrid(*[torch.arange(8)] * 3, indexing="ij"), -1).reshape(-1, 3)
        >>> dense = latent.full()[0][tuple(layout.to_index(coords, feature=0)[:, :-1].T)].reshape(8, 8, 8, 3)
        >>> ref = dense.reshape(2, 4, 2, 4, 2, 4, 3).mean((1, 3, 5)).permute(3, 0, 1, 2)
        >>> grid.shape, torch.allclose(grid[0], ref)
        (torch.Size([1, 3, 2, 2, 2]), True)
    """
    if isinstance(latent, SparseLatent):
        return latent.coarse_grid(level)
    _check(latent, layout)
    if not isinstance(layout, QTTLayout):
        raise ValueError(f"a coarse grid needs a QTTLayout, got {type(layout).__name__}.")
    split = layout.coarse_modes(level)
    masks = validity_cores(layout, latent.cores[0])
    cores = latent.cores[:-1]
    right = latent.cores[-1][..., 0][:, None]  # [B, m, r, F]
    right_count = right.new_ones(1)  # [m]
    for mask, core in zip(reversed(masks[split:]), reversed(cores[split:])):
        right = torch.einsum("mns,brnt,bstf->bmrf", mask, core, right)
        right_count = mask.sum(1) @ right_count
    B = latent.batch
    left = right.new_ones(B, 1, 1, 1)  # [B, cells, m, r]
    left_count = right.new_ones(1, 1)  # [cells, m]
    for mask, core in zip(masks[:split], cores[:split]):
        left = torch.einsum("bcmr,mns,brnt->bcnst", left, mask, core)
        left = left.reshape(B, -1, mask.shape[2], core.shape[3])
        left_count = torch.einsum("cm,mns->cns", left_count, mask).reshape(-1, mask.shape[2])
    sums = torch.einsum("bcmr,bmrf->bfc", left, right)
    counts = left_count @ right_count
    means = sums / counts.clamp_min(1)
    return _place_cells(means, layout, level, split)


def _place_cells(values: Tensor, layout: QTTLayout, level: int, split: int) -> Tensor:
    """Arrange ``[B, F, cells]`` (cells in the order of the leading ``split`` modes) on the grid."""
    cell_side = torch.tensor([2 ** min(b, layout.levels - level) for b in layout.bits])
    cells_per_axis = [p // s for p, s in zip(layout.padded_shape, cell_side.tolist())]
    modes = layout.spatial_shape[:split]
    idx = torch.stack(torch.meshgrid(*[torch.arange(n) for n in modes], indexing="ij"), -1).reshape(-1, split)
    idx = torch.cat([idx, idx.new_zeros(len(idx), len(layout.tensor_shape) - split)], 1)
    cell = layout.to_coords(idx) // cell_side
    linear = torch.zeros(len(cell), dtype=torch.long)
    for axis, n in enumerate(cells_per_axis):
        linear = linear * n + cell[:, axis]
    out = values.new_zeros(values.shape[0], values.shape[1], math.prod(cells_per_axis))
    out[:, :, linear.to(values.device)] = values
    return out.reshape(values.shape[0], values.shape[1], *cells_per_axis)


class MeanPooling(nn.Module):
    """The mean feature vector: ``[B, F]``."""

    def out_features(self, features: int) -> int:
        return features

    def forward(self, latent: TT | SparseLatent, layout: Layout) -> Tensor:
        return feature_mean(latent, layout)


class CovariancePooling(nn.Module):
    """The mean and the upper triangle of the feature covariance: ``[B, F + F (F + 1) / 2]``."""

    def out_features(self, features: int) -> int:
        return features + features * (features + 1) // 2

    def forward(self, latent: TT | SparseLatent, layout: Layout) -> Tensor:
        mean = feature_mean(latent, layout)
        cov = feature_moments(latent, layout) - mean[:, :, None] * mean[:, None, :]
        rows, cols = torch.triu_indices(cov.shape[1], cov.shape[2], device=cov.device)
        return torch.cat([mean, cov[:, rows, cols]], 1)


class GridPooling(nn.Module):
    """A coarse feature grid (``2**level`` cells per axis) read by a small convolutional net."""

    def __init__(self, features: int, level: int = 2, width: int = 32, ndim: int = 3):
        super().__init__()
        if ndim != 3:
            raise ValueError(f"grid pooling is for 3-D grids, got {ndim} axes.")
        self.level, self.width = level, width
        self.net = nn.Sequential(
            nn.Conv3d(features, width, 3, padding=1),
            nn.GELU(),
            nn.Conv3d(width, width, 3, padding=1),
            nn.GELU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )

    def out_features(self, features: int) -> int:
        return self.width

    def forward(self, latent: TT | SparseLatent, layout: Layout) -> Tensor:
        return self.net(coarse_feature_grid(latent, layout, self.level))


PROJECTIONS = ("mean", "moments", "grid")


def make_projection(projection: str | nn.Module, features: int, ndim: int) -> nn.Module:
    """A projection by name (``"mean"``, ``"moments"``, ``"grid"``) or the given module.

    Example:
        >>> make_projection("moments", features=4, ndim=3).out_features(4)
        14
    """
    if isinstance(projection, nn.Module):
        if not hasattr(projection, "out_features"):
            raise ValueError("a custom projection needs an out_features(features) -> int method.")
        return projection
    if projection == "mean":
        return MeanPooling()
    if projection == "moments":
        return CovariancePooling()
    if projection == "grid":
        return GridPooling(features, ndim=ndim)
    raise ValueError(f"projection must be one of {PROJECTIONS} or a torch.nn.Module, got {projection!r}.")
