"""Sources defined by a function of voxel coordinates: any size, nothing stored."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from cpic.sources.base import SourceError, VolumeSource


class ProceduralSource(VolumeSource):
    """Voxel values computed by ``function(coords: LongTensor[K, D]) -> Tensor[K]`` (or ``[K, C]``).

    Example:
        >>> import torch
        >>> src = ProceduralSource(lambda c: c.sum(1).float(), shape=(2**15,) * 3)
        >>> src.read(torch.tensor([[1, 2, 3]])).tolist()
        [6.0]
    """

    def __init__(
        self,
        function: Callable[[Tensor], Tensor],
        shape: Sequence[int],
        name: str | None = None,
        channels: int | None = None,
        spacing: Sequence[float] | None = None,
        nonfinite: str = "raise",
    ):
        if shape is None:
            raise SourceError("a procedural source needs shape= (the grid it is sampled on).")
        super().__init__(
            name or getattr(function, "__name__", "procedural"),
            shape,
            torch.float32,
            channels,
            spacing,
            nonfinite,
        )
        self.function = function

    def _read(self, coords: Tensor) -> Tensor:
        values = torch.as_tensor(self.function(coords))
        expected = (len(coords),) if self.channels is None else (len(coords), self.channels)
        if tuple(values.shape) != expected:
            raise SourceError(
                f"{self.name}: the function returned shape {tuple(values.shape)}, expected {expected}."
            )
        return values.detach().cpu()
