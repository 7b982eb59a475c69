"""Fixing, selecting and contracting modes of batched TT cores ``[B, r, n, r']``."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def absorb(cores: Sequence[Tensor], mats: dict[int, Tensor]) -> list[Tensor] | Tensor:
    """Cores with mode ``k`` of each ``mats[k]`` (``[B, r_k, r_{k+1}]``, the core reduced to a
    matrix) removed and multiplied into a neighbouring kept core; ``Tensor[B]`` when no mode
    is kept.

    Example:
        >>> import torch
        >>> cores = [torch.rand(1, 1, 3, 2), torch.rand(1, 2, 4, 1)]
        >>> [tuple(c.shape) for c in absorb(cores, {0: cores[0][:, :, 1]})]
        [(1, 1, 4, 1)]
    """
    kept: list[Tensor] = []
    carry = None  # product of removed cores since the last kept core: [B, r, r']
    for k, core in enumerate(cores):
        if k in mats:
            carry = mats[k] if carry is None else carry @ mats[k]
            continue
        if carry is not None:
            core = torch.einsum("bqr,brns->bqns", carry, core)
            carry = None
        kept.append(core)
    if not kept:
        return carry[:, 0, 0]
    if carry is not None:
        kept[-1] = torch.einsum("brns,bst->brnt", kept[-1], carry)
    return kept


def mode_list(modes: int | Sequence[int] | None, d: int) -> list[int]:
    """``modes`` (one, several, or ``None`` for all) as distinct non-negative mode numbers.

    Example:
        >>> mode_list(-1, 3), mode_list(None, 2)
        ([2], [0, 1])
    """
    if modes is None:
        return list(range(d))
    if isinstance(modes, int):
        modes = [modes]
    out: list[int] = []
    for m in modes:
        if isinstance(m, bool) or not isinstance(m, int) or not -d <= m < d:
            raise ValueError(f"mode {m!r} is out of range for a TT with {d} modes.")
        if m % d in out:
            raise ValueError(f"mode {m} is given twice.")
        out.append(m % d)
    return out


def fixed_indices(indices, batch: int, sizes: Sequence[int], device: torch.device) -> Tensor:
    """``indices`` (one integer per mode, or ``LongTensor[B, modes]`` per item) checked against
    the mode ``sizes`` and wrapped (negative counts from the end) -> ``LongTensor[B, modes]``.

    Example:
        >>> fixed_indices([1, -1], 2, (3, 4), torch.device("cpu")).tolist()
        [[1, 3], [1, 3]]
    """
    idx = torch.as_tensor(indices, device=device)
    if idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(f"indices must be integers, got dtype {idx.dtype}.")
    if idx.dim() == 1:
        idx = idx.expand(batch, -1)
    if idx.dim() != 2 or idx.shape != (batch, len(sizes)):
        raise ValueError(
            f"indices must be {len(sizes)} integers or a tensor [B={batch}, {len(sizes)}], "
            f"got shape {tuple(idx.shape)}."
        )
    high = torch.tensor(list(sizes), device=device)
    if bool(((idx < -high) | (idx >= high)).any()):
        raise ValueError(f"indices {idx.tolist()} are out of range for modes of sizes {tuple(sizes)}.")
    return (idx.long() + high) % high


def slice_matrices(cores: Sequence[Tensor], modes: list[int], idx: Tensor) -> dict[int, Tensor]:
    """``{mode: core[b, :, idx[b, j], :]}`` for the ``j``-th of ``modes``: the matrices that
    fixing those modes leaves, for :func:`absorb`.

    Example:
        >>> import torch
        >>> cores = [torch.rand(2, 1, 3, 2), torch.rand(2, 2, 4, 1)]
        >>> tuple(slice_matrices(cores, [1], torch.tensor([[0], [3]]))[1].shape)
        (2, 2, 1)
    """
    batch = torch.arange(idx.shape[0], device=idx.device)
    return {k: cores[k][batch, :, idx[:, j]] for j, k in enumerate(modes)}


def select(core: Tensor, key, mode: int) -> Tensor:
    """Core ``[B, r, n, s]`` restricted to the positions ``key`` (a slice, a sequence of
    integers or a 1-D integer tensor) of its mode, which it keeps.

    Example:
        >>> import torch
        >>> core = torch.arange(6.0).reshape(1, 1, 6, 1)
        >>> select(core, slice(1, None, 2), 0).flatten().tolist(), select(core, [5, 0], 0).flatten().tolist()
        ([1.0, 3.0, 5.0], [5.0, 0.0])
    """
    n = core.shape[2]
    if isinstance(key, slice):
        positions = range(n)[key]
        if len(positions) == 0:
            raise ValueError(f"slice {key} of mode {mode} (size {n}) is empty.")
        if positions.step == 1:
            return core[:, :, positions.start : positions.stop]
        key = list(positions)
    idx = torch.as_tensor(key, device=core.device)
    if idx.dim() != 1 or idx.numel() == 0 or idx.is_floating_point() or idx.dtype == torch.bool:
        raise ValueError(
            f"mode {mode} takes an integer, a slice or a non-empty sequence of integers, got {key!r}."
        )
    if bool(((idx < -n) | (idx >= n)).any()):
        raise ValueError(f"indices {idx.tolist()} are out of range for mode {mode} of size {n}.")
    return core.index_select(2, (idx.long() + n) % n)


def split_key(key, d: int) -> tuple[object, list]:
    """``(batch key, [key of each mode])`` of ``t[batch, i_1, ..., i_d]``; modes not named, or
    covered by ``...``, take ``slice(None)``.

    Example:
        >>> split_key((0, ..., 2), 3)
        (0, [slice(None, None, None), slice(None, None, None), 2])
    """
    parts = list(key) if isinstance(key, tuple) else [key]
    ellipses = sum(p is Ellipsis for p in parts)
    if ellipses > 1:
        raise ValueError("an index may hold at most one '...'.")
    if ellipses:
        at = next(i for i, p in enumerate(parts) if p is Ellipsis)
        parts[at : at + 1] = [slice(None)] * (d + 2 - len(parts))
    if len(parts) > d + 1:
        raise ValueError(f"too many indices ({len(parts)}) for a batch of TTs with {d} modes.")
    parts += [slice(None)] * (d + 1 - len(parts))
    return parts[0], parts[1:]
