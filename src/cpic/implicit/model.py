"""The one place where the reconstruction model of a volume is built."""

from __future__ import annotations

import torch

from cpic.nn import ImplicitVolume


def reconstruction_model(
    grid: tuple[int, ...], *, rank: int = 12, features: int = 16, seed: int = 0
) -> ImplicitVolume:
    """A model that maps a voxel's coordinates to its intensity through the latent TT of one
    volume of ``grid`` (1-voxel patches, voxel positions fed to the encoder); its initial
    weights depend on ``seed`` only.

    Example:
        >>> model = reconstruction_model((8, 8, 8), rank=2, features=2)
        >>> type(model).__name__, model.rank
        ('ImplicitVolume', 2)
    """
    torch.manual_seed(seed)
    return ImplicitVolume(grid, features=features, patch=1, rank=rank, positions=True, seed=seed)
