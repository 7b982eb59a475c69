"""The plain layout: one tensor mode per grid axis."""

from __future__ import annotations

import torch
from torch import Tensor

from cpic.layout.base import Layout


class PlainLayout(Layout):
    """One mode per grid axis, no padding.

    Example:
        >>> import torch
        >>> from cpic.layout import PlainLayout
        >>> layout = PlainLayout((4, 5), features=3)
        >>> layout.tensor_shape
        (4, 5, 3)
        >>> layout.to_index(torch.tensor([[1, 2]]), feature=torch.tensor([0])).tolist()
        [[1, 2, 0]]
    """

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return self.grid_shape

    @property
    def padded_shape(self) -> tuple[int, ...]:
        return self.grid_shape

    def validity_cores(self) -> list[Tensor]:
        return [torch.ones(1, n, 1, dtype=torch.float64) for n in self.spatial_shape]

    def _spatial_index(self, coords: Tensor) -> Tensor:
        return coords

    def _spatial_coords(self, idx: Tensor) -> Tensor:
        return idx
