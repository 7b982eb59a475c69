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


def left_row_keys(left: Tensor, n: int, strides: Tensor) -> Tensor:
    """Keys of the rows of ``left x range(n)``, the rows of a fiber block unfolded for a
    left-to-right step, ``[B, r_left * n]``: their linear indices with the later modes at 0,
    so keys order rows as their multi-indices. ``strides``: the tensor's
    :func:`~cpic.util.indexing.c_strides`, up to and with ``n``'s mode.

    Example:
        >>> import torch
        >>> from cpic.util.indexing import c_strides
        >>> left_row_keys(torch.tensor([[[3], [1]]]), 2, c_strides((4, 2, 5))[:2]).tolist()
        [[30, 35, 10, 15]]
    """
    base = (left * strides[:-1]).sum(-1)
    return (base[:, :, None] + torch.arange(n, device=left.device) * strides[-1]).flatten(1)


def right_row_keys(n: int, right: Tensor, strides: Tensor) -> Tensor:
    """Keys of the rows of ``range(n) x right``, the rows of a fiber block unfolded for a
    right-to-left step, ``[B, n * r_right]``: their linear indices with the earlier modes at
    0, so keys order rows as their multi-indices. ``strides``: the tensor's
    :func:`~cpic.util.indexing.c_strides`, from ``n``'s mode on.

    Example:
        >>> import torch
        >>> from cpic.util.indexing import c_strides
        >>> right_row_keys(2, torch.tensor([[[3], [1]]]), c_strides((5, 2, 4))[1:]).tolist()
        [[3, 1, 7, 5]]
    """
    base = (right * strides[1:]).sum(-1)
    return (torch.arange(n, device=right.device)[:, None] * strides[0] + base[:, None, :]).flatten(1)


def empty_set(batch: int, device: torch.device) -> Tensor:
    """The one-element index set of the boundary bonds, ``[B, 1, 0]``."""
    return torch.zeros(batch, 1, 0, dtype=torch.long, device=device)
