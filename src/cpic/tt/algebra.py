"""Sums, element-wise products, constants and concatenation of batched TT cores ``[B, r, n, r']``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def direct_sum(trains: Sequence[Sequence[Tensor]]) -> list[Tensor]:
    """Cores of the sum of tensor trains of the same batch and mode sizes; the ranks add.

    Example:
        >>> import torch
        >>> a = [torch.ones(1, 1, 3, 2), torch.ones(1, 2, 4, 1)]
        >>> [tuple(c.shape) for c in direct_sum([a, a, a])]
        [(1, 1, 3, 6), (1, 6, 4, 1)]
    """
    d = len(trains[0])
    if d == 1:
        return [torch.stack([t[0] for t in trains]).sum(0)]
    cores = [torch.cat([t[0] for t in trains], dim=3)]
    cores += [_block_diagonal([t[k] for t in trains]) for k in range(1, d - 1)]
    cores.append(torch.cat([t[-1] for t in trains], dim=1))
    return cores


def _block_diagonal(blocks: list[Tensor]) -> Tensor:
    """``[B, sum r_i, n, sum s_i]`` with block ``i`` ``[B, r_i, n, s_i]`` on the diagonal."""
    total = sum(b.shape[3] for b in blocks)
    rows, offset = [], 0
    for b in blocks:
        rows.append(F.pad(b, (offset, total - offset - b.shape[3])))
        offset += b.shape[3]
    return torch.cat(rows, dim=1)


def hadamard(a: Sequence[Tensor], b: Sequence[Tensor]) -> list[Tensor]:
    """Cores of the element-wise product of two tensor trains; the ranks multiply.

    Example:
        >>> import torch
        >>> a = [torch.rand(1, 1, 3, 2), torch.rand(1, 2, 3, 1)]
        >>> [tuple(c.shape) for c in hadamard(a, a)]
        [(1, 1, 3, 4), (1, 4, 3, 1)]
    """
    out = []
    for x, y in zip(a, b):
        B, r, n, s = x.shape
        q, t = y.shape[1], y.shape[3]
        out.append(torch.einsum("brns,bqnt->brqnst", x, y).reshape(B, r * q, n, s * t))
    return out


def constant(value: Tensor, shape: Sequence[int]) -> list[Tensor]:
    """Rank-1 cores of the tensors of ``shape`` whose entries all equal ``value[b]`` (``[B]``).

    Example:
        >>> import torch
        >>> [tuple(c.shape) for c in constant(torch.tensor([2.0, 3.0]), (4, 5))]
        [(2, 1, 4, 1), (2, 1, 5, 1)]
    """
    B = value.shape[0]
    cores = [value.new_ones(B, 1, n, 1) for n in shape]
    cores[0] = cores[0] * value[:, None, None, None]
    return cores


def concatenate(trains: Sequence[Sequence[Tensor]], mode: int) -> list[Tensor]:
    """Cores of the tensor trains joined along ``mode``: each one's core ``mode`` zero-padded
    to the total size at its offset, then summed; the ranks add.

    Example:
        >>> import torch
        >>> a = [torch.rand(1, 1, 3, 2), torch.rand(1, 2, 4, 1)]
        >>> b = [torch.rand(1, 1, 3, 1), torch.rand(1, 1, 2, 1)]
        >>> [tuple(c.shape) for c in concatenate([a, b], mode=1)]
        [(1, 1, 3, 3), (1, 3, 6, 1)]
    """
    sizes = [t[mode].shape[2] for t in trains]
    total, offset, padded = sum(sizes), 0, []
    for t, n in zip(trains, sizes):
        core = F.pad(t[mode], (0, 0, offset, total - offset - n))
        padded.append([*t[:mode], core, *t[mode + 1 :]])
        offset += n
    return direct_sum(padded)
