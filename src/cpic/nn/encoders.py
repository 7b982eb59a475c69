"""Patch encoders: modules mapping patches ``[K, C, p, ..., p]`` to features ``[K, F]``.

Any ``torch.nn.Module`` with that contract plugs into :class:`cpic.CPIC`; these two are the
original's MLP on flattened patches and a small convolutional encoder. Built with
``positions=D``, they also take the patch centres ``[K, D]`` (scaled to ``[-1, 1]``) as a
second argument, so that grid averages of the features can describe where things are.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class PatchMLP(nn.Module):
    """The original encoder: an MLP on the flattened ``C * p**D`` patch values.

    Example:
        >>> import torch
        >>> enc = PatchMLP(patch=5, features=16)
        >>> enc(torch.rand(7, 1, 5, 5, 5)).shape
        torch.Size([7, 16])
        >>> PatchMLP(patch=3, features=4, positions=3)(torch.rand(2, 1, 3, 3, 3), torch.zeros(2, 3)).shape
        torch.Size([2, 4])
    """

    def __init__(
        self,
        patch: int = 5,
        features: int = 16,
        channels: int = 1,
        hidden: int = 64,
        ndim: int = 3,
        positions: int = 0,
    ):
        super().__init__()
        self.features, self.positions = features, positions
        self.net = nn.Sequential(
            nn.Linear(channels * patch**ndim + positions, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, features),
        )

    def forward(self, patches: Tensor, positions: Tensor | None = None) -> Tensor:
        return self.net(_with_positions(patches.flatten(1), positions, self.positions))


def _with_positions(x: Tensor, positions: Tensor | None, expected: int) -> Tensor:
    if not expected:
        return x
    if positions is None or positions.shape != (len(x), expected):
        got = None if positions is None else tuple(positions.shape)
        raise ValueError(f"this encoder takes the patch centres [{len(x)}, {expected}] too, got {got}.")
    return torch.cat([x, positions.to(x.dtype)], 1)


class PatchConv(nn.Module):
    """A small 3-D convolutional encoder: two 3^3 convolutions, pooled over the patch.

    Example:
        >>> import torch
        >>> enc = PatchConv(features=8)
        >>> enc(torch.rand(4, 1, 5, 5, 5)).shape
        torch.Size([4, 8])
    """

    def __init__(
        self, patch: int = 5, features: int = 16, channels: int = 1, width: int = 16, positions: int = 0
    ):
        super().__init__()
        self.features, self.positions = features, positions
        self.net = nn.Sequential(
            nn.Conv3d(channels, width, 3, padding=1),
            nn.GELU(),
            nn.Conv3d(width, width, 3, padding=1 if patch < 5 else 0),
            nn.GELU(),
            nn.AdaptiveAvgPool3d(1),
            nn.Flatten(),
        )
        self.out = nn.Linear(width + positions, features)

    def forward(self, patches: Tensor, positions: Tensor | None = None) -> Tensor:
        return self.out(_with_positions(self.net(patches), positions, self.positions))


ENCODERS = {"mlp": PatchMLP, "conv": PatchConv}


def make_encoder(
    encoder: str | nn.Module, patch: int, features: int, channels: int, ndim: int, positions: bool = False
) -> nn.Module:
    """An encoder by name (``"mlp"``, ``"conv"``) or the given module as it is.

    Example:
        >>> import torch
        >>> make_encoder("mlp", patch=3, features=4, channels=1, ndim=3)(torch.rand(2, 1, 3, 3, 3)).shape
        torch.Size([2, 4])
    """
    if isinstance(encoder, nn.Module):
        return encoder
    if encoder not in ENCODERS:
        raise ValueError(f"encoder must be one of {sorted(ENCODERS)} or a torch.nn.Module, got {encoder!r}.")
    if encoder == "conv":
        if ndim != 3:
            raise ValueError(f"the 'conv' encoder is for 3-D grids; this grid has {ndim} axes: use 'mlp'.")
        return PatchConv(patch, features, channels, positions=ndim if positions else 0)
    return PatchMLP(patch, features, channels, ndim=ndim, positions=ndim if positions else 0)
