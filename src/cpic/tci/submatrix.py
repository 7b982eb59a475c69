"""Batched maximal-volume row selection, on the tensor's device."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

#: an odd 64-bit constant (the golden ratio's) spreading the fingerprint weights over all bits
_MIX = 0x9E3779B97F4A7C15 - 2**64


def _rows(a: Tensor, idx: Tensor) -> Tensor:
    """``a[b, idx[b]]`` for ``a: [B, N, r]``, ``idx: [B, k]`` -> ``[B, k, r]``."""
    return a.gather(1, idx[:, :, None].expand(-1, -1, a.shape[2]))


def maxvol(a: Tensor, tau: float = 1.05, max_iters: int = 100) -> tuple[Tensor, Tensor]:
    """Rows of a dominant ``r x r`` submatrix of each tall ``a[b]: [N, r]``.

    Starts from the pivots of an LU factorisation, then swaps rows while some coefficient
    exceeds ``tau`` in magnitude. Returns ``idx: [B, r]`` and ``coef = a @ inv(a[idx])``
    ``[B, N, r]`` (``coef[idx]`` is the identity and ``|coef| <= tau``). ``a`` should have
    orthonormal columns (a QR factor), which keeps ``a[idx]`` well conditioned.

    Example:
        >>> import torch
        >>> a = torch.linalg.qr(torch.randn(2, 20, 4, dtype=torch.float64)).Q
        >>> idx, coef = maxvol(a)
        >>> bool(coef.abs().max() <= 1.05)
        True
        >>> bool(torch.allclose(coef @ a.gather(1, idx[..., None].expand(-1, -1, 4)), a))
        True
    """
    B, N, r = a.shape
    if N < r:
        raise ValueError(f"maxvol needs a tall matrix, got {N} rows and {r} columns.")
    if N == r:
        eye = torch.eye(r, dtype=a.dtype, device=a.device).expand(B, r, r).clone()
        return torch.arange(r, device=a.device).expand(B, r).clone(), eye
    lu, pivots = torch.linalg.lu_factor(a)
    P, _, _ = torch.lu_unpack(lu, pivots, unpack_data=False)
    idx = P[:, :, :r].argmax(dim=1)  # rows moved to the top by partial pivoting
    coef = torch.linalg.solve(_rows(a, idx), a, left=False).contiguous()
    if a.device.type == "cpu" and a.dtype in (torch.float32, torch.float64) and not coef.requires_grad:
        _swap_on_host(coef, idx, tau, max_iters)
        return idx, coef
    return _swap_batched(coef, idx, tau, max_iters)


def _swap_batched(coef: Tensor, idx: Tensor, tau: float, max_iters: int) -> tuple[Tensor, Tensor]:
    """Maxvol's row swaps for all items at once: each step swaps the row of the largest
    coefficient in, where it exceeds ``tau``; converged items take no-op steps."""
    B, N, r = coef.shape
    eye_rows = torch.eye(r, dtype=coef.dtype, device=coef.device)
    # the loop may test for convergence only now and then: on an accelerator each test is a
    # host synchronisation
    check_every = 1 if coef.device.type == "cpu" else 8
    for step in range(max_iters):
        val, pos = coef.abs().flatten(1).max(dim=1)
        active = val > tau
        if step % check_every == 0 and not bool(active.any()):
            break
        i, j = pos // r, pos % r
        pivot = coef.flatten(1).gather(1, pos[:, None])  # [B, 1]
        col_j = coef.gather(2, j[:, None, None].expand(B, N, 1))  # [B, N, 1]
        row_i = _rows(coef, i[:, None]) - eye_rows[j][:, None, :]  # [B, 1, r]
        step = col_j @ (row_i / pivot[:, :, None])
        coef = coef - torch.where(active[:, None, None], step, torch.zeros_like(step))
        new_j = torch.where(active, i, idx.gather(1, j[:, None])[:, 0])
        idx = idx.scatter(1, j[:, None], new_j[:, None])
    return idx, coef


def _swap_on_host(coef: Tensor, idx: Tensor, tau: float, max_iters: int) -> None:
    """The swaps of :func:`_swap_batched`, in place on CPU tensors, item by item in NumPy.

    The swaps are a chain of small rank-one updates: a NumPy operation on a matrix of this
    size costs a fraction of a torch one, and each item stops after its own swaps instead of
    waiting for the slowest. The arithmetic is the same, so are the results, bit for bit.
    """
    host = coef.numpy()  # shares coef's memory, as idx.numpy() shares idx's
    r = host.shape[2]
    eye_rows = np.eye(r, dtype=host.dtype)
    bound = host.dtype.type(tau)  # compared in coef's precision, as torch does
    for c, rows in zip(host, idx.numpy()):
        for _ in range(max_iters):
            i, j = divmod(int(np.abs(c).argmax()), r)
            pivot = c[i, j]
            if not abs(pivot) > bound:
                break
            c -= np.outer(c[:, j], (c[i] - eye_rows[j]) / pivot)
            rows[j] = i


def maxvol_rect(
    a: Tensor,
    extra: int,
    tau: float = 1.05,
    max_iters: int = 100,
    min_extra: int | None = None,
    tau_rect: float = 1.1,
) -> tuple[Tensor, Tensor]:
    """``r + k`` rows of each ``a[b]: [N, r]``: maxvol, then greedy rows of largest norm.

    ``k`` lies between ``min_extra`` (default ``extra``) and ``extra``: rows beyond
    ``min_extra`` are added only while some item has a row whose coefficients have norm above
    ``tau_rect`` (a row the current ones represent poorly). Every batch item gets the same
    number of rows, so ranks stay shared by the batch.
    Returns ``idx: [B, r + k]`` and ``coef: [B, N, r + k]`` with ``a = coef @ a[idx]``:
    ``coef[idx]`` is the identity, and every other row holds the least-squares coefficients
    ``a @ pinv(a[idx])`` of that row (as teneva's ``maxvol_rect``).

    Example:
        >>> import torch
        >>> a = torch.linalg.qr(torch.randn(1, 30, 3, dtype=torch.float64)).Q
        >>> idx, coef = maxvol_rect(a, extra=2)
        >>> idx.shape, coef.shape
        (torch.Size([1, 5]), torch.Size([1, 30, 5]))
        >>> bool(torch.allclose(coef @ a.gather(1, idx[..., None].expand(-1, -1, 3)), a))
        True
        >>> bool(torch.equal(coef.gather(1, idx[..., None].expand(-1, -1, 5))[0], torch.eye(5).double()))
        True
    """
    idx, coef = maxvol(a, tau, max_iters)
    B, N, r = a.shape
    extra = min(int(extra), N - r)
    if extra > 0:
        min_extra = extra if min_extra is None else min(min_extra, extra)
        idx, coef = _add_rows(idx, coef, extra, min_extra, tau_rect)
    # the least-squares coefficients of a chosen row form a row of a projector, not a unit
    # vector: the identity makes the cross interpolate its pivots exactly
    m = idx.shape[1]
    eye = torch.eye(m, dtype=a.dtype, device=a.device).expand(B, m, m)
    return idx, coef.scatter(1, idx[:, :, None].expand(B, m, m), eye)


def _add_rows(
    idx: Tensor, coef: Tensor, extra: int, min_extra: int, tau_rect: float
) -> tuple[Tensor, Tensor]:
    """Greedy rows of largest coefficient norm added to maxvol's ``idx``, ``coef``; the
    coefficients kept the least-squares ones by rank-one updates."""
    B, N, _ = coef.shape
    batch = torch.arange(B, device=coef.device)
    free = torch.ones(B, N, dtype=coef.dtype, device=coef.device).scatter(1, idx, 0.0)
    score = free * coef.square().sum(2)
    chosen = [idx]
    for k in range(extra):
        top, i = score.max(dim=1)  # [B]
        if k >= min_extra and not bool((top > tau_rect**2).any()):
            break
        chosen.append(i[:, None])
        free = free.scatter(1, i[:, None], 0.0)
        row = coef[batch, i]  # [B, k]
        v = (coef @ row[:, :, None])[:, :, 0]  # [B, N]
        scale = 1.0 / (1.0 + v[batch, i])  # [B]
        coef = torch.cat(
            [coef - scale[:, None, None] * v[:, :, None] * row[:, None, :], (scale[:, None] * v)[:, :, None]],
            dim=2,
        )
        score = free * (score - scale[:, None] * v.square())
    return torch.cat(chosen, dim=1), coef


def first_of_duplicates(a: Tensor, idx: Tensor, keys: Callable[[], Tensor]) -> Tensor:
    """``idx`` with each chosen row of ``a: [B, N, r]`` replaced by the row of equal values
    (bitwise) whose key is smallest; ``keys()`` gives them, ``[B, N]``, and is called only
    when some chosen row has a twin.

    Maxvol cannot tell identical rows apart, so which of them it keeps is an accident of row
    order; in a cross, that accident changes from pass to pass and makes each pass read new
    entries that repeat known values. Keying rows by the multi-index they stand for makes the
    choice the same every time, so later passes meet entries already in the cache. An item
    whose choices would collide (identical rows chosen twice, as in a rank-deficient block)
    keeps ``idx`` as it is.

    Example:
        >>> import torch
        >>> a = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]])
        >>> first_of_duplicates(a, torch.tensor([[2, 1]]), lambda: torch.tensor([[5, 7, 3]])).tolist()
        [[2, 1]]
        >>> first_of_duplicates(a, torch.tensor([[2, 1]]), lambda: torch.tensor([[2, 7, 3]])).tolist()
        [[0, 1]]
    """
    fingerprint = _row_fingerprints(a)  # [B, N]
    same = fingerprint.gather(1, idx)[:, :, None] == fingerprint[:, None, :]  # [B, m, N]
    # on the CPU a test is free and spares the rest in the usual case, rows without twins; on
    # an accelerator it would be a host synchronisation per step
    if a.device.type == "cpu" and not bool((same.sum(dim=2) > 1).any()):
        return idx
    key = keys()
    largest = torch.iinfo(key.dtype).max
    first = torch.where(same, key[:, None, :], torch.full_like(key[:, None, :], largest)).argmin(-1)
    # a fingerprint collision or two identical rows chosen: keep that item's choice
    keep = (_rows(a, first) == _rows(a, idx)).all(dim=2).all(dim=1, keepdim=True)
    keep &= (first.sort(dim=1).values.diff(dim=1) != 0).all(dim=1, keepdim=True)
    return torch.where(keep, first, idx)


def _row_fingerprints(a: Tensor) -> Tensor:
    """One int64 per row of ``a: [B, N, r]``, equal for bitwise-equal rows: a linear hash of
    the bit patterns (exact integer arithmetic, so no rounding can split equal rows; unequal
    rows that share a fingerprint are told apart by the caller)."""
    bits = {8: torch.int64, 4: torch.int32, 2: torch.int16}[a.element_size()]
    pattern = a.contiguous().view(bits).long()
    weights = torch.arange(1, 2 * a.shape[2], 2, dtype=torch.long, device=a.device) * _MIX
    return (pattern * weights).sum(dim=2)
