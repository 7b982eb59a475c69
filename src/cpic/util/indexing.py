"""C-order linear indexing of multi-indices, shared by the layers that flatten grids."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def c_strides(shape: Sequence[int], device: torch.device | str = "cpu") -> Tensor:
    """C-order strides of ``shape``, int64 on ``device``: ``(multi_index * strides).sum(-1)``
    is the linear index. Exact while ``prod(shape) < 2**63``; past that the strides wrap
    around as int64 arithmetic does (two multi-indices may then share one linear index, which
    is what a hash key of a huge tensor's rows tolerates).

    Example:
        >>> c_strides((4, 3, 2)).tolist()
        [6, 2, 1]
        >>> (torch.tensor([[1, 2, 1]]) * c_strides((4, 3, 2))).sum(-1).tolist()
        [11]
    """
    strides = [math.prod(shape[k + 1 :]) % 2**64 for k in range(len(shape))]
    wrapped = [s - 2**64 if s >= 2**63 else s for s in strides]
    return torch.tensor(wrapped, dtype=torch.long, device=device)
