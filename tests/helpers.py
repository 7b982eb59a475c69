"""Shared test helpers."""

import torch

from cpic import TT


def random_tt(batch, shape, rank, dtype=torch.float64, seed=0) -> TT:
    """A batch of TTs with Gaussian cores of one rank."""
    gen = torch.Generator().manual_seed(seed)
    ranks = [1] + [rank] * (len(shape) - 1) + [1]
    return TT(
        [
            torch.randn(batch, ranks[k], n, ranks[k + 1], generator=gen, dtype=dtype)
            for k, n in enumerate(shape)
        ]
    )
