"""Procedural volumes defined by a function of voxel coordinates: any size, never stored."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def blob_field(coords: Tensor, shape: Sequence[int], blobs: int = 6, seed: int = 0) -> Tensor:
    """A smooth field of Gaussian blobs and a gentle gradient, in ``[0, ~1]``.

    ``coords: LongTensor[..., D]`` voxel coordinates of a grid of ``shape``; returns ``[...]``
    float32 values. The same ``seed`` gives the same field at every resolution (coordinates
    are scaled to the unit cube), so fields of 2^6 and 2^15 voxels per side can be compared.

    Example:
        >>> import torch
        >>> v = blob_field(torch.tensor([[0, 0, 0], [31, 31, 31]]), (32, 32, 32))
        >>> v.shape, bool((v >= 0).all())
        (torch.Size([2]), True)
    """
    D = len(shape)
    gen = torch.Generator().manual_seed(seed)
    centres = 0.15 + 0.7 * torch.rand(blobs, D, generator=gen)
    widths = 0.08 + 0.15 * torch.rand(blobs, generator=gen)
    weights = 0.4 + 0.6 * torch.rand(blobs, generator=gen)
    x = (coords.to(torch.float32) + 0.5) / torch.tensor(shape, dtype=torch.float32)
    x = x.to(coords.device)
    out = 0.2 * x.mean(-1)
    for c, w, a in zip(centres.to(x.device), widths.tolist(), weights.tolist()):
        out = out + a * torch.exp(-((x - c) ** 2).sum(-1) / (2 * w * w))
    return out
