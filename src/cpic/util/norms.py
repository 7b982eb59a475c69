"""The relative error every layer reports (cross validation, held-out voxels, benchmarks)."""

from __future__ import annotations

import torch
from torch import Tensor


def relative_error(approx: Tensor, exact: Tensor, dim: int | None = None) -> Tensor:
    """``||approx - exact|| / ||exact||`` over ``dim`` (one value per remaining index), or over
    all elements when ``dim`` is ``None``. Both are scaled by ``max |exact|`` first so float32
    cannot overflow; where ``exact`` is all zero the absolute error ``||approx||`` is returned.

    Example:
        >>> round(relative_error(torch.tensor([3.0, 4.5]), torch.tensor([3.0, 4.0])).item(), 6)
        0.1
        >>> relative_error(torch.tensor([[3.0, 4.0], [1.0, 2.0]]), torch.zeros(2, 2), dim=1).tolist()
        [5.0, 2.2360680103302]
    """
    dims = () if dim is None else (dim,)
    keep = dim is not None
    scale = exact.abs().amax(dim=dims, keepdim=keep)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    diff = torch.linalg.vector_norm((approx - exact) / scale, dim=dims or None)
    ref = torch.linalg.vector_norm(exact / scale, dim=dims or None)
    return torch.where(ref > 0, diff / torch.where(ref > 0, ref, torch.ones_like(ref)), diff)
