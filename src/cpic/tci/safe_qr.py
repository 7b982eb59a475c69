"""Reduced QR whose gradient stays finite for rank-deficient inputs."""

from __future__ import annotations

import torch
from torch import Tensor


def _copyltu(m: Tensor) -> Tensor:
    """The symmetric matrix with ``m``'s lower triangle."""
    low = m.tril(-1)
    return low + low.mT + torch.diag_embed(m.diagonal(dim1=-2, dim2=-1))


class _SafeQR(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a: Tensor) -> tuple[Tensor, Tensor]:
        q, r = torch.linalg.qr(a)
        ctx.save_for_backward(q, r)
        return q, r

    @staticmethod
    def backward(ctx, grad_q: Tensor | None, grad_r: Tensor | None) -> Tensor:
        q, r = ctx.saved_tensors
        grad_q = torch.zeros_like(q) if grad_q is None else grad_q
        grad_r = torch.zeros_like(r) if grad_r is None else grad_r
        m = r @ grad_r.mT - grad_q.mT @ q
        b = grad_q + q @ _copyltu(m)
        # the standard formula solves with R^T; where R is (numerically) singular its tiny
        # diagonal entries are lifted to sqrt(eps) |R|_max so the gradient stays finite
        diag = r.diagonal(dim1=-2, dim2=-1)
        scale = diag.abs().amax(-1, keepdim=True)
        eps = torch.finfo(r.dtype).eps
        floor = eps**0.5 * torch.where(scale > 0, scale, torch.ones_like(scale))
        small = diag.abs() <= 100 * eps * scale
        lifted = torch.where(small, torch.where(diag < 0, -floor, floor), diag)
        r_safe = r - torch.diag_embed(diag) + torch.diag_embed(lifted)
        return torch.linalg.solve_triangular(r_safe, b.mT, upper=True).mT  # b R^-T


def safe_qr(a: Tensor) -> tuple[Tensor, Tensor]:
    """Reduced QR ``a = Q R`` of ``[..., m, n]`` (``m >= n``) like :func:`torch.linalg.qr`; its
    backward lifts numerically zero diagonal entries of ``R`` so rank-deficient inputs (blank or
    constant volumes) get finite gradients. Full-rank inputs get torch's exact gradient.

    Example:
        >>> import torch
        >>> a = torch.ones(5, 2, dtype=torch.float64, requires_grad=True)    # rank 1
        >>> q, r = safe_qr(a)
        >>> q.sum().backward()
        >>> bool(torch.isfinite(a.grad).all())
        True
    """
    return _SafeQR.apply(a)
