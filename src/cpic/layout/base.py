"""What every layout provides: the map between voxel coordinates and tensor multi-indices."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor


def check_grid_shape(grid_shape: Sequence[int]) -> tuple[int, ...]:
    shape = tuple(int(n) for n in grid_shape)
    if not shape or any(n < 1 for n in shape):
        raise ValueError(f"grid_shape must be a non-empty sequence of sizes >= 1, got {tuple(grid_shape)}.")
    return shape


class Layout(ABC):
    """A bijection between a voxel grid (plus an optional feature axis) and a tensor's indices.

    ``grid_shape`` is the grid of ``D`` axes; ``tensor_shape`` the ``d`` modes of the tensor
    (the last one of size ``features`` when a feature mode is present). Grids whose layout
    needs padding map padded positions to coordinates outside ``grid_shape``; ``valid`` tells.
    """

    def __init__(self, grid_shape: Sequence[int], features: int | None = None):
        self.grid_shape = check_grid_shape(grid_shape)
        if features is not None and int(features) < 1:
            raise ValueError(f"features must be >= 1 or None, got {features}.")
        self.features = None if features is None else int(features)

    @property
    @abstractmethod
    def spatial_shape(self) -> tuple[int, ...]:
        """Mode sizes of the spatial part of the tensor."""

    @property
    @abstractmethod
    def padded_shape(self) -> tuple[int, ...]:
        """The grid the tensor covers, ``>= grid_shape`` along every axis."""

    @abstractmethod
    def _spatial_index(self, coords: Tensor) -> Tensor:
        """``[..., D]`` coordinates -> ``[..., d_spatial]`` indices."""

    @abstractmethod
    def _spatial_coords(self, idx: Tensor) -> Tensor:
        """``[..., d_spatial]`` indices -> ``[..., D]`` coordinates."""

    @property
    def tensor_shape(self) -> tuple[int, ...]:
        feature = () if self.features is None else (self.features,)
        return self.spatial_shape + feature

    @property
    def ndim(self) -> int:
        """Number of grid axes ``D``."""
        return len(self.grid_shape)

    @property
    def padding_fraction(self) -> float:
        """Fraction of the tensor's spatial entries that lie outside the grid."""
        return 1.0 - math.prod(self.grid_shape) / math.prod(self.padded_shape)

    def to_index(self, coords: Tensor, feature: Tensor | None = None) -> Tensor:
        """Voxel coordinates ``[..., D]`` (and feature ids ``[...]``) -> multi-indices ``[..., d]``."""
        coords = torch.as_tensor(coords)
        if coords.shape[-1:] != (self.ndim,):
            raise ValueError(f"coords must have shape [..., {self.ndim}], got {tuple(coords.shape)}.")
        idx = self._spatial_index(coords.long())
        if self.features is None:
            if feature is not None:
                raise ValueError("this layout has no feature mode, but a feature index was given.")
            return idx
        if feature is None:
            raise ValueError(f"this layout has a feature mode of size {self.features}: pass feature=.")
        feature = torch.as_tensor(feature, device=idx.device).long().expand(idx.shape[:-1])
        return torch.cat([idx, feature[..., None]], dim=-1)

    def to_coords(self, idx: Tensor) -> Tensor:
        """Multi-indices ``[..., d]`` -> voxel coordinates ``[..., D]`` (the feature mode is dropped)."""
        idx = torch.as_tensor(idx)
        if idx.shape[-1:] != (len(self.tensor_shape),):
            raise ValueError(f"idx must have shape [..., {len(self.tensor_shape)}], got {tuple(idx.shape)}.")
        spatial = idx[..., : len(self.spatial_shape)] if self.features is not None else idx
        return self._spatial_coords(spatial.long())

    def feature_of(self, idx: Tensor) -> Tensor:
        """The feature index of each multi-index ``[..., d]`` -> ``[...]``."""
        if self.features is None:
            raise ValueError("this layout has no feature mode.")
        return idx[..., -1]

    def valid(self, idx: Tensor) -> Tensor:
        """True where a multi-index maps inside ``grid_shape`` (False on padding)."""
        coords = self.to_coords(idx)
        limits = torch.tensor(self.grid_shape, device=coords.device)
        return (coords < limits).all(-1)

    @abstractmethod
    def validity_cores(self) -> list[Tensor]:
        """Cores ``[r, n, r']`` (float64, spatial modes only) of the exact TT of :meth:`valid`.

        The mask weighs sums over the grid so that padding never counts; without padding it is
        the all-ones tensor of rank 1.

        Example:
            >>> from cpic.layout import PlainLayout
            >>> [tuple(c.shape) for c in PlainLayout((3, 4)).validity_cores()]
            [(1, 3, 1), (1, 4, 1)]
        """

    def grid_coords(self, idx: Tensor) -> Tensor:
        """Like :meth:`to_coords`, with padding mapped to the nearest voxel of the grid: what a
        tensor of voxel values reads on padding, keeping it as smooth as the volume.

        Example:
            >>> import torch
            >>> from cpic.layout import QTTLayout
            >>> QTTLayout((3, 3)).grid_coords(torch.tensor([1, 1, 1, 1])).tolist()
            [2, 2]
        """
        coords = self.to_coords(idx)
        return torch.minimum(coords, torch.tensor(self.grid_shape, device=coords.device) - 1)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(grid_shape={self.grid_shape}, features={self.features}, "
            f"tensor_shape={self.tensor_shape})"
        )
