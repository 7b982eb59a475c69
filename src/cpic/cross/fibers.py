"""Index bookkeeping of TT-cross: fibers from nested index sets, and sets from chosen rows."""

from __future__ import annotations

import torch
from torch import Tensor


def fiber_indices(left: Tensor, n: int, right: Tensor) -> Tensor:
    """All multi-indices ``left x range(n) x right`` -> ``[B, r_left * n * r_right, d]``.

    ``left: [B, r_left, k]`` and ``right: [B, r_right, d - k - 1]``; C order (left slowest).

    Example:
        >>> import torch
        >>> left = torch.tensor([[[0], [2]]]); right = torch.tensor([[[1]]])
        >>> fiber_indices(left, 2, right)[0].tolist()
        [[0, 0, 1], [0, 1, 1], [2, 0, 1], [2, 1, 1]]
    """
    B, rl, kl = left.shape
    rr, kr = right.shape[1], right.shape[2]
    size = (B, rl, n, rr)
    parts = [
        left[:, :, None, None, :].expand(*size, kl),
        torch.arange(n, device=left.device)[None, None, :, None, None].expand(*size, 1),
        right[:, None, None, :, :].expand(*size, kr),
    ]
    return torch.cat(parts, dim=-1).reshape(B, rl * n * rr, kl + 1 + kr)


def extend_left(left: Tensor, n: int, rows: Tensor) -> Tensor:
    """Next left set: the chosen ``rows`` of ``left x range(n)`` -> ``[B, len(rows), k + 1]``.

    Example:
        >>> import torch
        >>> extend_left(torch.tensor([[[0], [2]]]), 3, torch.tensor([[5, 1]])).tolist()
        [[[2, 2], [0, 1]]]
    """
    prefix = left.gather(1, (rows // n)[:, :, None].expand(-1, -1, left.shape[2]))
    return torch.cat([prefix, (rows % n)[:, :, None]], dim=2)


def extend_right(right: Tensor, n: int, rows: Tensor) -> Tensor:
    """Next right set: the chosen ``rows`` of ``range(n) x right`` -> ``[B, len(rows), 1 + k]``.

    Example:
        >>> import torch
        >>> extend_right(torch.tensor([[[0], [2]]]), 3, torch.tensor([[5, 0]])).tolist()
        [[[2, 2], [0, 0]]]
    """
    r = right.shape[1]
    suffix = right.gather(1, (rows % r)[:, :, None].expand(-1, -1, right.shape[2]))
    return torch.cat([(rows // r)[:, :, None], suffix], dim=2)


def empty_set(batch: int, device: torch.device) -> Tensor:
    """The one-element index set of the boundary bonds, ``[B, 1, 0]``."""
    return torch.zeros(batch, 1, 0, dtype=torch.long, device=device)
