"""The differentiable TT-cross interpolation formula from frozen index sets."""

from __future__ import annotations

import torch
from torch import Tensor

from cpic.tci.cache import BatchedFunction
from cpic.tci.fibers import fiber_indices
from cpic.tci.info import CrossInfo
from cpic.tci.safe_qr import safe_qr
from cpic.tt import TT


def _left_rows(left: Tensor, nxt: Tensor, n: int) -> Tensor:
    """Rows of ``left x range(n)`` that the nested set ``nxt`` (``[B, r', k + 1]``) picked."""
    return _match(left, nxt[:, :, :-1]) * n + nxt[:, :, -1]


def _right_rows(right: Tensor, prev: Tensor) -> Tensor:
    """Rows of ``range(n) x right`` that the nested set ``prev`` (``[B, r', 1 + k]``) picked."""
    return prev[:, :, 0] * right.shape[1] + _match(right, prev[:, :, 1:])


def _match(rows: Tensor, wanted: Tensor) -> Tensor:
    """Index in ``rows`` ``[B, r, k]`` of each of ``wanted`` ``[B, r', k]``."""
    if rows.shape[2] == 0:
        return torch.zeros(wanted.shape[:2], dtype=torch.long, device=wanted.device)
    same = (wanted[:, :, None, :] == rows[:, None, :, :]).all(-1)  # [B, r', r]
    if not bool(same.any(-1).all()):
        raise ValueError("the index sets are not nested: pass the info of a cpic.cross run.")
    return same.float().argmax(-1)


def _coefficients(fibers: Tensor, rows: Tensor) -> Tensor:
    """``Q @ inv(Q[rows])`` for the QR factor ``Q`` of each ``fibers[b]: [N, c]`` -> ``[B, N,
    len(rows)]``; when ``rows`` is longer than ``c``, least squares ``Q @ pinv(Q[rows])`` with
    the identity on the rows themselves, as :func:`cpic.tci.maxvol_rect` gives them.

    A rank-deficient fiber (a blank or constant volume) has a QR factor whose extra columns are
    arbitrary; :func:`safe_qr` keeps their gradient finite.
    """
    q = safe_qr(fibers)[0]
    sub = q.gather(1, rows[:, :, None].expand(-1, -1, q.shape[2]))
    if sub.shape[1] == sub.shape[2]:
        return torch.linalg.solve(sub, q, left=False)
    m = rows.shape[1]
    eye = torch.eye(m, dtype=q.dtype, device=q.device).expand(q.shape[0], m, m)
    return (q @ torch.linalg.pinv(sub)).scatter(1, rows[:, :, None].expand(-1, -1, m), eye)


def interpolate(f: BatchedFunction, info: CrossInfo) -> TT:
    """The TT that the cross interpolation formula builds from ``info``'s frozen index sets,
    differentiable with respect to whatever ``f``'s values depend on.

    All fibers of all cores are evaluated in ONE call of ``f`` (same contract as
    :func:`cpic.cross`). In the direction of the run's last pass, each core but one is
    ``Q @ inv(Q[rows])`` for the QR factor ``Q`` of its fiber and the rows its pivots pick (a
    least-squares solve when ranks differ), never an inverse of raw fiber entries; the
    remaining core is a raw fiber. Gradients reach only the
    entries in those fibers: the cherry-picked samples.

    Example:
        >>> import torch, cpic
        >>> w = torch.tensor(2.0, dtype=torch.float64, requires_grad=True)
        >>> def f(idx):
        ...     return w * torch.cos(idx.double().sum(-1) / 7)
        >>> _, info = cpic.cross(f, (6,) * 5, rank=2, dtype=torch.float64, seed=0)
        >>> tt = cpic.interpolate(f, info)
        >>> tt.mean().sum().backward()
        >>> bool(torch.isclose(w.grad, tt.mean().sum().detach() / 2))
        True
    """
    shape, d, B = tuple(info.shape), len(info.shape), info.batch
    if len(info.left) < d or len(info.right) < d + 1:
        raise ValueError("info holds no index sets: pass the info that cpic.cross returned.")
    blocks = [fiber_indices(info.left[k], shape[k], info.right[k + 1]) for k in range(d)]
    sizes = [b.shape[1] for b in blocks]
    values = f(torch.cat(blocks, dim=1))
    if tuple(values.shape) != (B, sum(sizes)):
        raise ValueError(f"f must return shape [{B}, {sum(sizes)}], got {tuple(values.shape)}.")
    fibers = [
        v.reshape(B, info.left[k].shape[1], shape[k], info.right[k + 1].shape[1])
        for k, v in enumerate(values.split(sizes, dim=1))
    ]
    # the sets of the last pass were chosen on exactly these fibers, so their rows are the
    # well-conditioned maxvol rows of each fiber's QR factor
    if info.direction == "ltr":
        cores = []
        for k in range(d - 1):
            _, r0, n, r1 = fibers[k].shape
            rows = _left_rows(info.left[k], info.left[k + 1], n)
            cores.append(_coefficients(fibers[k].reshape(B, r0 * n, r1), rows).reshape(B, r0, n, -1))
        return TT(cores + [fibers[-1]])
    cores = [fibers[0]]
    for k in range(1, d):
        _, r0, n, r1 = fibers[k].shape
        rows = _right_rows(info.right[k + 1], info.right[k])
        coef = _coefficients(fibers[k].reshape(B, r0, n * r1).mT, rows)  # [B, n r1, r']
        cores.append(coef.mT.reshape(B, -1, n, r1))
    return TT(cores)
