"""The batched tensor function of voxel intensities that sources and a layout define."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from cpic.layout import Layout
from cpic.sources import VolumeSource, check_same_grid


class IntensityFunction:
    """``f(idx: LongTensor[B, P, d]) -> Tensor[B, P]``: voxel values of ``B`` sources at the
    coordinates the layout maps ``idx`` to, one batched read per source.

    Padding of a non-power-of-two grid (coordinates past the edge) reads the nearest edge
    voxel, which keeps the padded tensor as smooth, and as low-rank, as the volume. With a
    feature mode in the layout, the feature index picks the channel of a multi-channel source.

    Example:
        >>> import numpy as np, torch, cpic
        >>> from cpic.layout import QTTLayout
        >>> from cpic.sources import open_volume
        >>> src = open_volume(np.fromfunction(lambda x, y, z: x + y + z, (8, 8, 8), dtype=np.float32))
        >>> f = IntensityFunction([src], QTTLayout(src.shape, group=True))
        >>> tt, info = cpic.cross(f, f.shape, rank=2, seed=0)
        >>> bool(info.error.max() < 1e-5)
        True
    """

    def __init__(
        self, sources: Sequence[VolumeSource], layout: Layout, device: torch.device | str | None = None
    ):
        self.sources = list(sources)
        if not self.sources:
            raise ValueError("IntensityFunction needs at least one source.")
        check_same_grid(self.sources, layout.grid_shape, "the layout's")
        for src in self.sources:
            if layout.features is not None and src.channels != layout.features:
                raise ValueError(
                    f"{src.name}: has {src.channels} channels, the layout's feature mode {layout.features}."
                )
        self.layout = layout
        self.device = device

    @property
    def shape(self) -> tuple[int, ...]:
        """The tensor's mode sizes."""
        return self.layout.tensor_shape

    @property
    def batch(self) -> int:
        return len(self.sources)

    def __call__(self, idx: Tensor) -> Tensor:
        B, P, _ = idx.shape
        coords = self.layout.grid_coords(idx.cpu())
        out = []
        for b, src in enumerate(self.sources):  # one batched read per volume
            values = src.read(coords[b])
            if self.layout.features is not None:
                values = values.gather(1, idx[b, :, -1:].cpu())[:, 0]
            out.append(values)
        values = torch.stack(out)
        return values.to(self.device or idx.device)
