"""TT-SVD, orthogonalisation and rounding of batched cores ``[B, r, n, r']``."""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _truncation_rank(s: Tensor, delta: Tensor | None, max_rank: int | None) -> int:
    """Smallest rank, shared by the batch, whose discarded tail norm is within ``delta``.

    ``s``: singular values ``[B, m]`` (descending); ``delta``: allowed tail norm ``[B]``, or
    ``None`` for the numerical rank.
    """
    if delta is None:
        # no tolerance given: keep the numerical rank (drop values at rounding-noise level)
        rtol = torch.finfo(s.dtype).eps * max(s.shape[1], 2) * 4
        rank = int((s > rtol * s[:, :1]).sum(1).max().item())
    else:
        # tail[b, j] = norm of s[b, j:]; keep the first j values where tail[b, j] <= delta[b]
        tail = s.flip(1).square().cumsum(1).flip(1).sqrt()
        needed = (tail > delta[:, None]).sum(1)  # values that must be kept
        rank = int(needed.max().item())
    if max_rank is not None:
        rank = min(rank, max_rank)
    return max(rank, 1)


def _per_bond_delta(norm: Tensor, tol: float | None, d: int) -> Tensor | None:
    if tol is None:
        return None
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}.")
    return tol / math.sqrt(max(d - 1, 1)) * norm


def tt_svd(x: Tensor, tol: float | None = None, max_rank: int | None = None) -> list[Tensor]:
    """Cores of the TT-SVD of ``x: [B, n_1, ..., n_d]`` to relative error ``tol``, rank ``max_rank``.

    Example:
        >>> import torch
        >>> cores = tt_svd(torch.rand(2, 3, 4, 5), max_rank=5)
        >>> [tuple(c.shape) for c in cores]
        [(2, 1, 3, 3), (2, 3, 4, 5), (2, 5, 5, 1)]
    """
    B, *shape = x.shape
    d = len(shape)
    delta = _per_bond_delta(x.reshape(B, -1).norm(dim=1), tol, d)
    cores = []
    rest = x.reshape(B, 1, -1)
    r = 1
    for k in range(d - 1):
        mat = rest.reshape(B, r * shape[k], -1)
        u, s, vh = torch.linalg.svd(mat, full_matrices=False)
        rank = _truncation_rank(s, delta, max_rank)
        cores.append(u[:, :, :rank].reshape(B, r, shape[k], rank))
        rest = s[:, :rank, None] * vh[:, :rank]
        r = rank
    cores.append(rest.reshape(B, r, shape[-1], 1))
    return cores


def left_orthogonalize(cores: list[Tensor]) -> list[Tensor]:
    """Cores with all but the last left-orthogonal (same tensor); QR sweep left to right.

    Example:
        >>> import torch
        >>> cores = left_orthogonalize([torch.rand(1, 1, 3, 2), torch.rand(1, 2, 3, 1)])
        >>> q = cores[0].reshape(3, 2)
        >>> bool(torch.allclose(q.T @ q, torch.eye(2), atol=1e-6))
        True
    """
    out = []
    carry = None
    for k, core in enumerate(cores):
        if carry is not None:
            core = torch.einsum("bqr,brns->bqns", carry, core)
        if k == len(cores) - 1:
            out.append(core)
            break
        B, r, n, s = core.shape
        q, carry = torch.linalg.qr(core.reshape(B, r * n, s))
        out.append(q.reshape(B, r, n, q.shape[2]))
    return out


def right_orthogonalize(cores: list[Tensor]) -> list[Tensor]:
    """Cores with all but the first right-orthogonal (same tensor); QR sweep right to left.

    Example:
        >>> import torch
        >>> cores = right_orthogonalize([torch.rand(1, 1, 3, 2), torch.rand(1, 2, 3, 1)])
        >>> q = cores[1].reshape(2, 3)
        >>> bool(torch.allclose(q @ q.T, torch.eye(2), atol=1e-6))
        True
    """
    out = []
    carry = None  # [B, s, s']
    for k in range(len(cores) - 1, -1, -1):
        core = cores[k]
        if carry is not None:
            core = torch.einsum("brns,bst->brnt", core, carry)
        if k == 0:
            out.append(core)
            break
        B, r, n, s = core.shape
        q, rr = torch.linalg.qr(core.reshape(B, r, n * s).mT)
        out.append(q.mT.reshape(B, q.shape[2], n, s))
        carry = rr.mT
    return out[::-1]


def round_cores(cores: list[Tensor], tol: float | None = None, max_rank: int | None = None) -> list[Tensor]:
    """TT rounding: right-orthogonalise, then truncate SVDs left to right.

    Example:
        >>> import torch
        >>> cores = round_cores([torch.ones(1, 1, 3, 4), torch.ones(1, 4, 3, 1)], tol=1e-6)
        >>> [c.shape[3] for c in cores]
        [1, 1]
    """
    if max_rank is not None and max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}.")
    cores = right_orthogonalize(cores)
    d = len(cores)
    if d == 1:
        return cores
    delta = _per_bond_delta(cores[0].flatten(1).norm(dim=1), tol, d)
    out = []
    carry = None
    for k in range(d - 1):
        core = cores[k]
        if carry is not None:
            core = torch.einsum("bqr,brns->bqns", carry, core)
        B, r, n, s = core.shape
        u, sv, vh = torch.linalg.svd(core.reshape(B, r * n, s), full_matrices=False)
        rank = _truncation_rank(sv, delta, max_rank)
        out.append(u[:, :, :rank].reshape(B, r, n, rank))
        carry = sv[:, :rank, None] * vh[:, :rank]
    out.append(torch.einsum("bqr,brns->bqns", carry, cores[-1]))
    return out
