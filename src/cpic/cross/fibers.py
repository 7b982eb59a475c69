"""Index bookkeeping of TT-cross: fibers from nested index sets, and sets from chosen rows."""

from __future__ import annotations

import math
from collections.abc import Sequence

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


def _wrapped(count: int) -> int:
    """``count`` as int64 arithmetic wraps it around."""
    count %= 2**64
    return count - 2**64 if count >= 2**63 else count


def _linear(index: Tensor, sizes: Sequence[int]) -> Tensor:
    """C-order linear index of each multi-index ``[..., len(sizes)]`` over modes of ``sizes``
    (wrapping around in int64 past ``2**63``: keys then collide now and then, which only
    costs a missed duplicate)."""
    strides = [_wrapped(math.prod(sizes[j + 1 :])) for j in range(len(sizes))]
    return (index * torch.tensor(strides, dtype=torch.long, device=index.device)).sum(-1)


def left_row_keys(left: Tensor, sizes: Sequence[int]) -> Tensor:
    """Keys of the rows of ``left x range(n)`` (``sizes`` = the modes up to and with ``n``),
    ordered as the multi-indices they stand for: ``[B, r_left * n]``, the rows of a fiber
    block unfolded for a left-to-right step.

    Example:
        >>> import torch
        >>> left_row_keys(torch.tensor([[[3], [1]]]), (4, 2)).tolist()
        [[6, 7, 2, 3]]
    """
    n = sizes[-1]
    base = _linear(left, sizes[:-1])
    return (base[:, :, None] * n + torch.arange(n, device=left.device)).flatten(1)


def right_row_keys(right: Tensor, sizes: Sequence[int]) -> Tensor:
    """Keys of the rows of ``range(n) x right`` (``sizes`` = the modes from ``n`` on), ordered
    as the multi-indices they stand for: ``[B, n * r_right]``, the rows of a fiber block
    unfolded for a right-to-left step.

    Example:
        >>> import torch
        >>> right_row_keys(torch.tensor([[[3], [1]]]), (2, 4)).tolist()
        [[3, 1, 7, 5]]
    """
    n, tail = sizes[0], _wrapped(math.prod(sizes[1:]))
    base = _linear(right, sizes[1:])
    return (torch.arange(n, device=right.device)[:, None] * tail + base[:, None, :]).flatten(1)


def empty_set(batch: int, device: torch.device) -> Tensor:
    """The one-element index set of the boundary bonds, ``[B, 1, 0]``."""
    return torch.zeros(batch, 1, 0, dtype=torch.long, device=device)
